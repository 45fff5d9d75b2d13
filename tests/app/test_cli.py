"""End-to-end tests of ``miscal-jax report``: outputs, bad input, interruption, determinism."""

import csv
import gzip
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from miscal_jax.app import cli as cli_module
from miscal_jax.app import report as report_module
from miscal_jax.app.cli import main
from miscal_jax.synthetic.planted import make_planted

FAST = ["--folds", "3", "--permutations", "20", "--quiet"]
README = Path(__file__).resolve().parents[2] / "README.md"
ONE_THREAD = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"


@pytest.fixture(scope="module")
def planted_npz(tmp_path_factory):
    d = make_planted(300, seed=0, amplitude=0.25)
    path = tmp_path_factory.mktemp("data") / "planted.npz"
    np.savez(path, embeddings=d.embeddings, confidence=d.conf, correct=d.correct, group=d.region)
    return path


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """120 items, 8-d: the smallest data set the subprocess tests run on."""
    d = make_planted(120, seed=0, amplitude=0.25)
    path = tmp_path_factory.mktemp("small") / "small.npz"
    np.savez(path, embeddings=d.embeddings, confidence=d.conf, correct=d.correct)
    return path


def _check_outputs(out, n):
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n"] == n
    het = summary["heterogeneity"]
    # the permutation p-value is (1 + #{null >= statistic}) / (1 + B): a multiple of 1 / (B + 1)
    b = het["permutations"]
    assert b == 20 and het["p_value"] * (b + 1) == pytest.approx(round(het["p_value"] * (b + 1)))
    assert 1 / (b + 1) - 1e-12 <= het["p_value"] <= 1 + 1e-12
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
    assert not [p for p in out.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    return summary


@pytest.mark.slow
def test_report_on_npz(planted_npz, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["report", "--data", str(planted_npz), "--out", str(out), *FAST]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""  # --quiet: no bars, no stage lines, only the result line
    assert captured.out.count("\n") == 1 and captured.out.startswith("heterogeneity p = ")
    summary = _check_outputs(out, 300)
    assert summary["methods"]["local"]["regional_error"] is not None


@pytest.mark.slow
def test_report_on_csv_with_npy(planted_npz, tmp_path):
    """The same items as test_report_on_npz (so the compiled fit is shared), as a CSV + .npy."""
    d = np.load(planted_npz)
    np.save(tmp_path / "emb.npy", d["embeddings"])
    with open(tmp_path / "t.csv", "w") as f:
        f.write("conf,ok,text\n")
        f.writelines(
            f"{c!r},{int(y)},question {i}\n"
            for i, (c, y) in enumerate(zip(d["confidence"].tolist(), d["correct"], strict=True))
        )
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
    _check_outputs(tmp_path / "out", 300)


# the main job end to end (over a minute): with the slow checks, in CI too
@pytest.mark.slow
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
    # stderr is not a terminal here: one line per stage, no progress-bar carriage returns
    assert "\r" not in proc.stderr and "it/s" not in proc.stderr
    stages = proc.stderr.splitlines()
    assert 4 <= len(stages) <= 8 and all(s.startswith("miscal-jax: [") for s in stages)


# ---------------------------------------------------------------------------
# Bad input: one line naming the argument, the place and the fix; exit code 2;
# no traceback; nothing written. Each case builds its bad input in a folder and
# returns the command-line arguments. The README's bad-input table lists them.

N, D = 40, 3
CASES = {}


def case(description, *expected):
    def register(build):
        CASES[description] = (build, expected)
        return build

    return register


def _columns(n=N, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, D)).round(4)
    p = rng.uniform(0.05, 0.95, n).round(4)
    y = (np.arange(n) % 3 != 0).astype(int)
    return x, p, y


def _csv(n=N, header=None, cell=None):
    """A good table as CSV text; ``cell=(row, col, text)`` replaces one cell."""
    x, p, y = _columns(n)
    rows = [[f"{p[i]}", f"{y[i]}", *(f"{v}" for v in x[i])] for i in range(n)]
    if cell is not None:
        rows[cell[0]][cell[1]] = cell[2]
    head = header or ["confidence", "correct", *(f"emb_{j}" for j in range(D))]
    return "\n".join(",".join(r) for r in [head, *rows]) + "\n"


def _data(folder, name, content, *extra):
    path = folder / name
    if isinstance(content, str):
        path.write_text(content)
    else:
        path.write_bytes(content)
    return ["--data", str(path), *extra]


def _npz_bytes(**arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _good_npz(**change):
    x, p, y = _columns()
    arrays = {"embeddings": x, "confidence": p, "correct": y, **change}
    return _npz_bytes(**arrays)


def _parquet_bytes():
    import pyarrow as pa
    import pyarrow.parquet as pq

    x, p, y = _columns()
    cols = {"confidence": p, "correct": y, **{f"emb_{j}": x[:, j] for j in range(D)}}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def _jsonl(rows):
    return "".join(json.dumps(r) + "\n" for r in rows)


def _json_rows():
    x, p, y = _columns()
    return [
        {"confidence": p[i], "correct": int(y[i]), **{f"emb_{j}": x[i, j] for j in range(D)}}
        for i in range(N)
    ]


@case("no such file", "data: no such file")
def _(f):
    return ["--data", str(f / "missing.csv")]


@case("a folder instead of a file", "data: ", "is a folder, not a file")
def _(f):
    (f / "folder.csv").mkdir()
    return ["--data", str(f / "folder.csv")]


@case("unreadable file (no read permission)", "data: cannot read", "permission denied")
def _(f):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod 000 does not stop root from reading")
    args = _data(f, "locked.csv", _csv())
    os.chmod(f / "locked.csv", 0)
    return args


@case("empty file (0 bytes)", "data: ", "is empty (0 bytes)")
def _(f):
    return _data(f, "empty.csv", "")


@case("only blank lines", "data: ", "holds only blank space")
def _(f):
    return _data(f, "blank.csv", "\n \n\n")


@case("header-only table", "data: ", "has a header but no data rows")
def _(f):
    return _data(f, "header.csv", _csv().splitlines()[0] + "\n")


@case("unknown extension (.xlsx)", "data: ", "unknown extension; use .npz, .csv")
def _(f):
    return _data(f, "results.xlsx", _csv())


@case("truncated .csv.gz", "data: ", "damaged or truncated gzip file", "gzip -t")
def _(f):
    raw = gzip.compress(_csv(200).encode())
    return _data(f, "cut.csv.gz", raw[: len(raw) // 2])


@case("corrupt .csv.gz (bytes overwritten)", "data: ", "damaged or truncated gzip file")
def _(f):
    raw = bytearray(gzip.compress(_csv(200).encode()))
    raw[len(raw) // 2 : len(raw) // 2 + 16] = b"\x00" * 16
    return _data(f, "bad.csv.gz", bytes(raw))


@case(".csv.gz that is not gzip-compressed", "data: ", "ends in .gz but is not gzip")
def _(f):
    return _data(f, "plain.csv.gz", _csv())


@case("truncated .npz", "data: ", "is not a readable .npz file", "numpy.savez")
def _(f):
    raw = _good_npz()
    return _data(f, "cut.npz", raw[: len(raw) // 2])


@case("text file named .npz", "data: ", "is not a readable .npz file")
def _(f):
    return _data(f, "text.npz", _csv())


@case(".npz with an object (pickled) array", "data: array 'text'", "holds Python objects")
def _(f):
    return _data(f, "obj.npz", _good_npz(text=np.array(["a", None] * (N // 2), dtype=object)))


@case(".npz arrays of different lengths", "conf: has 39 rows but embeddings has 40")
def _(f):
    return _data(f, "short.npz", _good_npz(confidence=_columns()[1][:-1]))


@case("truncated .parquet", "data: ", "is not a readable parquet file")
def _(f):
    raw = _parquet_bytes()
    return _data(f, "cut.parquet", raw[: len(raw) // 2])


@case("CSV text named .parquet", "data: ", "is not a readable parquet file")
def _(f):
    return _data(f, "text.parquet", _csv())


@case("non-UTF-8 text (Latin-1 byte)", "data: ", "is not UTF-8 text (byte 0xe9 on line 4)")
def _(f):
    lines = _csv().splitlines()
    lines = [lines[0] + ",text"] + [line + ",q" for line in lines[1:]]
    lines[3] += "caf\xe9"
    return _data(f, "latin1.csv", ("\n".join(lines) + "\n").encode("latin-1"))


@case("ragged CSV row (a field missing)", "data: line 6 of", "has 4 fields but the header has 5")
def _(f):
    lines = _csv().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0]
    return _data(f, "ragged.csv", "\n".join(lines) + "\n")


@case("duplicated column name", "data: column 'confidence' appears more than once")
def _(f):
    return _data(
        f, "dup.csv", _csv(header=["confidence", "correct", "emb_0", "emb_1", "confidence"])
    )


@case(
    "semicolon-separated file",
    "data: ",
    "has no column 'confidence'; the header looks ';'-separated",
)
def _(f):
    return _data(f, "semi.csv", _csv().replace(",", ";"))


@case("confidence column missing", "has no column 'confidence'; pass the right name with")
def _(f):
    return _data(f, "renamed.csv", _csv(header=["p", "correct", "emb_0", "emb_1", "emb_2"]))


@case("no embedding columns and no --embeddings", "data: ", "has no emb_0.. columns")
def _(f):
    return _data(f, "noemb.csv", _csv(header=["confidence", "correct", "a", "b", "c"]))


@case("embedding columns with a gap", "data: ", "up to emb_3 but no emb_1")
def _(f):
    return _data(f, "gap.csv", _csv(header=["confidence", "correct", "emb_0", "emb_2", "emb_3"]))


@case("string in a numeric column", "confidence: value 'high' on line 5 of", "not a number")
def _(f):
    return _data(f, "str.csv", _csv(cell=(3, 0, "high")))


@case("boolean text in the confidence column", "confidence: value 'true' on line 3", "is a boolean")
def _(f):
    return _data(f, "bool.csv", _csv(cell=(1, 0, "true")))


@case("correctness as yes/no", "correct: value 'yes' on line 2", "write 1 for a right answer")
def _(f):
    return _data(f, "yes.csv", _csv(cell=(0, 1, "yes")))


@case("correctness value 2", "correct: value 2 at index 7 is not 0 or 1", "line 9 of")
def _(f):
    return _data(f, "two.csv", _csv(cell=(7, 1, "2")))


@case(
    "confidences as percentages (0 to 100)",
    "conf: values run up to",
    "look like percentages (0 to 100); divide them by 100",
)
def _(f):
    x, p, y = _columns()
    return _data(f, "pct.npz", _good_npz(confidence=(p * 100).round(1)))


@case("confidence with a % sign", "confidence: value '85%'", "drop the % sign")
def _(f):
    return _data(f, "pctsign.csv", _csv(cell=(2, 0, "85%")))


@case("confidences as logits", "conf: value -1.2 at index 4 is outside [0, 1]", "sigmoid")
def _(f):
    return _data(f, "logit.csv", _csv(cell=(4, 0, "-1.2")))


@case("NaN in embeddings", "embeddings: non-finite value nan at index (3, 1)", "column 'emb_1'")
def _(f):
    return _data(f, "nan.csv", _csv(cell=(3, 3, "nan")))


@case("inf in embeddings (.npz)", "embeddings: non-finite value inf at index (5, 0)", "drop")
def _(f):
    x = _columns()[0]
    x[5, 0] = np.inf
    return _data(f, "inf.npz", _good_npz(embeddings=x))


@case("empty cell in an embedding column", "emb_2: empty value on line 4", "fill it in")
def _(f):
    return _data(f, "hole.csv", _csv(cell=(2, 4, "")))


@case("embeddings too large for float32", "embeddings: value 1e+30", "rescale")
def _(f):
    x = _columns()[0]
    x[6, 2] = 1e30
    return _data(f, "huge.npz", _good_npz(embeddings=x))


@case("JSON line that is not an object", "data: line 3 of", "is not a JSON object")
def _(f):
    rows = _jsonl(_json_rows()).splitlines()
    rows[2] = "[0.5, 1]"
    return _data(f, "arr.jsonl", "\n".join(rows) + "\n")


@case("JSON line that is not JSON", "data: line 2 of", "is not JSON")
def _(f):
    rows = _jsonl(_json_rows()).splitlines()
    rows[1] = "{confidence: 0.5"
    return _data(f, "broken.jsonl", "\n".join(rows) + "\n")


@case("JSON lines with a key missing (ragged rows)", "emb_2: empty value on line 3")
def _(f):
    rows = _json_rows()
    del rows[2]["emb_2"]
    return _data(f, "ragged.jsonl", _jsonl(rows))


@case("embeddings as a list column", "data: ", "column 'embedding' holds lists")
def _(f):
    x, p, y = _columns()
    rows = [{"confidence": p[i], "correct": int(y[i]), "embedding": list(x[i])} for i in range(N)]
    return _data(f, "lists.jsonl", _jsonl(rows))


@case("--embeddings .npy with a different row count", "embeddings: ", "has 30 rows but")
def _(f):
    np.save(f / "short.npy", np.zeros((30, 4)))
    return _data(
        f,
        "t.csv",
        _csv(header=["confidence", "correct", "a", "b", "c"]),
        "--embeddings",
        str(f / "short.npy"),
    )


@case("--embeddings .npy holding a ragged (object) array", "embeddings: ", "holds Python objects")
def _(f):
    ragged = np.empty(N, dtype=object)
    ragged[:] = [[0.0] * (1 + i % 2) for i in range(N)]
    np.save(f / "ragged.npy", ragged, allow_pickle=True)
    return _data(f, "t.csv", _csv(), "--embeddings", str(f / "ragged.npy"))


@case("--embeddings file that is not .npy", "embeddings: ", "is not a readable .npy array")
def _(f):
    (f / "emb.npy").write_text("0.1,0.2\n")
    return _data(f, "t.csv", _csv(), "--embeddings", str(f / "emb.npy"))


@case("--embeddings .npy that is 1-D", "embeddings: expected shape [n, d], got shape (40,)")
def _(f):
    np.save(f / "flat.npy", np.zeros(N))
    return _data(f, "t.csv", _csv(), "--embeddings", str(f / "flat.npy"))


@case("--embeddings given with .npz data", "embeddings: only for tables")
def _(f):
    np.save(f / "e.npy", np.zeros((N, 2)))
    return _data(f, "d.npz", _good_npz(), "--embeddings", str(f / "e.npy"))


@case("--embeddings without --data", "--embeddings: only used together with --data")
def _(f):
    return ["--embeddings", "x.npy"]


@case("same column for confidence and correctness", "correct_col: same column as")
def _(f):
    return _data(f, "t.csv", _csv(), "--confidence-col", "correct")


@case("fewer rows than the minimum (20)", "embeddings: got 5 rows, need at least 20")
def _(f):
    return _data(f, "tiny.csv", _csv(5))


@case("one class only (every answer right)", "correct: every one of the 40 items has correct = 1")
def _(f):
    x, p, y = _columns()
    return _data(f, "allright.npz", _good_npz(correct=np.ones(N)))


@case("--folds larger than the data allows", "--folds: 30 folds need at least 60 rows")
def _(f):
    return _data(f, "t.csv", _csv(), "--folds", "30")


@case("--folds 1", "--folds: need at least 2")
def _(f):
    return ["--folds", "1"]


@case("--folds not an integer", "argument --folds: invalid int value: 'abc'", "--help")
def _(f):
    return ["--folds", "abc"]


@case("--permutations 0", "--permutations: need at least 1")
def _(f):
    return ["--permutations", "0"]


@case("negative --seed", "--seed: must be an integer in [0, 4294967295], got -1")
def _(f):
    return ["--seed", "-1"]


@case("unknown demo model", "model: 'claude' matches 0 of the demo models")
def _(f):
    return ["--model", "claude"]


# with --data, --model names the target of a long panel table: a wide table lacks its columns
@case("--model with user data", "has no column 'item'", "--item-col")
def _(f):
    return _data(f, "t.csv", _csv(), "--model", "gpt")


@case("--out is a file", "--out: ", "exists and is not a folder")
def _(f):
    (f / "report").write_text("keep me")
    return _data(f, "t.csv", _csv())


@case("--out inside a file", "--out: ", "is a file, so", "cannot be created")
def _(f):
    (f / "afile").write_text("keep me")
    return [*_data(f, "t.csv", _csv()), "--out", str(f / "afile" / "report")]


@case("--out is a symbolic link", "--out: ", "is a symbolic link; pass the folder it points to")
def _(f):
    (f / "real").mkdir()
    (f / "report").symlink_to(f / "real")
    return _data(f, "t.csv", _csv())


@case("--out holds other files", "--out: ", "already holds files that are not a miscal-jax report")
def _(f):
    (f / "report").mkdir()
    (f / "report" / "thesis.tex").write_text("keep me")
    return _data(f, "t.csv", _csv())


@case("--out in a folder without write permission", "--out: cannot write in", "permission denied")
def _(f):
    if os.geteuid() == 0:
        pytest.skip("running as root: a read-only folder does not stop root from writing")
    (f / "ro").mkdir()
    os.chmod(f / "ro", 0o555)
    return [*_data(f, "t.csv", _csv()), "--out", str(f / "ro" / "report")]


def _snapshot(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("description", list(CASES))
def test_bad_input_exits_2_with_one_line(description, tmp_path, capsys):
    build, expected = CASES[description]
    folder = tmp_path / "in"
    folder.mkdir()
    args = build(folder)
    if "--out" not in args:
        args += ["--out", str(folder / "report")]
    before = _snapshot(folder)
    code = main(["report", *args, "--quiet"])
    captured = capsys.readouterr()
    err = captured.err
    assert code == 2, err
    assert captured.out == ""
    assert err.startswith("miscal-jax: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for text in expected:
        assert text in err, err
    # nothing written: the folder holds exactly what the case put there
    assert _snapshot(folder) == before


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path):
    """The issue's example, as a user runs it: a truncated gzip file."""
    raw = gzip.compress(_csv(200).encode())
    (tmp_path / "bad.csv.gz").write_bytes(raw[: len(raw) // 2])
    proc = subprocess.run(
        [sys.executable, "-m", "miscal_jax", "report", "--data", str(tmp_path / "bad.csv.gz")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1 and "damaged or truncated gzip" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv.gz"]


def _readme_rows() -> list[str]:
    text = README.read_text()
    section = text.split("## Bad input", 1)[1].split("\n## ", 1)[0]
    return [
        line.split("|")[1].strip()
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| input") and "---" not in line
    ]


def test_readme_bad_input_table_lists_every_tested_case():
    rows = _readme_rows()
    assert sorted(rows) == sorted(CASES), set(rows) ^ set(CASES)


# ---------------------------------------------------------------------------
# Nothing partial: the report appears complete or not at all.


def _interrupt_while_writing(monkeypatch, action):
    """Makes the report fail after points.csv is written, inside the staging folder."""
    original = report_module.field_map_png

    def field_map_png(*args, **kwargs):
        original(*args, **kwargs)
        action()

    monkeypatch.setattr(report_module, "field_map_png", field_map_png)


@pytest.mark.parametrize(
    "action, code, line",
    [
        (lambda: os.kill(os.getpid(), signal.SIGTERM), 143, "terminated (SIGTERM)"),
        (lambda: (_ for _ in ()).throw(KeyboardInterrupt()), 130, "interrupted (Ctrl-C)"),
        (lambda: (_ for _ in ()).throw(OSError(28, "No space left on device")), 2, "--out:"),
    ],
    ids=["sigterm", "ctrl-c", "disk-full"],
)
def test_interrupted_report_leaves_nothing(
    planted_npz, tmp_path, monkeypatch, capsys, action, code, line
):
    _interrupt_while_writing(monkeypatch, action)
    out = tmp_path / "deep" / "report"
    args = ["report", "--data", str(planted_npz), "--out", str(out), *FAST, "--geometry", "raw"]
    assert main(args) == code
    err = capsys.readouterr().err
    assert line in err and err.count("\n") == 1 and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # not even the folder above the report


def test_existing_report_replaced_only_by_a_complete_one(
    planted_npz, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "report"
    args = ["report", "--data", str(planted_npz), "--out", str(out), *FAST, "--geometry", "raw"]
    args.remove("--quiet")
    assert main(args) == 0
    err = capsys.readouterr().err
    # stderr is not a terminal under pytest: one line per stage, no progress bars
    assert "\r" not in err and "it/s" not in err
    assert [re.sub(r"\[ *[\d.]+ s\] ", "", s) for s in err.splitlines()] == [
        "miscal-jax: cross-fitting 3 folds (300 items, 8-d embeddings)",
        "miscal-jax: heterogeneity test (20 permutations)",
        "miscal-jax: regime discovery",
        "miscal-jax: intervals and metrics",
        f"miscal-jax: writing the report to {out}",
    ]
    before = _snapshot(out)
    with monkeypatch.context() as m:
        _interrupt_while_writing(m, lambda: os.kill(os.getpid(), signal.SIGTERM))
        assert main([*args, "--seed", "1"]) == 143
    assert _snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["report"]
    assert main([*args, "--seed", "1"]) == 0
    assert _snapshot(out)["points.csv"] != before["points.csv"]
    assert [p.name for p in tmp_path.iterdir()] == ["report"]


@pytest.mark.parametrize(
    "sig, code, line",
    [
        (signal.SIGTERM, 143, "miscal-jax: terminated (SIGTERM); no report written."),
        (signal.SIGINT, 130, "miscal-jax: interrupted (Ctrl-C); no report written."),
    ],
    ids=["SIGTERM", "SIGINT"],
)
def test_killed_midway_leaves_no_report_folder(small_npz, tmp_path, sig, code, line):
    """A real process, signalled while it cross-fits: one line, no traceback, no folder.

    The child starts with SIGINT at its default, as under a terminal: a
    runner that ignores SIGINT (some pytest-xdist set-ups do) would pass that
    on, and Python then never turns Ctrl-C into KeyboardInterrupt. (A
    handled signal is reset to its default across exec; an ignored one is not.)"""
    out = tmp_path / "report"
    before = signal.signal(signal.SIGINT, signal.default_int_handler)
    proc = subprocess.Popen(
        [sys.executable, "-m", "miscal_jax", "report", "--data", str(small_npz)]
        + ["--out", str(out), "--folds", "2", "--permutations", "10", "--geometry", "raw"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    signal.signal(signal.SIGINT, before)
    try:
        first = proc.stderr.readline()
        assert "cross-fitting" in first, first
        time.sleep(0.5)
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert stdout == "" and "Traceback" not in stderr
    assert stderr.splitlines()[-1] == line
    assert list(tmp_path.iterdir()) == []


def test_signal_in_the_middle_of_a_long_compiled_stage_stops_within_5_s(tmp_path):
    """A signal during the cross-fit's compilation and run (tens of seconds in XLA,
    where Python runs no handler): the command stops within 5 s, exit 143, one
    line, nothing left behind (the work runs in a worker thread)."""
    d = make_planted(3000, seed=1, amplitude=0.2, nuisance_dim=24)
    data = tmp_path / "data.npz"
    np.savez(data, embeddings=d.embeddings, confidence=d.conf, correct=d.correct)
    out = tmp_path / "report"
    proc = subprocess.Popen(
        [sys.executable, "-m", "miscal_jax", "report", "--data", str(data), "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "MISCAL_JAX_CACHE_DIR": ""},
    )
    try:
        first = proc.stderr.readline()
        assert "cross-fitting" in first, first
        time.sleep(3.0)  # inside the fit's compilation or its run
        assert proc.poll() is None, "the stage was too short to test"
        signalled = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=60)
        waited = time.perf_counter() - signalled
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, stderr
    assert waited < 5.0, waited
    assert "Traceback" not in stderr
    assert stderr.splitlines()[-1] == "miscal-jax: terminated (SIGTERM); no report written."
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.npz"]


# ---------------------------------------------------------------------------
# Progress output


# ---------------------------------------------------------------------------
# Determinism


def _run_report(data, out, xla_flags, cpus, cache=""):
    """One report in a fresh process limited to ``cpus``; ``xla_flags=None``
    leaves XLA_FLAGS unset, so the command's own thread setting applies;
    ``cache`` is the compilation cache's folder (``""``: none)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["MISCAL_JAX_CACHE_DIR"] = str(cache)
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    proc = subprocess.run(
        [sys.executable, "-m", "miscal_jax", "report", "--data", str(data), "--out", str(out)]
        + ["--folds", "2", "--permutations", "10", "--quiet"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        preexec_fn=lambda: os.sched_setaffinity(0, cpus),
    )
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary.pop("seconds") >= 0
    return summary, (out / "points.csv").read_bytes()


def test_matrix_threads_pinned_unless_asked(monkeypatch):
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    with cli_module._matrix_threads_pinned():
        assert os.environ["XLA_FLAGS"] == ONE_THREAD
    assert "XLA_FLAGS" not in os.environ
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
    with cli_module._matrix_threads_pinned():
        assert os.environ["XLA_FLAGS"] == "--xla_cpu_multi_thread_eigen=true"
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")
    with cli_module._matrix_threads_pinned():
        assert os.environ["XLA_FLAGS"].split() == [
            "--xla_force_host_platform_device_count=2",
            *ONE_THREAD.split(),
        ]
    assert os.environ["XLA_FLAGS"] == "--xla_force_host_platform_device_count=2"


def test_compilation_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MISCAL_JAX_CACHE_DIR", str(tmp_path / "c"))
    assert cli_module._cache_dir() == tmp_path / "c"
    monkeypatch.setenv("MISCAL_JAX_CACHE_DIR", "")
    assert cli_module._cache_dir() is None
    monkeypatch.delenv("MISCAL_JAX_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cli_module._cache_dir() == tmp_path / "miscal_jax" / "xla"
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MISCAL_JAX_CACHE_DIR", str(tmp_path / "file" / "xla"))
    assert cli_module._cache_dir() is None  # cannot be created: run uncached


def test_compilation_cache_settings_restored(monkeypatch, tmp_path):
    import jax

    before = jax.config.jax_persistent_cache_min_compile_time_secs
    monkeypatch.setenv("MISCAL_JAX_CACHE_DIR", str(tmp_path))
    with cli_module._compilation_cached():
        assert jax.config.jax_compilation_cache_dir == str(tmp_path)
        assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
    assert jax.config.jax_compilation_cache_dir is None
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before
    monkeypatch.setenv("MISCAL_JAX_CACHE_DIR", "")
    with cli_module._compilation_cached():
        assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.slow
def test_same_seed_gives_the_same_bytes(small_npz, tmp_path):
    """Two runs on one CPU with one XLA thread, the first filling the
    compilation cache and the second reading it, and one on two CPUs with
    XLA's default threads and no cache (the command pins matrix products to
    one thread), give byte-identical points.csv and summary.json apart from
    the run time. (Three subprocess runs on 120 items, all geometries: 2 to 5
    minutes on 2 cores.)"""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    one, two = {cpus[0]}, set(cpus[:2])
    cache = tmp_path / "cache"
    runs = [
        _run_report(small_npz, tmp_path / "a", ONE_THREAD, one, cache),
        _run_report(small_npz, tmp_path / "b", ONE_THREAD, one, cache),
        _run_report(small_npz, tmp_path / "c", None, two),
    ]
    assert any(cache.iterdir()), "the first run wrote no compiled programs"
    for summary, points in runs[1:]:
        assert summary == runs[0][0]
        assert points == runs[0][1]
