"""Local correction of confidence by the estimated miscalibration field."""

from miscal_jax.correction.local import (
    CorrectionParams,
    CorrectionState,
    apply_global,
    fit_correction_params,
    fit_global,
    local_confidence,
)

__all__ = (
    "CorrectionParams",
    "CorrectionState",
    "apply_global",
    "fit_correction_params",
    "fit_global",
    "local_confidence",
)
