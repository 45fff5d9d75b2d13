"""The main job: run the whole pipeline on a data set and write a report.

Writes ``summary.json``, ``points.csv``, ``report.md`` and its figures to an
output folder. Every number in them is held-out: per-item values come from
cross-fitting, method metrics are computed on out-of-fold predictions, and
regime statistics on the evaluation half of :func:`discover_regimes`.

The folder appears complete or not at all: files are written into a hidden
temporary folder beside the target and moved into place when every file is
there; an existing report folder is replaced only by a complete new one, and
a failure or interruption removes the temporary folder.
"""

import contextlib
import csv
import functools
import json
import os
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from miscal_jax import metrics as M
from miscal_jax._types import FieldEstimate
from miscal_jax.app.describe import snippet
from miscal_jax.app.figures import field_map_png, regimes_png, reliability_png
from miscal_jax.app.html import scale_note, source_notes, write_html_report
from miscal_jax.app.io import Dataset
from miscal_jax.app.stopping import CURRENT_STOP
from miscal_jax.geometry.spaces import embed
from miscal_jax.model.crossfit import CrossFitResult, crossfit, selection_size
from miscal_jax.stats.inference import (
    GroupingLossInterval,
    HeterogeneityTest,
    grouping_loss_interval,
    heterogeneity_test,
    normal_interval,
    undersmoothed_field,
)
from miscal_jax.stats.regimes import Regimes, assign_regimes, discover_regimes

__all__ = [
    "Statistics",
    "check_out_dir",
    "method_metrics",
    "model_statistics",
    "run_report",
    "staged",
]

METHODS = ("uncorrected", "temperature", "platt", "isotonic", "histogram", "local")


class Statistics(NamedTuple):
    """The statistics of one fitted model, on the host.

    Attributes:
      heterogeneity: :class:`~miscal_jax.stats.HeterogeneityTest` of floats and a NumPy null.
      grouping_loss: :class:`~miscal_jax.stats.GroupingLossInterval` of floats.
      regimes: the reported :class:`~miscal_jax.stats.Regime` records.
      found: the :class:`~miscal_jax.stats.Regimes` they came from (device arrays).
    """

    heterogeneity: HeterogeneityTest
    grouping_loss: GroupingLossInterval
    regimes: list
    found: Regimes


def model_statistics(
    result: CrossFitResult, *, seed: int, permutations: int, log: Callable | None = None
) -> Statistics:
    """Heterogeneity test, regimes and grouping-loss interval of a cross-fit, from one seed.

    The seed's key is split three ways, one key per statistic; each runs on
    the device from the result's :class:`~miscal_jax.model.FieldModel`.
    ``log`` (if given) is called with one line as each of the first two starts.
    """
    say = log or (lambda line: None)
    k_het, k_regimes, k_gl = jax.random.split(jax.random.key(seed), 3)
    # on the large-data path the test runs on the subsample's model: every permutation
    # re-smooths all items, and the subsample alone has the power (its items' folds are honest)
    tested = result.model if result.selection is None else result.selection
    on = "" if result.selection is None else f", on the {tested.ref_x.shape[0]}-item subsample"
    say(f"heterogeneity test ({permutations} permutations{on})")
    het = heterogeneity_test(k_het, tested, num_permutations=permutations)
    say("regime discovery")
    found = discover_regimes(k_regimes, result.model)
    estimate = FieldEstimate(*map(jax.numpy.asarray, (result.field, result.field_se, result.n_eff)))
    gl = grouping_loss_interval(k_gl, result.model, estimate=estimate)
    return Statistics(
        HeterogeneityTest(float(het.statistic), float(het.p_value), np.asarray(het.null)),
        GroupingLossInterval(*map(float, gl)),
        found.as_list(),
        found,
    )


def method_metrics(predictions: dict, correct, groups=None) -> dict:
    """Held-out ECE (and its noise floor), smooth ECE, ECCE, equal-mass ECE, Brier, NLL,
    AUROC, regional error."""
    correct = np.asarray(correct, np.float32)
    num_groups = None if groups is None else int(np.max(groups)) + 1
    groups = np.zeros(correct.shape, np.int32) if groups is None else np.asarray(groups, np.int32)
    preds = np.stack([np.asarray(predictions[name], np.float32) for name in METHODS])
    table = jax.tree.map(np.asarray, _metric_table(preds, correct, groups, num_groups=num_groups))
    out = {}
    for j, name in enumerate(METHODS):
        row = {key: float(values[j]) for key, values in table.items()}
        # its grid reductions move in the 8th digit with XLA's thread count
        row["smece"] = round(row["smece"], 6)
        row["regional_error"] = row.get("regional_error")
        out[name] = row
    return out


