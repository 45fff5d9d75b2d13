"""Where the smoother measures distance: raw, standardised, PCA, or a learned space.

A :class:`Geometry` is a fitted pytree that maps inputs to the space ``z``
where the field is smoothed, plus the bandwidth chosen there.
:func:`fit_geometry` fits every candidate and keeps the one with the lowest
cross-validated smoother error:

- ``"raw"``: the inputs, centred.
- ``"std"``: each column divided by its standard deviation, so a few
  high-variance nuisance columns cannot dominate the distance.
- ``"pca"``: the top principal components.
- ``"linear"``: a linear metric on the standardised columns ``u`` (on
  the top :data:`MAX_METRIC_INPUTS` principal components of wider inputs)
  (:class:`~miscal_jax.geometry.LinearMetric`): per-column weights beside a
  rank-``r`` part ``u @ W`` (``r`` at most :data:`MAX_RANK`) that can follow
  a rotated subspace no column weight can. ``W`` starts at the principal or
  the residual-gradient directions, family and rank chosen by held-out
  error (:func:`~miscal_jax.geometry.directions.initial_metric`); both parts
  are trained on the leave-one-out smoother loss (metric learning for
  kernel regression).
- ``"learned"``: the MLP :class:`~miscal_jax.geometry.Encoder` on the
  top principal components (and the confidence), trained the same way; not
  among :data:`DEFAULT_CANDIDATES`.

Selection is by leave-one-out error at each candidate's own best bandwidth
(all bandwidths of the grid in one distance pass). The fixed spaces are
compared over all training items; a trained space is compared on the
training items outside its fit part (its weights never saw them; the
*stop* part among them chose its early-stopping checkpoint and, for the
linear metric, its starting directions and rank), against the
best fixed space, and must beat it by one paired standard error, so a
learned metric that overfits the coin-flip residuals is not used.

Everything is traceable: the candidates' outputs share one width ``z_dim``
(zero-padded, which changes no distance), the choice is an integer array and
:func:`embed` selects with it, and every split is a mask. So a geometry can be
fitted under ``jit``, for every fold at once, and for many models with
``vmap``; under ``vmap`` over models sharing the inputs, the fixed spaces'
distance passes are shared too (only the residual columns are batched).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import struct
from jax.typing import ArrayLike

from miscal_jax._src.dtypes import as_float
from miscal_jax._src.fitting import gather_rows, masked_mean
from miscal_jax._types import Array, FieldEstimate, PRNGKey
from miscal_jax.calibrators.global_maps import logit
from miscal_jax.geometry.directions import initial_metric
from miscal_jax.geometry.encoder import Encoder, EncoderConfig, LinearMetric, fit_encoder
from miscal_jax.smoothing.nadaraya_watson import bandwidth_grid, loo_field

__all__ = [
    "DEFAULT_CANDIDATES",
    "GEOMETRIES",
    "TRAINED",
    "Geometry",
    "embed",
    "embed_folds",
    "fit_geometry",
    "weighted_pca",
]

GEOMETRIES = ("raw", "std", "pca", "linear", "learned")
#: The candidates :func:`~miscal_jax.model.fit` and the CLI choose from by default. The MLP
#: (``"learned"``) is opt-in: it scored the lowest field correlation of the trained spaces
#: in every planted case of ``benchmarks/geometry_nuisance.py``, and without it the shipped
#: report's held-out Brier and regional error were lower (0.1703 and 0.0177 against 0.1722
#: and 0.0184, 2026-12-07).
DEFAULT_CANDIDATES = ("raw", "std", "pca", "linear")
#: Candidates whose weights are fitted to the residuals.
TRAINED = ("linear", "learned")
#: Encoder inputs are the top principal components, at most this many.
MAX_ENCODER_INPUTS = 64
#: Largest rank of the ``"linear"`` metric's rotated part.
MAX_RANK = 8
#: Wider inputs reach the ``"linear"`` metric as this many top principal components.
MAX_METRIC_INPUTS = 384
#: Relative floor on a column's standard deviation in the ``"std"`` space.
STD_FLOOR = 1e-3


@struct.dataclass
class Geometry:
    """A fitted map ``x -> z`` and the smoothing bandwidth in ``z``.

    Attributes:
      mean: ``[d]`` centre of the inputs.
      std: ``[d]`` column standard deviations (floored).
      projection: ``[d, m]`` top principal directions (the PCA space is the
        first ``pca_dim`` of them; the MLP reads all ``m``).
      input_scale: scalar dividing the projected inputs of the MLP.
      metric_inputs: ``[d, r]`` map from centred inputs to the linear
        metric's inputs: ``diag(1 / std)`` (the standardised columns), or for
        ``d >`` :data:`MAX_METRIC_INPUTS` the top ``r`` principal directions
        over their common scale.
      params: tuple aligned with ``candidates``: flax parameters of the
        trained candidates, ``None`` for the fixed ones.
      choice: integer index of the chosen candidate.
      log_bandwidth: scalar log-bandwidth in ``z``.
      candidates: the candidate names (static).
      pca_dim: dimension of the PCA space (static).
      z_dim: width of ``z`` (static): the widest candidate; others are zero-padded.
      modules: tuple aligned with ``candidates``: flax modules (static).
      use_conf: whether ``logit(conf)`` is an input of the MLP (static).
      kernel: smoothing kernel the bandwidth was chosen for (static).
    """

    mean: Array
    std: Array
    projection: Array
    input_scale: Array
    metric_inputs: Array
    params: tuple
    choice: Array
    log_bandwidth: Array
    candidates: tuple[str, ...] = struct.field(pytree_node=False, default=("raw",))
    pca_dim: int = struct.field(pytree_node=False, default=16)
    z_dim: int = struct.field(pytree_node=False, default=0)
    modules: tuple[nn.Module | None, ...] = struct.field(pytree_node=False, default=(None,))
    use_conf: bool = struct.field(pytree_node=False, default=False)
    kernel: str = struct.field(pytree_node=False, default="gaussian")

    @property
    def kind(self) -> str:
        """Name of the chosen candidate (needs a concrete, unbatched ``choice``)."""
        return self.candidates[int(self.choice)]


def _mlp_inputs(geometry: Geometry, x: Array, conf: Array) -> Array:
    feats = (x - geometry.mean) @ geometry.projection / geometry.input_scale
    if geometry.use_conf:
        feats = jnp.concatenate([feats, 0.5 * logit(conf)[:, None]], axis=1)
    return feats


def _inputs(geometry: Geometry, kind: str, x: Array, conf: Array) -> Array:
    """``[n, .]`` inputs of a trained candidate's module."""
    if kind == "linear":
        return (x - geometry.mean) @ geometry.metric_inputs
    return _mlp_inputs(geometry, x, conf)


