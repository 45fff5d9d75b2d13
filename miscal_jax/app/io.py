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
import os
import stat
import zlib
from collections import Counter
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np

from miscal_jax.app.tables import Table, from_frame, is_frame, json_objects
from miscal_jax.validation import InputError, validate_inputs

__all__ = ["DEFAULT_MODEL", "Dataset", "PanelData", "load_data", "load_default", "load_with_panel"]

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
      item: ``n`` item ids (a long table's item column), or ``None``.
      panel: ``[n, M]`` the other models' outcomes on each row's item (NaN
        where missing; names in ``meta["panel"]["names"]``), or ``None``.
    """

    embeddings: np.ndarray
    conf: np.ndarray
    correct: np.ndarray
    text: list | None
    group: np.ndarray | None
    group_names: list | None
    meta: dict
    item: list | None = None
    panel: np.ndarray | None = None


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


_GZIP_MAGIC = b"\x1f\x8b"
_TEXT_TRUE = {"true": 1.0, "false": 0.0}


def _check_file(path: Path, arg: str) -> None:
    """Refuses paths that cannot be data files, with one line naming ``arg``."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ValueError(f"{arg}: no such file {path}; check the path.") from None
    except OSError as err:
        raise ValueError(
            f"{arg}: cannot access {path} ({err.strerror}); check the path and its permissions."
        ) from None
    if stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{arg}: {path} is a folder, not a file; pass the data file itself.")
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{arg}: {path} is not a regular file; pass a data file.")
    if not os.access(path, os.R_OK):
        raise ValueError(
            f"{arg}: cannot read {path} (permission denied); make it readable "
            "(chmod u+r) or pass a copy you can read."
        )
    if st.st_size == 0:
        raise ValueError(f"{arg}: {path} is empty (0 bytes); pass the file that holds the data.")


def _read_bytes(path: Path, arg: str) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path} ({err.strerror or err}).") from None
    gz = path.name.lower().endswith(".gz")
    if gz and not raw.startswith(_GZIP_MAGIC):
        raise ValueError(
            f"{arg}: {path} ends in .gz but is not gzip-compressed; rename it without .gz "
            "or compress it with gzip."
        )
    if raw.startswith(_GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(
                f"{arg}: {path} is a damaged or truncated gzip file ({err}); re-create or "
                "re-download it (gzip -t FILE checks one)."
            ) from None
    return raw


def _decode(raw: bytes, path: Path, arg: str) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{arg}: {path} is not UTF-8 text (byte 0x{raw[err.start]:02x} on line {line}); "
            "re-save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
        ) from None
    text = text.removeprefix("\ufeff")  # byte-order mark written by some spreadsheet programs
    if not text.strip():
        raise ValueError(f"{arg}: {path} holds only blank space; pass the file with the data.")
    return text


def _read_csv(text: str, path: Path) -> Table:
    reader = csv.reader(_io.StringIO(text, newline=""))
    header, rows, lines = None, [], []
    try:
        for row in reader:
            if not row:  # blank line
                continue
            if header is None:
                header = [h.strip() for h in row]
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"data: line {reader.line_num} of {path} has {len(row)} fields but the "
                    f"header has {len(header)}; fix that row (a missing value needs an empty "
                    "field, a comma inside text needs quotes)."
                )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as err:
        raise ValueError(
            f"data: line {reader.line_num} of {path} is not valid CSV ({err}); "
            "re-save the file as comma-separated UTF-8 text."
        ) from None
    if not rows:
        raise ValueError(
            f"data: {path} has a header but no data rows; pass the file with the results."
        )
    counts = Counter(header)
    columns = {}
    for j, h in enumerate(header):
        columns.setdefault(h, [r[j] for r in rows])
    return Table(
        columns,
        {h for h, c in counts.items() if c > 1},
        lambda i: f"line {lines[i]} of {path}",
        len(rows),
        str(path),
    )


def _read_jsonl(text: str, path: Path) -> Table:
    fix = 'write one JSON object per line, e.g. {"confidence": 0.8, "correct": 1, ...}.'
    cols: dict[str, list] = {}
    lines: list[int] = []
    for line_no, row in json_objects(text, path, fix=fix):
        k = len(lines)
        for key in row.keys() - cols.keys():
            cols[key] = [None] * k
        for key in cols:
            cols[key].append(row.get(key))
        lines.append(line_no)
    return Table(cols, set(), lambda i: f"line {lines[i]} of {path}", len(lines), str(path))


