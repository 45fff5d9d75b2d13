import gzip
import json
import os

import numpy as np
import pytest

from miscal_jax.app.io import load_data, load_default


def _arrays(n=60, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, d)), rng.random(n), (rng.random(n) < 0.6).astype(int)


def test_default_data_loads_each_model_and_kind():
    d = load_default()
    assert d.embeddings.shape == (2993, 384) and d.meta["dropped"] == 8
    assert len(d.text) == 2993 and len(d.group_names) == 14
    for model in ("Llama", "Qwen"):
        for kind in ("verbal", "logit"):
            other = load_default(model, kind)
            assert np.all((other.conf >= 0) & (other.conf <= 1))
    with pytest.raises(ValueError, match="model: 'claude' matches 0 of the demo models"):
        load_default("claude")
    with pytest.raises(ValueError, match="confidence: 'linguistic' is not in the demo set"):
        load_default(confidence="linguistic")


def _write_csv(path, x, p, y, extra=None, gz=False):
    header = ["confidence", "correct", "text", "group"] + [f"emb_{j}" for j in range(x.shape[1])]
    rows = [[p[i], y[i], f"q{i}", "ab"[i % 2], *x[i]] for i in range(len(p))]
    body = "\n".join(",".join(str(v) for v in r) for r in [header, *rows]) + "\n"
    (gzip.open if gz else open)(path, "wt").write(body)


@pytest.mark.parametrize("fmt", ["csv", "csv.gz", "jsonl", "parquet", "npz", "csv+npy"])
def test_each_format_round_trips(tmp_path, fmt):
    x, p, y = _arrays()
    path = tmp_path / f"data.{fmt.split('+')[0]}"
    kw = {}
    if fmt in ("csv", "csv.gz"):
        _write_csv(path, x, p, y, gz=fmt == "csv.gz")
    elif fmt == "jsonl":
        with open(path, "w") as f:
            for i in range(len(p)):
                row = {
                    "confidence": p[i],
                    "correct": bool(y[i]),
                    "text": f"q{i}",
                    "group": "ab"[i % 2],
                }
                row.update({f"emb_{j}": x[i, j] for j in range(x.shape[1])})
                f.write(json.dumps(row) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {
            "confidence": p,
            "correct": y,
            "text": [f"q{i}" for i in range(len(p))],
            "group": ["ab"[i % 2] for i in range(len(p))],
        }
        cols.update({f"emb_{j}": x[:, j] for j in range(x.shape[1])})
        pq.write_table(pa.table(cols), path)
    elif fmt == "npz":
        np.savez(
            path,
            embeddings=x,
            confidence=p,
            correct=y,
            text=np.array([f"q{i}" for i in range(len(p))]),
            group=np.arange(len(p)) % 2,
        )
    else:
        with open(path, "w") as f:
            f.write("confidence,correct\n" + "".join(f"{p[i]},{y[i]}\n" for i in range(len(p))))
        np.save(tmp_path / "emb.npy", x)
        kw["embeddings"] = tmp_path / "emb.npy"
    d = load_data(path, **kw)
    np.testing.assert_allclose(d.embeddings, x, rtol=1e-6)
    np.testing.assert_allclose(d.conf, p, rtol=1e-6)
    np.testing.assert_array_equal(d.correct, y)
    if fmt != "csv+npy":
        assert d.text[3] == "q3" and d.group is not None and len(d.group_names) == 2


def test_renamed_columns(tmp_path):
    x, p, y = _arrays()
    path = tmp_path / "d.csv"
    with open(path, "w") as f:
        f.write("p,ok," + ",".join(f"emb_{j}" for j in range(4)) + "\n")
        for i in range(len(p)):
            f.write(f"{p[i]},{y[i]}," + ",".join(str(v) for v in x[i]) + "\n")
    d = load_data(path, confidence_col="p", correct_col="ok")
    assert d.conf.shape == (60,)


def test_lenient_but_unambiguous_tables(tmp_path):
    """Accepted: a UTF-8 byte-order mark, blank lines, spaces around header names,
    true/false for correctness, gzip without a .gz name, gzip-compressed JSON lines."""
    x, p, y = _arrays()
    head = " confidence , correct ," + ",".join(f" emb_{j}" for j in range(4))
    rows = [
        f"{p[i]},{['false', 'TRUE'][y[i]]}," + ",".join(str(v) for v in x[i]) for i in range(60)
    ]
    text = "\ufeff" + head + "\n\n" + "\n".join(rows[:30]) + "\n\n" + "\n".join(rows[30:]) + "\n"
    (tmp_path / "a.csv").write_text(text, encoding="utf-8")
    (tmp_path / "b.csv").write_bytes(gzip.compress(text.encode()))
    for name in ("a.csv", "b.csv"):
        d = load_data(tmp_path / name)
        np.testing.assert_array_equal(d.correct, y)
        np.testing.assert_allclose(d.embeddings, x, rtol=1e-6)
    rows = [{"confidence": p[i], "correct": bool(y[i]), "emb_0": x[i, 0]} for i in range(60)]
    body = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / "c.jsonl.gz").write_bytes(gzip.compress(body.encode()))
    assert load_data(tmp_path / "c.jsonl.gz").embeddings.shape == (60, 1)


