import numpy as np
import pytest

from miscal_jax.validation import MIN_ROWS, InputError, top_label, validate_inputs

N = 30


def _ok():
    rng = np.random.default_rng(0)
    return rng.normal(size=(N, 3)), rng.random(N), (rng.random(N) < 0.5).astype(float)


def test_accepts_and_converts():
    x, p, y = _ok()
    d = validate_inputs(x, p, y.astype(bool))
    assert d.embeddings.dtype == np.float32 and d.conf.shape == (N,)
    assert set(np.unique(d.correct)) <= {0.0, 1.0}
    # a [n, 1] column is accepted as [n]
    assert validate_inputs(x, p[:, None], y).conf.shape == (N,)


@pytest.mark.parametrize(
    "change, match",
    [
        (
            lambda x, p, y: (x, np.where(np.arange(N) == 7, 1.5, p), y),
            r"conf: value 1.5 at index 7 .*outside \[0, 1\]",
        ),
        (
            lambda x, p, y: (x, np.where(np.arange(N) == 3, -0.1, p), y),
            r"conf: value -0.1 at index 3",
        ),
        (
            lambda x, p, y: (x, np.where(np.arange(N) == 4, np.nan, p), y),
            r"conf: non-finite value nan at index 4",
        ),
        (
            lambda x, p, y: (x, p, np.where(np.arange(N) == 5, 0.5, y)),
            r"correct: value 0.5 at index 5 is not 0 or 1",
        ),
        (
            lambda x, p, y: (x, p, np.where(np.arange(N) == 2, np.inf, y)),
            r"correct: non-finite value inf at index 2",
        ),
        (
            lambda x, p, y: (np.where(np.arange(N)[:, None] == 9, np.inf, x), p, y),
            r"embeddings: non-finite value inf at index \(9, 0\)",
        ),
        (lambda x, p, y: (x, p[:-1], y), r"conf: has 29 rows but embeddings has 30"),
        (lambda x, p, y: (x, p, y[:-2]), r"correct: has 28 rows but embeddings has 30"),
        (lambda x, p, y: (x[:, 0], p, y), r"embeddings: expected shape \[n, d\]"),
        (lambda x, p, y: (x, p[:, None].repeat(2, 1), y), r"conf: expected shape \[n\]"),
        (
            lambda x, p, y: (x[:5], p[:5], y[:5]),
            rf"embeddings: got 5 rows, need at least {MIN_ROWS}",
        ),
        (lambda x, p, y: (x[:0], p[:0], y[:0]), r"embeddings: got 0 rows"),
        (lambda x, p, y: (x[:1], p[:1], y[:1]), r"embeddings: got 1 rows"),
        (lambda x, p, y: (x[:, :0], p, y), r"embeddings: has 0 columns"),
        (lambda x, p, y: (x, np.array(["a"] * N), y), r"conf: expected numbers"),
        (lambda x, p, y: (x, p, [[1, 0], [1]]), r"correct: could not convert"),
        (lambda x, p, y: (x, p + 0j, y), r"conf: complex values"),
        (lambda x, p, y: (x, p > 0.5, y), r"conf: got booleans; pass probabilities"),
        (
            lambda x, p, y: (x, p * 100, y),
            r"conf: values run up to .* look like percentages \(0 to 100\); divide them by 100",
        ),
        (
            lambda x, p, y: (x, np.where(np.arange(N) == 6, 40.0, p), y),
            r"conf: value 40 at index 6 is outside \[0, 1\]",  # one stray value: no guess
        ),
        (
            lambda x, p, y: (x, p, np.where(np.arange(N) == 1, -1.0, y)),
            r"correct: value -1 at index 1 is not 0 or 1",
        ),
        (
            lambda x, p, y: (np.where(np.arange(N)[:, None] == 8, 1e39, x), p, y),
            r"embeddings: non-finite value 1e\+39 at index \(8, 0\)",  # overflows float32
        ),
        (
            lambda x, p, y: (np.where(np.arange(N)[:, None] == 8, 1e20, x), p, y),
            r"embeddings: value 1e\+20 at index \(8, 0\) is too large for float32 distances",
        ),
        (lambda x, p, y: (x[:, :, None], p, y), r"embeddings: expected shape \[n, d\]"),
        (lambda x, p, y: (x, 0.5, y), r"conf: expected shape \[n\], got shape \(\)"),
        (lambda x, p, y: (x, [0.5] * (N - 1) + [None], y), r"conf: non-finite value nan"),
        (lambda x, p, y: (x, p, ["1"] * N), r"correct: expected numbers, got dtype <U1"),
        (lambda x, p, y: (x, [0.5] * (N - 1) + ["a"], y), r"conf: expected numbers"),
        (
            lambda x, p, y: (x, p, [{"a": 1}] * N),
            r"correct: expected numbers, got Python",
        ),
        (lambda x, p, y: ([[0.0, 1.0], [0.0]] * (N // 2), p, y), r"embeddings: could not convert"),
    ],
)
def test_rejects_with_clear_message(change, match):
    with pytest.raises(ValueError, match=match):
        validate_inputs(*change(*_ok()))


def test_errors_say_which_row():
    x, p, y = _ok()
    p[11] = 2.0
    with pytest.raises(InputError) as info:
        validate_inputs(x, p, y)
    assert (info.value.argument, info.value.row, info.value.column) == ("conf", 11, None)
    x[4, 2] = np.nan
    with pytest.raises(ValueError) as info:  # an InputError is a ValueError
        validate_inputs(x, p, y)
    assert (info.value.argument, info.value.row, info.value.column) == ("embeddings", 4, 2)


def test_top_label_from_probs_and_logits():
    probs = np.array([[0.2, 0.8], [0.7, 0.3], [0.5, 0.5]])
    conf, correct = top_label(probs, [1, 1, 0])
    np.testing.assert_allclose(conf, [0.8, 0.7, 0.5], rtol=1e-6)
    np.testing.assert_array_equal(correct, [1, 0, 1])
    logits = np.log(probs)
    conf2, correct2 = top_label(logits, [1, 1, 0], from_logits=True)
    np.testing.assert_allclose(conf2, conf, rtol=1e-6)
    np.testing.assert_array_equal(correct2, correct)


@pytest.mark.parametrize(
    "scores, labels, kw, match",
    [
        ([[0.2, 0.8]], [2], {}, r"labels: value 2 at index 0 is not a class index"),
        ([[0.2, 0.8]], [0.5], {}, r"labels: expected integer class indices"),
        ([[0.2, 0.8]], [0, 1], {}, r"labels: expected shape \[1\]"),
        ([[0.2, 0.9]], [0], {}, r"scores: row 0 sums to 1.1"),
        ([[-1.0, 2.0]], [0], {}, r"scores: row 0 has values outside \[0, 1\]"),
        ([[np.nan, 2.0]], [0], {"from_logits": True}, r"scores: non-finite value nan"),
    ],
)
def test_top_label_rejects(scores, labels, kw, match):
    with pytest.raises(ValueError, match=match):
        top_label(scores, labels, **kw)
