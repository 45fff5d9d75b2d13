"""Where the smoother measures distance: raw, PCA, or a learned space.

A :class:`Geometry` is a fitted pytree that maps inputs to the space ``z``
where the field is smoothed, plus the bandwidth chosen there.
:func:`fit_geometry` fits each candidate on part of the training items and
keeps the one with the lowest smoother error on a further held-out part, so
a learned metric that overfits the coin-flip residuals loses to the raw or
PCA space instead of being used.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jax.typing import ArrayLike

from miscal_jax._types import Array, PRNGKey
from miscal_jax.baselines import logit
from miscal_jax.representation import Encoder, EncoderConfig, fit_encoder
from miscal_jax.smoother import nw_field, select_bandwidth

__all__ = ["GEOMETRIES", "Geometry", "embed", "fit_geometry"]

GEOMETRIES = ("raw", "pca", "learned")
#: Encoder inputs are the top principal components, at most this many.
MAX_ENCODER_INPUTS = 64


@struct.dataclass
class Geometry:
    """A fitted map ``x -> z`` and the smoothing bandwidth in ``z``.

    Attributes:
      kind: ``"raw"``, ``"pca"`` or ``"learned"`` (static).
      mean: ``[d]`` centre of the inputs.
      projection: ``[d, m]`` principal directions (PCA output for ``"pca"``,
        encoder input for ``"learned"``, unused for ``"raw"``).
      input_scale: scalar dividing the projected inputs of the encoder.
      encoder_params: flax parameters (``None`` unless learned).
      log_bandwidth: scalar log-bandwidth in ``z``.
      encoder: the flax module (static, ``None`` unless learned).
      use_conf: whether ``logit(conf)`` is an encoder input (static).
      kernel: smoothing kernel the bandwidth was chosen for (static); every
        later smoothing in this geometry uses it.
    """

    mean: Array
    projection: Array
    input_scale: Array
    encoder_params: Any
    log_bandwidth: Array
    kind: str = struct.field(pytree_node=False, default="raw")
    encoder: nn.Module | None = struct.field(pytree_node=False, default=None)
    use_conf: bool = struct.field(pytree_node=False, default=False)
    kernel: str = struct.field(pytree_node=False, default="gaussian")


def _encoder_inputs(geometry: Geometry, x: Array, conf: Array) -> Array:
    feats = (x - geometry.mean) @ geometry.projection / geometry.input_scale
    if geometry.use_conf:
        feats = jnp.concatenate([feats, 0.5 * logit(conf)[:, None]], axis=1)
    return feats


def embed(geometry: Geometry, x: ArrayLike, conf: ArrayLike) -> Array:
    """Maps ``[n, d]`` inputs (and ``[n]`` confidences) to ``[n, k]`` points ``z``."""
    x = jnp.asarray(x, jnp.float32)
    if geometry.kind == "raw":
        return x - geometry.mean
    if geometry.kind == "pca":
        return (x - geometry.mean) @ geometry.projection
    feats = _encoder_inputs(geometry, x, jnp.asarray(conf, jnp.float32))
    return geometry.encoder.apply({"params": geometry.encoder_params}, feats)


def _pca(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = x.mean(axis=0)
    _, s, vt = np.linalg.svd(x - mean, full_matrices=False)
    k = min(k, vt.shape[0])
    return mean, vt[:k].T, s[:k] ** 2 / max(x.shape[0] - 1, 1)


def _heldout_errors(z_ref, r_ref, z_val, r_val, log_bw, kernel) -> np.ndarray:
    """``[m]`` squared errors of predicting held-out residuals from the references."""
    est = nw_field(z_val, z_ref, r_ref, log_bw, kernel=kernel)
    return np.asarray((jnp.asarray(r_val) - est.value) ** 2)


def _choose(item_errors: dict) -> str:
    """Lowest mean held-out error, but raw space unless beaten by one paired SE.

    With coin-flip residuals the candidates' errors differ by little and the
    selection split is small, so a learned or PCA space must beat the raw
    space clearly (mean paired improvement above its standard error) to be
    used: the one-standard-error rule, in favour of the simplest geometry.
    """
    best = min(item_errors, key=lambda k: item_errors[k].mean())
    if best == "raw" or "raw" not in item_errors:
        return best
    diff = item_errors["raw"] - item_errors[best]
    se = diff.std(ddof=1) / np.sqrt(diff.size) if diff.size > 1 else np.inf
    return best if diff.mean() > se else "raw"


def fit_geometry(
    rng: PRNGKey,
    x: ArrayLike,
    conf: ArrayLike,
    residual: ArrayLike,
    *,
    candidates: tuple[str, ...] = GEOMETRIES,
    config: EncoderConfig = EncoderConfig(),
    use_conf: bool = True,
    split: tuple[float, float] = (0.7, 0.15),
    progress: bool = True,
) -> tuple[Geometry, dict]:
    """Fits candidate geometries and keeps the best by held-out smoother error.

    The items are split into *fit* (encoder weights, bandwidths), *stop*
    (the encoder's early stopping) and *select* (comparing candidates); the
    bandwidth of the chosen geometry is then re-selected by leave-one-out over
    all items, which become the smoother's references.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` inputs.
      conf: ``[n]`` confidences (an encoder input when ``use_conf``).
      residual: ``[n]`` residuals to smooth.
      candidates: any of ``"raw"``, ``"pca"``, ``"learned"``.
      config: encoder configuration; ``out_dim`` is also the PCA dimension.
      use_conf: feed ``logit(conf)`` to the encoder.
      split: fractions for *fit* and *stop*; the rest is *select*.
      progress: show the encoder's progress bar.

    Returns:
      ``(geometry, info)``; ``info["chosen"]`` is picked by :func:`_choose`;
      ``info["select_error"]`` maps each candidate to its
      held-out squared error, ``info["constant_error"]`` is the error of the
      fitting mean, and ``info["history"]`` is the encoder's training history.
    """
    unknown = set(candidates) - set(GEOMETRIES)
    if not candidates or unknown:
        raise ValueError(
            f"candidates: expected a non-empty subset of {GEOMETRIES}, got {candidates}."
        )
    x = np.asarray(x, np.float32)
    conf = np.asarray(conf, np.float32)
    residual = np.asarray(residual, np.float32)
    n = x.shape[0]
    perm_rng, enc_rng = jax.random.split(rng)
    perm = np.asarray(jax.random.permutation(perm_rng, n))
    n_fit, n_stop = int(split[0] * n), int(split[1] * n)
    fit, stop, sel = perm[:n_fit], perm[n_fit : n_fit + n_stop], perm[n_fit + n_stop :]
    ref = np.concatenate([fit, stop])
    mean, components, variances = _pca(x, max(config.out_dim, MAX_ENCODER_INPUTS))
    kernel = config.kernel
    geoms, errors, history = {}, {}, None
    for kind in candidates:
        if kind == "learned":
            m = min(MAX_ENCODER_INPUTS, components.shape[1])
            proj = components[:, :m]
            scale = np.sqrt(np.mean(variances[:m])) + 1e-12
            g = Geometry(
                jnp.asarray(mean),
                jnp.asarray(proj),
                jnp.asarray(scale, jnp.float32),
                None,
                jnp.zeros(()),
                kind=kind,
                encoder=Encoder(hidden=tuple(config.hidden), out_dim=config.out_dim),
                use_conf=use_conf,
            )
            feats = np.asarray(_encoder_inputs(g, jnp.asarray(x), jnp.asarray(conf)))
            state, history = fit_encoder(
                enc_rng,
                feats[fit],
                residual[fit],
                feats[stop],
                residual[stop],
                config,
                progress=progress,
            )
            g = g.replace(encoder_params=state.params["encoder"])
        elif kind == "pca":
            proj = components[:, : config.out_dim]
            g = Geometry(
                jnp.asarray(mean), jnp.asarray(proj), jnp.ones(()), None, jnp.zeros(()), kind=kind
            )
        else:
            g = Geometry(
                jnp.asarray(mean), jnp.zeros((0, 0)), jnp.ones(()), None, jnp.zeros(()), kind=kind
            )
        z = np.asarray(embed(g, x, conf))
        log_bw, _ = select_bandwidth(z[ref], residual[ref], kernel=kernel)
        errors[kind] = _heldout_errors(z[ref], residual[ref], z[sel], residual[sel], log_bw, kernel)
        geoms[kind] = g
    best = _choose(errors)
    z = embed(geoms[best], x, conf)
    log_bw, _ = select_bandwidth(z, residual, kernel=kernel)
    info = {
        "chosen": best,
        "select_error": {k: float(v.mean()) for k, v in errors.items()},
        "constant_error": float(np.mean((residual[sel] - residual[ref].mean()) ** 2)),
        "history": history,
    }
    return geoms[best].replace(log_bandwidth=log_bw, kernel=kernel), info
