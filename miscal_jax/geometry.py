"""Where the smoother measures distance: raw, PCA, or a learned space.

A :class:`Geometry` is a fitted pytree that maps inputs to the space ``z``
where the field is smoothed, plus the bandwidth chosen there.
:func:`fit_geometry` fits every candidate on part of the training items and
keeps the one with the lowest smoother error on a further held-out part, so
a learned metric that overfits the coin-flip residuals loses to the raw or
PCA space instead of being used.

Everything is traceable: the candidates' outputs share one width ``z_dim``
(zero-padded, which changes no distance), the choice is an integer array and
:func:`embed` selects with it, and every split is a mask. So a geometry can be
fitted under ``jit``, for every fold at once, and for many models with ``vmap``.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from miscal_jax._types import Array, PRNGKey
from miscal_jax.baselines import logit
from miscal_jax.representation import Encoder, EncoderConfig, fit_encoder
from miscal_jax.smoother import nw_field, select_bandwidth

__all__ = ["GEOMETRIES", "Geometry", "embed", "fit_geometry", "weighted_pca"]

GEOMETRIES = ("raw", "pca", "learned")
#: Encoder inputs are the top principal components, at most this many.
MAX_ENCODER_INPUTS = 64


@struct.dataclass
class Geometry:
    """A fitted map ``x -> z`` and the smoothing bandwidth in ``z``.

    Attributes:
      mean: ``[d]`` centre of the inputs.
      projection: ``[d, m]`` top principal directions (the PCA space is the
        first ``pca_dim`` of them; the encoder reads all ``m``).
      input_scale: scalar dividing the projected inputs of the encoder.
      encoder_params: flax parameters (``None`` unless ``"learned"`` is a candidate).
      choice: integer index of the chosen candidate.
      log_bandwidth: scalar log-bandwidth in ``z``.
      candidates: the candidate names (static).
      pca_dim: dimension of the PCA space (static).
      z_dim: width of ``z`` (static): the widest candidate; others are zero-padded.
      encoder: the flax module (static, ``None`` unless learned is a candidate).
      use_conf: whether ``logit(conf)`` is an encoder input (static).
      kernel: smoothing kernel the bandwidth was chosen for (static).
    """

    mean: Array
    projection: Array
    input_scale: Array
    encoder_params: Any
    choice: Array
    log_bandwidth: Array
    candidates: tuple[str, ...] = struct.field(pytree_node=False, default=("raw",))
    pca_dim: int = struct.field(pytree_node=False, default=16)
    z_dim: int = struct.field(pytree_node=False, default=0)
    encoder: nn.Module | None = struct.field(pytree_node=False, default=None)
    use_conf: bool = struct.field(pytree_node=False, default=False)
    kernel: str = struct.field(pytree_node=False, default="gaussian")

    @property
    def kind(self) -> str:
        """Name of the chosen candidate (needs a concrete, unbatched ``choice``)."""
        return self.candidates[int(self.choice)]


def _encoder_inputs(geometry: Geometry, x: Array, conf: Array) -> Array:
    feats = (x - geometry.mean) @ geometry.projection / geometry.input_scale
    if geometry.use_conf:
        feats = jnp.concatenate([feats, 0.5 * logit(conf)[:, None]], axis=1)
    return feats


def _candidate(geometry: Geometry, kind: str, x: Array, conf: Array) -> Array:
    """``[n, z_dim]`` points of one candidate space."""
    if kind == "raw":
        z = x - geometry.mean
    elif kind == "pca":
        z = (x - geometry.mean) @ geometry.projection[:, : geometry.pca_dim]
    else:
        feats = _encoder_inputs(geometry, x, conf)
        z = geometry.encoder.apply({"params": geometry.encoder_params}, feats)
    return jnp.pad(z, [(0, 0), (0, geometry.z_dim - z.shape[1])])


def embed(geometry: Geometry, x: ArrayLike, conf: ArrayLike) -> Array:
    """Maps ``[n, d]`` inputs (and ``[n]`` confidences) to ``[n, z_dim]`` points ``z``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = Geometry(jnp.ones(2), jnp.eye(2), jnp.ones(()), None, jnp.zeros((), int),
      ...              jnp.zeros(()), z_dim=2)
      >>> embed(g, jnp.array([[1.0, 3.0]]), jnp.array([0.5]))
      Array([[0., 2.]], dtype=float32)
    """
    x = jnp.asarray(x, jnp.float32)
    conf = jnp.asarray(conf, jnp.float32)
    spaces = [_candidate(geometry, kind, x, conf) for kind in geometry.candidates]
    if len(spaces) == 1:
        return spaces[0]
    return jnp.take(jnp.stack(spaces), geometry.choice, axis=0)


def weighted_pca(x: ArrayLike, weight: ArrayLike, k: int) -> tuple[Array, Array, Array]:
    """Mean, top-``k`` principal directions and their variances of weighted rows.

    Args:
      x: ``[n, d]`` rows.
      weight: ``[n]`` non-negative weights (a 0/1 mask selects rows).
      k: static number of directions (at most ``d``).

    Returns:
      ``(mean [d], directions [d, k], variances [k])``, largest variance first.

    Examples:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[0.0, 0.0], [2.0, 0.0], [4.0, 0.1]])
      >>> mean, dirs, var = weighted_pca(x, jnp.ones(3), 1)
      >>> round(abs(float(dirs[0, 0])), 3)
      1.0
    """
    x = jnp.asarray(x, jnp.float32)
    weight = jnp.asarray(weight, jnp.float32)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    mean = weight @ x / total
    centred = x - mean
    cov = (centred * weight[:, None]).T @ centred / jnp.maximum(total - 1.0, 1.0)
    variances, vectors = jnp.linalg.eigh(cov)
    k = min(k, x.shape[1])
    return mean, vectors[:, ::-1][:, :k], jnp.maximum(variances[::-1][:k], 0.0)


def _split(rng, train_mask, split):
    """Random ``fit``, ``stop`` and ``select`` masks partitioning the training rows."""
    n = train_mask.shape[0]
    u = jnp.where(train_mask, jax.random.uniform(rng, (n,)), 2.0)
    rank = jnp.argsort(jnp.argsort(u))  # 0 for the smallest u
    m = jnp.sum(train_mask)
    n_fit = jnp.floor(split[0] * m).astype(jnp.int32)
    n_stop = jnp.floor(split[1] * m).astype(jnp.int32)
    fit = rank < n_fit
    stop = (rank >= n_fit) & (rank < n_fit + n_stop)
    select = train_mask & (rank >= n_fit + n_stop)
    return fit, stop, select


def _choose(errors: Array, select: Array, candidates: tuple[str, ...]) -> Array:
    """Lowest mean held-out error, but raw space unless beaten by one paired SE.

    With coin-flip residuals the candidates' errors differ by little and the
    selection split is small, so a learned or PCA space must beat the raw
    space clearly (mean paired improvement above its standard error) to be
    used: the one-standard-error rule, in favour of the simplest geometry.

    Args:
      errors: ``[c, n]`` squared errors per candidate and item.
      select: ``[n]`` mask of the items that count.
      candidates: the candidate names.
    """
    m = jnp.maximum(jnp.sum(select), 1)
    means = jnp.sum(errors * select, axis=1) / m
    best = jnp.argmin(means)
    if "raw" not in candidates:
        return best
    raw = candidates.index("raw")
    diff = (errors[raw] - errors[best]) * select
    mean = jnp.sum(diff) / m
    var = jnp.sum(select * (errors[raw] - errors[best] - mean) ** 2) / jnp.maximum(m - 1, 1)
    se = jnp.sqrt(var / m)
    return jnp.where(mean > se, best, raw)


def fit_geometry(
    rng: PRNGKey,
    x: ArrayLike,
    conf: ArrayLike,
    residual: ArrayLike,
    train_mask: ArrayLike | None = None,
    *,
    candidates: tuple[str, ...] = GEOMETRIES,
    config: EncoderConfig = EncoderConfig(),
    use_conf: bool = True,
    split: tuple[float, float] = (0.7, 0.15),
) -> tuple[Geometry, dict]:
    """Fits candidate geometries and keeps the best by held-out smoother error.

    The training rows are split into *fit* (encoder weights, bandwidths),
    *stop* (the encoder's early stopping) and *select* (comparing
    candidates); the bandwidth of the chosen geometry is then re-selected by
    leave-one-out over all training rows, which become the smoother's
    references. Pure and traceable: ``jit`` with the keyword arguments static.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` inputs.
      conf: ``[n]`` confidences (an encoder input when ``use_conf``).
      residual: ``[n]`` residuals to smooth.
      train_mask: optional ``[n]`` bools: the rows to fit on (default all).
      candidates: any of ``"raw"``, ``"pca"``, ``"learned"``.
      config: encoder configuration; ``out_dim`` is also the PCA dimension.
      use_conf: feed ``logit(conf)`` to the encoder.
      split: fractions of the training rows for *fit* and *stop*; the rest is *select*.

    Returns:
      ``(geometry, info)``; ``info["select_error"]`` is ``[c]`` held-out
      squared errors per candidate, ``info["constant_error"]`` the error of
      the fitting mean, ``info["encoder"]`` the encoder's history (when learned).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (200, 3))
      >>> g, info = fit_geometry(jax.random.key(1), x, jnp.full(200, 0.7),
      ...                        0.3 * jnp.sign(x[:, 0]), candidates=("raw", "pca"))
      >>> g.kind in ("raw", "pca"), info["select_error"].shape
      (True, (2,))
    """
    candidates = tuple(candidates)
    unknown = set(candidates) - set(GEOMETRIES)
    if not candidates or unknown or len(set(candidates)) != len(candidates):
        raise ValueError(
            f"candidates: expected a non-empty subset of {GEOMETRIES}, got {candidates}."
        )
    x = jnp.asarray(x, jnp.float32)
    conf = jnp.asarray(conf, jnp.float32)
    residual = jnp.asarray(residual, jnp.float32)
    n, d = x.shape
    train = jnp.ones(n, bool) if train_mask is None else jnp.asarray(train_mask, bool)
    split_rng, enc_rng = jax.random.split(rng)
    fit, stop, select = _split(split_rng, train, split)
    pca_dim = min(config.out_dim, d)
    m = min(d, max(config.out_dim, MAX_ENCODER_INPUTS))
    mean, directions, variances = weighted_pca(x, train, m)
    learned = "learned" in candidates
    geometry = Geometry(
        mean,
        directions,
        jnp.sqrt(jnp.mean(variances)) + 1e-12,
        None,
        jnp.zeros((), jnp.int32),
        jnp.zeros(()),
        candidates=candidates,
        pca_dim=pca_dim,
        z_dim=max(d, config.out_dim) if learned or "raw" in candidates else pca_dim,
        encoder=Encoder(hidden=tuple(config.hidden), out_dim=config.out_dim) if learned else None,
        use_conf=use_conf,
        kernel=config.kernel,
    )
    info = {}
    if learned:
        feats = _encoder_inputs(geometry, x, conf)
        state, info["encoder"] = fit_encoder(enc_rng, feats, residual, fit, stop, config)
        geometry = geometry.replace(encoder_params=state.params["encoder"])
    kernel = config.kernel
    refs = fit | stop
    errors = []
    for k in range(len(candidates)):
        z = embed(geometry.replace(choice=jnp.asarray(k, jnp.int32)), x, conf)
        log_bw, _ = select_bandwidth(z, residual, ref_mask=refs, kernel=kernel)
        est = nw_field(z, z, residual, log_bw, ref_mask=refs, kernel=kernel)
        errors.append((residual - est.value) ** 2)
    errors = jnp.stack(errors)
    choice = _choose(errors, select, candidates).astype(jnp.int32)
    geometry = geometry.replace(choice=choice)
    z = embed(geometry, x, conf)
    log_bw, _ = select_bandwidth(z, residual, ref_mask=train, kernel=kernel)
    m_sel = jnp.maximum(jnp.sum(select), 1)
    info["select_error"] = jnp.sum(errors * select, axis=1) / m_sel
    ref_mean = jnp.sum(refs * residual) / jnp.maximum(jnp.sum(refs), 1)
    info["constant_error"] = jnp.sum(select * (residual - ref_mean) ** 2) / m_sel
    return geometry.replace(log_bandwidth=log_bw), info
