"""miscal_jax: find where a model's confidence is wrong for particular inputs, and fix it.

The top level holds the names most users need; everything else lives in a
subpackage named for its concept:

- :mod:`miscal_jax.kernels`: kernel shapes and the blocked kernel-sum primitive;
- :mod:`miscal_jax.smoothing`: Nadaraya-Watson field, leave-one-out, bandwidths;
- :mod:`miscal_jax.geometry`: fixed, learned (encoder) and panel spaces;
- :mod:`miscal_jax.calibrators`: global maps (temperature, Platt, isotonic, histogram);
- :mod:`miscal_jax.correction`: local correction by the field;
- :mod:`miscal_jax.losses`: the differentiable local calibration penalty;
- :mod:`miscal_jax.model`: :class:`FieldModel`, checkpoints, cross-fitting;
- :mod:`miscal_jax.metrics`: calibration and discrimination metrics;
- :mod:`miscal_jax.stats`: heterogeneity test, intervals, regimes;
- :mod:`miscal_jax.synthetic`: planted fields and confounded nulls;
- :mod:`miscal_jax.app`: the CLI and the report, above the core (never imported by it).

Data flow: validate -> represent -> smooth -> infer -> regimes -> correct ->
evaluate, each stage a pure function over explicit pytrees.
"""

from miscal_jax import calibrators as calibrators
from miscal_jax import correction as correction
from miscal_jax import geometry as geometry
from miscal_jax import kernels as kernels
from miscal_jax import losses as losses
from miscal_jax import metrics as metrics
from miscal_jax import model as model
from miscal_jax import smoothing as smoothing
from miscal_jax import stats as stats
from miscal_jax import synthetic as synthetic
from miscal_jax._types import FieldEstimate
from miscal_jax.calibrators import apply_isotonic, fit_isotonic
from miscal_jax.kernels import KernelMoments, kernel_moments
from miscal_jax.losses import local_calibration_penalty
from miscal_jax.metrics import local_calibration_error
from miscal_jax.model import (
    CrossFitResult,
    FieldModel,
    FitConfig,
    crossfit,
    fit,
    load,
    out_of_fold,
    predict,
    save,
)
from miscal_jax.smoothing import loo_field, nw_field, select_bandwidth
from miscal_jax.stats import assign_regimes, discover_regimes, heterogeneity_test
from miscal_jax.synthetic import make_planted
from miscal_jax.validation import validate_inputs

__version__ = "0.1.0"

__all__ = (
    "CrossFitResult",
    "FieldEstimate",
    "FieldModel",
    "FitConfig",
    "KernelMoments",
    "apply_isotonic",
    "assign_regimes",
    "crossfit",
    "discover_regimes",
    "fit",
    "fit_isotonic",
    "heterogeneity_test",
    "kernel_moments",
    "load",
    "local_calibration_error",
    "local_calibration_penalty",
    "loo_field",
    "make_planted",
    "nw_field",
    "out_of_fold",
    "predict",
    "save",
    "select_bandwidth",
    "validate_inputs",
)
