"""Regimes described in words: the distinctive terms of a group of texts.

A regime is a set of items; when the items have texts (questions), the terms
that are much more frequent inside the regime than outside it say what the
regime is about ("physics, kinetic energy, MeV"). Terms are scored by the
log-odds ratio with an informative Dirichlet prior (Monroe, Colaresi & Quinn
2008): for term ``w`` with ``y_in`` and ``y_out`` occurrences inside and
outside, and prior counts ``a_w`` proportional to its corpus frequency,

    delta_w = log((y_in + a_w) / (n_in + a0 - y_in - a_w))
            - log((y_out + a_w) / (n_out + a0 - y_out - a_w))
    var_w  ~= 1 / (y_in + a_w) + 1 / (y_out + a_w)

and ranked by ``z_w = delta_w / sqrt(var_w)``. The prior shrinks rare terms
towards the corpus rate, so a word seen twice in a regime does not outrank a
word seen fifty times, and frequent function words cancel. Occurrences are
counted once per text (document frequency), so one long text cannot make a
regime look like its own vocabulary.

References:
  Monroe, Colaresi & Quinn (2008), "Fightin' Words: Lexical Feature Selection
  and Evaluation for Identifying the Content of Political Conflict",
  Political Analysis 16(4).
"""

import re
from typing import NamedTuple

import numpy as np

__all__ = [
    "STOPWORDS",
    "Term",
    "TermCounts",
    "count_terms",
    "describe_groups",
    "distinctive_terms",
    "phrase",
    "snippet",
    "tokenize",
]

#: English function words and question boilerplate that carry no subject matter.
STOPWORDS = frozenset(
    """
    a about above after again against all almost also although always am among an and any are
    aren't as at be became because become becomes been before being below between both but by
    can cannot could couldn't did didn't do does doesn't doing don't down during each either
    else etc even ever every few for from further had hadn't has hasn't have haven't having he
    her here hers herself him himself his how however i if in into is isn't it it's its itself
    just least less let like made make many may me might more most much must my myself neither
    no nor not now of off often on once one only or other others otherwise our ours ourselves
    out over own per rather same several shall she should shouldn't since so some such than
    that the their theirs them themselves then there these they this those though through thus
    to too two under until up upon us use used using very via was wasn't we were weren't what
    whatever when where whether which while who whom whose why will with within without would
    wouldn't yet you your yours yourself yourselves
    answer answers best choice choose correct describe describes following given true false
    likely option options question questions statement statements select
    based called comes following known shows suppose takes
    """.split()
)

_TOKEN = re.compile(r"[a-z][a-z0-9]*(?:['\-][a-z0-9]+)*")
_LATEX = re.compile(r"\\[a-zA-Z]+")  # \frac, \mathrm: markup, not subject matter


def tokenize(text: str, *, bigrams: bool = True) -> list[str]:
    """Lower-cased word tokens without stopwords, plus adjacent-word bigrams.

    A bigram joins two neighbouring content words ("kinetic energy"); words
    separated by a stopword or punctuation do not form one.

    Examples:
      >>> tokenize("What is the kinetic energy of an electron?")
      ['kinetic', 'energy', 'electron', 'kinetic energy']
    """
    text = _LATEX.sub(" ", str(text)).lower()
    tokens = [t for t in _TOKEN.findall(text) if len(t) > 1 or t.isdigit()]
    words = [t for t in tokens if t not in STOPWORDS and not t.isdigit()]
    if not bigrams:
        return words
    pairs = [
        f"{a} {b}"
        for a, b in zip(tokens, tokens[1:], strict=False)
        if a not in STOPWORDS and b not in STOPWORDS and not a.isdigit() and not b.isdigit()
    ]
    return words + pairs


class TermCounts(NamedTuple):
    """Which terms each text contains (each counted once per text).

    Attributes:
      vocab: the ``V`` terms.
      doc: ``[nnz]`` text index of each (text, term) pair.
      term: ``[nnz]`` term index of each pair.
      num_docs: number of texts ``n``.
    """

    vocab: tuple
    doc: np.ndarray
    term: np.ndarray
    num_docs: int

    def counts(self, mask: np.ndarray | None = None) -> np.ndarray:
        """``[V]`` number of texts (in ``mask``, or all) that contain each term."""
        term = self.term if mask is None else self.term[np.asarray(mask, bool)[self.doc]]
        return np.bincount(term, minlength=len(self.vocab)).astype(np.float64)


def count_terms(texts, *, min_df: int = 3, bigrams: bool = True) -> TermCounts:
    """Document-term incidence of ``texts`` over terms found in at least ``min_df`` texts.

    Args:
      texts: ``n`` strings.
      min_df: drop terms found in fewer texts (typos, names, numbers).
      bigrams: include adjacent-word bigrams.

    Returns:
      A :class:`TermCounts`.
    """
    if min_df < 1:
        raise ValueError(f"min_df: must be at least 1, got {min_df}.")
    per_doc = [sorted(set(tokenize(t, bigrams=bigrams))) for t in texts]
    df: dict[str, int] = {}
    for terms in per_doc:
        for w in terms:
            df[w] = df.get(w, 0) + 1
    vocab = tuple(sorted(w for w, c in df.items() if c >= min_df))
    index = {w: i for i, w in enumerate(vocab)}
    doc, term = [], []
    for i, terms in enumerate(per_doc):
        ids = [index[w] for w in terms if w in index]
        doc.extend([i] * len(ids))
        term.extend(ids)
    return TermCounts(vocab, np.asarray(doc, np.int64), np.asarray(term, np.int64), len(per_doc))


