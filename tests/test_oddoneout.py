"""Zero-shot odd-one-out accuracy, noise ceiling and bootstrap (METHODS.md section 2).

Known answers come from a deliberately simple per-triplet loop written here from the
rule text, from an independent parser of the raw THINGS file, and from published numbers
(noise ceiling 0.6722, SPoSE 66-d dot-product accuracy 0.643).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from align.errors import InvalidInputError, NumericalError
from align.metrics import bootstrap as bootstrap_mod
from align.metrics import oddoneout as ooo
from align.metrics.oddoneout import (
    MissingStimuliWarning,
    anchor_accuracy,
    noise_ceiling,
    odd_one_out,
    pairwise_triplet_similarities,
    predict_odd_one_out,
)

SIMS = ("cosine", "dot", "euclidean")

# --------------------------------------------------------------------------- reference


def ref_similarity(u: list[float], v: list[float], kind: str) -> float:
    """METHODS section 2, one pair at a time in plain Python."""
    if kind == "euclidean":
        return -math.sqrt(sum((x - y) ** 2 for x, y in zip(u, v, strict=True)))
    dot = sum(x * y for x, y in zip(u, v, strict=True))
    if kind == "dot":
        return dot
    den = math.sqrt(sum(x * x for x in u)) * math.sqrt(sum(y * y for y in v))
    return dot / den if den > 0 else 0.0


def ref_predict(X: np.ndarray, triplets: np.ndarray, kind: str) -> list[int]:
    """Position of the odd one out; -1 on a full tie; partial tie: first max of ab, ac, bc."""
    rows = X.tolist()
    out = []
    for a, b, c in triplets.tolist():
        s = [
            ref_similarity(rows[a], rows[b], kind),
            ref_similarity(rows[a], rows[c], kind),
            ref_similarity(rows[b], rows[c], kind),
        ]
        if s[0] == s[1] == s[2]:
            out.append(-1)
            continue
        best = max(s)
        first = next(i for i in range(3) if s[i] == best)
        out.append({0: 2, 1: 1, 2: 0}[first])
    return out


def random_triplets(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    T = np.array([rng.choice(n, size=3, replace=False) for _ in range(m)], dtype=np.int64)
    return T


def tie_rich_features(rng: np.random.Generator, integer: bool) -> np.ndarray:
    """Features with duplicate rows, zero rows and (integer case) exact partial ties."""
    n, p = 30, 4
    if integer:
        X = rng.integers(-1, 2, size=(n, p)).astype(np.float32)
    else:
        X = rng.standard_normal((n, p)).astype(np.float32)
    X[5] = X[3]  # duplicate rows
    X[6] = X[3]
    X[10] = X[11]
    X[7] = 0.0  # zero vectors
    X[8] = 0.0
    return X


@pytest.fixture(params=["matrix", "gather"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test through both code paths (n x n matrix, row-wise gather)."""
    if request.param == "gather":
        monkeypatch.setattr(ooo, "_MAX_MATRIX_ENTRIES", 0)
        monkeypatch.setattr(ooo, "_GATHER_BLOCK", 37)  # many small chunks
    return str(request.param)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("similarity", SIMS)
@pytest.mark.parametrize("integer", [False, True], ids=["float", "integer"])
def test_predictions_equal_simple_loop_including_ties(
    similarity: str, integer: bool, path: str
) -> None:
    rng = np.random.default_rng(7)
    X = tie_rich_features(rng, integer)
    T = random_triplets(rng, X.shape[0], 3000)
    T = np.vstack([T, [[3, 5, 6], [7, 8, 3], [3, 10, 11], [5, 3, 7]]])  # ties for sure
    expected = ref_predict(X.astype(np.float64), T, similarity)
    got = predict_odd_one_out(X, T, similarity)
    assert got.tolist() == expected
    # the data really exercise the tie rule: full ties and partial ties of the best pair
    assert (np.array(expected) == -1).any()
    rows = X.astype(np.float64).tolist()
    n_partial = 0
    for a, b, c in T.tolist():
        s = [ref_similarity(rows[x], rows[y], similarity) for x, y in ((a, b), (a, c), (b, c))]
        n_partial += s.count(max(s)) == 2
    # (with float features a repeated row is its own nearest neighbour under euclidean, so
    # only an exact three-way tie can happen there)
    assert n_partial > 0 or (similarity == "euclidean" and not integer)


def test_integer_features_make_partial_ties_that_follow_the_order_rule(path: str) -> None:
    # a=(1,0), b=(0,1), c=(1,1): dot ab=0, ac=1, bc=1 -> partial tie ac/bc -> first max ac
    X = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    assert predict_odd_one_out(X, [[0, 1, 2]], "dot").tolist() == [1]
    # cosine: ab=0, ac=bc=1/sqrt(2) exactly equal
    assert predict_odd_one_out(X, [[0, 1, 2]], "cosine").tolist() == [1]
    # euclidean: |a-b|=sqrt2, |a-c|=|b-c|=1 -> ac and bc tie at -1 -> ac
    assert predict_odd_one_out(X, [[0, 1, 2]], "euclidean").tolist() == [1]
    # three identical rows: full tie, counted wrong
    Y = np.ones((3, 2), dtype=np.float32)
    assert predict_odd_one_out(Y, [[0, 1, 2]], "cosine").tolist() == [-1]
    assert odd_one_out(Y, [[0, 1, 2]], n_bootstrap=0).accuracy == 0.0