@functools.partial(jax.jit, static_argnames="num_groups")
def _metric_table(preds, correct, groups, *, num_groups):
    """Every metric of :func:`method_metrics` for ``[m, n]`` predictions: one program.

    Returns:
      A dict of ``[m]`` arrays by metric name (``regional_error`` only with groups).
    """

    def row(p):
        out = {
            "ece": M.ece(p, correct),
            "ece_floor": M.ece_floor(p),
            "smece": M.smooth_ece(p, correct),
            "ecce": M.ecce(p, correct),
            "ece_mass": M.ece(p, correct, strategy="mass"),
            "brier": M.brier(p, correct),
            "nll": M.nll(p, correct),
            "auroc": M.auroc(p, correct),
        }
        if num_groups is not None:
            out["regional_error"] = M.regional_error(p, correct, groups, num_groups=num_groups)
        return out

    return jax.vmap(row)(preds)


#: Suffixes of the files a report folder holds; a non-empty folder with
#: anything else in it is not replaced.
REPORT_SUFFIXES = (".json", ".csv", ".md", ".png", ".svg", ".html")


def _is_report_folder(path: Path) -> bool:
    entries = list(path.iterdir())
    if not entries:
        return True
    names = {e.name for e in entries}
    return "summary.json" in names and all(
        e.is_file() and not e.is_symlink() and e.suffix in REPORT_SUFFIXES for e in entries
    )