def _candidate(geometry: Geometry, k: int, x: Array, conf: Array) -> Array:
    """``[n, z_dim]`` points of candidate ``k``."""
    kind = geometry.candidates[k]
    if kind == "raw":
        z = x - geometry.mean
    elif kind == "std":
        z = (x - geometry.mean) / geometry.std
    elif kind == "pca":
        z = (x - geometry.mean) @ geometry.projection[:, : geometry.pca_dim]
    else:
        feats = _inputs(geometry, kind, x, conf)
        z = geometry.modules[k].apply({"params": geometry.params[k]}, feats)
    return jnp.pad(z, [(0, 0), (0, geometry.z_dim - z.shape[1])])


def embed(geometry: Geometry, x: ArrayLike, conf: ArrayLike) -> Array:
    """Maps ``[n, d]`` inputs (and ``[n]`` confidences) to ``[n, z_dim]`` points ``z``.

    Examples:
      >>> import jax.numpy as jnp
      >>> g = Geometry(jnp.ones(2), jnp.ones(2), jnp.eye(2), jnp.ones(()), jnp.eye(2),
      ...              (None,), jnp.zeros((), int), jnp.zeros(()), z_dim=2)
      >>> embed(g, jnp.array([[1.0, 3.0]]), jnp.array([0.5]))
      Array([[0., 2.]], dtype=float32)
    """
    x = as_float(x)
    conf = as_float(conf)
    if len(geometry.candidates) == 1:
        return _candidate(geometry, 0, x, conf)
    # only the chosen space is computed (a conditional, not all candidates stacked);
    # under vmap over a batched choice JAX turns it into a select of every branch
    branches = [functools.partial(_candidate, geometry, k) for k in range(len(geometry.candidates))]
    return jax.lax.switch(geometry.choice, branches, x, conf)


