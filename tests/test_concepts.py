"""Concept-level (VICE) analysis, METHODS.md section 6, on the real THINGS data."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from align.errors import InvalidInputError
from align.metrics.concepts import concept_of_triplets, per_concept_accuracy
from align.metrics.oddoneout import MissingStimuliWarning, predict_odd_one_out


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found")
    return path


def _stored(rows: np.ndarray) -> np.ndarray:
    """(i, j, k, choice 1..3) -> (a, b, odd)."""
    out = []
    for i, j, k, choice in rows.tolist():
        objs = [i, j, k]
        odd = objs.pop(choice - 1)
        out.append([*objs, odd])
    return np.array(out, dtype=np.int64)


@pytest.fixture(scope="module")
def raw(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(triplets in RAW order 0-based, VICE in RAW order) - both as shipped."""
    rows = np.loadtxt(_need(data_dir / "things" / "test_triplets.csv"), dtype=np.int64)
    vice = np.load(_need(data_dir / "things" / "vice_things_final_embedding.npy"))
    return _stored(rows[:, :4]) - np.array([1, 1, 1]), vice


@pytest.fixture(scope="module")
def concept_order(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(triplets, VICE, SPoSE) all in things_concepts.tsv order."""
    rows = np.loadtxt(
        _need(data_dir / "things" / "test_triplets_things_concepts_order0.csv"),
        delimiter=",",
        skiprows=1,
        dtype=np.int64,
    )
    sortindex = np.loadtxt(_need(data_dir / "things" / "sortindex"), dtype=np.int64)
    vice_raw = np.load(_need(data_dir / "things" / "vice_things_final_embedding.npy"))
    spose = np.loadtxt(_need(data_dir / "things_spose66d" / "spose_embedding_66d.txt"))
    return _stored(rows[:, :4]), vice_raw[sortindex], spose


def loop_concepts(vice: np.ndarray, T: np.ndarray) -> list[int]:
    out = []
    for a, b, _c in T.tolist():
        mean = [(x + y) / 2 for x, y in zip(vice[a].tolist(), vice[b].tolist(), strict=True)]
        out.append(max(range(len(mean)), key=lambda k: (mean[k], -k)))
    return out


def test_concept_is_argmax_of_mean_vice_row_of_chosen_pair(
    raw: tuple[np.ndarray, np.ndarray],
) -> None:
    T, vice = raw
    got = concept_of_triplets(vice, T)
    assert got.tolist() == loop_concepts(vice, T)
    assert len(set(got.tolist())) > 10  # the real data spread over many dimensions


def test_concepts_agree_between_raw_and_concept_order(
    raw: tuple[np.ndarray, np.ndarray], concept_order: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    # the same 20,000 responses, mapped through sortindex, get the same concepts
    T_raw, vice_raw = raw
    T_cc, vice_cc, _ = concept_order
    assert (concept_of_triplets(vice_raw, T_raw) == concept_of_triplets(vice_cc, T_cc)).all()


def test_per_concept_accuracy_of_spose_equals_loop(
    concept_order: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    T, vice, spose = concept_order
    result = per_concept_accuracy(spose, T, vice, similarity="dot")
    # independent: per-triplet dot products and a dictionary per concept
    hits: dict[int, list[bool]] = defaultdict(list)
    for (a, b, c), k in zip(T.tolist(), loop_concepts(vice, T), strict=True):
        s_ab, s_ac, s_bc = spose[a] @ spose[b], spose[a] @ spose[c], spose[b] @ spose[c]
        hits[k].append(bool(s_ab > s_ac and s_ab > s_bc))
    assert result.n_dimensions == vice.shape[1] == len(result.concepts)
    for row in result.concepts:
        assert row.n_triplets == len(hits.get(row.dimension, []))
        if row.n_triplets:
            assert row.accuracy == pytest.approx(np.mean(hits[row.dimension]), abs=1e-12)
        else:
            assert row.accuracy is None
    assert sum(r.n_triplets for r in result.concepts) == 20_000
    assert result.accuracy == pytest.approx(0.643, abs=5e-4)  # SPoSE, PROVENANCE
    assert result.best(3)[0].accuracy >= result.worst(3)[0].accuracy


def test_mask_input_and_probed_predictions(
    concept_order: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    T, vice, spose = concept_order
    from_features = per_concept_accuracy(spose, T, vice, similarity="cosine")
    rng = np.random.default_rng(0)
    correct = predict_odd_one_out(spose, T, "cosine") == 2
    probe_positions = rng.integers(0, 3, size=len(T))  # a stand-in probe: random positions
    from_mask = per_concept_accuracy(correct, T, vice, probed=probe_positions)
    assert from_mask.source == "correct_mask" and from_features.source == "features"
    assert [c.accuracy for c in from_mask.concepts] == [c.accuracy for c in from_features.concepts]
    concepts = concept_of_triplets(vice, T)
    for row in from_mask.concepts:
        sel = concepts == row.dimension
        if sel.any():
            assert row.probed_accuracy == pytest.approx(np.mean(probe_positions[sel] == 2))
    assert from_mask.probed_accuracy == pytest.approx(np.mean(probe_positions == 2))


def test_labels_and_missing_rows(
    concept_order: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    T, vice, spose = concept_order
    labels = [f"vice-{k}" for k in range(vice.shape[1])]
    X = spose.copy()
    X[T[0, 0]] = np.nan
    with pytest.warns(MissingStimuliWarning):
        result = per_concept_accuracy(X, T, vice, labels)
    assert result.n_dropped == int(np.isin(T, [T[0, 0]]).any(axis=1).sum()) > 0
    assert result.n_triplets == len(T) - result.n_dropped
    assert result.concepts[3].label == "vice-3"
    assert result.to_dict()["concepts"][0]["label"] == "vice-0"


def test_bad_inputs_are_named(concept_order: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    T, vice, spose = concept_order
    with pytest.raises(InvalidInputError) as info:
        per_concept_accuracy(spose, T, vice, labels=["only one"])
    assert info.value.field == "labels"
    with pytest.raises(InvalidInputError) as info:
        per_concept_accuracy(np.ones(5, dtype=bool), T, vice)
    assert info.value.field == "features_or_correct"
    with pytest.raises(InvalidInputError) as info:
        per_concept_accuracy(spose[:100], T[:10] % 100, vice)
    assert info.value.field == "features"
    with pytest.raises(InvalidInputError) as info:
        concept_of_triplets(vice[:, :0], T)
    assert info.value.field == "vice"


# -- intervals, distinct triplets, a reference, names from data (issue 11) ---------------


def test_per_dimension_interval_is_the_distinct_triplet_cluster_bootstrap(
    concept_order: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    from align.metrics.bootstrap import cluster_mean, distinct_triplet_groups

    T, vice, spose = concept_order
    rng = np.random.default_rng(3)
    X = rng.normal(size=(vice.shape[0], 12))
    res = per_concept_accuracy(X, T, vice, reference=spose, n_bootstrap=200, seed=5)
    correct = (predict_odd_one_out(X, T) == 2).astype(float)
    ref_correct = (predict_odd_one_out(spose, T, "dot") == 2).astype(float)
    groups = distinct_triplet_groups(T)
    concepts = concept_of_triplets(vice, T)
    checked = 0
    for row in res.concepts:
        sel = concepts == row.dimension
        if not sel.any():
            assert row.accuracy is None and row.ci is None and row.n_distinct == 0
            continue
        est = cluster_mean(correct[sel], groups[sel], n_bootstrap=200, seed=5)
        assert row.accuracy == pytest.approx(est.value) and row.ci == pytest.approx(est.ci)
        assert row.n_distinct == len({tuple(sorted(t)) for t in T[sel].tolist()})
        assert row.n_distinct <= row.n_triplets
        assert row.reference_accuracy == pytest.approx(ref_correct[sel].mean())
        checked += 1
    assert checked >= 10
    # the 20,000 responses sit on 1,000 distinct triplets: far fewer units than responses
    assert sum(r.n_distinct for r in res.concepts) < 0.2 * res.n_triplets


def test_vice_dimensions_are_named_by_the_best_matching_spose_label(
    concept_order: tuple[np.ndarray, np.ndarray, np.ndarray], data_dir: Path
) -> None:
    from align.metrics.concepts import name_dimensions

    _, vice, spose = concept_order
    path = _need(data_dir / "things_spose66d" / "labels_spose_66d_short.txt")
    labels = [x.strip() for x in path.read_text().splitlines() if x.strip()]
    names = name_dimensions(vice, spose, labels)
    assert len(names) == vice.shape[1]
    for n in names[:5]:  # independent check: Pearson over objects, argmax over SPoSE dims
        r = [np.corrcoef(vice[:, n.dimension], spose[:, j])[0, 1] for j in range(66)]
        assert n.spose_dimension == int(np.argmax(r))
        assert n.match_r == pytest.approx(max(r), abs=1e-9)
        assert n.label == labels[n.spose_dimension]
    got = {n.label for n in names if n.match_r > 0.7}
    # VICE and SPoSE were fitted to the same kind of data: food and animals reappear
    assert {"food-related", "animal-related"} <= got
