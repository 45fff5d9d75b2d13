"""Checking and converting user input: the one place where data is validated.

Every public entry point that takes ``(embeddings, conf, correct)`` passes them
through :func:`validate_inputs`, which returns float32 numpy arrays or raises a
``ValueError`` that names the argument, the first offending index and value,
and how to fix it.
"""

from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

__all__ = [
    "MAX_ABS_EMBEDDING",
    "MIN_ROWS",
    "InputError",
    "ValidatedData",
    "top_label",
    "validate_inputs",
]

#: Fewest items the pipeline accepts: cross-fitting needs a few per fold.
MIN_ROWS = 20

#: Largest absolute embedding coordinate (after centring) accepted: squared
#: distances in float32 overflow beyond about 1e19, so 1e15 leaves room for
#: thousands of dimensions.
MAX_ABS_EMBEDDING = 1e15


class InputError(ValueError):
    """A ``ValueError`` that also says which argument and row were bad.

    Loaders use ``argument`` and ``row`` to add the file, line and column to
    the message; everyone else sees an ordinary ``ValueError``.

    Attributes:
      argument: ``"embeddings"``, ``"conf"`` or ``"correct"``.
      row: the first offending row (0-based), or ``None``.
      column: the offending column of ``embeddings``, or ``None``.
    """

    def __init__(self, message: str, argument: str, row=None, column=None):
        super().__init__(message)
        self.argument = argument
        self.row = row
        self.column = column


class ValidatedData(NamedTuple):
    """Checked inputs.

    Attributes:
      embeddings: ``[n, d]`` float32.
      conf: ``[n]`` float32 in ``[0, 1]``.
      correct: ``[n]`` float32 in ``{0, 1}``.
    """

    embeddings: np.ndarray
    conf: np.ndarray
    correct: np.ndarray


def _as_float(name: str, value: ArrayLike, ndim: int) -> np.ndarray:
    try:
        arr = np.asarray(value)
    except Exception as err:  # ragged lists and the like
        raise InputError(
            f"{name}: could not convert to an array ({err}); pass a rectangular numeric array.",
            name,
        ) from None
    if arr.dtype == bool:
        if name == "conf":
            raise InputError(
                "conf: got booleans; pass probabilities in [0, 1] (right/wrong belongs in "
                "correct).",
                name,
            )
        arr = arr.astype(np.float32)
    if arr.dtype == object:
        # lists holding None, strings or nested lists
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(
                f"{name}: expected numbers, got Python objects ({err}); convert it first.", name
            ) from None
    if not (np.issubdtype(arr.dtype, np.number)):
        raise InputError(
            f"{name}: expected numbers, got dtype {arr.dtype}; convert it first "
            "(e.g. np.asarray(x, dtype=float)).",
            name,
        )
    if np.iscomplexobj(arr):
        raise InputError(f"{name}: complex values are not supported; pass real numbers.", name)
    if ndim == 1 and arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != ndim:
        want = "[n]" if ndim == 1 else "[n, d]"
        raise InputError(f"{name}: expected shape {want}, got shape {arr.shape}.", name)
    arr = arr.astype(np.float64)
    bad = ~np.isfinite(arr)
    if not bad.any():
        # finite in float64 but beyond float32's range
        bad = np.abs(arr) > np.finfo(np.float32).max
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        where = idx[0] if ndim == 1 else idx
        raise InputError(
            f"{name}: non-finite value {arr[idx]:.6g} at index {where}; "
            "drop or impute such rows before calling.",
            name,
            row=idx[0],
            column=idx[1] if ndim == 2 else None,
        )
    return arr


def _check_conf_range(conf: np.ndarray) -> None:
    out = np.flatnonzero((conf < 0) | (conf > 1))
    if not out.size:
        return
    if conf.min() >= 0 and conf.max() <= 100 and np.mean(conf > 1) >= 0.5:
        raise InputError(
            f"conf: values run up to {conf.max():.6g} ({np.mean(conf > 1):.0%} of them above 1): "
            "these look like percentages (0 to 100); divide them by 100 to get probabilities "
            "in [0, 1].",
            "conf",
            row=int(out[0]),
        )
    i = int(out[0])
    raise InputError(
        f"conf: value {conf[i]:.6g} at index {i} is outside [0, 1]; "
        "pass probabilities (divide percentages by 100, apply a sigmoid to logits).",
        "conf",
        row=i,
    )