def _read_parquet(path: Path) -> Table:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(
            "data: reading .parquet needs pyarrow; pip install 'miscal_jax[tables]'."
        ) from None
    try:
        table = pq.read_table(path)
        names = table.column_names
        columns = table.to_pydict()
    except Exception as err:  # pyarrow raises several types for damaged files
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"data: {path} is not a readable parquet file ({msg}); re-write it "
            "(e.g. pandas.DataFrame.to_parquet)."
        ) from None
    if table.num_rows == 0:
        raise ValueError(f"data: {path} has columns but no rows; pass the file with the results.")
    counts = Counter(names)
    return Table(
        columns,
        {h for h, c in counts.items() if c > 1},
        lambda i: f"index {i} of {path}",
        table.num_rows,
        str(path),
    )


def read_source(source, *, normalisation: str = "none") -> Table:
    """Any table source as a :class:`~miscal_jax.app.tables.Table`.

    Args:
      source: a pandas or polars DataFrame; a table file (``.csv``,
        ``.csv.gz``, ``.jsonl``, ``.parquet``); lm-eval sample files or Inspect
        logs, one file or a folder (see :mod:`miscal_jax.app.evallogs`).
      normalisation: lm-eval multiple-choice confidences, ``"none"`` or ``"length"``.

    Raises:
      ValueError: one line naming the source and the fix.
    """
    from miscal_jax.app import evallogs

    if is_frame(source):
        return from_frame(source)
    if not isinstance(source, str | os.PathLike):
        raise ValueError(
            f"data: expected a path, a pandas or a polars DataFrame, got {type(source).__name__}"
            " (a Series or a lazy frame: collect it into a DataFrame first)."
        )
    path = Path(source)
    if path.is_dir():
        if evallogs.is_lm_eval_samples(path):
            return evallogs.read_lm_eval(path, normalisation=normalisation)
        if evallogs.is_inspect_log(path):
            return evallogs.read_inspect(path)
        raise ValueError(
            f"data: {path} is a folder, not a file, and holds no lm-eval sample files "
            "(samples_*.jsonl) or Inspect logs (.eval); pass the data file itself or a folder "
            "of evaluation logs."
        )
    _check_file(path, "data")
    if evallogs.is_lm_eval_samples(path):
        return evallogs.read_lm_eval(path, normalisation=normalisation)
    if evallogs.is_inspect_log(path):
        return evallogs.read_inspect(path)
    return read_table(path)


def text_cache(source) -> tuple[Path | None, str]:
    """Where a source's text embeddings are cached: beside the file, in the log folder, or nowhere.

    A DataFrame has no place on disk, so its texts are embedded every time.
    """
    if is_frame(source):
        return None, "frame"
    path = Path(source)
    return (path, "eval-logs") if path.is_dir() else (path.parent, path.name)