@pytest.mark.parametrize("similarity", SIMS)
def test_pairwise_similarities_match_loop(similarity: str, path: str) -> None:
    rng = np.random.default_rng(3)
    X = tie_rich_features(rng, integer=False)
    T = random_triplets(rng, X.shape[0], 500)
    rows = X.astype(np.float64).tolist()
    expected = [
        [
            ref_similarity(rows[a], rows[b], similarity)
            for a, b in ((t[0], t[1]), (t[0], t[2]), (t[1], t[2]))
        ]
        for t in T.tolist()
    ]
    got = pairwise_triplet_similarities(X, T, similarity)
    assert got.shape == (500, 3)
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


def test_a_row_whose_squared_norm_underflows_has_cosine_zero(path: str) -> None:
    """A zero-norm row has cosine 0 with anything (module docstring). A row of 1e-170
    has a squared norm that underflows to 0 while its dot product with a row of 1e100
    does not (1e-70): its cosine is 0 all the same, never the dot product left over."""
    X = np.array([[1e-170, 0.0], [1e100, 1.0], [0.0, 1.0], [1.0, 1.0]])
    got = pairwise_triplet_similarities(X, [[0, 1, 2], [1, 2, 3]], "cosine")
    assert float(X[0] @ X[1]) != 0.0 and float(X[0] @ X[0]) == 0.0  # the case as built
    assert got[0, :2].tolist() == [0.0, 0.0]
    np.testing.assert_allclose(got[0, 2], 0.0, atol=1e-15)  # 1e100 vs a unit y: ~1e-100
    np.testing.assert_allclose(got[1], [1e-100, 2**-0.5, 2**-0.5], rtol=1e-12, atol=1e-15)


# --------------------------------------------------------------------------- real data


def read_raw_things(data_dir: Path) -> list[tuple[int, int, int, int]]:
    """Independent parser of test_triplets.csv: i j k choice subject, 1-based, RAW order."""
    path = data_dir / "things" / "test_triplets.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            i, j, k, choice, _subject = (int(x) for x in line.split())
            rows.append((i, j, k, choice))
    return rows


def stored_convention(rows: list[tuple[int, int, int, int]], one_based: bool) -> np.ndarray:
    """(i, j, k, choice) -> (a, b, odd) with the odd one out last."""
    out = []
    for i, j, k, choice in rows:
        objs = [i, j, k]
        odd = objs.pop(choice - 1)
        out.append([*objs, odd])
    T = np.array(out, dtype=np.int64)
    return T - 1 if one_based else T


@pytest.fixture(scope="module")
def things_concept_order(data_dir: Path) -> np.ndarray:
    path = data_dir / "things" / "test_triplets_things_concepts_order0.csv"
    if not path.exists():
        pytest.skip(f"{path} not found")
    rows = []
    for line in path.read_text().splitlines()[1:]:
        i, j, k, choice, _ = (int(x) for x in line.split(","))
        rows.append((i, j, k, choice))
    return stored_convention(rows, one_based=False)


@pytest.fixture(scope="module")
def spose(data_dir: Path) -> np.ndarray:
    path = data_dir / "things_spose66d" / "spose_embedding_66d.txt"
    if not path.exists():
        pytest.skip(f"{path} not found")
    return np.loadtxt(path)


def numpy_reference_correct(X: np.ndarray, T: np.ndarray, kind: str) -> np.ndarray:
    """A second, plain-numpy implementation for real data (full n x n matrix)."""
    G = X @ X.T
    norms = np.sqrt(np.diag(G))
    if kind == "dot":
        S = G
    elif kind == "cosine":
        S = G / np.outer(norms, norms)
    else:
        S = -np.sqrt(np.maximum(norms[:, None] ** 2 + norms[None, :] ** 2 - 2 * G, 0))
    s = np.stack([S[T[:, 0], T[:, 1]], S[T[:, 0], T[:, 2]], S[T[:, 1], T[:, 2]]], axis=1)
    assert not ((s[:, 0] == s[:, 1]) | (s[:, 0] == s[:, 2]) | (s[:, 1] == s[:, 2])).any()
    return np.argmax(s, axis=1) == 0  # correct: the human pair (a, b) is the most similar


def ref_noise_ceiling(T: np.ndarray) -> float:
    answers: dict[frozenset[int], list[int]] = defaultdict(list)
    for a, b, c in T.tolist():
        answers[frozenset((a, b, c))].append(c)
    shares = [Counter(v).most_common(1)[0][1] / len(v) for v in answers.values() if len(v) >= 2]
    return sum(shares) / len(shares)


def test_things_noise_ceiling_from_raw_responses(data_dir: Path) -> None:
    rows = read_raw_things(data_dir)
    assert len(rows) == 20_000
    T = stored_convention(rows, one_based=True)
    ceiling = noise_ceiling(T)
    assert ceiling == pytest.approx(ref_noise_ceiling(T), abs=1e-12)
    assert ceiling == pytest.approx(0.6722, abs=5e-5)  # Hebart et al. 2020: 67.22%


