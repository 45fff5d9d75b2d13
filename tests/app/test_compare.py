"""Tests of ``miscal-jax compare``: many models on the same items."""

import csv
import json

import numpy as np
import pytest
from test_html import check_in_browser, needs_chromium

from miscal_jax.app.cli import main
from miscal_jax.app.compare import (
    fit_models,
    load_demo_panel,
    load_panel,
    select_models,
)

FAST = ["--folds", "2", "--permutations", "10", "--geometry", "raw", "--quiet"]
TOPICS = [
    "force mass velocity energy electron momentum joules",
    "cell gene protein membrane species enzyme dna",
    "court contract defendant statute trial plaintiff law",
    "demand supply market price inflation money economy",
]


def _panel_rows(n=400, seed=0):
    """3 models on n items in 4 topic clusters: cluster 0 is overconfident for
    models A and B (a shared region), cluster 2 underconfident for C only."""
    rng = np.random.default_rng(seed)
    cluster = np.arange(n) % 4
    centres = rng.normal(size=(4, 8)) * 3.0
    emb = centres[cluster] + rng.normal(size=(n, 8))
    words = [t.split() for t in TOPICS]
    text = [" ".join(rng.choice(words[k], 6)) for k in cluster]
    offsets = {"A": {0: -0.35}, "B": {0: -0.35}, "C": {2: 0.3}}
    rows = []
    for model, off in offsets.items():
        p_true = rng.uniform(0.3, 0.8, n)
        shift = np.array([off.get(int(k), 0.0) for k in cluster])
        correct = rng.random(n) < np.clip(p_true + shift, 0.02, 0.98)
        for i in range(n):
            rows.append((f"q{i}", model, float(p_true[i]), int(correct[i]), text[i], cluster[i]))
    return rows, emb


@pytest.fixture(scope="module")
def long_csv(tmp_path_factory):
    rows, emb = _panel_rows()
    folder = tmp_path_factory.mktemp("panel")
    path = folder / "long.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["item", "model", "confidence", "correct", "text", "group"])
        for r in rows:
            w.writerow([r[0], r[1], f"{r[2]:.4f}", r[3], r[4], f"topic{r[5]}"])
    np.save(folder / "emb.npy", emb.astype(np.float32))
    return path


def test_load_panel_shapes_and_selection(long_csv):
    panel = load_panel(long_csv, embeddings=long_csv.parent / "emb.npy")
    assert panel.models == ["A", "B", "C"]
    assert panel.conf.shape == (3, 400) and panel.embeddings.shape == (400, 8)
    assert panel.text[0].split()[0] in TOPICS[0].split()
    assert panel.group_names == ["topic0", "topic1", "topic2", "topic3"]
    sub = select_models(panel, ["C", "A"])
    assert sub.models == ["C", "A"]
    np.testing.assert_array_equal(sub.conf[1], panel.conf[0])
    with pytest.raises(ValueError, match="--models: 'Z' matches 0 of the models"):
        select_models(panel, ["Z"])


@pytest.fixture(scope="module")
def text_compare(long_csv, tmp_path_factory):
    """``miscal-jax compare --text-col`` on the long table (texts, no embeddings)."""
    out = tmp_path_factory.mktemp("cmp") / "out"
    code = main(
        ["compare", "--data", str(long_csv), "--text-col", "text", "--text-embedding", "lsa"]
        + ["--out", str(out), *FAST]
    )
    assert code == 0
    return out


def test_compare_end_to_end_with_text_col(long_csv, text_compare):
    """Texts only (no embeddings): built-in representation, heat map, tables."""
    out = text_compare
    summary = json.loads((out / "summary.json").read_text())
    assert [m["name"] for m in summary["models"]] == ["A", "B", "C"]
    assert summary["source"]["text_embedding"] == "lsa"
    assert list(long_csv.parent.glob(".long.csv.lsa-*.npy"))  # cached beside the data
    page = (out / "report.html").read_text()
    assert 'alt="model by region heat map"' in page
    assert page.count("<table") >= 1 + 3  # overview + one method table per model
    # the shared overconfident cluster (topic0) is a region with A and B both red
    regions = summary["regions"]
    assert regions, "no region found"
    topic0 = [
        r for r in regions if set(r["terms"][:3]) & set(TOPICS[0].split()) and len(r["found_by"])
    ]
    assert topic0, [r["terms"] for r in regions]
    cells = topic0[0]["cells"]
    assert cells["A"]["excess"] < -0.1 and cells["B"]["excess"] < -0.1
    assert "built-in representation" in page


