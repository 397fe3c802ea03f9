"""Word-similarity datasets for text models (METHODS.md section 7).

For pairs ``(w1, w2)`` with human scores, the model similarity is the cosine of the two
word embeddings; the score is the Spearman correlation with the human scores over the
pairs the model covers, reported with the coverage.

Coverage: a word is covered when it occurs in ``words`` (compared after stripping and
lower-casing) and at least one of its rows is not all-NaN. A word listed several times
(THINGS has homonyms such as "bat") is represented by the mean of its non-missing rows.
A pair is covered when both its words are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats

from ..errors import InvalidInputError, NumericalError
from ..results import Result
from .bootstrap import check_bootstrap_options, percentile_interval
from .validation import check_features

__all__ = ["WordSimResult", "word_similarity"]

_MIN_PAIRS = 3


@dataclasses.dataclass(frozen=True)
class WordSimResult(Result):
    """Spearman correlation between model cosine similarities and human scores.

    ``spearman`` and ``ci`` are None when fewer than 3 pairs are covered or either side
    is constant over them. ``missing_words`` lists the uncovered words (sorted).
    """

    spearman: float | None
    ci: tuple[float, float] | None
    pearson: float | None
    n_pairs: int
    n_covered: int
    coverage: float
    n_words_missing: int
    missing_words: tuple[str, ...]
    n_ambiguous_words: int
    similarity: str
    n_bootstrap: int
    confidence: float
    seed: int


def _norm(word: str) -> str:
    return word.strip().lower()


def _rank_rows(a: np.ndarray) -> np.ndarray:
    return np.asarray(stats.rankdata(a, axis=1), dtype=np.float64)


def _rowwise_pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    den = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    out = np.full(x.shape[0], np.nan)
    np.divide((x * y).sum(axis=1), den, out=out, where=den > 0)
    return out


def word_similarity(
    embeddings: object,
    words: Sequence[str],
    pairs: Sequence[tuple[str, str]],
    scores: object,
    *,
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> WordSimResult:
    """Spearman correlation of cosine similarities with human ``scores``.

    ``embeddings``: ``(n, p)``, one row per entry of ``words`` (all-NaN row = missing).
    ``pairs``: ``(w1, w2)`` tuples; ``scores``: one human score per pair (higher = more
    similar). The CI is a percentile bootstrap over covered pairs (0 = none).
    """
    check_bootstrap_options(n_bootstrap, confidence, seed)
    X, missing = check_features(embeddings, "embeddings")
    if isinstance(words, str):
        raise InvalidInputError("words", "is a single string", "a sequence of words")
    word_list = list(words)
    if len(word_list) != X.shape[0]:
        raise InvalidInputError(
            "words", f"has {len(word_list)} entries", f"{X.shape[0]}, one per embedding row"
        )
    pair_list = list(pairs)
    score_arr = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(pair_list) == 0:
        raise InvalidInputError("pairs", "is empty", "at least one (word1, word2) pair")
    if score_arr.size != len(pair_list):
        raise InvalidInputError(
            "scores", f"has {score_arr.size} values", f"{len(pair_list)}, one per pair"
        )
    if not np.isfinite(score_arr).all():
        bad = int(np.flatnonzero(~np.isfinite(score_arr))[0])
        raise NumericalError(f"scores[{bad}] is {score_arr[bad]}")
    for i, pair in enumerate(pair_list):
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise InvalidInputError(f"pairs[{i}]", f"is {pair!r}", "a (word1, word2) pair")
        if not all(isinstance(w, str) for w in pair):
            raise InvalidInputError(f"pairs[{i}]", f"is {pair!r}", "two strings")

    rows_of: dict[str, list[int]] = {}
    for i, w in enumerate(word_list):
        if not isinstance(w, str):
            raise InvalidInputError(f"words[{i}]", f"is {w!r}", "a string")
        if not missing[i]:
            rows_of.setdefault(_norm(w), []).append(i)
    vocab = sorted(rows_of)
    index = {w: k for k, w in enumerate(vocab)}
    E = np.stack([X[rows_of[w]].mean(axis=0) for w in vocab]) if vocab else np.empty((0, 1))
    n_ambiguous = sum(1 for w in vocab if len(rows_of[w]) > 1)

    left = np.array([index.get(_norm(a), -1) for a, _ in pair_list], dtype=np.int64)
    right = np.array([index.get(_norm(b), -1) for _, b in pair_list], dtype=np.int64)
    covered = (left >= 0) & (right >= 0)
    missing_words = sorted({_norm(w) for pair in pair_list for w in pair if _norm(w) not in index})
    n_cov = int(covered.sum())

    spearman = pearson = None
    ci = None
    if n_cov >= _MIN_PAIRS:
        norms = np.linalg.norm(E, axis=1)
        u, v = E[left[covered]], E[right[covered]]
        den = norms[left[covered]] * norms[right[covered]]
        sims = np.zeros(n_cov)
        np.divide(np.einsum("ij,ij->i", u, v), den, out=sims, where=den > 0)
        human = score_arr[covered]
        if np.ptp(sims) > 0 and np.ptp(human) > 0:
            spearman = float(stats.spearmanr(sims, human).statistic)
            pearson = float(stats.pearsonr(sims, human).statistic)
            if n_bootstrap:
                rng = np.random.default_rng(seed)
                boot = np.empty(n_bootstrap)
                step = max(1, 2_000_000 // n_cov)  # resamples per block, bounded memory
                for start in range(0, n_bootstrap, step):
                    stop = min(n_bootstrap, start + step)
                    idx = rng.integers(0, n_cov, size=(stop - start, n_cov))
                    boot[start:stop] = _rowwise_pearson(
                        _rank_rows(sims[idx]), _rank_rows(human[idx])
                    )
                ci = percentile_interval(boot, float(confidence))
    return WordSimResult(
        spearman=spearman,
        ci=ci,
        pearson=pearson,
        n_pairs=len(pair_list),
        n_covered=n_cov,
        coverage=n_cov / len(pair_list),
        n_words_missing=len(missing_words),
        missing_words=tuple(missing_words),
        n_ambiguous_words=n_ambiguous,
        similarity="cosine",
        n_bootstrap=int(n_bootstrap),
        confidence=float(confidence),
        seed=int(seed),
    )