@pytest.mark.parametrize("similarity", SIMS)
def test_spose_zero_shot_on_things_equals_loop(
    similarity: str, spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    T = things_concept_order
    result = odd_one_out(spose, T, similarity=similarity, n_bootstrap=200)
    expected = numpy_reference_correct(spose, T, similarity).mean()
    loop = np.mean(np.array(ref_predict(spose, T[:2000], similarity)) == 2)
    assert odd_one_out(spose, T[:2000], similarity, n_bootstrap=0).accuracy == loop
    assert result.accuracy == pytest.approx(expected, abs=1e-12)
    assert result.n_triplets == 20_000 and result.n_distinct == 1000
    assert result.ceiling == pytest.approx(0.6722, abs=5e-5)
    assert result.ceiling_source == "data"
    assert result.normalized == pytest.approx((expected - 1 / 3) / (result.ceiling - 1 / 3))
    assert result.bootstrap_unit == "distinct triplet"
    if similarity == "dot":  # PROVENANCE / Hebart et al.: 64.3% of responses
        assert result.accuracy == pytest.approx(0.643, abs=5e-4)
    print(f"SPoSE-66d {similarity}: {result.accuracy:.4f} CI {result.ci}")


def test_majority_variant_matches_independent_implementation(
    spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    T = things_concept_order
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for a, b, c in T.tolist():
        groups[tuple(sorted((a, b, c)))].append(c)
    canon = list(groups)
    canonical_pred = dict(zip(canon, ref_predict(spose, np.array(canon), "dot"), strict=True))
    credits = []
    for objs, answers in groups.items():
        counts = Counter(answers)
        top = max(counts.values())
        majority = {obj for obj, k in counts.items() if k == top}
        pred = canonical_pred[objs]
        predicted = objs[pred] if pred >= 0 else None
        credits.append(1 / len(majority) if predicted in majority else 0.0)
    result = odd_one_out(spose, T, similarity="dot", variant="majority", n_bootstrap=100)
    assert result.variant == "majority" and result.n_triplets == 1000
    assert result.accuracy == pytest.approx(np.mean(credits), abs=1e-12)


def test_majority_tie_gives_fractional_credit() -> None:
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0]])  # 0 and 1 similar: odd one is 2
    T = np.array([[0, 1, 2], [0, 2, 1]])  # two people: one says 2, one says 1 -> tie
    result = odd_one_out(X, T, variant="majority", n_bootstrap=0)
    assert result.accuracy == pytest.approx(0.5)
    assert odd_one_out(X, T, n_bootstrap=0).accuracy == pytest.approx(0.5)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_estimate_and_is_seeded(
    spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    T = things_concept_order
    r1 = odd_one_out(spose, T, similarity="dot", n_bootstrap=500, seed=3)
    r2 = odd_one_out(spose, T, similarity="dot", n_bootstrap=500, seed=3)
    r3 = odd_one_out(spose, T, similarity="dot", n_bootstrap=500, seed=4)
    assert r1.ci is not None and r1.ci[0] < r1.accuracy < r1.ci[1]
    assert r1.ci == r2.ci
    assert r1.ci != r3.ci


def test_grouped_bootstrap_matches_naive_resampling_of_distinct_triplets(
    spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    T = things_concept_order
    correct = predict_odd_one_out(spose, T, "dot") == 2
    keys = [tuple(sorted(t)) for t in T.tolist()]
    per_group: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for key, ok in zip(keys, correct.tolist(), strict=True):
        per_group[key].append(int(ok))
    sums = np.array([sum(v) for v in per_group.values()], dtype=float)
    sizes = np.array([len(v) for v in per_group.values()], dtype=float)
    rng = np.random.default_rng(123)
    stats = []
    for _ in range(3000):
        idx = rng.integers(0, sums.size, sums.size)
        stats.append(sums[idx].sum() / sizes[idx].sum())
    naive = np.quantile(stats, [0.025, 0.975])
    group_ids = np.unique(np.array(keys), axis=0, return_inverse=True)[1].reshape(-1)
    ours = bootstrap_mod.bootstrap_mean_ci(correct, groups=group_ids, n_bootstrap=3000, seed=0)
    assert ours is not None
    np.testing.assert_allclose(ours, naive, atol=0.002)
    # the grouped interval is wider than pretending the 20,000 responses were independent
    flat = bootstrap_mod.bootstrap_mean_ci(correct, n_bootstrap=3000, seed=0)
    assert flat is not None and (ours[1] - ours[0]) > (flat[1] - flat[0])


def test_generic_bootstrap_ci_resamples_groups() -> None:
    values = np.array([0.0, 0.0, 1.0, 1.0, 1.0, 5.0])
    groups = np.array([0, 0, 1, 1, 1, 2])
    seen: list[np.ndarray] = []

    def stat(idx: np.ndarray) -> float:
        seen.append(idx)
        return float(values[idx].mean())

    ci = bootstrap_mod.bootstrap_ci(stat, 6, groups=groups, n_bootstrap=50, seed=1)
    assert ci is not None and ci[0] <= ci[1]
    for idx in seen:  # whole groups only: each group's members appear together
        counts = np.bincount(idx, minlength=6)
        assert counts[0] == counts[1] and counts[2] == counts[3] == counts[4]
    assert bootstrap_mod.bootstrap_ci(stat, 6, n_bootstrap=0) is None


# --------------------------------------------------------------------------- missing / errors


def test_all_nan_rows_drop_their_triplets_with_a_warning(
    spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    T = things_concept_order
    X = spose.copy()
    gone = [int(T[0, 0]), int(T[5, 2]), 17]
    X[gone] = np.nan
    touching = np.isin(T, gone).any(axis=1)
    with pytest.warns(MissingStimuliWarning, match=f"{int(touching.sum())} of 20000 triplets"):
        result = odd_one_out(X, T, similarity="dot", n_bootstrap=0)
    assert result.n_dropped == int(touching.sum()) > 0
    assert result.n_responses == 20_000 - result.n_dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        kept = odd_one_out(spose, T[~touching], similarity="dot", n_bootstrap=0)
    assert result.accuracy == kept.accuracy
    with pytest.warns(MissingStimuliWarning):
        preds = predict_odd_one_out(X, T, "dot")
    assert (preds[touching] == -1).all()


def test_nan_inside_a_row_raises() -> None:
    X = np.random.default_rng(0).standard_normal((5, 3))
    X[2, 1] = np.nan
    with pytest.raises(NumericalError, match="row 2 column 1"):
        odd_one_out(X, [[0, 1, 2]])
    X[2, 1] = np.inf
    with pytest.raises(NumericalError, match="row 2"):
        predict_odd_one_out(X, [[0, 1, 2]])


@pytest.mark.parametrize(
    ("triplets", "field"),
    [
        ([[0, 1, 9]], "triplets[0]"),
        ([[0, 1, 2], [0, 0, 1]], "triplets[1]"),
        ([[0, 1]], "triplets"),
        (np.zeros((0, 3), dtype=int), "triplets"),
        ([[0.5, 1, 2]], "triplets[0]"),  # validation names the row of a non-integer
    ],
)
def test_bad_triplets_name_the_row(triplets: object, field: str) -> None:
    X = np.eye(4)
    with pytest.raises(InvalidInputError) as info:
        odd_one_out(X, triplets)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"similarity": "pearson"}, "similarity"),
        ({"variant": "mean"}, "variant"),
        ({"ceiling": 0.2}, "ceiling"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_options_are_named(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as info:
        odd_one_out(np.eye(4), [[0, 1, 2]], **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


def test_bad_features_are_named() -> None:
    with pytest.raises(InvalidInputError) as info:
        odd_one_out(np.ones(5), [[0, 1, 2]])
    assert info.value.field == "features"


# --------------------------------------------------------------------------- ceiling options


def test_single_responses_have_no_ceiling_unless_given() -> None:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((12, 4))
    T = np.array(list(combinations(range(12), 3))[:100])
    result = odd_one_out(X, T, n_bootstrap=100)
    assert result.ceiling is None and result.normalized is None
    assert result.bootstrap_unit == "triplet"
    with pytest.raises(InvalidInputError):
        noise_ceiling(T)
    given = odd_one_out(X, T, ceiling=0.6, n_bootstrap=0)
    assert given.ceiling_source == "given"
    assert given.normalized == pytest.approx((given.accuracy - 1 / 3) / (0.6 - 1 / 3))


def test_clip_normalized_clips_at_zero() -> None:
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.05]])  # 0 and 2 most similar
    T = np.array([[0, 1, 2]] * 3)  # humans say 2 is odd: the model is always wrong
    raw = odd_one_out(X, T, n_bootstrap=0)
    assert raw.accuracy == 0.0 and raw.ceiling == 1.0
    assert raw.normalized == pytest.approx(-0.5)
    assert odd_one_out(X, T, n_bootstrap=0, clip_normalized=True).normalized == 0.0


def test_result_serialises_with_its_options(spose: np.ndarray) -> None:
    d = odd_one_out(spose, [[0, 1, 2], [3, 4, 5]], similarity="dot", n_bootstrap=10).to_dict()
    for key in ("similarity", "variant", "n_bootstrap", "seed", "confidence", "n_dropped"):
        assert key in d
    assert d["similarity"] == "dot" and d["n_bootstrap"] == 10


# --------------------------------------------------------------------------- anchor


@pytest.mark.parametrize("similarity", SIMS)
def test_anchor_accuracy_equals_loop(
    similarity: str, spose: np.ndarray, things_concept_order: np.ndarray
) -> None:
    # (a, b, c) with the human's odd one out c: b is closer to a than c (anchor a).
    T = things_concept_order[:3000]
    rows = spose.tolist()
    expected = np.mean(
        [
            ref_similarity(rows[a], rows[b], similarity)
            > ref_similarity(rows[a], rows[c], similarity)
            for a, b, c in T.tolist()
        ]
    )
    result = anchor_accuracy(spose, T, similarity=similarity, n_bootstrap=100)
    assert result.chance == 0.5 and result.convention == "anchor"
    assert result.accuracy == pytest.approx(expected, abs=1e-12)
    assert result.ci is not None and result.ci[0] <= result.accuracy <= result.ci[1]


def test_anchor_majority_and_ceiling_by_hand() -> None:
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    # anchor 0 with {1, 2}: three people, answers 1, 2, 1 -> majority 1 (share 2/3);
    # anchor 3 with {0, 2}: one person. Cosine: 1 is closer to 0 than 2 is; 0 and 2 are
    # exactly as close to 3 (a tie, counted wrong).
    T = np.array([[0, 1, 2], [0, 2, 1], [0, 1, 2], [3, 0, 2]])
    assert noise_ceiling(T, convention="anchor") == pytest.approx(2 / 3)
    majority = anchor_accuracy(X, T, variant="majority", n_bootstrap=0)
    assert majority.accuracy == pytest.approx(0.5) and majority.n_full_ties == 1
    responses = anchor_accuracy(X, T, n_bootstrap=0)
    assert responses.accuracy == pytest.approx(0.5)  # responses 0 and 2 right, 1 and 3 wrong
    assert responses.normalized == pytest.approx((0.5 - 0.5) / (2 / 3 - 0.5))


# --------------------------------------------------------------------------- ceilings, loops


def ref_answers(T: np.ndarray, convention: str) -> dict[tuple[int, ...], list[int]]:
    """Answers per distinct triplet, in response order (METHODS.md section 2): the
    unordered set of three objects and its odd one out, or the anchor with the unordered
    pair of the others and the one judged closer to the anchor."""
    out: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for a, b, c in T.tolist():
        if convention == "odd-one-out":
            out[tuple(sorted((a, b, c)))].append(c)
        else:
            out[(a, min(b, c), max(b, c))].append(b)
    return out


def ref_loo_ceiling(T: np.ndarray, convention: str = "odd-one-out") -> float:
    """Leave-one-response-out ceiling written from its definition: each response of a
    distinct triplet answered at least twice against the majority of the OTHER responses
    (1/k when k answers tie for it and the response is one of them); mean over the
    triplet's responses, then over distinct triplets."""
    per_triplet = []
    for answers in ref_answers(T, convention).values():
        if len(answers) < 2:
            continue
        scores = []
        for r, mine in enumerate(answers):
            others = Counter(answers[:r] + answers[r + 1 :])
            top = max(others.values())
            tied = [x for x, k in others.items() if k == top]
            scores.append(1 / len(tied) if mine in tied else 0.0)
        per_triplet.append(sum(scores) / len(scores))
    return sum(per_triplet) / len(per_triplet)


def ref_in_sample_ceiling(T: np.ndarray, convention: str = "odd-one-out") -> float:
    shares = [
        max(Counter(v).values()) / len(v) for v in ref_answers(T, convention).values() if len(v) > 1
    ]
    return sum(shares) / len(shares)


def tie_rich_responses(rng: np.random.Generator, n: int, m: int, convention: str) -> np.ndarray:
    """``m`` responses over few objects (many repeats, all kinds of answer ties), each in
    the stored convention with its two first objects in random order."""
    rows = []
    for _ in range(m):
        objs = [int(x) for x in rng.choice(n, size=3, replace=False)]
        if convention == "odd-one-out":
            objs.sort()  # the set; a skewed choice of its odd one out
            odd = objs.pop(int(rng.choice(3, p=[0.5, 0.3, 0.2])))
            a, b = objs if rng.random() < 0.5 else objs[::-1]
            rows.append([a, b, odd])
        else:  # anchor objs[0]; the closer one skewed toward the smaller id
            lo, hi = sorted(objs[1:])
            closer, other = (lo, hi) if rng.random() < 0.6 else (hi, lo)
            rows.append([objs[0], closer, other])
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([7, 7], 1.0),  # each response agrees with the other one
        ([7, 8], 0.0),  # each response disagrees with the other one
        ([7, 7, 8], 1 / 3),  # 7s: others tie 7/8 -> 1/2 each; 8: others all 7 -> 0
        ([7, 7, 7, 8], 3 / 4),  # 7s: others' majority 7 -> 1; 8 -> 0
        ([7, 7, 8, 8], 0.0),  # removing one leaves the other answer the unique majority
        ([7, 7, 8, 9], 1 / 6),  # 7s: others tie three ways -> 1/3 each; 8, 9 -> 0
        ([7, 7, 7, 8, 8], 3 / 10),  # 7s: others tie 7/8 -> 1/2 each; 8s -> 0
        ([7, 8, 9], 0.0),
    ],
)
def test_loo_ceiling_of_one_triplet_by_hand(answers: list[int], expected: float) -> None:
    """One distinct triplet {7, 8, 9} answered len(answers) times (odd one out given)."""
    from align.metrics.oddoneout import loo_noise_ceiling

    T = np.array([[*sorted({7, 8, 9} - {odd}), odd] for odd in answers])
    assert loo_noise_ceiling(T) == pytest.approx(expected, abs=1e-15)
    assert ref_loo_ceiling(T) == pytest.approx(expected, abs=1e-15)
    # the in-sample share of the top answer, for contrast
    assert noise_ceiling(T) == pytest.approx(max(Counter(answers).values()) / len(answers))
    if 9 not in answers:  # anchor 9 with the pair {7, 8}: the same answers as "closer"
        A = np.array([[9, x, 15 - x] for x in answers])
        assert ooo.loo_noise_ceiling(A, convention="anchor") == pytest.approx(expected)