def read_table(path: Path) -> Table:
    """A table file (``.csv``, ``.csv.gz``, ``.jsonl``, ``.parquet``) as a :class:`Table`."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        return _read_parquet(path)
    if not name.endswith((".csv", ".csv.gz", ".jsonl", ".jsonl.gz")):
        raise ValueError(
            f"data: {path} has an unknown extension; use .npz, .csv, .csv.gz, .jsonl or .parquet."
        )
    text = _decode(_read_bytes(path, "data"), path, "data")
    if name.endswith((".jsonl", ".jsonl.gz")):
        table = _read_jsonl(text, path)
        if not table.rows:
            raise ValueError(f"data: {path} holds no JSON objects; pass the file with the data.")
        return table
    return _read_csv(text, path)


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _numeric(
    col: str, values: list, place: Callable[[int], str], *, kind: str = "number"
) -> np.ndarray:
    """Converts a column to float64, or says which cell is wrong and how to fix it.

    ``kind`` is ``"conf"``, ``"correct"`` or ``"number"`` (embeddings).
    """
    types = {type(v) for v in values}
    if types <= {str} or types <= {int, float}:
        try:
            return np.array(values, dtype=np.float64)
        except ValueError:
            pass  # find the offending cell below
    out = np.empty(len(values), np.float64)
    for i, v in enumerate(values):
        text = v.strip() if isinstance(v, str) else None
        if v is None or text == "":
            raise ValueError(f"{col}: empty value on {place(i)}; fill it in or drop that row.")
        text_bool = text is not None and text.lower() in _TEXT_TRUE
        if kind == "conf" and (isinstance(v, bool) or text_bool):
            raise ValueError(
                f"{col}: value {_short(v)} on {place(i)} is a boolean; confidence must be "
                "a probability in [0, 1] (right/wrong belongs in the correct column)."
            )
        if isinstance(v, bool) or (kind == "correct" and text_bool):
            out[i] = float(v) if isinstance(v, bool) else _TEXT_TRUE[text.lower()]
            continue
        if isinstance(v, list | dict):
            raise ValueError(
                f"{col}: value on {place(i)} is a JSON {type(v).__name__}, not a number; "
                "write one number per cell."
            )
        try:
            out[i] = float(v)
        except (TypeError, ValueError):
            if kind == "conf" and text is not None and text.endswith("%"):
                fix = "drop the % sign and divide by 100"
            elif kind == "correct":
                fix = "write 1 for a right answer and 0 for a wrong one (or true/false)"
            else:
                fix = "fix or drop that row"
            raise ValueError(
                f"{col}: value {_short(v)} on {place(i)} is not a number; {fix}."
            ) from None
    return out


def _groups(values) -> tuple[np.ndarray, list]:
    names = sorted({str(v) for v in values})
    lookup = {n: i for i, n in enumerate(names)}
    return np.array([lookup[str(v)] for v in values], np.int64), names


def _embedding_columns(table: Table, path: Path) -> list[str]:
    found = {}
    for c in table.columns:
        if c.startswith("emb_") and c[4:].isdigit():
            j = int(c[4:])
            if j in found:
                raise ValueError(
                    f"data: columns {found[j]!r} and {c!r} of {path} both give embedding "
                    f"coordinate {j}; rename one."
                )
            found[j] = c
    if not found:
        lists = [c for c in table.columns if isinstance(table.columns[c][0], list)]
        hint = (
            f"column {lists[0]!r} holds lists: split it into emb_0..emb_{{d-1}} columns or "
            "pass a row-aligned .npy with --embeddings"
            if lists
            else "pass a row-aligned .npy with --embeddings"
        )
        raise ValueError(f"data: {path} has no emb_0.. columns; {hint}.")
    missing = sorted(set(range(max(found) + 1)) - set(found))
    if missing:
        raise ValueError(
            f"data: {path} has embedding columns up to emb_{max(found)} but no "
            f"emb_{missing[0]}; name them emb_0..emb_{{d-1}} without gaps."
        )
    return [found[j] for j in range(len(found))]


def _magic(path: Path, arg: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(6)
    except OSError as err:
        raise ValueError(f"{arg}: cannot read {path} ({err.strerror or err}).") from None


def _load_npy(emb_path: Path, rows: int | None, path: Path) -> np.ndarray:
    _check_file(emb_path, "embeddings")
    head = _magic(emb_path, "embeddings")
    if head.startswith(b"PK"):
        raise ValueError(
            f"embeddings: {emb_path} is an .npz archive; pass a single array saved with "
            "numpy.save (.npy)."
        )
    if head != b"\x93NUMPY":
        raise ValueError(
            f"embeddings: {emb_path} is not a readable .npy array (no NumPy header); save it "
            "with numpy.save."
        )
    try:
        arr = np.load(emb_path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise ValueError(
                f"embeddings: {emb_path} holds Python objects (a ragged or object array); "
                "save a rectangular float array with numpy.save."
            ) from None
        raise ValueError(
            f"embeddings: {emb_path} is not a readable .npy array ({err}); save it with numpy.save."
        ) from None
    except Exception as err:  # truncated files raise EOFError, OSError, ...
        raise ValueError(
            f"embeddings: {emb_path} is not a readable .npy array ({err}); save it with numpy.save."
        ) from None
    if rows is not None and arr.ndim >= 1 and arr.shape[0] != rows:
        raise ValueError(
            f"embeddings: {emb_path} has {arr.shape[0]} rows but {path} has {rows} data rows; "
            "pass embeddings row-aligned with the table (one row per item, same order)."
        )
    return arr


def _load_npz(path: Path) -> dict:
    head = _magic(path, "data")
    if head.startswith(b"\x93NUMPY"):
        raise ValueError(
            f"data: {path} is a single .npy array, not an .npz archive; save the arrays with "
            "numpy.savez(path, embeddings=..., confidence=..., correct=...)."
        )
    if not head.startswith(b"PK"):
        raise ValueError(
            f"data: {path} is not a readable .npz file (not a zip archive); re-create it with "
            "numpy.savez."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise ValueError(
            f"data: {path} is not a readable .npz file ({err}); re-create it with numpy.savez."
        ) from None
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "allow_pickle" in str(err):
                    raise ValueError(
                        f"data: array {key!r} in {path} holds Python objects; save numeric "
                        "or string arrays (no dtype=object)."
                    ) from None
                raise ValueError(
                    f"data: array {key!r} in {path} cannot be read ({err}); re-create the "
                    "file with numpy.savez."
                ) from None
            except Exception as err:  # damaged members: zlib.error, EOFError, BadZipFile
                raise ValueError(
                    f"data: array {key!r} in {path} cannot be read ({err}); re-create the "
                    "file with numpy.savez."
                ) from None
    return arrays


def _one_model(table: Table) -> str:
    """The one model of a log table; refuses several where one model's data is wanted."""
    names = list(dict.fromkeys(table.columns["model"]))
    if len(names) > 1:
        shown = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
        raise ValueError(
            f"data: {table.source} holds runs of {len(names)} models ({shown}); pick the one "
            "to report on with --model (model= in Python; the others form its panel), or "
            "compare them all with `miscal-jax compare`."
        )
    return names[0]


