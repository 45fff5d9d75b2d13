"""The fitted field (FieldModel), its checkpoints, and honest K-fold cross-fitting."""

from miscal_jax.model.binned import bin_model, binned_error
from miscal_jax.model.carry import carry, subsample
from miscal_jax.model.crossfit import (
    SELECT_ON,
    CrossFitResult,
    FoldModel,
    apply_crossfit,
    crossfit,
)
from miscal_jax.model.field_model import (
    FORMAT_VERSION,
    FieldModel,
    FitConfig,
    batch_axes,
    fit,
    fit_many,
    fold_masks,
    load,
    num_models,
    out_of_fold,
    out_of_fold_fields,
    out_of_fold_global,
    predict,
    save,
    select_model,
)
from miscal_jax.model.sharded import fit_sharded, out_of_fold_sharded, predict_sharded

__all__ = (
    "CrossFitResult",
    "FORMAT_VERSION",
    "SELECT_ON",
    "FieldModel",
    "FitConfig",
    "FoldModel",
    "apply_crossfit",
    "bin_model",
    "binned_error",
    "crossfit",
    "batch_axes",
    "carry",
    "fit",
    "fit_many",
    "fold_masks",
    "load",
    "num_models",
    "out_of_fold",
    "out_of_fold_fields",
    "out_of_fold_global",
    "predict",
    "predict_sharded",
    "fit_sharded",
    "out_of_fold_sharded",
    "save",
    "select_model",
    "subsample",
)