@pytest.mark.parametrize("convention", ["odd-one-out", "anchor"])
@pytest.mark.parametrize("offset", [0, 1_200_000], ids=["packed-keys", "lexsort"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ceilings_equal_the_loops_of_their_definitions(
    convention: str, offset: int, seed: int
) -> None:
    """Both ceilings against loops over responses, with many ties; object ids past 1.1
    million take the grouping path whose keys do not fit int64."""
    rng = np.random.default_rng(seed)
    T = tie_rich_responses(rng, 6, 150, convention)
    T = np.vstack([T, tie_rich_responses(rng, 40, 10, convention) + 6])  # mostly singletons
    T += offset
    assert ooo.loo_noise_ceiling(T, convention=convention) == pytest.approx(
        ref_loo_ceiling(T, convention), abs=1e-12
    )
    assert noise_ceiling(T, convention=convention) == pytest.approx(
        ref_in_sample_ceiling(T, convention), abs=1e-12
    )


@pytest.mark.parametrize("convention", ["odd-one-out", "anchor"])
@pytest.mark.parametrize("variant", ["responses", "majority"])
def test_scores_and_both_ceilings_equal_loops_with_ties(convention: str, variant: str) -> None:
    """Integer features (exact similarity ties, a duplicate and a zero row) on tie-rich
    responses: accuracy, full ties, both ceilings and both normalisations against loops
    (responses: each response scored; majority: 1/k credit when the prediction on the
    distinct triplet's canonical order is one of the k most common answers)."""
    rng = np.random.default_rng(3)
    X = rng.integers(-1, 2, size=(8, 3)).astype(np.float64)
    X[5] = X[2]
    X[6] = 0.0
    T = tie_rich_responses(rng, 8, 400, convention)
    rows = X.tolist()
    sim = {(i, j): ref_similarity(rows[i], rows[j], "cosine") for i in range(8) for j in range(8)}
    chance = 1 / 3 if convention == "odd-one-out" else 1 / 2

    def predicted(a: int, b: int, c: int) -> int | None:
        """The answer object the model gives (None on a full/exact tie)."""
        if convention == "anchor":
            if sim[a, b] == sim[a, c]:
                return None
            return b if sim[a, b] > sim[a, c] else c
        pos = ref_predict(X, np.array([[a, b, c]]), "cosine")[0]
        return None if pos < 0 else (a, b, c)[pos]

    if variant == "responses":
        answer_col = 2 if convention == "odd-one-out" else 1
        preds = [predicted(*t) for t in T.tolist()]
        values = [p == t[answer_col] for p, t in zip(preds, T.tolist(), strict=True)]
        n_ties = sum(p is None for p in preds)
    else:
        values, n_ties = [], 0
        for key, answers in ref_answers(T, convention).items():
            counts = Counter(answers)
            top = max(counts.values())
            majority = [x for x, k in counts.items() if k == top]
            p = predicted(*key)
            n_ties += p is None
            values.append(1 / len(majority) if p in majority else 0.0)
    expected = sum(values) / len(values)
    score = odd_one_out if convention == "odd-one-out" else anchor_accuracy
    r = score(X, T, variant=variant, n_bootstrap=0)
    assert r.accuracy == pytest.approx(expected, abs=1e-12)
    assert r.n_triplets == len(values) and r.n_full_ties == n_ties and r.chance == chance
    assert r.n_distinct == len(ref_answers(T, convention)) and r.n_responses == len(T)
    loo, ins = ref_loo_ceiling(T, convention), ref_in_sample_ceiling(T, convention)
    assert r.ceiling == pytest.approx(ins, abs=1e-12) and r.ceiling_source == "data"
    assert r.ceiling_loo == pytest.approx(loo, abs=1e-12)
    assert r.normalized == pytest.approx((expected - chance) / (ins - chance), abs=1e-12)
    if loo > chance:
        assert r.normalized_loo == pytest.approx((expected - chance) / (loo - chance))
    else:
        assert r.normalized_loo is None
    given = score(X, T, variant=variant, n_bootstrap=0, ceiling=0.9)
    assert given.ceiling == 0.9 and given.ceiling_loo is None and given.normalized_loo is None


def test_things_loo_ceiling_is_0_6439(data_dir: Path) -> None:
    """METHODS.md section 2: 0.6439 on the 20,000 THINGS responses, as the loop gives."""
    T = stored_convention(read_raw_things(data_dir), one_based=True)
    loo = ooo.loo_noise_ceiling(T)
    assert loo == pytest.approx(ref_loo_ceiling(T), abs=1e-12)
    assert loo == pytest.approx(0.6439, abs=5e-5)


def test_result_says_where_its_ceiling_and_interval_come_from() -> None:
    """``ceiling_source`` is None without repeated triplets (nothing to compute from);
    ``bootstrap_unit`` is None without an interval, "distinct triplet" in the majority
    variant (its units ARE distinct triplets) and with repeats, else "triplet"."""
    rng = np.random.default_rng(4)
    X = rng.standard_normal((9, 3))
    singles = np.array(list(combinations(range(9), 3))[:30])
    r = odd_one_out(X, singles, n_bootstrap=20)
    assert r.ceiling is None and r.ceiling_source is None and r.ceiling_loo is None
    assert r.normalized is None and r.normalized_loo is None and r.bootstrap_unit == "triplet"
    repeated = np.vstack([singles, singles[:5, [1, 0, 2]]])
    for variant in ("responses", "majority"):
        with_ci = odd_one_out(X, repeated, variant=variant, n_bootstrap=20)
        assert with_ci.ci is not None and with_ci.bootstrap_unit == "distinct triplet"
        assert with_ci.ceiling_source == "data"
        without = odd_one_out(X, repeated, variant=variant, n_bootstrap=0)
        assert without.ci is None and without.bootstrap_unit is None
    maj = odd_one_out(X, singles, variant="majority", n_bootstrap=20)
    assert maj.bootstrap_unit == "distinct triplet"


def test_pairwise_similarities_name_a_bad_similarity_and_keep_rows_in_place() -> None:
    """Rows follow the triplets (a missing stimulus's triplets are NaN rows in place)."""
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0], [np.nan, np.nan], [1.0, 1.0]])
    T = np.array([[0, 1, 2], [0, 3, 4], [1, 2, 4], [2, 4, 0], [3, 1, 0]])
    with pytest.raises(InvalidInputError) as err:
        pairwise_triplet_similarities(X, T, similarity="cos")  # type: ignore[arg-type]
    assert err.value.field == "similarity"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MissingStimuliWarning)
        got = pairwise_triplet_similarities(X, T, similarity="dot")
    rows = X.tolist()
    for r, (a, b, c) in enumerate(T.tolist()):
        if 3 in (a, b, c):
            assert np.isnan(got[r]).all()
        else:
            want = [ref_similarity(rows[i], rows[j], "dot") for i, j in ((a, b), (a, c), (b, c))]
            assert got[r].tolist() == want


