"""evaluate(): dataset kind -> metrics, checked on real human data against independent
computations written here from the raw files (not through align's loaders)."""

from __future__ import annotations

import csv
import functools
from pathlib import Path

import align
import numpy as np
import pytest
import scipy.io
import scipy.stats
from align.errors import InvalidInputError, NumericalError
from align.evaluation import default_metrics, evaluate

# -- independent readers of the raw files ------------------------------------------------


@functools.cache
def raw_things_triplets(data_dir: Path) -> np.ndarray:
    """The 20,000 raw responses in things_concepts order, stored convention (col 2 odd)."""
    raw = np.loadtxt(data_dir / "things" / "test_triplets.csv", dtype=np.int64)
    sortindex = np.loadtxt(data_dir / "things" / "sortindex", dtype=np.int64).ravel()
    # sorted_row i = raw_row sortindex[i]  =>  raw index r lives at sorted position
    # argsort(sortindex)[r] (PROVENANCE.md)
    raw_to_sorted = np.argsort(sortindex)
    objs = raw_to_sorted[raw[:, :3] - 1]
    choice = raw[:, 3] - 1  # position of the odd one out
    rows = np.arange(len(objs))
    odd = objs[rows, choice]
    pair = np.stack([objs[rows, (choice + 1) % 3], objs[rows, (choice + 2) % 3]], axis=1)
    return np.column_stack([pair, odd])


@functools.cache
def spose(data_dir: Path) -> np.ndarray:
    return np.loadtxt(data_dir / "things_spose66d" / "spose_embedding_66d.txt")


def accuracy_dot(X: np.ndarray, t: np.ndarray) -> float:
    """Plain odd-one-out accuracy with dot-product similarity."""
    s_ab = np.einsum("ij,ij->i", X[t[:, 0]], X[t[:, 1]])
    s_ac = np.einsum("ij,ij->i", X[t[:, 0]], X[t[:, 2]])
    s_bc = np.einsum("ij,ij->i", X[t[:, 1]], X[t[:, 2]])
    return float(np.mean((s_ab > s_ac) & (s_ab > s_bc)))


def majority_agreement(t: np.ndarray) -> float:
    """Mean share of answers that agree with each distinct triplet's majority answer."""
    groups: dict[tuple[int, ...], dict[int, int]] = {}
    for row in t:
        key = tuple(sorted(int(x) for x in row))
        counts = groups.setdefault(key, {})
        counts[int(row[2])] = counts.get(int(row[2]), 0) + 1
    return float(np.mean([max(c.values()) / sum(c.values()) for c in groups.values()]))


@pytest.fixture(scope="module")
def things(data_dir: Path):
    return align.load_dataset("things", data_dir=data_dir)


# -- triplets ----------------------------------------------------------------------------


def test_spose_on_things_matches_independent_accuracy_and_published_64_percent(
    data_dir: Path, things
) -> None:
    X = spose(data_dir)
    result = evaluate(X, things, similarity="dot", n_bootstrap=200)["odd_one_out"]
    expected = accuracy_dot(X, raw_things_triplets(data_dir))
    assert result.accuracy == pytest.approx(expected, abs=1e-12)
    assert result.accuracy == pytest.approx(0.643, abs=0.005)  # PROVENANCE.md: 64.3%
    assert result.n_triplets == 20000


def test_things_ceiling_is_computed_from_the_repeated_responses(data_dir: Path, things) -> None:
    result = evaluate(spose(data_dir), things, similarity="dot", n_bootstrap=0)["odd_one_out"]
    expected = majority_agreement(raw_things_triplets(data_dir))
    assert result.ceiling == pytest.approx(expected, abs=1e-12)
    assert result.ceiling == pytest.approx(0.6722, abs=1e-4)  # Hebart et al. 2020
    assert result.normalized == pytest.approx(
        (result.accuracy - 1 / 3) / (expected - 1 / 3), abs=1e-12
    )


def test_default_metrics_by_kind(data_dir: Path, things) -> None:
    assert default_metrics(things) == ["odd_one_out"]
    assert default_metrics(align.load_dataset("things48", data_dir=data_dir)) == ["rsa"]
    assert default_metrics(align.load_dataset("wordsim/rg65", data_dir=data_dir)) == ["wordsim"]


def test_missing_stimuli_rows_drop_their_triplets(data_dir: Path, things) -> None:
    X = spose(data_dir).copy()
    missing = [0, 5, 17, 1000]
    X[missing] = np.nan
    result = evaluate(X, things, similarity="dot", n_bootstrap=0)["odd_one_out"]
    t = raw_things_triplets(data_dir)
    touching = np.isin(t, missing).any(axis=1)
    assert result.n_dropped == int(touching.sum())
    assert result.accuracy == pytest.approx(accuracy_dot(X, t[~touching]), abs=1e-12)


