import gzip
import json

import numpy as np
import pytest

from miscal_jax.io import load_data, load_default


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


@pytest.mark.parametrize(
    "content, match",
    [
        ("confidence,correct,emb_0\n0.5,1\n", r"row 1 of .* has 2 fields, the header has 3"),
        ("confidence,correct,emb_0\n" + "0.5,yes,1\n" * 30, r"correct: value 'yes' at row 0"),
        (
            "conf,correct,emb_0\n" + "0.5,1,1\n" * 30,
            r"no column 'confidence'; pass the right name with --confidence-col",
        ),
        ("confidence,correct\n" + "0.5,1\n" * 30, r"no emb_0.. columns; pass a row-aligned .npy"),
        ("confidence,correct,emb_0\n" + "1.5,1,1\n" * 30, r"conf: value 1.5 at index 0 is outside"),
        (
            "confidence,correct,emb_0\n" + "0.5,1,\n" * 30,
            r"embeddings: non-finite value nan at index \(0, 0\)",
        ),
        ("", r"is empty"),
    ],
)
def test_bad_tables(tmp_path, content, match):
    path = tmp_path / "d.csv"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_data(path)


def test_bad_paths_and_files(tmp_path):
    with pytest.raises(ValueError, match="data: no such file"):
        load_data(tmp_path / "missing.csv")
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unknown extension"):
        load_data(tmp_path / "d.txt")
    (tmp_path / "d.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_data(tmp_path / "d.npz")
    np.savez(tmp_path / "e.npz", embeddings=np.zeros((30, 2)), correct=np.ones(30))
    with pytest.raises(ValueError, match="has no array 'confidence'"):
        load_data(tmp_path / "e.npz")
    (tmp_path / "d.jsonl").write_text('{"confidence": 0.5}\nnot json\n')
    with pytest.raises(ValueError, match="line 2 of .* is not JSON"):
        load_data(tmp_path / "d.jsonl")
    (tmp_path / "ok.csv").write_text("confidence,correct\n" + "0.5,1\n" * 30)
    with pytest.raises(ValueError, match="embeddings: no such file"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "nope.npy")
    np.save(tmp_path / "short.npy", np.zeros((10, 3)))
    with pytest.raises(ValueError, match="conf: has 30 rows but embeddings has 10"):
        load_data(tmp_path / "ok.csv", embeddings=tmp_path / "short.npy")
