"""The report's figures: one matplotlib stack, object-oriented (``Figure``, no pyplot state).

Every function returns PNG bytes: the HTML page inlines them, the Markdown
report writes them to files.
"""

import io

import numpy as np
from matplotlib.figure import Figure

from miscal_jax.app.bootstrap import LEVEL, bin_sums, indicator, resampled_counts

__all__ = [
    "COLORS",
    "LEVEL",
    "MAP_POINTS",
    "field_map_png",
    "pca2",
    "png",
    "regimes_png",
    "reliability_png",
]

#: Most points drawn in a scatter map (a uniform sample of them beyond).
MAP_POINTS = 50_000
#: Colour of each method's curve.
COLORS = {"uncorrected": "#777777", "isotonic": "#1f77b4", "local": "#d62728"}


def png(fig: Figure, dpi: int = 110) -> bytes:
    """The figure as PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def _bins(conf: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin id per item: one bin per distinct confidence when there are few
    (verbalised confidences, small bins merged into their neighbour), else
    equal-mass bins."""
    values, inverse = np.unique(conf, return_inverse=True)
    if values.size <= num_bins:
        counts = np.bincount(inverse)
        ids, cur, acc = np.zeros(values.size, np.int64), 0, 0
        for i, c in enumerate(counts):  # merge runs until a bin has >= 10 items
            ids[i] = cur
            acc += c
            if acc >= 10:
                cur, acc = cur + 1, 0
        if acc and cur > 0:
            ids[ids == cur] = cur - 1
        return ids[inverse]
    ranks = np.argsort(np.argsort(conf, kind="stable"), kind="stable")
    return ranks * num_bins // conf.size