def embed_folds(geometry: Geometry, x: ArrayLike, conf: ArrayLike) -> Array:
    """Maps the items into every fold's space: ``geometry`` stacked on a leading ``[K]`` axis.

    Returns:
      ``[K, n, z_dim]`` points, ``embed`` of each fold's geometry.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> g = Geometry(jnp.ones(2), jnp.ones(2), jnp.eye(2), jnp.ones(()), jnp.eye(2),
      ...              (None,), jnp.zeros((), int), jnp.zeros(()), z_dim=2)
      >>> folds = jax.tree.map(lambda a: jnp.stack([a, a + 1]), g)
      >>> embed_folds(folds, jnp.array([[1.0, 3.0]]), jnp.array([0.5]))[:, 0]
      Array([[ 0.,  2.],
             [-1.,  1.]], dtype=float32)
    """
    return jax.lax.map(lambda g: embed(g, x, conf), geometry)  # one space per fold at a time


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
    x = as_float(x)
    weight = as_float(weight)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    mean = weight @ x / total
    centred = x - mean
    cov = (centred * weight[:, None]).T @ centred / jnp.maximum(total - 1.0, 1.0)
    variances, vectors = jnp.linalg.eigh(cov)
    k = min(k, x.shape[1])
    return mean, vectors[:, ::-1][:, :k], jnp.maximum(variances[::-1][:k], 0.0)


def _split(rng, train_mask, split):
    """Random ``fit`` and ``stop`` masks inside the training rows; the rest is held out."""
    n = train_mask.shape[0]
    u = jnp.where(train_mask, jax.random.uniform(rng, (n,)), 2.0)
    rank = jnp.argsort(jnp.argsort(u))  # 0 for the smallest u
    m = jnp.sum(train_mask)
    n_fit = jnp.floor(split[0] * m).astype(jnp.int32)
    n_stop = jnp.floor(split[1] * m).astype(jnp.int32)
    fit = rank < n_fit
    stop = (rank >= n_fit) & (rank < n_fit + n_stop)
    return fit, stop


def _beats(errors: Array, challenger: Array, incumbent: Array, mask: Array) -> Array:
    """Whether ``challenger``'s mean error over ``mask`` is lower than ``incumbent``'s
    by more than one paired standard error (the one-standard-error rule).

    Args:
      errors: ``[c, n]`` squared errors per candidate and item.
      challenger, incumbent: integer candidate indices.
      mask: ``[n]`` items that count.
    """
    m = jnp.maximum(jnp.sum(mask), 1)
    diff = errors[incumbent] - errors[challenger]
    mean = jnp.sum(diff * mask) / m
    var = jnp.sum(mask * (diff - mean) ** 2) / jnp.maximum(m - 1, 1)
    return mean > jnp.sqrt(var / m)


def _choose(errors: Array, train: Array, held: Array, candidates: tuple[str, ...]) -> Array:
    """Index of the chosen candidate.

    Among the fixed spaces the lowest mean error over ``train`` wins if it
    beats the first fixed candidate in ``candidates`` (raw space in
    :data:`GEOMETRIES` order) by one paired SE; then the best trained space,
    compared over ``held`` (items its weights never saw), replaces it only if
    it beats it there by one paired SE.

    Args:
      errors: ``[c, n]`` leave-one-out squared errors per candidate and item.
      train: ``[n]`` all training items.
      held: ``[n]`` training items outside the trained candidates' fit part.
      candidates: the candidate names.
    """
    fixed = [k for k, kind in enumerate(candidates) if kind not in TRAINED]
    trained = [k for k, kind in enumerate(candidates) if kind in TRAINED]
    choice = jnp.asarray(fixed[0] if fixed else trained[0], jnp.int32)
    if len(fixed) > 1:
        idx = jnp.asarray(fixed)
        best = idx[jnp.argmin(masked_mean(errors[idx], train))]
        choice = jnp.where(_beats(errors, best, choice, train), best, choice)
    if trained and fixed:
        idx = jnp.asarray(trained)
        best = idx[jnp.argmin(masked_mean(errors[idx], held))]
        choice = jnp.where(_beats(errors, best, choice, held), best, choice)
    elif len(trained) > 1:
        idx = jnp.asarray(trained)
        choice = idx[jnp.argmin(masked_mean(errors[idx], held))]
    return choice.astype(jnp.int32)


