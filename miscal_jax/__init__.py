"""miscal_jax: find where a model's confidence is wrong for particular inputs, and fix it.

Data flow: validate -> represent -> smooth -> infer -> regimes -> correct ->
evaluate, each stage a pure function over explicit pytrees; :func:`crossfit`
runs representation, smoothing and correction honestly (K-fold).
"""

from miscal_jax._types import FieldEstimate
from miscal_jax.baselines import apply_histogram
from miscal_jax.baselines import apply_isotonic
from miscal_jax.baselines import apply_platt
from miscal_jax.baselines import apply_temperature
from miscal_jax.baselines import fit_histogram
from miscal_jax.baselines import fit_isotonic
from miscal_jax.baselines import fit_platt
from miscal_jax.baselines import fit_temperature
from miscal_jax.correction import CorrectionParams
from miscal_jax.correction import CorrectionState
from miscal_jax.correction import fit_correction_params
from miscal_jax.correction import local_confidence
from miscal_jax.crossfit import CrossFitResult
from miscal_jax.crossfit import apply_crossfit
from miscal_jax.crossfit import crossfit
from miscal_jax.geometry import Geometry
from miscal_jax.geometry import embed, embed_folds
from miscal_jax.geometry import fit_geometry
from miscal_jax.inference import bootstrap_interval
from miscal_jax.inference import grouping_loss_interval
from miscal_jax.inference import heterogeneity_test
from miscal_jax.inference import normal_interval
from miscal_jax.inference import undersmoothed_field
from miscal_jax.kernel_sums import KernelMoments
from miscal_jax.kernel_sums import kernel_moments
from miscal_jax.kernel_sums import kernel_moments_sharded
from miscal_jax.io import load_data
from miscal_jax.io import load_default
from miscal_jax.io import load_with_panel
from miscal_jax.metrics import auroc
from miscal_jax.metrics import brier
from miscal_jax.metrics import ecce
from miscal_jax.metrics import ece
from miscal_jax.metrics import grouping_loss
from miscal_jax.metrics import local_calibration_error
from miscal_jax.metrics import nll
from miscal_jax.metrics import regional_error
from miscal_jax.metrics import smooth_ece
from miscal_jax.panel import PanelConfig
from miscal_jax.panel import PanelMap
from miscal_jax.panel import ProfileMap
from miscal_jax.panel import fit_panel
from miscal_jax.panel import fit_profile
from miscal_jax.panel import panel_embed
from miscal_jax.panel import profile_embed
from miscal_jax.penalty import local_calibration_penalty
from miscal_jax.model import FieldModel
from miscal_jax.model import FitConfig
from miscal_jax.model import fit
from miscal_jax.model import load
from miscal_jax.model import out_of_fold, out_of_fold_global
from miscal_jax.model import predict
from miscal_jax.model import save
from miscal_jax.regimes import assign_regimes
from miscal_jax.regimes import discover_regimes
from miscal_jax.representation import Encoder
from miscal_jax.representation import EncoderConfig
from miscal_jax.representation import TrainState
from miscal_jax.representation import fit_encoder
from miscal_jax.representation import init_train_state
from miscal_jax.representation import train_step
from miscal_jax.smoother import field_from_moments
from miscal_jax.smoother import loo_field
from miscal_jax.smoother import nw_field
from miscal_jax.smoother import select_bandwidth
from miscal_jax.synthetic import make_planted
from miscal_jax.validation import top_label
from miscal_jax.validation import validate_inputs

__version__ = "0.1.0"

__all__ = (
    "CorrectionParams",
    "CorrectionState",
    "CrossFitResult",
    "Encoder",
    "EncoderConfig",
    "FieldEstimate",
    "FieldModel",
    "FitConfig",
    "Geometry",
    "KernelMoments",
    "PanelConfig",
    "PanelMap",
    "ProfileMap",
    "TrainState",
    "apply_crossfit",
    "apply_histogram",
    "apply_isotonic",
    "apply_platt",
    "apply_temperature",
    "assign_regimes",
    "auroc",
    "bootstrap_interval",
    "brier",
    "crossfit",
    "discover_regimes",
    "ecce",
    "ece",
    "embed",
    "embed_folds",
    "field_from_moments",
    "fit",
    "fit_correction_params",
    "fit_encoder",
    "fit_geometry",
    "fit_histogram",
    "fit_isotonic",
    "fit_panel",
    "fit_profile",
    "fit_platt",
    "fit_temperature",
    "grouping_loss",
    "grouping_loss_interval",
    "heterogeneity_test",
    "init_train_state",
    "kernel_moments",
    "kernel_moments_sharded",
    "load",
    "load_data",
    "load_default",
    "load_with_panel",
    "local_calibration_error",
    "local_calibration_penalty",
    "local_confidence",
    "loo_field",
    "make_planted",
    "nll",
    "normal_interval",
    "nw_field",
    "out_of_fold",
    "out_of_fold_global",
    "panel_embed",
    "profile_embed",
    "predict",
    "regional_error",
    "save",
    "select_bandwidth",
    "smooth_ece",
    "top_label",
    "train_step",
    "undersmoothed_field",
    "validate_inputs",
)