# -- RDMs --------------------------------------------------------------------------------


def upper(m: np.ndarray) -> np.ndarray:
    return m[np.triu_indices(m.shape[0], 1)]


def cosine_rdm(X: np.ndarray) -> np.ndarray:
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    return 1.0 - U @ U.T


def test_rsa_on_rdm48_matches_scipy_spearman(data_dir: Path) -> None:
    ds = align.load_dataset("things48", data_dir=data_dir)
    with open(data_dir / "things48" / "rdm48_order.csv", newline="") as f:
        order = list(csv.DictReader(f))
    order.sort(key=lambda r: int(r["rdm_index"]))
    concept_rows = np.array([int(r["things_concepts_index0"]) for r in order])
    X_rdm_order = spose(data_dir)[concept_rows]
    human = scipy.io.loadmat(data_dir / "things48" / "RDM48_triplet.mat")["RDM48_triplet"]
    expected = scipy.stats.spearmanr(upper(cosine_rdm(X_rdm_order)), upper(human))[0]
    # the dataset may order its stimuli differently: give it rows in its own order
    position = {r["uniqueID"]: i for i, r in enumerate(order)}
    X = X_rdm_order[[position[s] for s in ds.stimulus_ids]]
    result = evaluate(X, ds, n_bootstrap=0)["rsa"]
    assert result.spearman == pytest.approx(expected, abs=1e-9)
    assert result.spearman > 0.7  # a human embedding agrees with a human RDM


def test_similarity_option_maps_to_the_rdm_metric(data_dir: Path) -> None:
    ds = align.load_dataset("things48", data_dir=data_dir)
    X = np.random.default_rng(0).normal(size=(48, 5))
    by_similarity = evaluate(X, ds, similarity="euclidean", n_bootstrap=0)["rsa"]
    direct = evaluate(X, ds, rdm_metric="euclidean", n_bootstrap=0)["rsa"]
    assert by_similarity.spearman == direct.spearman
    assert by_similarity.rdm_metric == "euclidean"
    with pytest.raises(InvalidInputError, match="similarity"):
        evaluate(X, ds, similarity="dot")


# -- word similarity ---------------------------------------------------------------------


def test_wordsim_spearman_of_cosines(data_dir: Path) -> None:
    pytest.importorskip("align.metrics.wordsim", reason="align.metrics.wordsim not built yet")
    ds = align.load_dataset("wordsim/rg65", data_dir=data_dir)
    X = np.random.default_rng(1).normal(size=(len(ds.stimulus_ids), 8))
    words = list(ds.words if ds.words is not None else ds.stimulus_ids)
    index = {w: i for i, w in enumerate(words)}
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    cos = [float(U[index[a]] @ U[index[b]]) for a, b in ds.pairs]
    expected = scipy.stats.spearmanr(cos, ds.pair_scores)[0]
    result = evaluate(X, ds)["wordsim"]
    assert result.spearman == pytest.approx(expected, abs=1e-9)


# -- bad input ---------------------------------------------------------------------------


def test_wrong_number_of_rows_names_features_and_the_expected_count(things) -> None:
    with pytest.raises(InvalidInputError) as err:
        evaluate(np.zeros((3, 4)), things)
    assert err.value.field == "features"
    assert "1854 rows" in str(err.value)


def test_partial_nan_row_is_a_numerical_error(things) -> None:
    X = np.ones((1854, 4))
    X[7, 2] = np.nan
    with pytest.raises(NumericalError, match="row 7"):
        evaluate(X, things)


def test_unknown_option_lists_the_valid_ones(things) -> None:
    with pytest.raises(InvalidInputError) as err:
        evaluate(np.ones((1854, 4)), things, simlarity="dot")
    assert err.value.field == "options"
    assert "simlarity" in str(err.value)
    assert "similarity" in str(err.value.expected)


def test_unknown_metric_lists_the_metrics(things) -> None:
    with pytest.raises(InvalidInputError) as err:
        evaluate(np.ones((1854, 4)), things, ["accuracy"])
    assert err.value.field == "metrics"
    assert "odd_one_out" in str(err.value)


def test_metric_of_another_kind_is_refused(things) -> None:
    with pytest.raises(InvalidInputError, match="does not apply to triplets"):
        evaluate(np.ones((1854, 4)), things, ["rsa"])


def test_package_exports_evaluate_and_it_is_callable(data_dir: Path, things) -> None:
    X = spose(data_dir)
    direct = evaluate(X, things, similarity="dot", n_bootstrap=0)["odd_one_out"].accuracy
    assert align.evaluate(X, things, similarity="dot", n_bootstrap=0)[
        "odd_one_out"
    ].accuracy == pytest.approx(direct)