def load_data(
    source,
    *,
    embeddings: str | Path | None = None,
    confidence_col: str = "confidence",
    correct_col: str = "correct",
    text_col: str | None = None,
    text_embedding: str = "auto",
    outcomes_required: bool = True,
    normalisation: str = "none",
) -> Dataset:
    """Loads a user's per-item results.

    Args:
      source: ``.npz``, a table (``.csv``, ``.csv.gz``, ``.jsonl``,
        ``.parquet``; gzip-compressed text is recognised by its header), a
        pandas or polars DataFrame with the same columns, or one model's
        lm-eval samples or Inspect logs (file or folder; their question texts
        are embedded unless ``embeddings`` is given).
      embeddings: optional row-aligned ``.npy`` of ``[n, d]`` embeddings
        (tables only; otherwise columns ``emb_0..emb_{d-1}`` are used).
      confidence_col: name of the confidence column (or array in ``.npz``).
      correct_col: name of the correctness column (or array); ``0``/``1`` or
        ``true``/``false``.
      text_col: column of item texts (tables only). Without ``embeddings`` and
        ``emb_*`` columns the texts are embedded by
        :func:`~miscal_jax.app.text_embed.embed_texts` (cached beside the file).
      text_embedding: ``"auto"``, ``"minilm"`` or ``"lsa"`` (see there).
      outcomes_required: with ``False`` (new items to apply a model to) a
        missing correctness column is allowed: ``correct`` is then all zeros
        and ``meta["outcomes"]`` is ``False``.
      normalisation: lm-eval multiple-choice confidences (see
        :func:`~miscal_jax.app.evallogs.read_lm_eval`).

    Returns:
      A validated :class:`Dataset`.

    Raises:
      ValueError: one line naming the argument, the file and row or column,
        and the fix.
    """
    npz = not is_frame(source) and Path(source).suffix.lower() == ".npz"
    if npz:
        path = Path(source)
        _check_file(path, "data")
    if confidence_col == correct_col:
        raise ValueError(
            f"correct_col: same column as confidence_col ({correct_col!r}); name the "
            "correctness column with --correct-col."
        )
    text = group = group_names = None
    extra_meta = {}
    if npz:
        if embeddings is not None:
            raise ValueError(
                f"embeddings: only for tables; {path} is an .npz and carries its own "
                "'embeddings' array."
            )
        arrays = _load_npz(path)
        conf_key = confidence_col if confidence_col in arrays else "confidence"
        if conf_key not in arrays and "conf" in arrays:
            conf_key = "conf"
        has_outcomes = correct_col in arrays
        if not (has_outcomes or outcomes_required) and "embeddings" in arrays:
            arrays[correct_col] = np.zeros(len(arrays["embeddings"]))
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
        n = len(emb) if emb.ndim else 0
        for key in ("text", "group"):
            if key in arrays and (arrays[key].ndim != 1 or len(arrays[key]) != n):
                raise ValueError(
                    f"data: array {key!r} in {path} has shape {arrays[key].shape} but "
                    f"embeddings has {n} rows; save one {key} per item."
                )
        if "text" in arrays:
            text = [str(t) for t in arrays["text"]]
        if "group" in arrays:
            group, group_names = _groups(arrays["group"])
        names = {"conf": conf_key, "correct": correct_col}

        def place(argument, row, column):
            where = f"index {row} of {path}" if row is not None else f"{path}"
            key = names.get(argument, "embeddings")
            return f"{where}, array {key!r}" + (f" column {column}" if column is not None else "")

    else:
        table = read_source(source, normalisation=normalisation)
        path = table.source
        if table.notes is not None:  # evaluation logs: one model, its questions as texts
            extra_meta["log"] = table.notes
            extra_meta["model"] = _one_model(table)
            if text_col is None and embeddings is None:
                text_col = "text"
        used = [confidence_col, correct_col, "text", "group"]
        has_outcomes = correct_col in table.columns
        for col, flag in ((confidence_col, "--confidence-col"), (correct_col, "--correct-col")):
            if col not in table.columns and (col != correct_col or outcomes_required):
                sep = next((s for s in ";\t|" if s in "".join(table.columns)), None)
                hint = (
                    f"; the header looks {sep!r}-separated: save the file comma-separated"
                    if sep and len(table.columns) == 1
                    else f"; pass the right name with {flag}"
                )
                raise ValueError(
                    f"data: {path} has no column {col!r}{hint} "
                    f"(columns: {sorted(table.columns)[:12]})."
                )
        if text_col is not None and text_col not in table.columns:
            raise ValueError(
                f"--text-col: {path} has no column {text_col!r} "
                f"(columns: {sorted(table.columns)[:12]})."
            )
        from_text = text_col is not None and embeddings is None
        from_text &= not any(c.startswith("emb_") and c[4:].isdigit() for c in table.columns)
        emb_cols = []
        if embeddings is None and not from_text:
            emb_cols = _embedding_columns(table, path)
            used += emb_cols
        dup = sorted(set(used) & table.duplicates)
        if dup:
            raise ValueError(
                f"data: column {dup[0]!r} appears more than once in the header of {path}; "
                "rename or drop the copies."
            )
        conf = _numeric(confidence_col, table.columns[confidence_col], table.place, kind="conf")
        correct = (
            _numeric(correct_col, table.columns[correct_col], table.place, kind="correct")
            if has_outcomes
            else np.zeros(table.rows)
        )
        if embeddings is not None:
            emb_path = Path(embeddings)
            emb = _load_npy(emb_path, table.rows, path)
        elif from_text:
            from miscal_jax.app.text_embed import embed_texts

            texts = ["" if t is None else str(t) for t in table.columns[text_col]]
            cache_dir, cache_name = text_cache(source)
            made = embed_texts(
                texts, method=text_embedding, cache_dir=cache_dir, cache_name=cache_name
            )
            emb, extra_meta["text_embedding"] = made.embeddings, made.method
        else:
            emb = np.stack([_numeric(c, table.columns[c], table.place) for c in emb_cols], axis=1)
        if (text_col or "text") in table.columns:
            text = ["" if t is None else str(t) for t in table.columns[text_col or "text"]]
        if "group" in table.columns:
            group, group_names = _groups(table.columns["group"])
        names = {"conf": confidence_col, "correct": correct_col}

        def place(argument, row, column):
            if argument == "embeddings" and embeddings is not None:
                where = f"row {row} of {emb_path}" if row is not None else f"{emb_path}"
                return where + (f", column {column}" if column is not None else "")
            where = table.place(row) if row is not None else f"{path}"
            if argument == "embeddings":
                return where + (f", column {emb_cols[column]!r}" if column is not None else "")
            return f"{where}, column {names[argument]!r}"

    try:
        data = validate_inputs(emb, conf, correct)
    except InputError as err:
        raise ValueError(f"{err} ({place(err.argument, err.row, err.column)})") from None
    return Dataset(
        *data,
        text=text,
        group=group,
        group_names=group_names,
        meta={
            "source": str(path),
            "model": None,
            "confidence": confidence_col,
            "dropped": 0,
            "outcomes": has_outcomes,
            **extra_meta,
        },
    )


