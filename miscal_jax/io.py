"""Loading data: the shipped MMLU-Pro demo set and users' files.

Formats: ``.npz`` (arrays ``embeddings``, ``confidence``, ``correct``, optional
``text`` and ``group``) and tables (``.csv``, ``.csv.gz``, ``.jsonl``,
``.parquet``) with confidence and correctness columns, embeddings either in
columns ``emb_0..emb_{d-1}`` or in a row-aligned ``.npy`` file. ``group`` is
kept for evaluation only; the pipeline never fits on it. Every problem raises
``ValueError`` with one line that says what and where.
"""

import csv
import gzip
import io as _io
import json
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from miscal_jax.validation import validate_inputs

__all__ = ["DEFAULT_MODEL", "Dataset", "load_data", "load_default"]

DEFAULT_MODEL = "gpt-4o-2024-08-06"
_CONF_KINDS = {
    "verbal": "conf_verbal",
    "conf_verbal_numerical": "conf_verbal",
    "logit": "conf_logit",
    "conf_logit_perplexity": "conf_logit",
}


class Dataset(NamedTuple):
    """A validated data set.

    Attributes:
      embeddings: ``[n, d]`` float32; conf: ``[n]``; correct: ``[n]``.
      text: list of ``n`` strings, or ``None``.
      group: ``[n]`` int group ids (evaluation only), or ``None``.
      group_names: names of the group ids, or ``None``.
      meta: provenance (source, model, confidence kind, dropped rows).
    """

    embeddings: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    text: list | None
    group: np.ndarray | None
    group_names: list | None
    meta: dict


def load_default(model: str = DEFAULT_MODEL, confidence: str = "verbal") -> Dataset:
    """The shipped MMLU-Pro demo set for one model (3,001 questions).

    Rows whose confidence is missing (no parseable answer) are dropped and
    counted in ``meta["dropped"]``.

    Args:
      model: a model name, or an unambiguous part of one (``"gpt-4o"``,
        ``"Llama"``, ``"Qwen"``).
      confidence: ``"verbal"`` or ``"logit"`` (token probability).

    Returns:
      A :class:`Dataset` with question texts and categories as groups.
    """
    root = resources.files("miscal_jax") / "data"
    with resources.as_file(root / "mmlu_pro_demo.npz") as path:
        arrays = dict(np.load(path))
    with resources.as_file(root / "mmlu_pro_demo_questions.json.gz") as path:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            questions = json.load(f)
    models = [str(m) for m in arrays["models"]]
    matches = [m for m in models if m == model] or [m for m in models if model.lower() in m.lower()]
    if len(matches) != 1:
        raise ValueError(
            f"model: {model!r} matches {len(matches)} of the demo models {models}; "
            "pass one of them."
        )
    kind = _CONF_KINDS.get(confidence)
    if kind is None:
        raise ValueError(
            f"confidence: {confidence!r} is not in the demo set; use 'verbal' or 'logit'."
        )
    i = models.index(matches[0])
    conf = arrays[kind][i].astype(np.float64)
    keep = np.isfinite(conf)
    conf = np.clip(conf, 0.0, 1.0)
    data = validate_inputs(
        arrays["embeddings"][keep].astype(np.float32), conf[keep], arrays["correct"][i][keep]
    )
    return Dataset(
        *data,
        text=[q for q, k in zip(questions, keep, strict=True) if k],
        group=arrays["category"][keep].astype(np.int64),
        group_names=[str(c) for c in arrays["category_names"]],
        meta={
            "source": "MMLU-Pro demo (shipped)",
            "model": matches[0],
            "confidence": kind.removeprefix("conf_"),
            "dropped": int((~keep).sum()),
        },
    )


def _read_table(path: Path) -> dict[str, list]:
    name = path.name.lower()
    if name.endswith(".parquet"):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise ValueError(
                "data: reading .parquet needs pyarrow; pip install 'miscal_jax[tables]'."
            ) from None
        try:
            return pq.read_table(path).to_pydict()
        except Exception as err:
            raise ValueError(f"data: {path} is not a readable parquet file ({err}).") from None
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8", newline="") as f:
            content = f.read()
    except (OSError, UnicodeDecodeError) as err:
        raise ValueError(f"data: cannot read {path} as text ({err}).") from None
    if name.endswith((".jsonl", ".jsonl.gz")):
        cols: dict[str, list] = {}
        for line_no, line in enumerate(content.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"data: line {line_no} of {path} is not JSON ({err}).") from None
            if not isinstance(row, dict):
                raise ValueError(f"data: line {line_no} of {path} is not a JSON object.")
            for key in row.keys() - cols.keys():
                cols[key] = [None] * (line_no - 1)
            for key in cols:
                cols[key].append(row.get(key))
        return cols
    if name.endswith((".csv", ".csv.gz")):
        reader = csv.reader(_io.StringIO(content))
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"data: {path} is empty.") from None
        rows = list(reader)
        bad = [i for i, r in enumerate(rows) if len(r) != len(header)]
        if bad:
            raise ValueError(
                f"data: row {bad[0] + 1} of {path} has {len(rows[bad[0]])} fields, "
                f"the header has {len(header)}."
            )
        return {h: [r[j] for r in rows] for j, h in enumerate(header)}
    raise ValueError(
        f"data: {path} has an unknown extension; use .npz, .csv, .csv.gz, .jsonl or .parquet."
    )


