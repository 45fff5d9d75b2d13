"""The figures show what they claim: decoded pixels, not only a PNG header.

A blank or mis-coloured plot fails here: each test reads the image back and
counts pixels of the colours the data must produce.
"""

import io
from types import SimpleNamespace

import numpy as np
from matplotlib.image import imread

from miscal_jax.app.figures import COLORS, field_map_png, pca2, regimes_png, reliability_png


def _pixels(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(io.BytesIO(png), format="png")[..., :3]  # [h, w, 3] in [0, 1]


def _near(image: np.ndarray, hex_colour: str, tol: float = 0.12) -> int:
    """Pixels within ``tol`` (per channel) of a colour."""
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    return int(np.sum(np.all(np.abs(image - rgb) < tol, axis=-1)))


def _red_blue(image: np.ndarray) -> tuple[int, int]:
    """Reddish and bluish pixels of the plot area (the left 70%: the colour bar is outside)."""
    image = image[:, : int(0.7 * image.shape[1])]
    r, g, b = image[..., 0], image[..., 1], image[..., 2]
    red = np.sum((r > g + 0.25) & (r > b + 0.2))
    blue = np.sum((b > r + 0.25) & (b > g + 0.1))
    return int(red), int(blue)


def test_field_map_colours_follow_the_field_sign():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5))
    field = np.where(x[:, 0] > 0, 0.2, -0.2)  # half under (blue), half over (red)
    red, blue = _red_blue(_pixels(field_map_png(x, field, title="t")))
    assert red > 200 and blue > 200, (red, blue)
    # only underconfident points: all blue; only overconfident: all red
    red_u, blue_u = _red_blue(_pixels(field_map_png(x, np.abs(field), title="t")))
    assert red_u == 0 and blue_u > 1.5 * blue, (red_u, blue_u)
    red_o, blue_o = _red_blue(_pixels(field_map_png(x, -np.abs(field), title="t")))
    assert blue_o == 0 and red_o > 1.5 * red, (red_o, blue_o)
    # a zero field: points are the colour map's white middle
    assert _red_blue(_pixels(field_map_png(x, np.zeros(600), title="t"))) == (0, 0)


def test_field_map_outlines_regimes():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 4))
    field = 0.1 * x[:, 1]
    plain = _pixels(field_map_png(x, field))
    regime_of = np.where(pca2(x)[:, 0] > 1.0, 0, -1)
    outlined = _pixels(field_map_png(x, field, regime_of))
    dark = lambda im: int(np.sum(np.all(im < 0.2, axis=-1)))
    assert dark(outlined) > dark(plain) + 200  # the contour and its label


def test_reliability_plot_draws_each_method_in_its_colour():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 800)
    y = (rng.random(800) < p).astype(float)
    # three different maps, so no curve hides another
    preds = {"uncorrected": p, "isotonic": 0.25 + 0.5 * p, "local": p**2}
    both = _pixels(reliability_png(preds, y))
    assert _near(both, COLORS["local"]) > 100 and _near(both, COLORS["isotonic"]) > 100
    only = _pixels(reliability_png({"uncorrected": p}, y))
    assert _near(only, COLORS["local"]) < 10 and _near(only, COLORS["isotonic"]) < 10
    assert _near(only, COLORS["uncorrected"]) > 100


def test_regime_panels_one_per_regime():
    rng = np.random.default_rng(3)
    p = rng.uniform(0, 1, 900)
    y = (rng.random(900) < p).astype(float)
    preds = {"uncorrected": p, "isotonic": p, "local": p}
    regime = lambda i: SimpleNamespace(
        id=i, sign="over", size_all=300, members=np.arange(300 * i, 300 * (i + 1))
    )
    one = _pixels(regimes_png([regime(0)], preds, y))
    three = _pixels(regimes_png([regime(i) for i in range(3)], preds, y))
    assert three.shape[1] > 2.5 * one.shape[1]  # three panels side by side
    assert _near(three, COLORS["local"]) > 2.5 * _near(one, COLORS["local"]) * 0.8