def check_out_dir(out_dir: str | Path, *, name: str = "out_dir") -> None:
    """Refuses an output folder the report could not be written to, before any work.

    Accepted: a path that does not exist yet (under a folder that can be
    written to), an empty folder, or a previous report folder (replaced).

    Args:
      out_dir: the report folder.
      name: the argument named in messages (``"--out"`` for the CLI).

    Raises:
      ValueError: one line naming ``name``, the path and the fix.
    """
    out = Path(out_dir)
    if out.is_symlink():
        raise ValueError(
            f"{name}: {out} is a symbolic link; pass the folder it points to (the report "
            "folder is replaced as a whole, so a link would be replaced by a folder)."
        )
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"{name}: {out} exists and is not a folder; pass a new folder path "
            "(it is created) or a previous report folder (it is replaced)."
        )
    if out.exists():
        try:
            ok = _is_report_folder(out)
        except OSError as err:
            raise ValueError(f"{name}: cannot list {out} ({err.strerror}).") from None
        if not ok:
            raise ValueError(
                f"{name}: {out} already holds files that are not a miscal-jax report; pass "
                "a new or empty folder (a previous report folder is replaced)."
            )
    parent = out.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(
            f"{name}: {parent} is a file, so {out} cannot be created; pass a folder path."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(
            f"{name}: cannot write in {parent} (permission denied); pass a folder you can write to."
        )


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Holds SIGINT/SIGTERM back while the finished folder is moved into place."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = mask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        yield
    finally:
        mask(signal.SIG_SETMASK, old)


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """Yields a temporary folder beside ``out``; moves it to ``out`` on success.

    Folders created above ``out`` and the temporary folder are removed if the
    block fails or is interrupted (any exception, ``KeyboardInterrupt`` too),
    or at once when the context's :class:`Stop` is requested.
    """
    out = out.absolute()
    stop = CURRENT_STOP.get()
    created = []
    parent = out.parent
    while not parent.exists():
        created.append(parent)
        parent = parent.parent
    tmp = None
    try:
        for folder in reversed(created):
            folder.mkdir()
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
        if stop is not None:
            stop.track(tmp, created)
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a report is not
        check_out_dir(out)  # nothing unexpected appeared there meanwhile
        commit = contextlib.nullcontext() if stop is None else stop.committing()
        with commit, _signals_deferred():
            if out.exists():
                old = out.parent / f".{out.name}.old-{secrets.token_hex(4)}"
                os.rename(out, old)
                os.rename(tmp, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.rename(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def run_report(
    data: Dataset,
    out_dir: str | Path,
    *,
    seed: int = 0,
    folds: int = 5,
    permutations: int = 200,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    candidates: tuple[str, ...] | None = None,
) -> dict:
    """Runs cross-fitting, the heterogeneity test and regime discovery; writes the report.

    The folder is written atomically (see the module docstring): if this
    raises or is interrupted, ``out_dir`` is left as it was.

    Args:
      data: a :class:`~miscal_jax.app.io.Dataset`.
      out_dir: folder to write (created, or replaced if it holds a previous
        report; see :func:`check_out_dir`).
      seed: seed for folds, training, permutations and regime halves.
      folds: number of cross-fitting folds.
      permutations: permutations of the heterogeneity test.
      progress: show progress bars.
      log: called with one line at the start of each stage (``None``: silent).
      candidates: geometries for :func:`~miscal_jax.model.crossfit`
        (``None``: its default).

    Returns:
      The ``summary.json`` content as a dict.
    """
    out = Path(out_dir)
    check_out_dir(out)
    say = log or (lambda line: None)
    started = time.perf_counter()
    x, p, y = data.embeddings, data.conf, data.correct
    m = selection_size(x.shape[0])
    large = f"; chosen on {m} of them" if x.shape[0] > m else ""
    say(f"cross-fitting {folds} folds ({x.shape[0]} items, {x.shape[1]}-d embeddings{large})")
    geometry = {} if candidates is None else {"candidates": tuple(candidates)}
    res = crossfit(x, p, y, folds=folds, seed=seed, progress=progress, **geometry)
    stats = model_statistics(res, seed=seed, permutations=permutations, log=say)
    het, gl, regimes = stats.heterogeneity, stats.grouping_loss, stats.regimes
    regime_of = np.asarray(assign_regimes(stats.found, x))
    say("intervals and metrics")
    # 90% intervals from the undersmoothed field (less bias, honest coverage)
    under = undersmoothed_field(res.model)
    ci_low, ci_high = (np.asarray(a) for a in normal_interval(under.value, under.se, level=0.9))
    methods = method_metrics(res.predictions, y, data.group)
    texts = data.text

    summary = {
        "n": int(x.shape[0]),
        "source": data.meta,
        "scale": res.scale,
        "accuracy": float(y.mean()),
        "mean_confidence": float(p.mean()),
        "heterogeneity": {
            "statistic": het.statistic,
            "p_value": het.p_value,
            "permutations": int(het.null.size),
        },
        "grouping_loss": {"estimate": gl.estimate, "ci_low": gl.low, "ci_high": gl.high},
        "geometry": [
            {
                "chosen": i["chosen"],
                "select_error": i["select_error"],
                "held_error": i["held_error"],
                "constant_error": i["constant_error"],
            }
            for i in res.info
        ],
        "methods": methods,
        "regimes": [
            {
                "id": r.id,
                "size": r.size_all,
                "size_evaluated": r.size,
                "sign": r.sign,
                "mean_residual": r.mean_residual,
                "ci_low": r.ci_low,
                "ci_high": r.ci_high,
                "excess_residual": r.excess,
                "p_value": r.p_value,
                "p_adjusted": r.p_adjusted,
                "examples": [
                    {"index": int(i), **({"text": texts[i]} if texts else {})} for i in r.examples
                ],
            }
            for r in regimes
        ],
    }
    if data.group is not None:
        names = data.group_names
        summary["groups"] = [
            {
                "name": names[g],
                "size": int(np.sum(data.group == g)),
                "mean_residual": {
                    m: float(np.mean(y[data.group == g] - res.predictions[m][data.group == g]))
                    for m in ("uncorrected", "isotonic", "local")
                },
            }
            for g in range(len(names))
        ]

    say(f"writing the report to {out}")
    with staged(out) as tmp:
        with open(tmp / "points.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            item = [] if data.item is None else ["item"]
            w.writerow(
                [
                    "index",
                    *item,
                    "confidence",
                    "correct",
                    "field",
                    "field_se",
                    "n_eff",
                    "field_ci90_low",
                    "field_ci90_high",
                    "regime",
                    "corrected_confidence",
                    "fold",
                ]
            )
            for i in range(x.shape[0]):
                w.writerow(
                    [
                        i,
                        *([] if data.item is None else [data.item[i]]),
                        f"{p[i]:.6g}",
                        int(y[i]),
                        f"{res.field[i]:.6g}",
                        f"{res.field_se[i]:.6g}",
                        f"{res.n_eff[i]:.6g}",
                        f"{ci_low[i]:.6g}",
                        f"{ci_high[i]:.6g}",
                        int(regime_of[i]),
                        f"{res.corrected_conf[i]:.6g}",
                        int(res.fold[i]),
                    ]
                )

        z = np.asarray(jax.jit(embed)(res.models[0].geometry, x, p))
        (tmp / "reliability.png").write_bytes(
            reliability_png(
                res.predictions, y, title="Global reliability (held-out)", size=(4.8, 4.4)
            )
        )
        (tmp / "field_map.png").write_bytes(
            field_map_png(
                z,
                res.field,
                regime_of,
                title=f"Field over the {res.models[0].geometry.kind} space (2-D PCA)",
                label="E[correct - conf | x]\n(red: overconfident, blue: under)",
            )
        )
        if regimes:
            (tmp / "regimes.png").write_bytes(regimes_png(regimes, res.predictions, y, seed=seed))
        summary["seconds"] = round(time.perf_counter() - started, 1)
        html = write_html_report(
            tmp, data, res, summary, regimes, regime_of, stats.found.evaluation, seed=seed
        )
        summary["method_intervals"] = html["method_intervals"]
        for r, card in zip(summary["regimes"], html["regimes"], strict=True):
            keys = ("headline", "description", "terms", "excess_ci", "after_correction", "panel")
            r.update({k: card[k] for k in keys if k in card})
        with open(tmp / "summary.json", "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)
        (tmp / "report.md").write_text(_markdown(summary, regimes, texts), encoding="utf-8")
    return summary


def _opt(value) -> str:
    """A metric cell, empty for a summary written before the metric existed."""
    return "" if value is None else f"{value:.4f}"


def _markdown(s: dict, regimes, texts) -> str:
    het = s["heterogeneity"]
    src = s["source"]
    notes = [*source_notes(src, markup=False), *filter(None, [scale_note(s.get("scale"))])]
    lines = [
        "# miscal_jax report",
        "",
        f"Data: {src.get('source')}"
        + (f", model `{src['model']}`" if src.get("model") else "")
        + f", confidence `{src.get('confidence')}`; n = {s['n']}"
        + (f" ({src['dropped']} rows without a confidence dropped)" if src.get("dropped") else "")
        + f"; accuracy {s['accuracy']:.3f}, mean confidence {s['mean_confidence']:.3f}.",
        *(["", *notes] if notes else []),
        "",
        "## Does miscalibration depend on the input?",
        "",
        f"Heterogeneity test (within-confidence-bin permutations, {het['permutations']}): "
        f"statistic {het['statistic']:.5f}, **p = {het['p_value']:.4f}**. "
        f"Grouping loss (the part of the Brier score no confidence-only map can remove): "
        f"{s['grouping_loss']['estimate']:.4f} "
        f"[{s['grouping_loss']['ci_low']:.4f}, {s['grouping_loss']['ci_high']:.4f}].",
        "",
        "## Held-out metrics by method",
        "",
        "| method | ECE | ECE floor | smooth ECE | ECE (equal mass) | Brier | NLL | AUROC | "
        "regional error |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, m in s["methods"].items():
        reg = "" if m["regional_error"] is None else f"{m['regional_error']:.4f}"
        lines.append(
            f"| {name} | {m['ece']:.4f} | {_opt(m.get('ece_floor'))} | {_opt(m.get('smece'))} | "
            f"{m['ece_mass']:.4f} | "
            f"{m['brier']:.4f} | "
            f"{m['nll']:.4f} | {m['auroc']:.4f} | {reg} |"
        )
    lines += [
        "",
        "ECE floor: the ECE a perfectly calibrated forecaster with the method's confidences "
        "would score from sampling noise alone; it is higher for methods that spread items "
        "over more bins, so compare ECE minus its floor. "
        "Smooth ECE: binning-free ECE (Blasiok & Nakkiran 2023, reflected Gaussian kernel "
        "at its self-consistent bandwidth); `summary.json` also holds ECCE, the range of the "
        "cumulative residual (Arrieta-Ibarra et al. 2022). "
        "Regional error: mean over the data's groups of |mean(correct - confidence)|; groups "
        "are used for evaluation only. `local` is the cross-fitted local correction.",
        "",
        "![reliability](reliability.png) ![field map](field_map.png)",
        "",
        "## Regimes",
        "",
    ]
    if not regimes:
        lines.append("No regime passed the false-discovery-rate threshold (0.1).")
    else:
        lines += [
            "Found on one half of the items, measured on the other; `excess` is the mean "
            "residual left after a global isotonic map.",
            "",
            "| regime | in words | terms | size | raw mean residual "
            "[90% CI] | excess | adjusted p |",
            "|---|---|---|---|---|---|---|",
        ]
        for r, rs in zip(regimes, s["regimes"], strict=True):
            lines.append(
                f"| R{r.id} | {rs.get('headline', r.sign + 'confident')} | "
                f"{', '.join(rs.get('terms', [])[:4])} | {r.size_all} | {r.mean_residual:+.3f} "
                f"[{r.ci_low:+.3f}, {r.ci_high:+.3f}] | {r.excess:+.3f} | "
                f"{r.p_adjusted:.2g} |"
            )
        lines += ["", "![regimes](regimes.png)", ""]
        if texts:
            for r in regimes:
                lines.append(f"**R{r.id}** ({r.sign}confident) examples:")
                lines += [f"- {snippet(texts[i], 160)}" for i in r.examples[:3]]
                lines.append("")
    if "groups" in s:
        lines += [
            "## By group (evaluation only)",
            "",
            "| group | n | mean residual: uncorrected | isotonic | local |",
            "|---|---|---|---|---|",
        ]
        for g in sorted(s["groups"], key=lambda g: g["mean_residual"]["uncorrected"]):
            m = g["mean_residual"]
            lines.append(
                f"| {g['name']} | {g['size']} | {m['uncorrected']:+.3f} | "
                f"{m['isotonic']:+.3f} | {m['local']:+.3f} |"
            )
    lines += ["", f"Run time: {s['seconds']} s."]
    return "\n".join(lines) + "\n"