def _numeric(name: str, values: list, path: Path) -> np.ndarray:
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        if isinstance(v, bool):
            out[i] = float(v)
            continue
        if isinstance(v, str) and v.strip().lower() in ("true", "false"):
            out[i] = float(v.strip().lower() == "true")
            continue
        try:
            out[i] = float(v) if v not in (None, "") else np.nan
        except (TypeError, ValueError):
            raise ValueError(f"{name}: value {v!r} at row {i} of {path} is not a number.") from None
    return out


def _groups(values) -> tuple[np.ndarray, list]:
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(v)] for v in values], np.int64), names


def load_data(
    path: str | Path,
    *,
    embeddings: str | Path | None = None,
    confidence_col: str = "confidence",
    correct_col: str = "correct",
) -> Dataset:
    """Loads a user's per-item results.

    Args:
      path: ``.npz`` or a table (``.csv``, ``.csv.gz``, ``.jsonl``, ``.parquet``).
      embeddings: optional row-aligned ``.npy`` of ``[n, d]`` embeddings
        (tables only; otherwise columns ``emb_0..emb_{d-1}`` are used).
      confidence_col: name of the confidence column (or array in ``.npz``).
      correct_col: name of the correctness column (or array).

    Returns:
      A validated :class:`Dataset`.

    Raises:
      ValueError: one line naming the file, column or row and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data: no such file {path}.")
    text = group = group_names = None
    if path.suffix.lower() == ".npz":
        try:
            arrays = dict(np.load(path, allow_pickle=False))
        except Exception as err:
            raise ValueError(f"data: {path} is not a readable .npz file ({err}).") from None
        conf_key = confidence_col if confidence_col in arrays else "confidence"
        if conf_key not in arrays and "conf" in arrays:
            conf_key = "conf"
        for key, what in (
            (conf_key, "--confidence-col"),
            (correct_col, "--correct-col"),
            ("embeddings", None),
        ):
            if key not in arrays:
                hint = f" (or name it with {what})" if what else ""
                raise ValueError(
                    f"data: {path} has no array {key!r}{hint}; it has {sorted(arrays)}."
                )
        emb, conf, correct = arrays["embeddings"], arrays[conf_key], arrays[correct_col]
        if "text" in arrays:
            text = [str(t) for t in arrays["text"]]
        if "group" in arrays:
            group, group_names = _groups(arrays["group"])
    else:
        cols = _read_table(path)
        for col, flag in ((confidence_col, "--confidence-col"), (correct_col, "--correct-col")):
            if col not in cols:
                raise ValueError(
                    f"data: {path} has no column {col!r}; pass the right name with {flag} "
                    f"(columns: {sorted(cols)[:12]})."
                )
        conf = _numeric(confidence_col, cols[confidence_col], path)
        correct = _numeric(correct_col, cols[correct_col], path)
        if embeddings is not None:
            emb_path = Path(embeddings)
            if not emb_path.is_file():
                raise ValueError(f"embeddings: no such file {emb_path}.")
            try:
                emb = np.load(emb_path, allow_pickle=False)
            except Exception as err:
                raise ValueError(f"embeddings: {emb_path} is not a .npy array ({err}).") from None
        else:
            emb_cols = sorted(
                (c for c in cols if c.startswith("emb_") and c[4:].isdigit()),
                key=lambda c: int(c[4:]),
            )
            if not emb_cols:
                raise ValueError(
                    f"data: {path} has no emb_0.. columns; pass a row-aligned .npy with "
                    "--embeddings."
                )
            emb = np.stack([_numeric(c, cols[c], path) for c in emb_cols], axis=1)
        if "text" in cols:
            text = [str(t) for t in cols["text"]]
        if "group" in cols:
            group, group_names = _groups(cols["group"])
    data = validate_inputs(emb, conf, correct)
    return Dataset(
        *data,
        text=text,
        group=group,
        group_names=group_names,
        meta={"source": str(path), "model": None, "confidence": confidence_col, "dropped": 0},
    )
