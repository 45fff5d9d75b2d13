"""Tests of ``report.html``: numbers, wording, self-containment, and a real browser.

The browser tests use headless Chromium (Debian's ``chromium`` package); they
are skipped, with that reason, only where no chromium binary is installed.
"""

import csv
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from miscal_jax import metrics as M
from miscal_jax.app import bootstrap as B
from miscal_jax.app import html as H
from miscal_jax.app.cli import main
from miscal_jax.stats.regimes import Regime
from miscal_jax.synthetic.planted import make_planted

FAST = ["--folds", "2", "--permutations", "10", "--geometry", "raw", "--quiet"]
TOPICS = [
    "force mass velocity energy electron momentum joules",
    "cell gene protein membrane species enzyme dna",
    "court contract defendant statute trial plaintiff law",
    "demand supply market price inflation money economy",
    "poem novel author metaphor chapter narrator verse",
    "algorithm array graph node compiler memory code",
]
CHROMIUM = next(
    (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
)
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium is not installed (Debian: apt-get install -y chromium)",
)


# ----------------------------------------------------------------------------- numbers


def test_bootstrap_helpers_match_metrics_on_the_full_sample():
    """On the identity resample, the vectorised helpers equal miscal_jax.metrics.calibration."""
    rng = np.random.default_rng(0)
    n = 500
    p = np.round(rng.uniform(0.3, 1.0, n), 2)  # ties, as with verbalised confidences
    y = (rng.random(n) < p - 0.1).astype(float)
    g = rng.integers(0, 5, n)
    once = B._Method(p, y, g).metrics(np.ones((n, 1)), np.array([float(n)]))  # every item once
    np.testing.assert_allclose(once["ece"][0], M.ece(p, y), atol=1e-6)
    np.testing.assert_allclose(once["auroc"][0], M.auroc(p, y), atol=1e-6)
    out = B.bootstrap_metrics({"uncorrected": p, "local": p, "isotonic": p}, y, g, num_samples=50)
    lo, hi = out["intervals"]["uncorrected"]["regional_error"]
    assert lo <= float(M.regional_error(p, y, g)) <= hi
    lo, hi = out["intervals"]["uncorrected"]["brier"]
    assert lo < float(M.brier(p, y)) < hi
    # identical methods: the paired difference is exactly zero
    assert out["local_minus_isotonic"]["brier"] == [0.0, 0.0, 0.0]


def test_bootstrap_interval_coverage_of_brier():
    """90% intervals of the Brier score cover the population value in about 90%
    of 200 simulated data sets (tolerance: 0.82 to 0.97, ~3 binomial s.e.)."""
    rng = np.random.default_rng(1)
    truth = 0.2 * 0.8 * 0.5 + 0.5 * 0.5 * 0.5  # p uniform on {0.2, 0.5}, correct ~ Bern(p)
    hits = 0
    for s in range(200):
        p = rng.choice([0.2, 0.5], 300)
        y = (rng.random(300) < p).astype(float)
        lo, hi = B.bootstrap_metrics({"uncorrected": p}, y, num_samples=200, seed=s)["intervals"][
            "uncorrected"
        ]["brier"]
        hits += lo <= truth <= hi
    assert 0.82 <= hits / 200 <= 0.97, hits


def _regime(members, *, excess, mean_residual, size):
    return Regime(
        id=0,
        size=size,
        size_all=len(members),
        sign="under" if excess > 0 else "over",
        mean_residual=mean_residual,
        ci_low=mean_residual - 0.05,
        ci_high=mean_residual + 0.05,
        excess=excess,
        p_value=0.001,
        p_adjusted=0.004,
        members=np.asarray(members),
        examples=np.asarray(members[:3]),
        candidate=(6, 0),
    )


