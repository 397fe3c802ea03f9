"""Statistics a reviewer would sign (issue 11, METHODS.md sections 2-5): the distinct-triplet
cluster bootstrap and its paired variant against brute force, the leave-one-response-out
THINGS ceiling against a direct loop on the real responses."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict

import numpy as np
import pytest
from align.metrics.bootstrap import (
    cluster_mean,
    distinct_triplet_groups,
    paired_cluster_difference,
    percentile_interval,
)
from align.metrics.oddoneout import loo_noise_ceiling, noise_ceiling, odd_one_out


def _things_triplets() -> np.ndarray:
    from align.datasets import load_dataset
    from align.errors import DataMissingError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # one THINGS image is missing; triplets are not
            ds = load_dataset("things")
    except DataMissingError as exc:  # pragma: no cover - data directory absent
        pytest.skip(f"THINGS triplets not available: {exc}")
    return np.asarray(ds.triplets, dtype=np.int64)


def _small_case(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """40 distinct triplets answered 1-6 times each; two correctness vectors."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 7, size=40)
    groups = np.repeat(np.arange(40), sizes)
    perm = rng.permutation(groups.size)  # responses of one triplet are not contiguous
    groups = groups[perm]
    a = (rng.random(groups.size) < 0.6).astype(float)
    b = (rng.random(groups.size) < 0.5).astype(float)
    return groups, a, b


def _brute_force(groups: np.ndarray, columns: list[np.ndarray], B: int, seed: int) -> np.ndarray:
    """Resample distinct triplets with replacement, concatenate all their responses, and
    take each column's mean over the resampled responses; same rng draws as the library."""
    rng = np.random.default_rng(seed)
    units = np.unique(groups)
    members = {u: np.flatnonzero(groups == u) for u in units}
    out = np.empty((B, len(columns)))
    for b in range(B):
        drawn = units[rng.integers(0, units.size, size=units.size)]
        idx = np.concatenate([members[u] for u in drawn])
        out[b] = [c[idx].mean() for c in columns]
    return out


def test_cluster_mean_equals_brute_force_resampling_of_distinct_triplets() -> None:
    groups, a, _ = _small_case()
    est = cluster_mean(a, groups, n_bootstrap=400, seed=7)
    brute = _brute_force(groups, [a], 400, 7)[:, 0]
    assert est.value == pytest.approx(a.mean(), abs=1e-15)
    assert est.ci == pytest.approx(percentile_interval(brute, 0.95), abs=1e-12)
    assert est.n_units == 40 and est.n_values == groups.size
    assert est.unit == "distinct triplet"


def test_paired_difference_equals_brute_force_on_the_same_resamples() -> None:
    groups, a, b = _small_case(1)
    est = paired_cluster_difference(a, b, groups, n_bootstrap=300, seed=3)
    brute = _brute_force(groups, [a, b], 300, 3)
    assert est.difference == pytest.approx(a.mean() - b.mean(), abs=1e-15)
    assert est.ci_difference == pytest.approx(
        percentile_interval(brute[:, 0] - brute[:, 1], 0.95), abs=1e-12
    )
    assert est.ci_a == pytest.approx(percentile_interval(brute[:, 0], 0.95), abs=1e-12)
    assert est.ci_b == pytest.approx(percentile_interval(brute[:, 1], 0.95), abs=1e-12)
    # the paired interval of a vector against itself plus a constant shift is a point
    same = paired_cluster_difference(a, a, groups, n_bootstrap=50, seed=0)
    assert same.ci_difference == (0.0, 0.0)


def test_paired_interval_is_narrower_than_unpaired_for_correlated_predictions() -> None:
    groups, a, _ = _small_case(2)
    rng = np.random.default_rng(5)
    flip = rng.random(a.size) < 0.05
    b = np.where(flip, 1 - a, a)  # b agrees with a on 95% of responses
    paired = paired_cluster_difference(a, b, groups, n_bootstrap=500, seed=0)
    wa = cluster_mean(a, groups, n_bootstrap=500, seed=0).ci
    wb = cluster_mean(b, groups, n_bootstrap=500, seed=1).ci
    assert paired.ci_difference is not None and wa is not None and wb is not None
    paired_width = paired.ci_difference[1] - paired.ci_difference[0]
    assert paired_width < 0.5 * ((wa[1] - wa[0]) + (wb[1] - wb[0]))


