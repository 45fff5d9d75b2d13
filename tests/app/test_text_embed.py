"""Tests of text -> embeddings (built-in LSA; MiniLM where the extra is installed)."""

import numpy as np
import pytest

from miscal_jax.app import text_embed as T


def _texts(n=120, seed=0):
    rng = np.random.default_rng(seed)
    topics = [
        ["force", "mass", "velocity", "energy", "electron", "momentum", "joules"],
        ["cell", "gene", "protein", "membrane", "species", "enzyme", "dna"],
        ["court", "contract", "defendant", "statute", "trial", "plaintiff", "law"],
    ]
    texts, label = [], []
    for i in range(n):
        k = i % 3
        texts.append(" ".join(rng.choice(topics[k], 5)) + " in this case")
        label.append(k)
    return texts, np.array(label)


def test_lsa_shape_norm_determinism_and_topics():
    texts, label = _texts()
    a = T.lsa_embed(texts, dim=16)
    b = T.lsa_embed(texts, dim=16)
    assert a.shape == (120, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    sim = a @ a.T
    np.fill_diagonal(sim, -np.inf)
    assert np.mean(label[sim.argmax(1)] == label) > 0.95


def test_lsa_small_and_empty_texts():
    e = T.lsa_embed(["alpha beta", "alpha gamma", "beta gamma", "zzz"], dim=50, max_df=1.0)
    assert e.shape[0] == 4 and e.shape[1] <= 3
    np.testing.assert_allclose(e[3], 0.0)  # no known term: the zero vector
    with pytest.raises(ValueError, match="at least 3 texts"):
        T.lsa_embed(["a b", "c d"])
    with pytest.raises(ValueError, match="no term occurs in at least"):
        T.lsa_embed(["one", "two", "three"])


def test_cache_written_next_to_data_and_reused(tmp_path, monkeypatch):
    texts, _ = _texts(60)
    first = T.embed_texts(texts, method="lsa", cache_dir=tmp_path, cache_name="d.csv", dim=8)
    assert not first.from_cache and first.cache.parent == tmp_path
    assert first.cache.name.startswith(".d.csv.lsa-")
    calls = []
    monkeypatch.setattr(T, "lsa_embed", lambda *a, **k: calls.append(1))
    again = T.embed_texts(texts, method="lsa", cache_dir=tmp_path, cache_name="d.csv", dim=8)
    assert again.from_cache and not calls
    np.testing.assert_array_equal(again.embeddings, first.embeddings)
    # other texts, other settings: another cache file
    monkeypatch.undo()
    other = T.embed_texts(texts[:-1] + ["x"], method="lsa", cache_dir=tmp_path, cache_name="d.csv")
    assert other.cache != first.cache
    assert len(list(tmp_path.glob(".d.csv.lsa-*.npy"))) == 2
    assert not list(tmp_path.glob("*.tmp"))


def test_unwritable_cache_dir_still_embeds(tmp_path, capsys):
    texts, _ = _texts(30)
    missing = tmp_path / "no" / "such" / "dir"
    out = T.embed_texts(texts, method="lsa", cache_dir=missing, dim=4)
    assert out.cache is None and out.embeddings.shape == (30, 4)
    assert "cannot cache embeddings" in capsys.readouterr().err


def test_auto_and_errors(monkeypatch):
    texts, _ = _texts(30)
    monkeypatch.setattr(T, "minilm_available", lambda: False)
    assert T.embed_texts(texts, method="auto", dim=4).method == "lsa"
    with pytest.raises(ValueError, match="needs the embed extra"):
        T.embed_texts(texts, method="minilm")
    with pytest.raises(ValueError, match="text embedding: expected one of"):
        T.embed_texts(texts, method="bert")


@pytest.mark.slow
@pytest.mark.skipif(not T.minilm_available(), reason="the [embed] extra is not installed")
def test_minilm_offline_matches_shipped_embeddings():
    """MiniLM from the packaged weights reproduces the shipped demo embeddings."""
    from miscal_jax.app.io import load_default

    d = load_default()
    emb = T.minilm_embed(d.text[:40])
    assert emb.shape == (40, 384)
    ref = d.embeddings[:40] / np.linalg.norm(d.embeddings[:40], axis=1, keepdims=True)
    cos = np.sum(emb * ref, axis=1)
    assert cos.min() > 0.99, cos.min()


@pytest.mark.slow
@pytest.mark.skipif(not T.minilm_available(), reason="the [embed] extra is not installed")
def test_text_col_with_minilm_through_the_loader(tmp_path):
    """--text-col with the extra: a table of demo questions loads with MiniLM
    embeddings equal to the shipped ones, cached beside the table."""
    import csv

    from miscal_jax.app.io import load_data, load_default

    d = load_default()
    path = tmp_path / "q.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "confidence", "correct"])
        w.writerows([d.text[i], d.conf[i], int(d.correct[i])] for i in range(60))
    data = load_data(path, text_col="question", text_embedding="auto")
    assert data.meta["text_embedding"] == "minilm"
    ref = d.embeddings[:60] / np.linalg.norm(d.embeddings[:60], axis=1, keepdims=True)
    assert np.sum(data.embeddings * ref, axis=1).min() > 0.99
    assert len(list(tmp_path.glob(".q.csv.minilm-*.npy"))) == 1