def _good_csv(n=30, cell=None):
    rows = [["0.5", "1", "0.1"] for _ in range(n)]
    rows[0][1] = "0"
    if cell:
        rows[cell[0]][cell[1]] = cell[2]
    return "confidence,correct,emb_0\n" + "".join(",".join(r) + "\n" for r in rows)


@pytest.mark.parametrize(
    "content, match",
    [
        (
            "confidence,correct,emb_0\n0.5,1\n",
            r"data: line 2 of .*d\.csv has 2 fields but the header has 3; fix that row",
        ),
        (_good_csv(cell=(0, 1, "yes")), r"correct: value 'yes' on line 2 of .* write 1 for a"),
        (
            _good_csv().replace("confidence", "conf"),
            r"no column 'confidence'; pass the right name with --confidence-col",
        ),
        ("confidence,correct\n" + "0.5,1\n" * 30, r"no emb_0.. columns; pass a row-aligned .npy"),
        (
            _good_csv(cell=(3, 0, "1.5")),
            r"conf: value 1.5 at index 3 is outside .*\(line 5 of .*, column 'confidence'\)",
        ),
        (
            "confidence,correct,emb_0\n" + "50,1,1\n" * 29 + "40,0,1\n",
            r"conf: values run up to 50 .*look like percentages \(0 to 100\); divide them by 100",
        ),
        (_good_csv(cell=(4, 2, "")), r"emb_0: empty value on line 6 of .*; fill it in or drop"),
        (_good_csv(cell=(4, 0, " ")), r"confidence: empty value on line 6"),
        (_good_csv(cell=(4, 2, "FALSE")), r"emb_0: value 'FALSE' on line 6 .* is not a number"),
        (_good_csv(cell=(4, 0, "False")), r"confidence: value 'False' on line 6 .* is a boolean"),
        (
            _good_csv(cell=(2, 2, "inf")),
            r"embeddings: non-finite value inf at index \(2, 0\).*line 4 of .*column 'emb_0'",
        ),
        (
            _good_csv(cell=(2, 2, "1e300")),
            r"embeddings: non-finite value 1e\+300 at index \(2, 0\)",  # beyond float32
        ),
        ("", r"data: .*d\.csv is empty \(0 bytes\)"),
        ("\n\n", r"holds only blank space"),
        ("confidence,correct,emb_0\n", r"has a header but no data rows"),
        ("confidence,correct,emb_0\n\n\n", r"has a header but no data rows"),
        (
            "confidence,correct,emb_0,text\n" + "0.5,1,1,q\n" * 29 + "0.5,0,1," + "a" * 200_000,
            r"line 31 of .* is not valid CSV \(field larger than field limit",
        ),
        (
            "confidence,correct,emb_1,emb_01\n" + "0.5,1,1,1\n" * 30,
            r"columns 'emb_1' and 'emb_01' .* both give embedding coordinate 1",
        ),
        (
            "confidence,correct,emb_0,emb_0\n" + "0.5,1,1,1\n" * 30,
            r"column 'emb_0' appears more than once",
        ),
        (
            "confidence,correct,emb_0\n" + "0.5,1,1\n" * 30,
            None,  # one class only is legal for the library (the CLI refuses it)
        ),
    ],
)
def test_bad_tables(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    if match is None:
        assert load_data(path).correct.sum() == 30
        return
    with pytest.raises(ValueError, match=match):
        load_data(path)


def _parquet(path, **cols):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(cols), path)


