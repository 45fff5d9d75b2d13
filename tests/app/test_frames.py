"""DataFrames in (pandas, polars) with the CLI's column rules, and a leaderboard table alone."""

import csv
import json

import numpy as np
import pandas as pd
import pytest

from miscal_jax.app import api
from miscal_jax.app.cli import main
from miscal_jax.app.io import load_data, load_with_panel
from miscal_jax.app.tables import from_frame

FAST = {"folds": 3, "permutations": 20, "progress": False, "candidates": ("raw",)}


def _single(n=60, d=3, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(n, d)).round(4), columns=[f"emb_{j}" for j in range(d)])
    df["confidence"] = rng.uniform(0.3, 0.95, n).round(4)
    df["correct"] = (rng.random(n) < df["confidence"]).astype(int)
    df["text"] = [f"question {i}" for i in range(n)]
    return df


def _leaderboard(n=150, models=6, seed=0) -> pd.DataFrame:
    """item, model, confidence, correct: no embeddings, no texts; a third of items hard for all."""
    rng = np.random.default_rng(seed)
    hard = rng.random(n) < 0.35
    rows = []
    for j in range(models):
        for i in range(n):
            c = float(np.clip(0.7 + 0.05 * rng.standard_normal(), 0.01, 0.99))
            right = rng.random() < (0.3 if hard[i] else 0.8)
            rows.append({"item": f"q{i}", "model": f"m{j}", "confidence": c, "correct": int(right)})
    return pd.DataFrame(rows)


def test_pandas_and_polars_equal_the_csv_file(tmp_path):
    df = _single()
    path = tmp_path / "data.csv"
    df.to_csv(path, index=False)
    from_file = load_data(path)
    for frame in (df, pytest.importorskip("polars").from_pandas(df)):
        got = load_data(frame)
        np.testing.assert_array_equal(got.embeddings, from_file.embeddings)
        np.testing.assert_array_equal(got.conf, from_file.conf)
        np.testing.assert_array_equal(got.correct, from_file.correct)
        assert got.text == from_file.text and got.meta["source"] == "the DataFrame"


def test_frame_errors_name_the_row_and_column():
    df = _single()
    df.loc[4, "confidence"] = np.nan
    with pytest.raises(ValueError, match="confidence: empty value on row 4 of the DataFrame"):
        load_data(df)
    df = _single().set_index(pd.Index([f"id{i}" for i in range(60)]))
    df.loc["id7", "correct"] = 2
    with pytest.raises(ValueError, match=r"correct.*row 7 \(index 'id7'\) of the DataFrame"):
        load_data(df)
    with pytest.raises(ValueError, match="has no column 'conf'; pass the right name"):
        load_data(_single(), confidence_col="conf")
    with pytest.raises(ValueError, match="column name 0 of the DataFrame is not a string"):
        from_frame(pd.DataFrame(np.zeros((3, 2))))
    with pytest.raises(ValueError, match="has columns but no rows"):
        load_data(_single().iloc[:0])
    with pytest.raises(ValueError, match="expected a path, a pandas or a polars DataFrame"):
        from_frame([1, 2])


def test_long_frame_equals_long_file(tmp_path):
    df = _leaderboard(n=40, models=3)
    path = tmp_path / "long.csv"
    df.to_csv(path, index=False)
    a, b = load_with_panel(df, model="m0"), load_with_panel(path, model="m0")
    np.testing.assert_array_equal(a.panel_correct, b.panel_correct)
    np.testing.assert_array_equal(a.target.conf, b.target.conf)
    assert a.item_embeddings is None and a.target.embeddings.shape == (40, 0)


@pytest.mark.slow
def test_leaderboard_table_alone_reports_in_the_profile_geometry(tmp_path):
    """item, model, confidence, correct and nothing else: a report from a DataFrame, no file."""
    out = tmp_path / "report"
    summary = api.report(_leaderboard(n=300, models=8), out, model="m0", **FAST)
    panel = summary["source"]["panel"]
    assert panel["geometry"] == "profile" and panel["item_embeddings"] is False
    assert panel["names"] == [f"m{j}" for j in range(1, 8)]
    assert summary["regimes"], "the items hard for every model form a regime"
    hardest = min(summary["regimes"], key=lambda r: r["panel"]["accuracy"])
    assert hardest["description"] == "harder for the panel"
    assert hardest["panel"]["accuracy"] < hardest["panel"]["overall"] - 0.1
    assert hardest["panel"]["lower_for"] == hardest["panel"]["models"] == 7
    html = (out / "report.html").read_text()
    assert "no item embeddings or texts" in html and "The other models on these items" in html
    assert "no item embeddings or texts" in (out / "report.md").read_text()


@pytest.mark.slow
def test_leaderboard_cli_encoder_needs_embeddings_and_text_col_embeds(tmp_path, capsys):
    path = tmp_path / "long.csv"
    df = _leaderboard(n=60, models=4)
    topics = ("contract law", "organic chemistry", "roman history", "cell biology", "optics")
    df["text"] = [f"a question on {topics[int(i[1:]) % 5]}" for i in df["item"]]
    df.to_csv(path, index=False, quoting=csv.QUOTE_MINIMAL)
    base = ["report", "--data", str(path), "--model", "m1", "--out", str(tmp_path / "r")]
    assert main([*base, "--panel-geometry", "encoder"]) == 2
    err = capsys.readouterr().err
    assert "--panel-geometry encoder:" in err and "no item embeddings" in err
    assert not (tmp_path / "r").exists()
    data = api.load(path, model="m1", text_col="text", text_embedding="lsa")
    assert data.meta["text_embedding"] == "lsa" and data.text[0].startswith("a question")
    assert data.meta["panel"]["item_embeddings"] is True
    cli = ["--folds", "3", "--permutations", "20", "--quiet", "--geometry", "raw"]
    out = tmp_path / "enc"
    base[-1] = str(out)
    argv = [*base, "--text-col", "text", "--text-embedding", "lsa", "--panel-geometry", "encoder"]
    assert main([*argv, *cli]) == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["source"]["panel"]["geometry"] == "encoder"