def validate_inputs(
    embeddings: ArrayLike,
    conf: ArrayLike,
    correct: ArrayLike,
    *,
    min_rows: int = MIN_ROWS,
) -> ValidatedData:
    """Checks and converts ``(embeddings, conf, correct)``.

    Legal but degenerate inputs are accepted: a single class in ``correct``,
    one confidence value for every item, duplicated embeddings, ``d = 1``,
    float16 or float64 arrays (converted to float32).

    Args:
      embeddings: ``[n, d]`` input representation (finite reals; bools accepted).
      conf: ``[n]`` confidence that the answer is right, in ``[0, 1]``.
      correct: ``[n]`` 1 if the answer was right, else 0 (bools accepted).
      min_rows: fewest rows accepted.

    Returns:
      A :class:`ValidatedData` of float32 arrays.

    Raises:
      ValueError: an :class:`InputError` naming the argument, the first bad
        index and value, and the fix.

    Examples:
      >>> import numpy as np
      >>> d = validate_inputs(np.zeros((30, 2)), np.full(30, 0.7), np.ones(30))
      >>> d.embeddings.shape
      (30, 2)
    """
    emb = _as_float("embeddings", embeddings, 2)
    conf_arr = _as_float("conf", conf, 1)
    correct_arr = _as_float("correct", correct, 1)
    n = emb.shape[0]
    for name, arr in (("conf", conf_arr), ("correct", correct_arr)):
        if arr.shape[0] != n:
            raise InputError(
                f"{name}: has {arr.shape[0]} rows but embeddings has {n}; "
                "all inputs must be row-aligned (one row per item).",
                name,
            )
    if emb.shape[1] == 0:
        raise InputError(
            "embeddings: has 0 columns; pass at least one feature per item.", "embeddings"
        )
    if n < min_rows:
        raise InputError(
            f"embeddings: got {n} rows, need at least {min_rows}; "
            "the field cannot be estimated from so few items.",
            "embeddings",
        )
    spread = np.abs(emb - emb.mean(axis=0))
    if spread.max() > MAX_ABS_EMBEDDING:
        i, j = (int(v) for v in np.unravel_index(np.argmax(spread), spread.shape))
        raise InputError(
            f"embeddings: value {emb[i, j]:.3g} at index {(i, j)} is too large for float32 "
            "distances; standardise or rescale the embeddings.",
            "embeddings",
            row=i,
            column=j,
        )
    _check_conf_range(conf_arr)
    nonbin = np.flatnonzero((correct_arr != 0) & (correct_arr != 1))
    if nonbin.size:
        i = int(nonbin[0])
        raise InputError(
            f"correct: value {correct_arr[i]:.6g} at index {i} is not 0 or 1; "
            "pass 1 for a right answer and 0 for a wrong one.",
            "correct",
            row=i,
        )
    return ValidatedData(
        emb.astype(np.float32), conf_arr.astype(np.float32), correct_arr.astype(np.float32)
    )


def top_label(
    scores: ArrayLike, labels: ArrayLike, *, from_logits: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Reduces multiclass predictions to top-label confidence and correctness.

    Args:
      scores: ``[n, c]`` class probabilities (rows summing to 1) or logits.
      labels: ``[n]`` integer true labels in ``[0, c)``.
      from_logits: treat ``scores`` as logits and apply a softmax.

    Returns:
      ``(conf, correct)``, each ``[n]`` float32: the largest class probability
      and whether its class equals the label.

    Examples:
      >>> conf, correct = top_label([[0.1, 0.9], [0.6, 0.4]], [1, 1])
      >>> [round(c, 6) for c in conf.tolist()], correct.tolist()
      ([0.9, 0.6], [1.0, 0.0])
    """
    s = _as_float("scores", scores, 2)
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != s.shape[0]:
        raise ValueError(f"labels: expected shape [{s.shape[0]}] to match scores, got {lab.shape}.")
    if not np.issubdtype(lab.dtype, np.integer):
        if not np.issubdtype(lab.dtype, np.number) or np.any(lab != np.round(lab)):
            raise ValueError("labels: expected integer class indices; cast them to int.")
        lab = lab.astype(np.int64)
    bad = np.flatnonzero((lab < 0) | (lab >= s.shape[1]))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"labels: value {lab[i]} at index {i} is not a class index in [0, {s.shape[1]})."
        )
    if from_logits:
        z = s - s.max(axis=1, keepdims=True)
        probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    else:
        probs = s
        if np.any(probs < 0) or np.any(probs > 1):
            i = int(np.argwhere((probs < 0) | (probs > 1))[0, 0])
            raise ValueError(
                f"scores: row {i} has values outside [0, 1]; pass from_logits=True for logits."
            )
        sums = probs.sum(axis=1)
        off = np.flatnonzero(np.abs(sums - 1) > 1e-3)
        if off.size:
            i = int(off[0])
            raise ValueError(
                f"scores: row {i} sums to {sums[i]:.4g}, not 1; "
                "normalise the probabilities or pass from_logits=True."
            )
    pred = probs.argmax(axis=1)
    conf = probs[np.arange(len(pred)), pred]
    return conf.astype(np.float32), (pred == lab).astype(np.float32)