class Term(NamedTuple):
    """One distinctive term of a group.

    Attributes:
      term: the word or bigram.
      z: z-score of its log-odds ratio (group against the rest).
      log_odds: the log-odds ratio ``delta``.
      share_in: fraction of the group's texts that contain it.
      share_out: fraction of the other texts that contain it.
    """

    term: str
    z: float
    log_odds: float
    share_in: float
    share_out: float


def distinctive_terms(
    counts: TermCounts,
    members,
    *,
    top_k: int = 8,
    prior_scale: float = 0.5,
    min_count: int = 3,
    min_z: float = 2.0,
    drop_overlaps: bool = True,
) -> list[Term]:
    """The terms most over-represented in ``members`` against the other texts.

    Args:
      counts: :func:`count_terms` of all texts.
      members: ``[n]`` boolean mask or integer indices of the group's texts.
      top_k: at most this many terms.
      prior_scale: prior counts ``a_w = prior_scale * (corpus count of w)``;
        ``a0 = sum a_w``. Larger shrinks harder toward the corpus rates.
      min_count: a term must occur in at least this many of the group's texts.
      min_z: only terms with ``z`` above this are returned.
      drop_overlaps: skip a word already shown inside a higher-ranked bigram,
        and a bigram whose two words are both already shown.

    Returns:
      Up to ``top_k`` :class:`Term` sorted by ``z``, descending.

    References:
      Monroe, Colaresi & Quinn (2008), section 3.5.
    """
    mask = np.zeros(counts.num_docs, bool)
    members = np.asarray(members)
    if members.dtype == bool:
        if members.shape != (counts.num_docs,):
            raise ValueError(
                f"members: boolean mask must have shape [{counts.num_docs}], got {members.shape}."
            )
        mask = members
    else:
        mask[members.astype(np.int64)] = True
    n_in, n_out = int(mask.sum()), int((~mask).sum())
    if n_in == 0 or n_out == 0 or not counts.vocab:
        return []
    y_in = counts.counts(mask)
    y_all = counts.counts()
    y_out = y_all - y_in
    alpha = prior_scale * y_all
    a0 = alpha.sum()
    # totals are term occurrences (texts x terms), as in the multinomial model
    tot_in, tot_out = y_in.sum(), y_out.sum()
    delta = np.log(y_in + alpha) - np.log(tot_in + a0 - y_in - alpha)
    delta -= np.log(y_out + alpha) - np.log(tot_out + a0 - y_out - alpha)
    z = delta / np.sqrt(1.0 / (y_in + alpha) + 1.0 / (y_out + alpha))
    order = np.argsort(-z, kind="stable")
    out: list[Term] = []
    shown: set[str] = set()
    for i in order:
        if len(out) == top_k or z[i] <= min_z:
            break
        if y_in[i] < min_count:
            continue
        w = counts.vocab[i]
        parts = w.split(" ")
        if drop_overlaps:
            if len(parts) == 1 and any(w in t.term.split(" ") for t in out if " " in t.term):
                continue
            if len(parts) > 1 and all(p in shown for p in parts):
                continue
        out.append(Term(w, float(z[i]), float(delta[i]), y_in[i] / n_in, y_out[i] / n_out))
        shown.update(parts)
    return out


def describe_groups(texts, groups, *, top_k: int = 8, min_df: int = 3, **kwargs) -> list:
    """Distinctive terms of several groups of the same texts.

    Args:
      texts: ``n`` strings.
      groups: a list of member index arrays or ``[n]`` masks, one per group.
      top_k, min_df, kwargs: passed to :func:`count_terms` / :func:`distinctive_terms`.

    Returns:
      A list with one list of :class:`Term` per group.

    Examples:
      >>> texts = ["the electron energy"] * 5 + ["the cell membrane"] * 5
      >>> sorted(t.term for t in describe_groups(texts, [range(5)], min_df=1, min_z=0)[0])
      ['electron', 'electron energy']
    """
    counts = count_terms(texts, min_df=min_df)
    return [distinctive_terms(counts, np.asarray(list(g)), top_k=top_k, **kwargs) for g in groups]


def phrase(terms, k: int = 4) -> str:
    """The first ``k`` terms as a comma-separated phrase ("physics, kinetic energy, mev")."""
    return ", ".join(t.term for t in terms[:k])


def snippet(text: str, limit: int = 220) -> str:
    """``text`` on one line (whitespace collapsed), cut to ``limit`` characters with an ellipsis.

    Examples:
      >>> snippet("a  question   over two  lines", limit=12)
      'a question …'
    """
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