def _reliability_axes(ax, predictions, y, idx, *, num_bins, num_samples, level, rng):
    """Draws the uncorrected / isotonic / local reliability curves of items ``idx`` on ``ax``.

    Bins are fixed on the shown items; the band is the item-bootstrap
    percentile interval of each bin's accuracy (for uncorrected and local).
    """
    # one set of resamples (as counts) for every method, so the bands are comparable
    boot = list(resampled_counts(rng, idx.size, num_samples))
    alpha = (1 - level) / 2
    ax.plot([0, 1], [0, 1], ":", color="black", lw=0.8)
    bins_per = max(2, min(num_bins, idx.size // 15))
    for name in ("uncorrected", "isotonic", "local"):
        if name not in predictions:
            continue
        p = np.asarray(predictions[name], np.float64)[idx]
        yy = y[idx]
        b = _bins(p, bins_per)
        nb = int(b.max()) + 1
        cnt = np.bincount(b, minlength=nb)
        ok = cnt >= 5
        xs = np.bincount(b, weights=p, minlength=nb)[ok] / cnt[ok]
        acc = np.bincount(b, weights=yy, minlength=nb)[ok] / cnt[ok]
        color = COLORS[name]
        if name != "isotonic":
            hits, sizes = indicator(b, yy, nb), indicator(b, np.ones(b.size), nb)
            s = np.concatenate([bin_sums(hits, counts) for counts in boot])
            c = np.concatenate([bin_sums(sizes, counts) for counts in boot])
            accs = (s / np.maximum(c, 1))[:, ok]
            lo, hi = np.quantile(accs, [alpha, 1 - alpha], axis=0)
            ax.fill_between(xs, lo, hi, color=color, alpha=0.18, lw=0)
        ax.plot(xs, acc, "o-", ms=3, lw=1.3, color=color, label=name)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.tick_params(labelsize=7)
    ax.xaxis.label.set_size(8)
    ax.yaxis.label.set_size(8)


def reliability_png(
    predictions: dict,
    correct,
    members=None,
    *,
    title: str = "",
    num_bins: int = 6,
    num_samples: int = 200,
    level: float = LEVEL,
    seed: int = 0,
    size=(3.3, 3.0),
) -> bytes:
    """A small reliability plot (uncorrected, isotonic, local) with bootstrap bands.

    Args:
      predictions: confidences by method (``uncorrected``, ``isotonic``, ``local``).
      correct: ``[n]`` outcomes.
      members: indices of the items shown (default: all).
      title, size: the figure's title and size in inches.
      num_bins, num_samples, level, seed: bins, bootstrap replicates, band
        coverage and resampling seed.
    """
    y = np.asarray(correct, np.float64)
    idx = np.arange(y.size) if members is None else np.asarray(members)
    fig = Figure(figsize=size)
    ax = fig.subplots()
    _reliability_axes(
        ax,
        predictions,
        y,
        idx,
        num_bins=num_bins,
        num_samples=num_samples,
        level=level,
        rng=np.random.default_rng(seed),
    )
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return png(fig)


def regimes_png(regimes, predictions: dict, correct, *, seed: int = 0) -> bytes:
    """One reliability panel per regime (members of both halves), four to a row."""
    y = np.asarray(correct, np.float64)
    count = max(len(regimes), 1)
    cols = min(count, 4)
    rows = -(-count // cols)
    fig = Figure(figsize=(3.0 * cols, 2.9 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    rng = np.random.default_rng(seed)
    for ax in axes.flat:
        ax.axis("off")
    for ax, reg in zip(axes.flat, regimes, strict=False):
        ax.axis("on")
        _reliability_axes(
            ax,
            predictions,
            y,
            np.asarray(reg.members),
            num_bins=5,
            num_samples=200,
            level=LEVEL,
            rng=rng,
        )
        ax.set_title(f"R{reg.id}: {reg.sign}confident, n = {reg.size_all}", fontsize=9)
    axes.flat[0].legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    return png(fig)


def pca2(x: np.ndarray) -> np.ndarray:
    """First two principal components (eigenvectors of the ``[d, d]`` covariance)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(0)
    _, vecs = np.linalg.eigh(x.T @ x)
    top = vecs[:, ::-1][:, :2]
    # deterministic signs: largest loading positive
    top = top * np.sign(top[np.argmax(np.abs(top), axis=0), [0, 1]])
    return x @ top


def _outline(ax, pts: np.ndarray, extent, color, label, mass: float = 0.6):
    """Contour of a Gaussian KDE of ``pts`` holding about ``mass`` of them."""
    (x0, x1), (y0, y1) = extent
    gx, gy = np.linspace(x0, x1, 120), np.linspace(y0, y1, 120)
    sd = pts.std(0) * max(pts.shape[0], 2) ** (-1 / 6) + 1e-9  # Scott's rule
    dens = np.zeros((gy.size, gx.size))
    for chunk in np.array_split(pts, max(1, pts.shape[0] // 500)):
        kx = np.exp(-0.5 * ((gx[None, :] - chunk[:, :1]) / sd[0]) ** 2)
        ky = np.exp(-0.5 * ((gy[None, :] - chunk[:, 1:]) / sd[1]) ** 2)
        dens += ky.T @ kx
    at_pts = np.sort(
        dens[
            np.clip(np.searchsorted(gy, pts[:, 1]), 0, gy.size - 1),
            np.clip(np.searchsorted(gx, pts[:, 0]), 0, gx.size - 1),
        ]
    )
    level = at_pts[int((1 - mass) * (at_pts.size - 1))]
    if not level < dens.max():
        return
    ax.contour(gx, gy, dens, levels=[level], colors=[color], linewidths=1.6)
    cx, cy = np.median(pts, axis=0)
    ax.annotate(
        label,
        (cx, cy),
        fontsize=10,
        weight="bold",
        ha="center",
        va="center",
        color=color,
        bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=color, alpha=0.85),
    )


def field_map_png(
    embeddings,
    field_rel: np.ndarray,
    regime_of=None,
    *,
    title: str = "",
    label: str = "accuracy − recalibrated confidence\n(red: overconfident, blue: under)",
    size=(6.4, 5.0),
) -> bytes:
    """2-D PCA map coloured by the field relative to the global map, regimes outlined.

    Points are the first two principal components of ``embeddings``. Red:
    accuracy below the (recalibrated) confidence, overconfident there; blue:
    above. Colour limits are symmetric at the 98th percentile of ``|field|``.
    """
    xy = pca2(embeddings)
    if xy.shape[0] > MAP_POINTS:  # the picture of a uniform sample, at a bounded cost
        keep = np.sort(np.random.default_rng(0).choice(xy.shape[0], MAP_POINTS, replace=False))
        xy, field_rel = xy[keep], np.asarray(field_rel)[keep]
        regime_of = None if regime_of is None else np.asarray(regime_of)[keep]
    fig = Figure(figsize=size)
    ax = fig.subplots()
    lim = float(np.quantile(np.abs(field_rel), 0.98)) or 1e-3
    order = np.argsort(np.abs(field_rel))  # strongest on top
    sc = ax.scatter(
        xy[order, 0],
        xy[order, 1],
        c=field_rel[order],
        cmap="RdBu",
        vmin=-lim,
        vmax=lim,
        s=6,
        linewidths=0,
    )
    pad = 0.05 * (xy.max(0) - xy.min(0))
    extent = (
        (xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0]),
        (xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1]),
    )
    if regime_of is not None:
        for rid in np.unique(regime_of[regime_of >= 0]):
            pts = xy[regime_of == rid]
            if pts.shape[0] >= 10:
                _outline(ax, pts, extent, "#222222", f"R{rid}")
    ax.set(xlim=extent[0], ylim=extent[1], xticks=[], yticks=[])
    ax.set_xlabel("principal component 1", fontsize=8)
    ax.set_ylabel("principal component 2", fontsize=8)
    ax.set_title(title, fontsize=10)
    cb = fig.colorbar(sc, ax=ax, shrink=0.85)
    cb.set_label(label, fontsize=8)
    cb.ax.tick_params(labelsize=7)
    fig.tight_layout()
    return png(fig)
