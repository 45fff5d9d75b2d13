"""Item-bootstrap intervals of held-out metrics, at any n in bounded memory.

A resample is a multiset of the items, written as multiplicity counts
``[b, n]`` (how often each item was drawn). Every metric of the report is a
function of count-weighted sums over fixed bins (confidence bins for ECE,
equal-mass bins, groups for the regional error, distinct confidences for
AUROC), and such sums for a block of resamples are one sparse-dense product
``indicator.T @ counts.T``: a streaming pass over the items instead of
``b n`` random gathers. Resamples are drawn in blocks of at most
:data:`RESAMPLE_ELEMENTS` counts, so memory stays bounded at ``10^6`` items.
"""

import numpy as np
from scipy import sparse

__all__ = [
    "LEVEL",
    "METHODS",
    "RESAMPLE_ELEMENTS",
    "bin_sums",
    "bootstrap_metrics",
    "indicator",
    "resampled_counts",
]

#: Coverage of the bootstrap intervals and bands.
LEVEL = 0.9

#: Methods resampled by default.
METHODS = ("uncorrected", "temperature", "platt", "isotonic", "histogram", "local")
#: Largest block of resampled counts held at once (resamples x items).
RESAMPLE_ELEMENTS = 1 << 22


def resampled_counts(rng: np.random.Generator, n: int, num_samples: int):
    """Yields ``[n, b]`` multiplicity counts of ``num_samples`` resamples of ``n`` items, in blocks.

    Each block holds at most :data:`RESAMPLE_ELEMENTS` counts (at least one resample).
    """
    block = max(1, RESAMPLE_ELEMENTS // max(n, 1))
    for start in range(0, num_samples, block):
        b = min(block, num_samples - start)
        idx = rng.integers(0, n, size=(b, n)) + n * np.arange(b)[:, None]
        counts = np.bincount(idx.ravel(), minlength=b * n).reshape(b, n)
        yield np.ascontiguousarray(counts.T, float)


def indicator(index: np.ndarray, weights: np.ndarray, num: int) -> sparse.csc_matrix:
    """``[num, n]`` sparse: column ``i`` holds ``weights[i]`` in row ``index[i]``."""
    n = index.size
    return sparse.csc_matrix((weights, (index, np.arange(n))), shape=(num, n))


def bin_sums(bins: sparse.csc_matrix, counts_t: np.ndarray) -> np.ndarray:
    """``[b, num]`` count-weighted sums per bin.

    ``bins`` is an :func:`indicator`; ``counts_t`` ``[n, b]`` from :func:`resampled_counts`.
    """
    return np.asarray(bins @ counts_t).T


def _auroc(pos: np.ndarray, total: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUROC from ``[b, u]`` positive and total counts per distinct confidence."""
    neg = total - pos
    below = np.cumsum(neg, axis=1) - neg
    n_pos, n_neg = pos.sum(1), neg.sum(1)
    ok = (n_pos > 0) & (n_neg > 0)
    stat = (pos * (below + 0.5 * neg)).sum(1)
    return np.where(ok, stat / np.where(ok, n_pos * n_neg, 1.0), 0.5)


class _Method:
    """One method's sparse bin indicators, built once for every resample."""

    def __init__(self, p: np.ndarray, y: np.ndarray, g: np.ndarray | None):
        n, r = y.size, y - p
        ranks = np.argsort(np.argsort(p, kind="stable"), kind="stable")
        pc = np.clip(p, 1e-4, 1 - 1e-4)
        ece_bin = np.clip(np.floor(p * 15).astype(np.int64), 0, 14)
        self.ece = indicator(ece_bin, r, 15)
        self.ece_mass = indicator(ranks * 15 // n, r, 15)
        self.sq = (p - y) ** 2
        self.nll = -(y * np.log(pc) + (1 - y) * np.log1p(-pc))
        _, inv = np.unique(p, return_inverse=True)
        u = int(inv.max()) + 1
        self.pos, self.all = indicator(inv, y, u), indicator(inv, np.ones(n), u)
        self.groups = None
        if g is not None:
            keep, real = g >= 0, int(g.max()) + 1
            index = np.where(keep, g, real)  # ignored ids: one padding row, dropped
            self.groups = (
                indicator(index, np.where(keep, r, 0.0), real + 1),
                indicator(index, np.ones(n), real + 1),
                real,
            )

    def metrics(self, counts_t: np.ndarray, size: np.ndarray) -> dict:
        """``[b]`` metric values on the resamples (``counts_t`` ``[n, b]``, ``size`` ``[b]``)."""
        out = {
            "ece": np.abs(bin_sums(self.ece, counts_t)).sum(1) / size,
            "ece_mass": np.abs(bin_sums(self.ece_mass, counts_t)).sum(1) / size,
            "brier": self.sq @ counts_t / size,
            "nll": self.nll @ counts_t / size,
            "auroc": _auroc(bin_sums(self.pos, counts_t), bin_sums(self.all, counts_t)),
        }
        if self.groups is not None:
            resid, ones, real = self.groups
            sums, sizes = bin_sums(resid, counts_t)[:, :real], bin_sums(ones, counts_t)[:, :real]
            present = sizes > 0
            gap = np.abs(sums) / np.where(present, sizes, 1)
            out["regional_error"] = np.where(present, gap, 0).sum(1) / np.maximum(present.sum(1), 1)
        return out


def bootstrap_metrics(
    predictions: dict,
    correct,
    groups=None,
    *,
    num_samples: int = 300,
    level: float = LEVEL,
    seed: int = 0,
    methods=METHODS,
) -> dict:
    """Item-bootstrap percentile intervals of held-out metrics, and paired differences.

    Same definitions as :mod:`miscal_jax.metrics.calibration` (15 equal-width bins for
    ECE; equal-mass bins fixed on the full sample; AUROC from mid-ranks;
    regional error = mean over groups of ``|mean residual|``). Every method is
    resampled with the same items, so differences between methods are paired.

    Args:
      predictions: method -> ``[n]`` out-of-fold confidences.
      correct: ``[n]`` 0/1.
      groups: optional ``[n]`` int group ids (evaluation only; negative: none).
      num_samples: bootstrap resamples.
      level: interval coverage.
      seed: resampling seed.
      methods: which entries of ``predictions`` to use.

    Returns:
      ``{"level", "num_samples", "intervals": {method: {metric: [low, high]}},
      "local_minus_isotonic": {metric: [estimate, low, high]}}`` (the last
      when both methods exist).

    Examples:
      >>> import numpy as np
      >>> y = np.array([0.0, 1.0] * 50)
      >>> out = bootstrap_metrics({"uncorrected": np.full(100, 0.5)}, y, num_samples=20)
      >>> out["intervals"]["uncorrected"]["brier"]
      [0.25, 0.25]
    """
    y = np.asarray(correct, np.float64)
    n = y.size
    rng = np.random.default_rng(seed)
    alpha = (1 - level) / 2
    g = None if groups is None else np.asarray(groups, np.int64)
    per_method = {
        name: _Method(np.asarray(predictions[name], np.float64), y, g)
        for name in methods
        if name in predictions
    }
    parts: dict = {name: [] for name in per_method}
    for counts_t in resampled_counts(rng, n, num_samples):
        size = np.full(counts_t.shape[1], float(n))
        for name, method in per_method.items():
            parts[name].append(method.metrics(counts_t, size))
    samples = {
        name: {k: np.concatenate([blk[k] for blk in blocks]) for k in blocks[0]}
        for name, blocks in parts.items()
    }
    out = {
        "level": level,
        "num_samples": num_samples,
        "intervals": {
            m: {k: [float(v) for v in np.quantile(a, [alpha, 1 - alpha])] for k, a in s.items()}
            for m, s in samples.items()
        },
    }
    if "local" in samples and "isotonic" in samples:
        diff = {}
        for k in samples["local"]:
            d = samples["local"][k] - samples["isotonic"][k]
            lo, hi = np.quantile(d, [alpha, 1 - alpha])
            diff[k] = [float(np.mean(d)), float(lo), float(hi)]
        out["local_minus_isotonic"] = diff
    return out