class PanelData(NamedTuple):
    """A target model's rows of a long table and the panel of the other models.

    Attributes:
      target: :class:`Dataset` of the target's rows (each row's embedding is
        its item's; ``item`` holds the item ids).
      item_embeddings: ``[N, d]`` float32, one row per item of the table, or
        ``None`` where the table has neither embeddings nor texts.
      panel_correct: ``[N, M]`` float32 outcomes of the other models (0 where missing).
      panel_mask: ``[N, M]`` bools, ``True`` where an outcome was given.
      panel_conf: ``[N, M]`` float32 confidences of the other models (NaN
        where none was given).
      panel_models: the ``M`` other models' names.
      items: the ``N`` item ids, in order of first appearance.
      target_item: ``[n]`` index into ``items`` of each target row.
    """

    target: Dataset
    item_embeddings: np.ndarray
    panel_correct: np.ndarray
    panel_mask: np.ndarray
    panel_conf: np.ndarray
    panel_models: list
    items: list
    target_item: np.ndarray

    def panel_outcomes(self, outcome: str = "residual") -> tuple[np.ndarray, np.ndarray]:
        """The panel's ``[N, M']`` outcomes and mask for :func:`~miscal_jax.geometry.fit_panel`.

        Args:
          outcome: ``"residual"`` (``correct - confidence`` where both were
            given; models that never gave a confidence are left out) or
            ``"correct"`` (0/1 correctness).

        Returns:
          ``(values, mask)``, float32 and bool, with ``M'`` the models that
          have at least one observed outcome.

        Raises:
          ValueError: ``"residual"`` when no panel model gave a confidence.
        """
        if outcome == "correct":
            return self.panel_correct, self.panel_mask
        mask = self.panel_mask & np.isfinite(self.panel_conf)
        keep = mask.any(axis=0)
        if not keep.any():
            raise ValueError(
                "--panel-outcome: no model besides the target gave a confidence, so the panel "
                "has no residuals; pass --panel-outcome correct to learn the panel geometry "
                "from correctness alone."
            )
        values = np.where(mask, self.panel_correct - np.nan_to_num(self.panel_conf), 0.0)
        return values[:, keep].astype(np.float32), mask[:, keep]