def _take(tree, k):
    return jax.tree.map(lambda a: jnp.take(a, k, axis=0), tree)


def _modules(candidates, config: EncoderConfig, r: int) -> tuple:
    mlp = Encoder(hidden=tuple(config.hidden), out_dim=config.out_dim)
    named = {"linear": LinearMetric(rank=min(MAX_RANK, r)), "learned": mlp}
    return tuple(named.get(kind) for kind in candidates)


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
    train_size: int | None = None,
) -> tuple[Geometry, FieldEstimate, dict]:
    """Fits candidate geometries and keeps the best by cross-validated smoother error.

    Every candidate gets its leave-one-out (LOO) estimates over the training
    rows at every bandwidth of a grid in one distance pass; its bandwidth
    minimises the LOO error (over the rows its weights never saw, for a
    trained candidate). Trained candidates fit their weights on a *fit* part
    of the training rows (``split[0]``) and stop early on a *stop* part
    (``split[1]``); see the module docstring for the choice. Pure and
    traceable: ``jit`` with the keyword arguments static.

    Args:
      rng: PRNG key.
      x: ``[n, d]`` inputs.
      conf: ``[n]`` confidences (an MLP input when ``use_conf``).
      residual: ``[n]`` residuals to smooth.
      train_mask: optional ``[n]`` bools: the rows to fit on (default all);
        they are the smoother's references.
      candidates: any of :data:`GEOMETRIES`.
      config: training configuration of the trained candidates; ``out_dim``
        is also the PCA dimension.
      use_conf: feed ``logit(conf)`` to the MLP.
      split: fractions of the training rows for *fit* and *stop*.
      train_size: static; at least the number of training rows. The
        training rows are then gathered (padded to this size) and smoothed
        against each other alone, instead of smoothing all ``n`` rows
        against the masked ``n``: at K = 5 folds about a third fewer pairs.
        ``None``: all rows, masked.

    Returns:
      ``(geometry, loo, info)``. ``loo`` is the chosen space's
      :class:`~miscal_jax.FieldEstimate` at its bandwidth, ``[n]`` arrays:
      leave-one-out at training rows; at the others the ordinary estimate
      (``train_size=None``) or zero (not computed).
      ``info["select_error"]`` is ``[c]``: each candidate's mean LOO error
      over the rows it is judged on; ``info["held_error"]`` ``[c]`` the same
      over the rows no trained candidate saw; ``info["constant_error"]`` the
      error of the training mean there; ``info["honest"]`` ``[n]`` bools, the
      training rows whose ``loo`` value never saw their own outcome, not
      even through the chosen space's weights (all training rows for a fixed
      space, those outside its fit part for a trained one);
      ``info["encoder"]`` the training histories (a tuple aligned with the
      trained candidates; the linear metric's also holds ``"rank"``, the
      rank of its rotated part).

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> x = jax.random.normal(jax.random.key(0), (200, 3))
      >>> g, loo, info = fit_geometry(jax.random.key(1), x, jnp.full(200, 0.7),
      ...                             0.3 * jnp.sign(x[:, 0]), candidates=("raw", "pca"))
      >>> g.kind in ("raw", "pca"), info["select_error"].shape, loo.value.shape
      (True, (2,), (200,))
    """
    candidates = tuple(candidates)
    unknown = set(candidates) - set(GEOMETRIES)
    if not candidates or unknown or len(set(candidates)) != len(candidates):
        raise ValueError(
            f"candidates: expected a non-empty subset of {GEOMETRIES}, got {candidates}."
        )
    x = as_float(x)
    conf = as_float(conf)
    residual = as_float(residual)
    n, d = x.shape
    train = jnp.ones(n, bool) if train_mask is None else jnp.asarray(train_mask, bool)
    trained = [k for k, kind in enumerate(candidates) if kind in TRAINED]
    split_rng, enc_rng = jax.random.split(rng)
    fit, stop = _split(split_rng, train, split)
    # _split's bound on the stop rows (+1: it rounds in float32)
    stop_size = int(split[1] * (n if train_size is None else train_size)) + 1
    held = train & ~fit if trained else train
    pca_dim = min(config.out_dim, d)
    m = min(d, max(config.out_dim, MAX_ENCODER_INPUTS))
    r = min(d, MAX_METRIC_INPUTS)
    wide = d > MAX_METRIC_INPUTS
    # one eigendecomposition serves the MLP's m components and a wide metric's r
    mean, top, top_var = weighted_pca(x, train, max(m, r) if wide else m)
    directions, variances = top[:, :m], top_var[:m]
    var = masked_mean(((x - mean) ** 2).T, train)
    std = jnp.sqrt(jnp.maximum(var, STD_FLOOR**2 * jnp.max(var)) + 1e-30)
    input_scale = jnp.sqrt(jnp.mean(variances)) + 1e-12
    if wide:  # every column costs O(batch^2) per training step: the top components only
        metric_inputs = top[:, :r] / (jnp.sqrt(jnp.mean(top_var[:r])) + 1e-12)
    else:
        metric_inputs = jnp.diag(1.0 / std)
    widths = {"raw": d, "std": d, "pca": pca_dim, "linear": r + min(MAX_RANK, r)}
    geometry = Geometry(
        mean,
        std,
        directions,
        input_scale,
        metric_inputs,
        tuple(None for _ in candidates),
        jnp.zeros((), jnp.int32),
        jnp.zeros(()),
        candidates=candidates,
        pca_dim=pca_dim,
        z_dim=max(widths.get(kind, config.out_dim) for kind in candidates),
        modules=_modules(candidates, config, r),
        use_conf=use_conf,
        kernel=config.kernel,
    )
    params, histories = list(geometry.params), []
    for k, key in zip(trained, jax.random.split(enc_rng, max(len(trained), 1)), strict=False):
        feats = _inputs(geometry, candidates[k], x, conf)
        cfg, start = config, None
        if candidates[k] == "linear":
            principal = weighted_pca(feats, fit, min(MAX_RANK, r))[1]
            matrix, rank = initial_metric(
                feats, residual, fit, stop, principal, kernel=config.kernel, stop_size=stop_size
            )
            start = {"log_w": jnp.zeros(r), "directions": jnp.sqrt(r) * matrix}
            cfg = config.replace(
                learning_rate=config.linear_learning_rate, batch_size=config.linear_batch_size
            )
        state, history = fit_encoder(
            key, feats, residual, fit, stop, cfg, geometry.modules[k], start, val_size=stop_size
        )
        if candidates[k] == "linear":
            history = dict(history, rank=rank)
        params[k] = state.params["encoder"]
        histories.append(history)
    geometry = geometry.replace(params=tuple(params))

    # every row a query (train_size None), or the training rows alone, gathered
    take, gathered = gather_rows(train, train_size)
    rows = take if train_size is None else jnp.where(gathered, take, n)  # n: dropped below
    ok, held_rows, r_rows = train[take] & gathered, held[take] & gathered, residual[take]
    errors, estimates, bandwidths = [], [], []
    for k, kind in enumerate(candidates):
        z = _candidate(geometry, k, x, conf)
        grid = bandwidth_grid(z, ref_mask=train)  # the same grid as the masked smoother's
        z = z[take]
        est = loo_field(z, r_rows, grid, ref_mask=ok, kernel=config.kernel)  # [g, rows]
        judged = held_rows if kind in TRAINED else ok
        best = jnp.argmin(masked_mean((r_rows - est.value) ** 2, judged))
        estimates.append(_take(est, best))
        bandwidths.append(grid[best])
        errors.append((r_rows - estimates[-1].value) ** 2)
    errors = jnp.stack(errors)
    choice = _choose(errors, ok, held_rows, candidates)
    loo = _take(jax.tree.map(lambda *a: jnp.stack(a), *estimates), choice)
    loo = jax.tree.map(lambda a: jnp.zeros(n, a.dtype).at[rows].set(a, mode="drop"), loo)
    geometry = geometry.replace(choice=choice, log_bandwidth=jnp.stack(bandwidths)[choice])
    judged = jnp.stack([held_rows if kind in TRAINED else ok for kind in candidates])
    info = {
        "select_error": jnp.sum(errors * judged, 1) / jnp.maximum(jnp.sum(judged, 1), 1),
        "held_error": masked_mean(errors, held_rows),
        "constant_error": masked_mean((r_rows - masked_mean(r_rows, ok)) ** 2, held_rows),
        "honest": jnp.stack([held if kind in TRAINED else train for kind in candidates])[choice],
    }
    if histories:
        info["encoder"] = tuple(histories)
    return geometry, loo, info