def test_card_is_worded_relative_to_the_global_recalibration():
    """An overconfident model (raw residual < 0 everywhere) with one region that is
    less overconfident: the card says *underconfident after global recalibration*,
    gives the negative raw residual separately and explains the difference."""
    rng = np.random.default_rng(0)
    n = 2000
    p = rng.uniform(0.6, 0.99, n)
    region = np.arange(n) < 600
    truth = np.where(region, p - 0.08, p - 0.3)
    y = (rng.random(n) < truth).astype(float)
    members = np.flatnonzero(region)
    ev = np.random.default_rng(1).random(n) < 0.5
    regime = _regime(
        members, excess=0.0, mean_residual=float(np.mean((y - p)[region & ev])), size=0
    )
    regime = regime._replace(size=int((region & ev).sum()))
    texts = ["cell gene protein"] * 600 + ["force mass energy"] * (n - 600)
    cards = H.regime_cards(
        [regime], p, y, {"isotonic": p, "local": p}, texts=texts, evaluation=ev, level=0.9
    )
    card = cards[0]
    assert card["sign"] == "under" and card["excess"] > 0.1
    assert card["mean_residual"] < 0
    assert card["headline"].startswith("underconfident by ")
    assert card["headline"].endswith("after global recalibration")
    assert set(card["terms"][:3]) <= {"cell", "gene", "protein", "cell gene", "gene protein"}
    page = H.render_cards(cards, texts)
    assert "underconfident by" in page and "after global recalibration" in page
    assert "In raw terms the model is overconfident here too" in page
    assert f"{card['mean_residual']:+.3f}" in page
    # the headline interval has the raw residual's width
    width = card["excess_ci"][1] - card["excess_ci"][0]
    assert width == pytest.approx(regime.ci_high - regime.ci_low)


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def text_report(tmp_path_factory):
    """``miscal-jax report --text-col`` on a table with texts and no embeddings."""
    d = make_planted(400, seed=0, amplitude=0.3)
    rng = np.random.default_rng(0)
    folder = tmp_path_factory.mktemp("text")
    path = folder / "answers.csv"
    words = [t.split() for t in TOPICS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "confidence", "correct", "group"])
        for i in range(400):
            k = int(d.region[i])
            w.writerow([" ".join(rng.choice(words[k], 6)), d.conf[i], int(d.correct[i]), k])
    out = folder / "report"
    args = ["report", "--data", str(path), "--text-col", "question"]
    code = main([*args, "--text-embedding", "lsa", "--out", str(out), *FAST])
    assert code == 0
    return path, out


def test_text_col_end_to_end_with_the_builtin_representation(text_report):
    path, out = text_report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["text_embedding"] == "lsa"
    assert summary["n"] == 400
    cache = list(path.parent.glob(".answers.csv.lsa-*.npy"))
    assert len(cache) == 1
    page = (out / "report.html").read_text()
    assert "built-in representation" in page and "miscal_jax[embed]" in page
    # regimes are described by the texts' words
    for r in summary["regimes"]:
        assert r["terms"] and r["headline"].endswith("after global recalibration")
    # the next run finds the same embeddings in the cache
    from miscal_jax.app.text_embed import embed_texts

    with open(path, newline="") as f:
        texts = [row["question"] for row in csv.DictReader(f)]
    again = embed_texts(texts, method="lsa", cache_dir=path.parent, cache_name=path.name)
    assert again.from_cache and again.cache == cache[0]