@pytest.mark.parametrize("convention", ["odd-one-out", "anchor"])
def test_majority_variant_when_no_triplet_repeats(convention: str) -> None:
    """Every response its own distinct triplet: the majority variant scores each once,
    predicted on the canonical order (sorted objects; anchor then the sorted pair), so
    an exact partial tie follows the (ab, ac, bc) rule on that order, not the stored one."""
    rng = np.random.default_rng(8)
    X = rng.integers(-1, 2, size=(9, 2)).astype(np.float64)
    sets = list(combinations(range(9), 3))
    rng.shuffle(sets)
    rows = []
    for objs in sets[:40]:
        rows.append([int(x) for x in rng.permutation(objs)])
    T = np.array(rows)
    feats = X.tolist()
    credits, ties = [], 0
    for a, b, c in T.tolist():
        if convention == "odd-one-out":
            lo, mid, hi = sorted((a, b, c))
            pos = ref_predict(X, np.array([[lo, mid, hi]]), "cosine")[0]
            ties += pos < 0
            credits.append(float(pos >= 0 and (lo, mid, hi)[pos] == c))
        else:
            lo, hi = sorted((b, c))
            s_lo = ref_similarity(feats[a], feats[lo], "cosine")
            s_hi = ref_similarity(feats[a], feats[hi], "cosine")
            ties += s_lo == s_hi
            closer = None if s_lo == s_hi else (lo if s_lo > s_hi else hi)
            credits.append(float(closer == b))
    score = odd_one_out if convention == "odd-one-out" else anchor_accuracy
    r = score(X, T, variant="majority", n_bootstrap=0)
    assert r.accuracy == pytest.approx(sum(credits) / len(credits), abs=1e-12)
    assert r.n_triplets == r.n_distinct == 40 and r.n_full_ties == ties