def test_fit_models_one_result_per_model_on_its_items(monkeypatch):
    """The seam: each model is fitted on the items it answered, same folds and seed.
    (crossfit itself is exercised end to end above; here it is recorded.)"""
    import miscal_jax.app.compare as C

    calls = []

    def fake_crossfit(x, conf, correct, **kw):
        calls.append((x.copy(), conf.copy(), correct.copy(), kw))
        return "result"

    monkeypatch.setattr(C, "crossfit", fake_crossfit)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(50, 3)).astype(np.float32)
    conf = rng.uniform(0.2, 0.9, (2, 50))
    conf[1, :10] = np.nan  # model 1 did not answer 10 items
    correct = (rng.random((2, 50)) < conf).astype(float)
    fits = fit_models(x, conf, correct, folds=3, seed=7, candidates=("raw",))
    assert [f[1] for f in fits] == ["result", "result"]
    np.testing.assert_array_equal(fits[0][0], np.arange(50))
    np.testing.assert_array_equal(fits[1][0], np.arange(10, 50))
    np.testing.assert_array_equal(calls[1][0], x[10:])
    np.testing.assert_array_equal(calls[1][1], conf[1, 10:])
    np.testing.assert_array_equal(calls[1][2], correct[1, 10:])
    assert all(c[3]["folds"] == 3 and c[3]["seed"] == 7 for c in calls)
    assert all(c[3]["candidates"] == ("raw",) for c in calls)


@needs_chromium
def test_compare_page_loads_in_chromium(text_compare, tmp_path):
    check_in_browser(text_compare / "report.html", tmp_path, width=1100, height=2600)


def test_compare_rejects_bad_panels(tmp_path):
    path = tmp_path / "dup.csv"
    path.write_text("item,model,confidence,correct,emb_0\nq1,A,0.5,1,0.1\nq1,A,0.6,0,0.1\n")
    with pytest.raises(ValueError, match="repeats item 'q1' for model 'A'"):
        load_panel(path)
    path.write_text("item,model,conf,correct,emb_0\nq1,A,0.5,1,0.1\n")
    with pytest.raises(ValueError, match="has no column 'confidence'; pass the right name with"):
        load_panel(path)
    path.write_text("item,model,confidence,correct,emb_0\nq1,A,1.5,1,0.1\n")
    with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
        load_panel(path)
    path.write_text("item,model,confidence,correct\nq1,A,0.5,1\n")
    with pytest.raises(ValueError, match="--embeddings or the text column with --text-col"):
        load_panel(path)


@pytest.mark.slow
def test_compare_on_the_shipped_demo_set(tmp_path):
    """``miscal-jax compare`` with no --data: the demo set's 3 models. Heat map,
    per-model tables, and a region shared by all three (biology/health questions,
    underconfident after recalibration for every model). About 2 minutes on 2 idle
    cores (raw geometry, 2 folds, 20 permutations)."""
    out = tmp_path / "demo"
    args = ["--folds", "2", "--permutations", "20", "--geometry", "raw", "--quiet"]
    assert main(["compare", "--out", str(out), *args]) == 0
    assert len(load_demo_panel().models) == 3
    summary = json.loads((out / "summary.json").read_text())
    page = (out / "report.html").read_text()
    assert 'alt="model by region heat map"' in page
    assert page.count("<h3>") >= 3
    assert len(summary["models"]) == 3
    for m in summary["models"]:
        assert set(m["methods"]) >= {"isotonic", "local"} and m["method_intervals"]
    shared = [r for r in summary["regions"] if len(r["found_by"]) == 3]
    assert shared, [(r["terms"], r["found_by"]) for r in summary["regions"]]
    assert all(c["excess"] > 0 for c in shared[0]["cells"].values())