def test_text_col_errors(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("question,confidence,correct\n" + "a b,0.5,1\n" * 20)
    err = tmp_path / "err"
    code = main(["report", "--data", str(path), "--text-col", "nope", "--out", str(err), *FAST])
    assert code == 2


def test_page_is_self_contained_and_in_reading_order(text_report):
    _, out = text_report
    page = (out / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    # nothing to fetch: every src/href is inline data or an in-page anchor
    for ref in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert ref.startswith(("data:", "#")), ref
    assert "<script" not in page and "@import" not in page and "url(" not in page
    assert 'name="viewport"' in page
    order = [
        page.index('class="verdict'),
        page.index("<h2>Regimes</h2>"),
        page.index("<h2>Held-out metrics by method</h2>"),
        page.index("<h2>The miscalibration field</h2>"),
        page.index("<h2>Method notes</h2>"),
    ]
    assert order == sorted(order)
    assert page.count("data:image/png;base64,") >= 2
    assert "Grouping loss" in page and re.search(r"\[\d\.\d{3}, \d\.\d{3}\]", page)


# ----------------------------------------------------------------------------- browser


def _chromium(url: str, tmp_path, *extra: str):
    profile = tmp_path / f"profile-{len(list(tmp_path.iterdir()))}"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        *extra,
        url,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def _console(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def _check_screenshot(path, min_std=0.05):
    import matplotlib.image as mpimg

    img = mpimg.imread(path)[..., :3]
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    non_white = np.mean(np.any(img < 0.9, axis=-1))
    assert img.std() > min_std and non_white > 0.03, (img.std(), non_white)
    return img


def check_in_browser(page_path, tmp_path, *, width=1200, height=3000, shot=None):
    """Loads a page in headless Chromium: no console message, the text is rendered,
    and a screenshot is not blank. Returns the screenshot path."""
    url = page_path.resolve().as_uri()
    dom = _chromium(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert not _console(dom.stderr), _console(dom.stderr)
    assert "Method notes" in dom.stdout
    shot = shot or tmp_path / f"shot-{width}.png"
    run = _chromium(
        url,
        tmp_path,
        f"--screenshot={shot}",
        f"--window-size={width},{height}",
        "--hide-scrollbars",
    )
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    assert not _console(run.stderr), _console(run.stderr)
    _check_screenshot(shot)
    return shot


@needs_chromium
def test_console_check_catches_errors(tmp_path):
    """The console check is not vacuous: a page with a script error is caught."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!DOCTYPE html><p>x</p><script>console.error('boom'); nope();</script>")
    run = _chromium(bad.as_uri(), tmp_path, "--dump-dom")
    assert any("boom" in line for line in _console(run.stderr)), run.stderr[-2000:]
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><body style='background:#fff'></body>")
    shot = tmp_path / "blank.png"
    _chromium(blank.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=400,300")
    with pytest.raises(AssertionError):
        _check_screenshot(shot)


@needs_chromium
def test_report_loads_in_chromium_on_a_laptop_and_a_phone(text_report, tmp_path):
    _, out = text_report
    check_in_browser(out / "report.html", tmp_path, width=1280, height=2400)
    check_in_browser(out / "report.html", tmp_path, width=390, height=3000)


@pytest.mark.slow
@needs_chromium
def test_default_report_writes_html_that_loads_in_chromium(tmp_path):
    """The README's first command: ``miscal-jax report`` on the shipped data writes
    report.html, which Chromium renders with no console error (about 1.5 minutes)."""
    out = tmp_path / "miscal-report"
    assert main(["report", "--out", str(out), "--quiet"]) == 0
    page = (out / "report.html").read_text()
    assert "after global recalibration" in page
    assert (out / "report.md").is_file() and (out / "summary.json").is_file()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["regimes"] and all(r["terms"] for r in summary["regimes"])
    check_in_browser(out / "report.html", tmp_path, width=1200, height=4200)


def test_scale_note_names_the_path_and_the_binned_fields_measured_error():
    assert H.scale_note({"path": "exact", "n": 50, "field": "exact"}) is None
    carried = {"path": "subsample", "n": 10**6, "selected_on": 8192, "field": "exact"}
    assert "8,192" in H.scale_note(carried) and "exact kernel sums" in H.scale_note(carried)
    err = {"checked": 1020, "field_corr": 0.97, "field_median_abs_diff": 0.002,
           "field_max_abs_diff": 0.19, "radius_over_bandwidth": 1.1}  # fmt: skip
    note = H.scale_note({**carried, "field": "binned", "cells": 16384, "approximation": err})
    assert "16,384 leaves" in note and "correlation 0.970" in note and "largest 0.190" in note