def _blank(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip())


def _keys(col: str, values: list, place: Callable[[int], str], flag: str) -> list[str]:
    """Item or model names as strings; an empty cell is an error naming the row."""
    for i, v in enumerate(values):
        if _blank(v):
            raise ValueError(
                f"{col}: empty value on {place(i)}; every row needs its {flag[2:-4]} "
                f"(name the column with {flag})."
            )
    return [str(v).strip() for v in values]


def _pick_model(model: str, names: list[str], path: Path) -> str:
    hits = [m for m in names if m == model] or [m for m in names if model.lower() in m.lower()]
    if len(hits) != 1:
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        raise ValueError(
            f"--model: {model!r} matches {len(hits)} of the {len(names)} models in {path} "
            f"({shown}); pass one of them exactly."
        )
    return hits[0]


def _item_embeddings_npy(emb_path: Path, items: list[str], first: np.ndarray, table: Table):
    """Rows of a ``.npy`` by integer item id (row ``k`` belongs to item ``k``)."""
    ids = []
    for k, item in enumerate(items):
        try:
            ids.append(int(item))
        except ValueError:
            raise ValueError(
                f"item: value {_short(item)} on {table.place(int(first[k]))} is not an "
                f"integer; with --embeddings row k of {emb_path} belongs to item id k, so "
                "item ids must be integers (or give emb_* columns instead)."
            ) from None
    arr = _load_npy(emb_path, None, emb_path)
    if arr.ndim != 2:
        raise ValueError(
            f"embeddings: {emb_path} has shape {arr.shape}; save a [items, d] array, row k "
            "for item id k."
        )
    ids = np.array(ids, np.int64)
    bad = np.flatnonzero((ids < 0) | (ids >= arr.shape[0]))
    if bad.size:
        k = int(bad[0])
        raise ValueError(
            f"item: id {ids[k]} on {table.place(int(first[k]))} has no row in {emb_path} "
            f"({arr.shape[0]} rows); row k belongs to item id k, so ids must lie in "
            f"[0, {arr.shape[0] - 1}]."
        )
    emb = np.asarray(arr[ids], np.float64)
    bad = np.argwhere(~np.isfinite(emb))
    if bad.size:
        k, j = (int(v) for v in bad[0])
        raise ValueError(
            f"embeddings: non-finite value at row {ids[k]}, column {j} of {emb_path}; fix or "
            "drop that item."
        )
    return emb


def _item_embeddings_columns(table: Table, path: Path, row_item: np.ndarray, first: np.ndarray):
    """``emb_*`` columns, one embedding per item; every row of an item must agree."""
    cols = _embedding_columns(table, path)
    dup = sorted(set(cols) & table.duplicates)
    if dup:
        raise ValueError(
            f"data: column {dup[0]!r} appears more than once in the header of {path}; rename "
            "or drop the copies."
        )
    per_row = np.stack([_numeric(c, table.columns[c], table.place) for c in cols], axis=1)
    emb = per_row[first]
    differs = np.flatnonzero(np.any(per_row != emb[row_item], axis=1))
    if differs.size:
        i = int(differs[0])
        raise ValueError(
            f"data: the embedding on {table.place(i)} differs from the one on "
            f"{table.place(int(first[row_item[i]]))} for the same item; give each item one "
            "embedding (the same emb_* values on all its rows)."
        )
    bad = np.argwhere(~np.isfinite(emb))
    if bad.size:
        k, j = (int(v) for v in bad[0])
        raise ValueError(
            f"{cols[j]}: non-finite value on {table.place(int(first[k]))}; fix or drop that item."
        )
    return emb


def require_long_columns(
    table: Table, path: Path, item_col: str, model_col: str, confidence_col: str, correct_col: str
) -> tuple[tuple[str, str], ...]:
    """Checks a long table has its four columns; returns ``(column, flag)`` pairs."""
    need = (
        (item_col, "--item-col"),
        (model_col, "--model-col"),
        (confidence_col, "--confidence-col"),
        (correct_col, "--correct-col"),
    )
    for col, flag in need:
        if col not in table.columns:
            raise ValueError(
                f"data: {path} has no column {col!r}; pass the right name with {flag} "
                f"(columns: {sorted(table.columns)[:12]})."
            )
    return need