def test_cluster_interval_is_wider_than_response_interval_when_triplets_repeat() -> None:
    # 50 distinct triplets x 20 responses; correctness is mostly a property of the triplet
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(50), 20)
    p = rng.random(50)
    values = (rng.random(groups.size) < p[groups]).astype(float)
    clustered = cluster_mean(values, groups, n_bootstrap=500, seed=0).ci
    flat = cluster_mean(values, None, n_bootstrap=500, seed=0).ci
    assert clustered is not None and flat is not None
    assert clustered[1] - clustered[0] > 2.0 * (flat[1] - flat[0])


def test_large_unit_counts_use_the_multinomial_shortcut_with_the_same_distribution() -> None:
    from align.metrics import bootstrap as bmod

    groups, a, b = _small_case(3)
    explicit = paired_cluster_difference(a, b, groups, n_bootstrap=4000, seed=0)
    old = bmod._MAX_EXPLICIT
    try:
        bmod._MAX_EXPLICIT = 0
        shortcut = paired_cluster_difference(a, b, groups, n_bootstrap=4000, seed=0)
    finally:
        bmod._MAX_EXPLICIT = old
    assert explicit.ci_difference is not None and shortcut.ci_difference is not None
    assert shortcut.ci_difference == pytest.approx(explicit.ci_difference, abs=0.02)
    assert shortcut.ci_a == pytest.approx(explicit.ci_a, abs=0.02)


def test_distinct_triplet_groups_ignore_order_within_a_triplet() -> None:
    T = np.array([[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 1, 3], [3, 0, 1]])
    g = distinct_triplet_groups(T)
    assert g[0] == g[1] == g[2] and g[3] == g[4] and g[0] != g[3]


def _loo_loop(T: np.ndarray) -> float:
    by_triplet: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for t in T:
        by_triplet[tuple(sorted(int(v) for v in t))].append(int(t[2]))
    means = []
    for answers in by_triplet.values():
        if len(answers) < 2:
            continue
        scores = []
        for i, ans in enumerate(answers):
            counts = Counter(answers[:i] + answers[i + 1 :])
            top = max(counts.values())
            tied = [x for x, v in counts.items() if v == top]
            scores.append(1.0 / len(tied) if ans in tied else 0.0)
        means.append(np.mean(scores))
    return float(np.mean(means))


def test_loo_ceiling_on_a_hand_case() -> None:
    # triplet {0,1,2}: answers 2,2,1 -> response '2' vs others {2,1}: tie of 2 -> 1/2 (x2);
    # response '1' vs {2,2}: 0. mean 1/3. Triplet {3,4,5}: answers 5,5 -> 1 each. Mean 2/3.
    T = np.array([[0, 1, 2], [1, 0, 2], [0, 2, 1], [3, 4, 5], [4, 3, 5], [6, 7, 8]])
    assert loo_noise_ceiling(T) == pytest.approx((1 / 3 + 1) / 2)
    assert loo_noise_ceiling(T) == pytest.approx(_loo_loop(T))
    assert noise_ceiling(T) == pytest.approx((2 / 3 + 1) / 2)


def test_both_things_ceilings_on_the_real_responses() -> None:
    T = _things_triplets()
    assert noise_ceiling(T) == pytest.approx(0.6722, abs=5e-5)  # the paper's 0.673
    loo = loo_noise_ceiling(T)
    assert loo == pytest.approx(0.6439, abs=5e-5)  # METHODS.md section 2
    assert loo == pytest.approx(_loo_loop(T), abs=1e-12)