@pytest.mark.parametrize("convention", ["odd-one-out", "anchor"])
@pytest.mark.parametrize("n_objects", [50, 1_040_000, 1_300_000, 2_000_000, 2_700_000])
def test_grouping_is_exact_for_any_number_of_objects(convention: str, n_objects: int) -> None:
    """Groups, answer counts, answer objects and ties against a dict, for object counts
    whose packed (triplet, answer) keys fit int64 (50; 1.04 million: exactly 62 bits),
    need its sign bit (1.3 million: n^3 has 61 bits) or would overflow it (2 and 2.7
    million): only the object count changes the key arithmetic, so the ids are drawn
    near its top."""
    from align.metrics.oddoneout import _group

    rng = np.random.default_rng(n_objects % 97)
    ids = n_objects - 1 - rng.choice(min(n_objects, 12), size=6, replace=False)
    T = ids[tie_rich_responses(rng, 6, 120, convention)]
    groups = _group(T, convention, n_objects)
    answers = ref_answers(T, convention)
    assert groups.sizes.size == len(answers)
    seen = set()
    for key, given in answers.items():
        rows = [
            r
            for r, t in enumerate(T.tolist())
            if ref_answers(np.array([t]), convention).keys() == {key}
        ]
        g = int(groups.inverse[rows[0]])
        seen.add(g)
        assert (groups.inverse[rows] == g).all() and groups.sizes[g] == len(given)
        counts = Counter(given)
        top = max(counts.values())
        mine = groups.answer_group == g
        assert groups.answers[mine].tolist() == sorted(counts)
        assert groups.answer_counts is not None
        assert groups.answer_counts[mine].tolist() == [counts[x] for x in sorted(counts)]
        assert groups.answer_is_top[mine].tolist() == [counts[x] == top for x in sorted(counts)]
        assert groups.n_top[g] == sum(v == top for v in counts.values())
        assert groups.majority_share[g] == pytest.approx(top / len(given))
        assert T[groups.first[g]].tolist() in [T[r].tolist() for r in rows]
    assert len(seen) == len(answers)


