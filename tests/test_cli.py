"""End-to-end tests of ``miscal-jax report``."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from miscal_jax.cli import main
from miscal_jax.synthetic import make_planted

FAST = ["--folds", "3", "--permutations", "20", "--quiet"]


@pytest.fixture(scope="module")
def planted_npz(tmp_path_factory):
    d = make_planted(300, seed=0, amplitude=0.25)
    path = tmp_path_factory.mktemp("data") / "planted.npz"
    np.savez(path, embeddings=d.embeddings, confidence=d.conf, correct=d.correct, group=d.region)
    return path


def _check_outputs(out, n):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == n
    assert 0 < summary["heterogeneity"]["p_value"] <= 1
    for m in ("uncorrected", "temperature", "isotonic", "local"):
        assert set(summary["methods"][m]) >= {"ece", "brier", "nll", "auroc", "regional_error"}
    for r in summary["regimes"]:
        assert set(r) >= {
            "id",
            "size",
            "sign",
            "mean_residual",
            "ci_low",
            "ci_high",
            "p_adjusted",
            "examples",
        }
    with open(out / "points.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert set(rows[0]) >= {"field", "field_se", "n_eff", "regime", "corrected_confidence"}
    assert [int(r["index"]) for r in rows] == list(range(n))
    report = (out / "report.md").read_text()
    assert "reliability.png" in report
    assert (out / "reliability.png").stat().st_size > 1000
    assert (out / "field_map.png").stat().st_size > 1000
    return summary


def test_report_on_npz(planted_npz, tmp_path):
    assert main(["report", "--data", str(planted_npz), "--out", str(tmp_path), *FAST]) == 0
    summary = _check_outputs(tmp_path, 300)
    assert summary["methods"]["local"]["regional_error"] is not None


def test_report_on_csv_with_npy(tmp_path):
    d = make_planted(200, seed=1)
    np.save(tmp_path / "emb.npy", d.embeddings)
    with open(tmp_path / "t.csv", "w") as f:
        f.write("conf,ok,text\n")
        f.writelines(f"{d.conf[i]},{int(d.correct[i])},question {i}\n" for i in range(200))
    code = main(
        [
            "report",
            "--data",
            str(tmp_path / "t.csv"),
            "--embeddings",
            str(tmp_path / "emb.npy"),
            "--confidence-col",
            "conf",
            "--correct-col",
            "ok",
            "--out",
            str(tmp_path / "out"),
            *FAST,
        ]
    )
    assert code == 0
    _check_outputs(tmp_path / "out", 200)


def test_report_on_shipped_data(tmp_path):
    """The default job, as the README runs it (fewer folds and permutations)."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "miscal_jax",
            "report",
            "--out",
            str(out),
            "--folds",
            "2",
            "--permutations",
            "20",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    summary = _check_outputs(out, 2993)
    m = summary["methods"]
    assert m["local"]["regional_error"] < m["isotonic"]["regional_error"]
    assert len(summary["regimes"]) >= 1


@pytest.mark.parametrize(
    "args, match",
    [
        (["--data", "/no/such/file.csv"], "data: no such file"),
        (["--model", "claude"], "model: 'claude' matches 0"),
        (["--confidence-col", "linguistic"], "confidence: 'linguistic' is not in the demo set"),
        (["--folds", "1"], "--folds: need at least 2"),
        (["--permutations", "0"], "--permutations: need at least 1"),
        (["--embeddings", "x.npy"], "--embeddings: only used together with --data"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, match, capsys):
    assert main(["report", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and err.count("\n") == 1


def test_bad_values_exit_2(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("confidence,correct,emb_0\n" + "0.5,1,0.1\n" * 29 + "0.5,2,0.3\n")
    assert main(["report", "--data", str(path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "correct: value 2.0 at index 29 is not 0 or 1" in err
    path.write_text("confidence,correct,emb_0\n" + "0.5,1,0.1\n" * 30)
    assert main(["report", "--data", str(path), "--model", "gpt", "--quiet"]) == 2
    assert "--model: only selects" in capsys.readouterr().err
    path.write_text("confidence,correct,emb_0\n" + "0.5,1,0.1\n" * 3)
    assert main(["report", "--data", str(path), "--quiet"]) == 2
    assert "need at least 20" in capsys.readouterr().err


def test_subprocess_error_has_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "miscal_jax", "report", "--data", str(tmp_path / "x.parquet")],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "no such file" in proc.stderr
