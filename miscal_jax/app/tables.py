"""The in-memory table every source becomes: files, evaluation logs, DataFrames.

A :class:`Table` is a dict of equally long columns (Python values; ``None``
where a cell is missing) with a function that names a row for messages
("line 7 of results.csv", "row 3 (index 'q17') of the DataFrame"). The loaders
in :mod:`miscal_jax.app.io` apply one set of column rules to it, whatever the
source, so a DataFrame and a CSV file are checked the same way.
"""

import json
import math
from collections.abc import Callable
from typing import NamedTuple

__all__ = ["Table", "from_frame", "is_frame", "json_objects"]


class Table(NamedTuple):
    """Columns of a table and where each row came from.

    Attributes:
      columns: column name -> list of ``rows`` values.
      duplicates: names that appear more than once in the source's header.
      place: row index -> where that row is, for messages.
      rows: number of rows.
      source: the source as messages name it (a path, or "the DataFrame").
      notes: what a log reader noted for the report (``kind`` of log,
        ``skipped`` tasks), or ``None``.
    """

    columns: dict[str, list]
    duplicates: set
    place: Callable[[int], str]
    rows: int
    source: str
    notes: dict | None = None


def is_frame(obj) -> bool:
    """Whether ``obj`` is a pandas or polars DataFrame (neither is imported)."""
    module = type(obj).__module__.split(".")[0]
    return module in ("pandas", "polars") and hasattr(obj, "columns")


def _missing(value) -> bool:
    """pandas/polars missing values (None, NaN, NA, NaT) as one rule."""
    if value is None:
        return True
    if isinstance(value, float):
        return math.isnan(value)
    return type(value).__name__ in ("NAType", "NaTType")


def _plain(value):
    """NumPy scalars to Python scalars, missing values to ``None``."""
    if _missing(value):
        return None
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "ndim", None) == 0:
        return item()
    if hasattr(value, "tolist") and not isinstance(value, str):
        return value.tolist()  # an array cell: the loaders refuse it with its row
    return value


def from_frame(frame, name: str = "the DataFrame") -> Table:
    """A pandas or polars DataFrame as a :class:`Table`.

    Args:
      frame: ``pandas.DataFrame`` or ``polars.DataFrame`` with string column
        names; missing cells (``None``, ``NaN``, ``pd.NA``, null) become ``None``.
      name: what messages call it.

    Returns:
      A :class:`Table` whose rows are named by position (and by index label
      for pandas, where the index is not the default range).

    Raises:
      ValueError: not a DataFrame, no rows, or a column name that is not a string.

    Examples:
      >>> import pandas as pd
      >>> t = from_frame(pd.DataFrame({"confidence": [0.9, None], "correct": [1, 0]}))
      >>> t.columns["confidence"], t.rows, t.place(1)
      ([0.9, None], 2, 'row 1 of the DataFrame')
    """
    if not is_frame(frame):
        raise ValueError(
            f"data: expected a path, a pandas or a polars DataFrame, got {type(frame).__name__}."
        )
    names = list(frame.columns)
    bad = [c for c in names if not isinstance(c, str)]
    if bad:
        raise ValueError(
            f"data: column name {bad[0]!r} of {name} is not a string; rename the columns "
            "(e.g. df.columns = df.columns.map(str))."
        )
    rows = len(frame)
    if rows == 0:
        raise ValueError(f"data: {name} has columns but no rows; pass the results.")
    if type(frame).__module__.startswith("polars"):
        columns = {c: [_plain(v) for v in frame.get_column(c).to_list()] for c in names}
        labels = None
    else:
        columns = {}
        for j, c in enumerate(names):
            if c not in columns:
                columns[c] = [_plain(v) for v in frame.iloc[:, j].tolist()]
        index = frame.index
        default = type(index).__name__ == "RangeIndex" and index.start == 0 and index.step == 1
        labels = None if default else list(index)
    counts: dict[str, int] = {}
    for c in names:
        counts[c] = counts.get(c, 0) + 1

    def place(i: int) -> str:
        if labels is None:
            return f"row {i} of {name}"
        return f"row {i} (index {labels[i]!r}) of {name}"

    return Table(columns, {c for c, k in counts.items() if k > 1}, place, rows, name)


def json_objects(text: str, source, *, fix: str) -> list[tuple[int, dict]]:
    """The JSON objects of JSON-lines text, with their line numbers (blank lines skipped).

    Args:
      text: the file's text.
      source: what messages call the file.
      fix: the end of the message for a line that is not a JSON object.

    Raises:
      ValueError: ``data: line N of SOURCE is not JSON (...)`` or ``... is not
        a JSON object``, then ``fix``.

    Examples:
      >>> json_objects('{"a": 1}\\n\\n{"a": 2}', "f.jsonl", fix="fix it.")
      [(1, {'a': 1}), (3, {'a': 2})]
    """
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"data: line {no} of {source} is not JSON ({err.msg}); {fix}"
            ) from None
        if not isinstance(row, dict):
            raise ValueError(f"data: line {no} of {source} is not a JSON object; {fix}")
        out.append((no, row))
    return out
