"""Figures for the report (matplotlib, headless ``Agg`` backend)."""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = ["field_map", "regime_reliability", "reliability_diagram"]

_COLORS = {
    "uncorrected": "#888888",
    "isotonic": "#1f77b4",
    "local": "#d62728",
    "temperature": "#2ca02c",
}


def _binned(conf, correct, num_bins):
    """Mean confidence and accuracy per bin: one bin per distinct value when
    there are few (verbalised confidences), else equal-mass bins."""
    values, inverse = np.unique(conf, return_inverse=True)
    if values.size <= 2 * num_bins:
        groups = [np.flatnonzero(inverse == i) for i in range(values.size)]
        groups = [g for g in groups if g.size >= max(5, conf.size // 200)] or groups
    else:
        groups = np.array_split(np.argsort(conf, kind="stable"), num_bins)
    return (
        np.array([conf[g].mean() for g in groups if g.size]),
        np.array([correct[g].mean() for g in groups if g.size]),
    )


def reliability_diagram(
    predictions: dict, correct: np.ndarray, path: Path, *, num_bins: int = 12
) -> Path:
    """Equal-mass reliability curves of several methods on one axis."""
    fig, ax = plt.subplots(figsize=(4.8, 4.4))
    ax.plot([0, 1], [0, 1], ":", color="black", lw=1)
    for name, conf in predictions.items():
        x, y = _binned(np.asarray(conf), correct, num_bins)
        ax.plot(x, y, "o-", ms=4, label=name, color=_COLORS.get(name))
    ax.set(
        xlabel="confidence",
        ylabel="accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
        title="Global reliability (held-out)",
    )
    ax.legend(loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def field_map(
    coords: np.ndarray,
    field: np.ndarray,
    path: Path,
    *,
    regime=None,
    title: str = "Miscalibration field (out-of-fold)",
) -> Path:
    """A 2-D map coloured by the signed field (red = overconfident)."""
    fig, ax = plt.subplots(figsize=(6.2, 5.0))
    lim = float(np.quantile(np.abs(field), 0.98)) or 1e-3
    sc = ax.scatter(
        coords[:, 0], coords[:, 1], c=field, cmap="RdBu", vmin=-lim, vmax=lim, s=7, linewidths=0
    )
    if regime is not None:
        for rid in np.unique(regime[regime >= 0]):
            c = coords[regime == rid].mean(0)
            ax.annotate(
                f"R{rid}",
                c,
                fontsize=10,
                weight="bold",
                ha="center",
                bbox=dict(boxstyle="round", fc="white", alpha=0.7),
            )
    fig.colorbar(sc, ax=ax, label="E[correct - conf | x]  (blue: under, red: over)")
    ax.set(title=title, xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def regime_reliability(
    regimes, predictions: dict, correct: np.ndarray, path: Path, *, num_bins: int = 5
) -> Path:
    """One small reliability panel per regime, before and after correction."""
    count = max(len(regimes), 1)
    cols = min(count, 4)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, reg in zip(axes.flat, regimes, strict=False):
        ax.axis("on")
        ax.plot([0, 1], [0, 1], ":", color="black", lw=1)
        idx = reg.members
        for name in ("uncorrected", "isotonic", "local"):
            x, y = _binned(
                np.asarray(predictions[name])[idx],
                correct[idx],
                min(num_bins, max(idx.size // 10, 1)),
            )
            ax.plot(x, y, "o-", ms=3, color=_COLORS[name], label=name)
        ax.set(title=f"R{reg.id}: {reg.sign}, n={reg.size_all}", xlim=(0, 1), ylim=(0, 1))
        ax.tick_params(labelsize=7)
    axes.flat[0].legend(fontsize=7, frameon=False, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