def load_with_panel(
    source,
    *,
    model: str,
    item_col: str = "item",
    model_col: str = "model",
    confidence_col: str = "confidence",
    correct_col: str = "correct",
    embeddings: str | Path | None = None,
    text_col: str | None = None,
    text_embedding: str = "auto",
    normalisation: str = "none",
) -> PanelData:
    """Loads a long table (one row per item and model): one target model and its panel.

    The panel is every other model in the table; its ``correct`` and
    ``confidence`` columns are read (an empty cell is a missing outcome or
    confidence). The target's rows with an empty confidence are dropped and
    counted in ``meta["dropped"]``.

    Args:
      source: ``.csv``, ``.csv.gz``, ``.jsonl`` or ``.parquet`` with item,
        model, confidence and correct columns, and optional ``group``
        (evaluation only) and ``text`` columns; the same as a pandas or polars
        DataFrame; or lm-eval samples / Inspect logs of several models (file
        or folder, see :mod:`miscal_jax.app.evallogs`).
      model: the target model: its name, or an unambiguous part of it.
      item_col, model_col, confidence_col, correct_col: column names.
      embeddings: ``.npy`` of ``[rows, d]`` whose row ``k`` belongs to integer
        item id ``k``; without it the table's ``emb_0..emb_{d-1}`` columns
        (the same on every row of an item) are used, else the items' texts
        in ``text_col`` are embedded, else there are no item embeddings
        (``item_embeddings`` is ``None``: the profile geometry needs none).
      text_col: column of item texts (one per item: its first row's); for
        evaluation logs their question texts.
      text_embedding: ``"auto"``, ``"minilm"`` or ``"lsa"``.
      normalisation: lm-eval multiple-choice confidences (see
        :func:`~miscal_jax.app.evallogs.read_lm_eval`).

    Returns:
      A :class:`PanelData`.

    Raises:
      ValueError: one line naming the argument, the file and row or column,
        and the fix.

    Examples:
      >>> import tempfile, pathlib
      >>> rows = ["item,model,confidence,correct,emb_0"] + [
      ...     f"{i},{m},0.7,{(i + j) % 2},{i / 30}" for i in range(30)
      ...     for j, m in enumerate(["a", "b", "c"])]
      >>> path = pathlib.Path(tempfile.mkdtemp()) / "long.csv"
      >>> _ = path.write_text("\\n".join(rows))
      >>> d = load_with_panel(path, model="a")
      >>> d.target.embeddings.shape, d.panel_correct.shape, d.panel_models
      ((30, 1), (30, 2), ['b', 'c'])
    """
    if not is_frame(source) and Path(source).suffix.lower() == ".npz":
        raise ValueError(
            f"data: with --model the data is a long table (.csv, .csv.gz, .jsonl, .parquet: "
            f"one row per item and model); {source} is an .npz."
        )
    if confidence_col == correct_col:
        raise ValueError(
            f"correct_col: same column as confidence_col ({correct_col!r}); name the "
            "correctness column with --correct-col."
        )
    table = read_source(source, normalisation=normalisation)
    path = table.source
    if table.notes is not None and text_col is None and embeddings is None:
        text_col = "text"  # evaluation logs: embed the questions
    if text_col is not None and text_col not in table.columns:
        raise ValueError(
            f"--text-col: {path} has no column {text_col!r} "
            f"(columns: {sorted(table.columns)[:12]})."
        )
    need = require_long_columns(table, path, item_col, model_col, confidence_col, correct_col)
    dup = sorted({c for c, _ in need} & table.duplicates)
    if dup:
        raise ValueError(
            f"data: column {dup[0]!r} appears more than once in the header of {path}; "
            "rename or drop the copies."
        )
    item_vals = _keys(item_col, table.columns[item_col], table.place, "--item-col")
    model_vals = _keys(model_col, table.columns[model_col], table.place, "--model-col")
    items = list(dict.fromkeys(item_vals))
    names = list(dict.fromkeys(model_vals))
    target = _pick_model(model, names, path)
    others = [m for m in names if m != target]
    if not others:
        raise ValueError(
            f"--model: {path} has no model besides {target!r}; the panel geometry needs other "
            "models' outcomes on the same items."
        )
    item_of = {v: k for k, v in enumerate(items)}
    row_item = np.array([item_of[v] for v in item_vals], np.int64)
    model_of = {v: j for j, v in enumerate(others)}
    row_model = np.array([model_of.get(v, -1) for v in model_vals], np.int64)
    cell = np.where(row_model >= 0, row_model, len(others)) * len(items) + row_item
    _, first_row, counts = np.unique(cell, return_index=True, return_counts=True)
    if np.any(counts > 1):
        i = int(np.flatnonzero(cell == cell[first_row[np.argmax(counts > 1)]])[1])
        raise ValueError(
            f"data: {table.place(i)} repeats item {item_vals[i]!r} for model "
            f"{model_vals[i]!r}; keep one row per item and model."
        )
    first = np.full(len(items), -1, np.int64)
    first[row_item[::-1]] = np.arange(row_item.size)[::-1]  # first row of each item

    correct_vals = table.columns[correct_col]
    given = np.array([not _blank(v) for v in correct_vals])
    at = np.flatnonzero(given)
    values = np.full(table.rows, np.nan)
    values[at] = _numeric(
        correct_col,
        [correct_vals[i] for i in at],
        lambda k: table.place(int(at[k])),
        kind="correct",
    )
    bad = np.flatnonzero(given & ~np.isin(values, (0.0, 1.0)))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"{correct_col}: value {values[i]:.6g} on {table.place(i)} is not 0 or 1; write 1 "
            "for a right answer and 0 for a wrong one (or true/false)."
        )
    panel = (row_model >= 0) & given
    panel_correct = np.zeros((len(items), len(others)), np.float32)
    panel_mask = np.zeros((len(items), len(others)), bool)
    panel_correct[row_item[panel], row_model[panel]] = values[panel]
    panel_mask[row_item[panel], row_model[panel]] = True
    conf_vals = table.columns[confidence_col]
    conf_given = np.array([not _blank(v) for v in conf_vals])
    at = np.flatnonzero(panel & conf_given)
    place = lambda k: table.place(int(at[k]))
    panel_conf_vals = _numeric(confidence_col, [conf_vals[i] for i in at], place, kind="conf")
    bad = np.flatnonzero(~((panel_conf_vals >= 0) & (panel_conf_vals <= 1)))
    if bad.size:
        raise ValueError(
            f"{confidence_col}: value {panel_conf_vals[bad[0]]:.6g} on {place(int(bad[0]))} "
            "is not a probability in [0, 1]; rescale it (or leave the cell empty)."
        )
    panel_conf = np.full((len(items), len(others)), np.nan, np.float32)
    panel_conf[row_item[at], row_model[at]] = panel_conf_vals
    answered = panel_mask.any(axis=0)
    if not answered.any():
        raise ValueError(
            f"{correct_col}: no model besides {target!r} has an outcome in {path}; the panel "
            "geometry needs other models' outcomes on the same items."
        )

    extra_meta = {} if table.notes is None else {"log": table.notes}
    has_columns = any(c.startswith("emb_") and c[4:].isdigit() for c in table.columns)
    if embeddings is not None:
        emb = _item_embeddings_npy(Path(embeddings), items, first, table)
    elif has_columns:
        emb = _item_embeddings_columns(table, path, row_item, first)
    elif text_col is not None:
        from miscal_jax.app.text_embed import embed_texts

        texts = table.columns[text_col]
        item_texts = ["" if texts[r] is None else str(texts[r]) for r in first]
        cache_dir, cache_name = text_cache(source)
        made = embed_texts(
            item_texts, method=text_embedding, cache_dir=cache_dir, cache_name=cache_name
        )
        emb, extra_meta["text_embedding"] = made.embeddings, made.method
    else:
        emb = None  # a leaderboard table alone: the profile geometry needs no embeddings

    is_target = row_model < 0
    rows = np.flatnonzero(is_target & conf_given)
    dropped = int(is_target.sum()) - rows.size
    place = lambda k: table.place(int(rows[k]))
    conf = _numeric(confidence_col, [conf_vals[i] for i in rows], place, kind="conf")
    correct = _numeric(correct_col, [correct_vals[i] for i in rows], place, kind="correct")
    target_item = row_item[rows]
    target_emb = np.zeros((rows.size, 1)) if emb is None else emb[target_item]
    try:
        data = validate_inputs(target_emb, conf, correct)
    except InputError as err:
        where = place(err.row) if err.row is not None else str(path)
        column = {"conf": confidence_col, "correct": correct_col}.get(err.argument, "emb")
        raise ValueError(f"{err} ({where}, column {column!r}, model {target!r})") from None
    if emb is None:  # no embeddings: [n, 0] until the panel geometry places the items
        data = (data[0][:, :0], *data[1:])
    text = group = group_names = None
    if (text_col or "text") in table.columns:
        column = table.columns[text_col or "text"]
        text = ["" if column[i] is None else str(column[i]) for i in rows]
    if "group" in table.columns:
        group, group_names = _groups([table.columns["group"][i] for i in rows])
    meta = {
        "source": str(path),
        "model": target,
        "confidence": confidence_col,
        "dropped": int(dropped),
        "outcomes": True,
        **extra_meta,
    }
    return PanelData(
        Dataset(*data, text, group, group_names, meta, item=[items[k] for k in target_item]),
        None if emb is None else np.asarray(emb, np.float32),
        panel_correct[:, answered],
        panel_mask[:, answered],
        panel_conf[:, answered],
        [m for m, a in zip(others, answered, strict=True) if a],
        items,
        target_item,
    )