def test_odd_one_out_reports_both_ceilings_and_normalizations() -> None:
    T = _things_triplets()
    rng = np.random.default_rng(0)
    X = rng.normal(size=(1854, 8))
    r = odd_one_out(X, T, n_bootstrap=0)
    assert r.ceiling == pytest.approx(noise_ceiling(T))
    assert r.ceiling_loo == pytest.approx(loo_noise_ceiling(T))
    assert r.normalized_loo == pytest.approx((r.accuracy - 1 / 3) / (r.ceiling_loo - 1 / 3))
    assert r.to_dict()["ceiling_loo"] == r.ceiling_loo
    given = odd_one_out(X, T, ceiling=0.6, n_bootstrap=0)
    assert given.ceiling_loo is None and given.normalized_loo is None


def test_zero_shot_interval_is_the_cluster_bootstrap() -> None:
    T = _things_triplets()
    rng = np.random.default_rng(1)
    X = rng.normal(size=(1854, 16))
    r = odd_one_out(X, T, n_bootstrap=200, seed=4)
    from align.metrics.oddoneout import predict_odd_one_out

    correct = (predict_odd_one_out(X, T) == 2).astype(float)
    est = cluster_mean(correct, distinct_triplet_groups(T), n_bootstrap=200, seed=4)
    assert r.accuracy == pytest.approx(est.value, abs=1e-15)
    assert r.ci == pytest.approx(est.ci, abs=1e-12)
    assert r.bootstrap_unit == "distinct triplet"


# --------------------------------------------------------------------------- probe lift


def _simulate_responses(
    E: np.ndarray, n_distinct: int, per_triplet: int, rng: np.random.Generator
) -> np.ndarray:
    """Responses from SPoSE's choice model on ``E``: ``n_distinct`` triplets over distinct
    objects, each answered ``per_triplet`` times (odd one out ~ softmax of dot products).
    Stored convention: column 2 is the odd one out."""
    n = E.shape[0]
    picks = np.stack([rng.choice(n, size=3, replace=False) for _ in range(n_distinct)])
    picks = np.repeat(picks, per_triplet, axis=0)
    a, b, c = E[picks[:, 0]], E[picks[:, 1]], E[picks[:, 2]]
    S = np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)
    P = np.exp(S - S.max(axis=1, keepdims=True))
    P /= P.sum(axis=1, keepdims=True)
    pair = (rng.random(len(S))[:, None] > np.cumsum(P, axis=1)).sum(axis=1).clip(0, 2)
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[pair]
    return np.take_along_axis(picks, order, axis=1)


def test_paired_lift_interval_covers_a_zero_true_lift_at_the_nominal_rate() -> None:
    # Two predictors with the same true accuracy, correlated within a distinct triplet
    # (a triplet's difficulty is shared by its responses and by both predictors): the
    # paired cluster interval must cover 0 about 95% of the time; an interval that
    # resamples responses (ignoring the clusters) covers far less often.
    covered_cluster = covered_flat = 0
    reps = 200
    for seed in range(reps):
        rng = np.random.default_rng(seed)
        n_groups, size = 90, 20  # like the ~90 distinct held-out THINGS triplets
        difficulty = rng.beta(2, 2, size=n_groups)
        groups = np.repeat(np.arange(n_groups), size)
        shift = rng.normal(0, 0.15, size=n_groups)  # triplet-level disagreement
        pa = np.clip(difficulty + shift, 0, 1)[groups]
        pb = np.clip(difficulty - shift, 0, 1)[groups]  # same mean as pa in distribution
        a = (rng.random(groups.size) < pa).astype(float)
        b = (rng.random(groups.size) < pb).astype(float)
        ci = paired_cluster_difference(a, b, groups, n_bootstrap=300, seed=seed).ci_difference
        flat = paired_cluster_difference(a, b, None, n_bootstrap=300, seed=seed).ci_difference
        assert ci is not None and flat is not None
        covered_cluster += ci[0] <= 0.0 <= ci[1]
        covered_flat += flat[0] <= 0.0 <= flat[1]
    assert 0.89 <= covered_cluster / reps <= 0.99
    assert covered_flat / reps < 0.8