def test_majority_full_tie_earns_nothing_whatever_the_answer() -> None:
    """A full similarity tie predicts no object, so it earns 0 in the majority variant
    even when the humans' majority answer is object 0 or 1 (as it would if the tie were
    recorded as an object id)."""
    X = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 0, 1, 2: one point
    for odd in (0, 1, 2):
        T = np.array([[*sorted({0, 1, 2} - {odd}), odd]] * 2)
        r = odd_one_out(X, T, variant="majority", n_bootstrap=0)
        assert r.accuracy == 0.0 and r.n_full_ties == 1 and r.n_triplets == 1
    # anchor 3: objects 0 and 1 are exactly as close to it; the humans say 0, then 1
    for closer in (0, 1):
        A = np.array([[3, closer, 1 - closer]] * 2)
        r = anchor_accuracy(X, A, variant="majority", n_bootstrap=0)
        assert r.accuracy == 0.0 and r.n_full_ties == 1


@pytest.mark.parametrize("m", [3, 5, 9, 17, 1025])
def test_packed_sort_is_stable_when_the_last_index_needs_one_more_bit(m: int) -> None:
    """``(order, keys[order])`` is numpy's stable argsort for m = 2^k + 1 responses (the
    last index, 2^k, needs k + 1 bits) and for keys of 62 bits (no room to pack)."""
    from align.metrics.oddoneout import _sorted_with_order

    rng = np.random.default_rng(m)
    for key_bits, high in ((4, 1 << 3), (62, 1 << 62)):
        keys = rng.integers(high // 2, high, size=m, dtype=np.int64)
        keys[: m // 2] = keys[m // 2]  # many equal keys: stability matters
        rng.shuffle(keys)
        order, sorted_keys = _sorted_with_order(keys.copy(), key_bits)
        expected = np.argsort(keys, kind="stable")
        np.testing.assert_array_equal(order, expected)
        np.testing.assert_array_equal(sorted_keys, keys[expected])


@pytest.mark.parametrize("similarity", SIMS)
def test_predict_odd_one_out_with_missing_rows_equals_the_loop(similarity: str) -> None:
    """int64 positions as the loop gives them for the kept triplets (with the requested
    similarity), -1 for those touching an all-NaN row; a missing row that no triplet
    touches drops nothing and warns about nothing; a bad similarity is named."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((8, 3))
    X[6] = np.nan
    T = np.array(list(combinations(range(8), 3)))
    rng.shuffle(T, axis=1)
    touching = (T == 6).any(axis=1)
    with pytest.warns(MissingStimuliWarning, match=f"{int(touching.sum())} of {len(T)}"):
        pred = predict_odd_one_out(X, T, similarity)  # type: ignore[arg-type]
    assert pred.dtype == np.int64
    assert (pred[touching] == -1).all()
    assert pred[~touching].tolist() == ref_predict(X, T[~touching], similarity)
    untouched = T[~touching]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        same = predict_odd_one_out(X, untouched, similarity)  # type: ignore[arg-type]
        r = odd_one_out(X, untouched, similarity, n_bootstrap=0)  # type: ignore[arg-type]
    assert not [w for w in caught if issubclass(w.category, MissingStimuliWarning)]
    assert same.tolist() == pred[~touching].tolist() and r.n_dropped == 0
    full = predict_odd_one_out(np.nan_to_num(X), T, similarity)  # type: ignore[arg-type]
    assert full.dtype == np.int64
    with pytest.raises(InvalidInputError) as err:
        predict_odd_one_out(X, T, "cos")  # type: ignore[arg-type]
    assert err.value.field == "similarity"


def test_missing_stimuli_warning_points_at_the_callers_line() -> None:
    """The MissingStimuliWarning of predict_odd_one_out, odd_one_out and anchor_accuracy
    is attributed to the calling code (not to oddoneout.py) and says how many triplets
    were dropped, of how many, and why."""
    from align.metrics.oddoneout import anchor_accuracy

    X = np.vstack([np.eye(3), np.full((1, 3), np.nan)])
    with pytest.warns(MissingStimuliWarning) as caught:
        predict_odd_one_out(X, [[0, 1, 3], [0, 1, 2]])
        odd_one_out(X, [[0, 1, 3], [0, 1, 2]], n_bootstrap=0)
        anchor_accuracy(X, [[0, 1, 3], [0, 1, 2]], n_bootstrap=0)
    import sys

    # (under mutation testing, mutmut's trampolines add stack frames in between)
    if not any(name.startswith("mutmut") for name in sys.modules):
        assert [w.filename for w in caught] == [__file__] * 3
    assert str(caught[0].message) == (
        "1 of 2 triplets touch one of 1 missing stimuli (all-NaN feature rows) and were dropped"
    )


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("similarity", SIMS)
def test_overflowing_similarities_raise_and_name_the_similarity(similarity: str, path: str) -> None:
    """Features whose dot products overflow float64 are refused (NumericalError naming
    the similarity), never scored, on both paths, also beside a missing stimulus."""
    rng = np.random.default_rng(10)
    X = rng.standard_normal((6, 3)) * 1e200
    X[5] = np.nan
    T = np.array([t for t in combinations(range(5), 3)] * 20)
    for features in (X[:5], X):
        with pytest.raises(NumericalError, match=f"{similarity} similarities overflowed"):
            odd_one_out(features, T, similarity, n_bootstrap=0)  # type: ignore[arg-type]
        with pytest.raises(NumericalError, match=f"{similarity} similarities overflowed"):
            predict_odd_one_out(features, T, similarity)  # type: ignore[arg-type]


def test_euclidean_of_nearly_equal_rows_is_finite(path: str) -> None:
    """Rows 1e-9 apart: |u|^2 + |v|^2 - 2 u.v can round below zero, which must read as
    distance 0 (similarity <= 0, finite), not NaN or an overflow error; the values stay
    within 1e-7 of the loop's -|u - v|."""
    rng = np.random.default_rng(0)
    U = rng.standard_normal((40, 3))
    X = np.empty((80, 3))
    X[0::2], X[1::2] = U, U + rng.standard_normal(U.shape) * 1e-9
    T = np.array([[2 * k, 2 * k + 1, (2 * k + 2) % 80] for k in range(40)])
    got = pairwise_triplet_similarities(X, T, similarity="euclidean")
    rows = X.tolist()
    want = [
        [ref_similarity(rows[i], rows[j], "euclidean") for i, j in ((a, b), (a, c), (b, c))]
        for a, b, c in T.tolist()
    ]
    assert np.isfinite(got).all() and (got <= 0).all()
    np.testing.assert_allclose(got, want, atol=1e-7)
    assert odd_one_out(X, T, "euclidean", n_bootstrap=0).accuracy == 1.0  # c, far, is odd
