"""Local correction of confidence by the estimated miscalibration field."""

from miscal_jax.correction.local import (
    GLOBAL_METHODS,
    CorrectionParams,
    CorrectionState,
    StackedMap,
    apply_global,
    fit_correction_params,
    fit_final,
    fit_global,
    fit_global_out_of_fold,
    fit_stacked,
    interleaved_folds,
    local_confidence,
    stack_weight,
)

__all__ = (
    "GLOBAL_METHODS",
    "CorrectionParams",
    "CorrectionState",
    "StackedMap",
    "apply_global",
    "fit_correction_params",
    "fit_final",
    "fit_global",
    "fit_stacked",
    "interleaved_folds",
    "local_confidence",
    "fit_global_out_of_fold",
    "stack_weight",
)