def _fit_probe(X: np.ndarray, T: np.ndarray, seed: int) -> object:
    pytest.importorskip("torch", reason="the probe needs torch")
    from align.metrics.probe import cross_validate_probe

    return cross_validate_probe(
        X,
        T,
        lambdas=(10.0, 1.0, 0.1, 0.01),
        k=3,
        seed=seed,
        reg_kind="identity",
        init="identity",
        max_iter=60,
        n_bootstrap=300,
    )


def test_probe_lift_is_zero_when_the_features_are_the_truth() -> None:
    # Responses simulated from the features themselves: the switched-off probe (W = I)
    # already is the true model, so the true lift is 0 (a transform can only lose).
    for seed in range(3):
        rng = np.random.default_rng(100 + seed)
        E = rng.normal(size=(60, 4)) * 1.5
        T = _simulate_responses(E, 400, 6, rng)
        res = _fit_probe(E, T, seed)
        lift = res.lift
        assert lift is not None and lift["ci"] is not None
        assert lift["ci"][0] <= 0.0 <= lift["ci"][1]
        assert lift["value"] == pytest.approx(res.accuracy - res.baseline["accuracy"])
        assert res.n_heldout_distinct < res.n_heldout  # responses cluster on triplets
        assert res.ci is not None and res.ci[0] <= res.accuracy <= res.ci[1]


def test_probe_lift_interval_excludes_zero_for_a_planted_transform() -> None:
    # The features are the truth seen through a distorting linear map: the probe can
    # undo it and the switched-off baseline cannot, so the lift is real and positive.
    rng = np.random.default_rng(7)
    E = rng.normal(size=(60, 4)) * 1.5
    T = _simulate_responses(E, 400, 6, rng)
    distort = np.diag([4.0, 1.0, 0.25, 0.1]) @ np.linalg.qr(rng.normal(size=(4, 4)))[0]
    X = E @ distort
    res = _fit_probe(X, T, 0)
    assert res.lift is not None and res.lift["ci"] is not None
    assert res.lift["value"] > 0.03
    assert res.lift["ci"][0] > 0.0
    d = res.to_dict()  # the JSON contract of `align score ... --probe --json`
    assert set(d["baseline"]) >= {"accuracy", "ci"} and set(d["lift"]) >= {"value", "ci"}
    assert d["lift"]["value"] == pytest.approx(d["accuracy"] - d["baseline"]["accuracy"])
    assert len(d["ci"]) == 2


def test_cli_score_probe_json_carries_baseline_and_lift(
    data_dir: object, tmp_path: object, capsys: pytest.CaptureFixture[str]
) -> None:
    """The contract: ``align score FEATURES.npy things --probe --json`` adds
    ``metrics.probe.{ci, baseline.{accuracy, ci}, lift.{value, ci}}``."""
    import json
    from pathlib import Path

    pytest.importorskip("torch", reason="the probe needs torch")
    from align.cli import main

    path = Path(str(tmp_path)) / "f.npy"
    np.save(path, np.random.default_rng(0).normal(size=(1854, 5)).astype(np.float32))
    code = main(
        ["score", str(path), "things", "--data-dir", str(data_dir), "--probe", "--json",
         "-O", "n_bootstrap=200"]
    )  # fmt: skip
    assert code == 0
    probe = json.loads(capsys.readouterr().out)["metrics"]["probe"]
    assert len(probe["ci"]) == 2 and probe["ci"][0] <= probe["accuracy"] <= probe["ci"][1]
    assert set(probe["baseline"]) >= {"accuracy", "ci"} and len(probe["baseline"]["ci"]) == 2
    assert probe["lift"]["value"] == pytest.approx(
        probe["accuracy"] - probe["baseline"]["accuracy"], abs=1e-12
    )
    assert len(probe["lift"]["ci"]) == 2
    assert probe["n_heldout_distinct"] < probe["n_heldout"]
    assert probe["rank"].startswith("full-rank")
