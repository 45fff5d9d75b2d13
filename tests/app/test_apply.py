"""Fit once, apply later: run_fit saves a model, run_apply writes predictions for new items."""

import csv

import numpy as np
import pytest

from miscal_jax.app.apply import run_apply, run_fit
from miscal_jax.app.io import Dataset
from miscal_jax.model.field_model import load
from miscal_jax.synthetic.planted import make_planted


def _dataset(d, rows):
    return Dataset(
        d.embeddings[rows], d.conf[rows], d.correct[rows], None, None, None, {"source": "test"}
    )


def test_fit_then_apply_writes_predictions(tmp_path):
    d = make_planted(400, seed=4)
    path = tmp_path / "model.msgpack"
    summary = run_fit(
        _dataset(d, slice(0, 300)), path, folds=3, candidates=("raw",), progress=False
    )
    assert summary["items"] == 300 and len(summary["geometry"]) == 3
    assert not list(tmp_path.glob(".*partial*"))
    assert load(path).ref_x.shape == (300, 8)
    out = run_apply(path, _dataset(d, slice(300, 400)), tmp_path / "applied")
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 100
    field = np.array([float(r["field"]) for r in rows])
    low, high = (np.array([float(r[k]) for r in rows]) for k in ("field_low", "field_high"))
    assert np.all(low <= field) and np.all(field <= high)
    assert np.corrcoef(field, d.field[300:])[0, 1] > 0.5
    corrected = np.array([float(r["corrected_conf"]) for r in rows])
    assert np.all((corrected >= 0) & (corrected <= 1))  # the final isotonic map may reach 0 or 1


def test_apply_refuses_other_widths(tmp_path):
    d = make_planted(120, seed=0)
    path = tmp_path / "model.msgpack"
    run_fit(_dataset(d, slice(0, 120)), path, folds=2, candidates=("raw",), progress=False)
    narrow = Dataset(d.embeddings[:, :3], d.conf, d.correct, None, None, None, {})
    with pytest.raises(ValueError, match="data: embeddings have 3 dimensions but the model"):
        run_apply(path, narrow, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli_fit_then_apply_without_outcomes(tmp_path, capsys):
    from miscal_jax.app.cli import main

    d = make_planted(200, seed=1)
    train, new = tmp_path / "train.npz", tmp_path / "new.npz"
    np.savez(train, embeddings=d.embeddings[:150], confidence=d.conf[:150], correct=d.correct[:150])
    np.savez(new, embeddings=d.embeddings[150:], confidence=d.conf[150:])  # no outcomes
    model = tmp_path / "model.msgpack"
    argv = ["fit", "--data", str(train), "--save", str(model), "--folds", "3", "--quiet"]
    assert main([*argv, "--geometry", "raw"]) == 0
    assert "model in" in capsys.readouterr().out
    out = tmp_path / "applied"
    assert main(["apply", "--model", str(model), "--data", str(new), "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 50 and "correct" not in rows[0]
    # a corrupt model file: one line, exit 2, nothing written
    bad = tmp_path / "bad.msgpack"
    bad.write_bytes(b"not a model")
    capsys.readouterr()
    code = main(["apply", "--model", str(bad), "--data", str(new), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        code == 2 and len(err) == 1 and "--model:" in err[0] and "not a miscal_jax model" in err[0]
    )
    assert not (tmp_path / "o2").exists()