@pytest.mark.parametrize(
    "cols, match",
    [
        ({"confidence": [True] * 30}, r"confidence: value True on index 0 of .* is a boolean"),
        ({"confidence": [0.5] * 29 + [None]}, r"confidence: empty value on index 29 of"),
        ({"correct": ["1"] * 29 + ["maybe"]}, r"correct: value 'maybe' on index 29"),
        ({"emb_0": [[0.1, 0.2]] * 30}, r"emb_0: value on index 0 of .* is a JSON list"),
        ({"confidence": [0.5] * 30, "correct": [1] * 30, "emb_0": [1.0] * 30}, None),
    ],
)
def test_bad_parquet_columns(tmp_path, cols, match):
    base = {"confidence": [0.5] * 30, "correct": [0] + [1] * 29, "emb_0": [0.1] * 30}
    path = tmp_path / "d.parquet"
    _parquet(path, **{**base, **cols})
    if match is None:
        assert load_data(path).conf.shape == (30,)
        return
    with pytest.raises(ValueError, match=match):
        load_data(path)


def test_empty_parquet(tmp_path):
    _parquet(tmp_path / "e.parquet", confidence=np.zeros(0), correct=np.zeros(0))
    with pytest.raises(ValueError, match=r"has columns but no rows"):
        load_data(tmp_path / "e.parquet")


def test_json_booleans_and_types(tmp_path):
    rows = [{"confidence": 0.5, "correct": i % 2 == 0, "emb_0": 0.1} for i in range(30)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_data(path).correct.sum() == 15
    rows[4]["confidence"] = True
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"confidence: value True on line 5 .* is a boolean"):
        load_data(path)
    rows[4]["confidence"] = {"p": 0.5}
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(ValueError, match=r"confidence: value on line 5 .* is a JSON dict"):
        load_data(path)
    path.write_text("\n\n")
    with pytest.raises(ValueError, match=r"holds only blank space"):
        load_data(path)


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(ValueError, match="data: no such file"):
        load_data(tmp_path / "missing.csv")
    with pytest.raises(ValueError, match="data: .* is a folder, not a file"):
        load_data(tmp_path)
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        load_data(tmp_path / "d.txt")
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(ValueError, match=r"not a readable .npz file \(not a zip archive\)"):
        load_data(tmp_path / "d.npz")
    np.save(tmp_path / "single.npy", np.zeros((30, 2)))
    (tmp_path / "single.npy").rename(tmp_path / "single.npz")
    with pytest.raises(ValueError, match="is a single .npy array, not an .npz archive"):
        load_data(tmp_path / "single.npz")
    np.savez(tmp_path / "e.npz", embeddings=np.zeros((30, 2)), correct=np.ones(30))
    with pytest.raises(ValueError, match="has no array 'confidence'"):
        load_data(tmp_path / "e.npz")
    x, p, y = _arrays(30)
    np.savez(tmp_path / "t.npz", embeddings=x, confidence=p, correct=y, text=np.array(["a"] * 29))
    with pytest.raises(ValueError, match=r"array 'text' in .* has shape \(29,\) but embeddings"):
        load_data(tmp_path / "t.npz")
    np.savez(tmp_path / "b.npz", embeddings=x, confidence=p > 0.5, correct=y)
    with pytest.raises(ValueError, match=r"conf: got booleans.*\(.*b\.npz, array 'confidence'\)"):
        load_data(tmp_path / "b.npz")
    (tmp_path / "d.jsonl").write_text('{"confidence": 0.5}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 of .* is not JSON"):
        load_data(tmp_path / "d.jsonl")
    (tmp_path / "ok.csv").write_text("confidence,correct\n" + "0.5,1\n" * 30)
    with pytest.raises(ValueError, match="embeddings: no such file"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "nope.npy")
    np.save(tmp_path / "short.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match=r"embeddings: .*short\.npy has 10 rows but .* has 30"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "short.npy")
    np.savez(tmp_path / "z.npz", a=np.zeros((30, 3)))
    with pytest.raises(ValueError, match=r"embeddings: .*z\.npz is an .npz archive"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "z.npz")
    raw = (tmp_path / "short.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match=r"embeddings: .*cut\.npy is not a readable .npy array"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "cut.npy")
    np.save(tmp_path / "nan.npy", np.where(np.eye(30, 3) > 0, np.nan, 0.0))
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(0, 0\).*row 0 of"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "nan.npy")
    with pytest.raises(ValueError, match="correct_col: same column as confidence_col"):
        load_data(tmp_path / "ok.csv", confidence_col="correct")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path):
    path = tmp_path / "locked.csv"
    path.write_text("confidence,correct,emb_0\n" + "0.5,1,1\n" * 30)
    os.chmod(path, 0)
    with pytest.raises(ValueError, match=r"data: cannot read .* \(permission denied\)"):
        load_data(path)
