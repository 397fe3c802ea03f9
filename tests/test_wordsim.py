"""Word similarity (METHODS.md section 7): the SPoSE embedding of the THINGS words on real
word-similarity pairs, checked against scipy.stats.spearmanr computed here."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from align.errors import InvalidInputError, NumericalError
from align.metrics.wordsim import word_similarity
from scipy import stats


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


@pytest.fixture(scope="module")
def things_words(data_dir: Path) -> tuple[list[str], np.ndarray]:
    with _need(data_dir / "things" / "things_concepts.tsv").open(newline="") as f:
        words = [row["Word"] for row in csv.DictReader(f, delimiter="\t")]
    spose = np.loadtxt(_need(data_dir / "things_spose66d" / "spose_embedding_66d.txt"))
    assert len(words) == spose.shape[0] == 1854
    return words, spose


def read_pairs(path: Path) -> tuple[list[tuple[str, str]], np.ndarray]:
    pairs, scores = [], []
    for line in _need(path).read_text().splitlines():
        w1, w2, score = line.split()
        pairs.append((w1, w2))
        scores.append(float(score))
    return pairs, np.array(scores)


def reference(
    words: list[str], X: np.ndarray, pairs: list[tuple[str, str]], scores: np.ndarray
) -> tuple[float, int]:
    """Mean row per word (homonyms), cosine per covered pair, scipy Spearman."""
    rows: dict[str, list[np.ndarray]] = {}
    for w, x in zip(words, X, strict=True):
        if not np.isnan(x).all():
            rows.setdefault(w.lower(), []).append(x)
    vec = {w: np.mean(v, axis=0) for w, v in rows.items()}
    sims, human = [], []
    for (a, b), s in zip(pairs, scores, strict=True):
        if a in vec and b in vec:
            u, v = vec[a], vec[b]
            sims.append(float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v))))
            human.append(s)
    return float(stats.spearmanr(sims, human).statistic), len(sims)


@pytest.mark.parametrize(
    ("name", "overlap"), [("EN-SIMLEX-999.txt", 114), ("EN-MEN-TR-3k.txt", 419)]
)
def test_spose_on_things_words_matches_scipy(
    data_dir: Path, things_words: tuple[list[str], np.ndarray], name: str, overlap: int
) -> None:
    words, spose = things_words
    pairs, scores = read_pairs(data_dir / "wordsim" / name)
    result = word_similarity(spose, words, pairs, scores, n_bootstrap=300)
    expected, n_cov = reference(words, spose, pairs, scores)
    assert n_cov == overlap  # PROVENANCE: pairs with both words among the THINGS names
    assert result.n_covered == overlap and result.n_pairs == len(pairs)
    assert result.coverage == pytest.approx(overlap / len(pairs))
    assert result.spearman == pytest.approx(expected, abs=1e-12)
    assert result.ci is not None and result.ci[0] < result.spearman < result.ci[1]
    assert result.n_ambiguous_words > 0  # homonyms such as "bat" are averaged
    print(f"SPoSE-66d on {name}: spearman {result.spearman:.3f} over {overlap} pairs")


def test_missing_rows_reduce_coverage(
    data_dir: Path, things_words: tuple[list[str], np.ndarray]
) -> None:
    words, spose = things_words
    pairs, scores = read_pairs(data_dir / "wordsim" / "EN-SIMLEX-999.txt")
    X = spose.copy()
    gone = words.index("cat")
    X[gone] = np.nan
    result = word_similarity(X, words, pairs, scores, n_bootstrap=0)
    expected, n_cov = reference(words, X, pairs, scores)
    assert result.n_covered == n_cov < 114
    assert "cat" in result.missing_words
    assert result.spearman == pytest.approx(expected, abs=1e-12)
    assert result.ci is None


def test_too_few_pairs_give_no_correlation() -> None:
    X = np.eye(3)
    result = word_similarity(X, ["a", "b", "c"], [("a", "b"), ("a", "zzz")], [1.0, 2.0])
    assert result.n_covered == 1 and result.spearman is None
    assert result.coverage == 0.5 and result.missing_words == ("zzz",)


def test_seeded_ci_is_deterministic(things_words: tuple[list[str], np.ndarray]) -> None:
    words, spose = things_words
    rng = np.random.default_rng(0)
    pairs = [(words[i], words[j]) for i, j in rng.integers(0, 1854, size=(50, 2))]
    scores = rng.random(50)
    a = word_similarity(spose, words, pairs, scores, seed=5, n_bootstrap=200)
    b = word_similarity(spose, words, pairs, scores, seed=5, n_bootstrap=200)
    assert a.ci == b.ci and a.to_dict()["seed"] == 5


@pytest.mark.parametrize(
    ("args", "field"),
    [
        ((np.eye(3), ["a", "b"], [("a", "b")], [1.0]), "words"),
        ((np.eye(3), ["a", "b", "c"], [("a", "b")], [1.0, 2.0]), "scores"),
        ((np.eye(3), ["a", "b", "c"], [("a",)], [1.0]), "pairs[0]"),
        ((np.eye(3), ["a", "b", "c"], [], []), "pairs"),
        ((np.ones(3), ["a", "b", "c"], [("a", "b")], [1.0]), "embeddings"),
    ],
)
def test_bad_inputs_are_named(args: tuple[object, ...], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        word_similarity(*args)  # type: ignore[arg-type]
    assert info.value.field == field


def test_non_finite_scores_raise() -> None:
    with pytest.raises(NumericalError, match=r"scores\[1\]"):
        word_similarity(np.eye(3), ["a", "b", "c"], [("a", "b"), ("b", "c")], [1.0, np.nan])
