"""Specification of the linear probe (METHODS.md section 3): align.metrics.probe/splits.

Known answers come from independent sources: a planted transform and its own accuracy,
set arithmetic for the object-disjoint split, scipy's logsumexp, thingsvision's
``((X - mean) / std) @ weights + bias`` formula, and real human data (SPoSE, THINGS).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from align.errors import InvalidInputError, NumericalError
from align.metrics.probe import TripletProbe, cross_validate_probe
from align.metrics.splits import ObjectKFold
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # small problems: one thread is faster than two fighting other jobs for 2 cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# (pair index 0=ab, 1=ac, 2=bc) -> column order putting the odd one out last
PAIR_ORDER = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])


def dot_sims(E: np.ndarray, t: np.ndarray) -> np.ndarray:
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    return np.stack([(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)], axis=1)


def strict_accuracy(E: np.ndarray, t: np.ndarray) -> float:
    """Zero-shot accuracy written independently: s_ab strictly the largest."""
    S = dot_sims(E, t)
    return float(np.mean((S[:, 0] > S[:, 1]) & (S[:, 0] > S[:, 2])))


def sample_choices(E: np.ndarray, objs: np.ndarray, m: int, rng: np.random.Generator):
    """Triplets over ``objs`` with the odd one out drawn from softmax(dot similarities)."""
    t = np.stack([rng.choice(objs, 3, replace=False) for _ in range(m)])
    S = dot_sims(E, t)
    P = np.exp(S - S.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    pair = (rng.random(m)[:, None] > np.cumsum(P, axis=1)).sum(1).clip(0, 2)
    return np.take_along_axis(t, PAIR_ORDER[pair], axis=1)


def things_triplets(data_dir) -> np.ndarray:
    """The 20,000 THINGS responses, 0-based concept order, odd one out in column 2."""
    path = data_dir / "things" / "test_triplets_things_concepts_order0.csv"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    with path.open() as fh:
        header = fh.readline().strip().split(",")
    assert header[:4] == ["obj1", "obj2", "obj3", "odd_one_out_position_1to3"]
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    odd = raw[:, 3] - 1  # position of the odd one out -> pair (bc, ac, ab)
    to_pair = np.array([2, 1, 0])[odd]
    return np.take_along_axis(raw[:, :3], PAIR_ORDER[to_pair], axis=1)


def spose(data_dir) -> np.ndarray:
    path = data_dir / "things_spose66d" / "spose_embedding_66d.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return np.loadtxt(path)


# ---------------------------------------------------------------------------- splits


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(3, 60),
    k=st.integers(2, 5),
    seed=st.integers(0, 2**16),
    m=st.integers(1, 200),
)
def test_object_folds_are_disjoint_and_every_triplet_is_train_test_or_dropped(n, k, seed, m):
    if k > n:
        k = n
    rng = np.random.default_rng(seed + 1)
    trip = np.array([rng.choice(n, 3, replace=False) for _ in range(m)], dtype=np.int64)
    trip = trip.reshape(m, 3)
    kf = ObjectKFold(n_splits=k, seed=seed)
    folds = kf.object_folds(n)
    assert sorted(np.concatenate(folds).tolist()) == list(range(n))  # a partition
    assert max(len(f) for f in folds) - min(len(f) for f in folds) <= 1
    for held, (train, test) in zip(folds, kf.split(n, trip), strict=True):
        held_set = set(held.tolist())
        train_rows, test_rows = set(train.tolist()), set(test.tolist())
        assert not train_rows & test_rows
        for row in range(m):
            inside = len(set(trip[row].tolist()) & held_set)
            expect = "test" if inside == 3 else "train" if inside == 0 else "dropped"
            got = "test" if row in test_rows else "train" if row in train_rows else "dropped"
            assert got == expect
        train_objs = set(trip[train].ravel().tolist())
        test_objs = set(trip[test].ravel().tolist())
        assert not train_objs & test_objs
    # seeded: equal inputs, equal folds
    again = ObjectKFold(n_splits=k, seed=seed).object_folds(n)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))


# ---------------------------------------------------------------------------- planted


@pytest.fixture(scope="module")
def planted():
    rng = np.random.default_rng(7)
    n, p = 200, 12
    X = rng.normal(size=(n, p))
    W_star = rng.normal(size=(p, p)) * 0.3
    E_star = X @ W_star
    trip = sample_choices(E_star, np.arange(n), 5000, rng)
    return X, W_star, trip


def test_probe_recovers_planted_transform(planted):
    X, W_star, trip = planted
    res = cross_validate_probe(X, trip, lambdas=(1e-1, 1e-2, 1e-3), k=3, seed=0)
    splits = ObjectKFold(3, 0).split(X.shape[0], trip)
    star = np.mean([strict_accuracy(X @ W_star, trip[te]) for _, te in splits])
    zero_shot = np.mean([strict_accuracy(X, trip[te]) for _, te in splits])
    assert res.accuracy > star - 0.03  # as good as the planted transform itself
    assert res.accuracy > zero_shot + 0.1  # far above the untransformed features
    # lambda chosen by the lowest mean held-out cross-entropy, reported under "lambda"
    d = json.loads(res.to_json())
    assert d["lambda"] == min(d["cv"], key=lambda r: r["cross_entropy"])["lambda"]
    # one estimator: accuracy pools the held-out responses of all folds (issue 11)
    n_test = np.array([f["n_test"] for f in d["folds"]])
    fold_acc = np.array([f["accuracy"] for f in d["folds"]])
    assert d["accuracy"] == pytest.approx(float((fold_acc * n_test).sum() / n_test.sum()))
    assert d["fold_mean_accuracy"] == pytest.approx(float(fold_acc.mean()))
    assert [f["n_test"] for f in d["folds"]] == [len(te) for _, te in splits]
    assert "probe" not in d and d["transform"]["shape"] == [12, 12]
    # the refit transform is fitted on all triplets with the chosen lambda
    assert res.probe is not None and res.probe.reg == res.lambda_


def test_lbfgs_reaches_adam_held_out_loss(planted):
    """Equivalence: over the same lambdas, full-batch L-BFGS reaches a held-out
    cross-entropy no worse than the paper's Adam (lr 1e-3, batch 256, <= 100 epochs,
    early stopping with patience 10)."""
    X, _, trip = planted
    sub = trip[:2500]
    train, test = ObjectKFold(3, 0).split(X.shape[0], sub)[0]
    best = {}
    for opt in ("lbfgs", "adam"):
        best[opt] = min(
            TripletProbe(reg=lam, optimizer=opt).fit(X, sub[train]).loss(X, sub[test])
            for lam in (1e-3, 1e-4)
        )
    assert best["adam"] < 0.8  # Adam did learn: chance is log(3) = 1.10
    assert best["lbfgs"] <= best["adam"] + 0.005


def test_reduced_problem_matches_full_problem():
    # fewer objects (40) than features (60): the r x r problem is used unless reduce=False
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 60))
    trip = sample_choices(X @ rng.normal(size=(60, 60)) * 0.1, np.arange(40), 600, rng)
    train, test = ObjectKFold(3, 1).split(40, trip)[0]
    fast = TripletProbe(reg=1e-2, max_iter=200).fit(X, trip[train])
    full = TripletProbe(reg=1e-2, max_iter=200, reduce=False).fit(X, trip[train])
    assert fast.loss_curve_[-1] == pytest.approx(full.loss_curve_[-1], abs=2e-3)
    assert fast.loss(X, trip[test]) == pytest.approx(full.loss(X, trip[test]), abs=2e-2)


def test_missing_rows_drop_their_triplets(planted):
    X, _, trip = planted
    Xm = X.copy()
    Xm[5] = np.nan
    res = cross_validate_probe(Xm, trip, lambdas=(1e-2,), k=3, refit=False)
    assert res.n_dropped == int((trip == 5).any(axis=1).sum()) > 0
    assert res.n_triplets == len(trip) - res.n_dropped


# ---------------------------------------------------------------------------- numerics


def test_paper_formula_blows_up_on_large_norm_real_features_ours_does_not(data_dir):
    S66 = spose(data_dir) * 300.0  # real human embedding, row norms ~ 800
    trip = things_triplets(data_dir)[:2048]
    torch.manual_seed(0)
    X = torch.tensor(S66, dtype=torch.float32)
    W = (torch.randn(66, 66) * 1e-3).requires_grad_(True)
    opt = torch.optim.Adam([W], lr=1e-3)
    t = torch.as_tensor(trip)
    losses = []
    for step in range(8):  # the paper's training loop, naive softmax formula
        bt = t[step * 256 : (step + 1) * 256]
        E = X @ W
        a, b, c = E[bt[:, 0]], E[bt[:, 1]], E[bt[:, 2]]
        sims = [(a * b).sum(1), (a * c).sum(1), (b * c).sum(1)]
        soft = torch.exp(sims[0]) / torch.stack([torch.exp(s) for s in sims]).sum(0)
        loss = torch.mean(-torch.log(soft)) + 1e-3 * torch.linalg.norm(W)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not all(math.isfinite(v) for v in losses)  # NaN within a few steps
    with torch.no_grad():
        E = (X @ W).numpy()
    S = dot_sims(E, trip)
    # a "correct unless another pair is strictly more similar" rule scores NaN as right
    naive_acc = np.mean(~((S[:, 1] > S[:, 0]) | (S[:, 2] > S[:, 0])))
    assert np.isnan(S).all() and naive_acc == 1.0

    ours = TripletProbe(reg=1e-3, optimizer="adam", max_iter=3, dtype="float32").fit(S66, trip)
    assert all(math.isfinite(v) for v in ours.loss_curve_)
    assert 1 / 3 < ours.score(S66, trip) < 0.9
    assert math.isfinite(ours.loss(S66, trip))


def test_loss_is_log_softmax_on_huge_similarities(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8)) * 5
    trip = np.stack([rng.choice(30, 3, replace=False) for _ in range(50)])
    path = tmp_path / "transform.npz"
    np.savez(path, weights=np.eye(8, dtype=np.float32) * 40, mean=0.0, std=1.0)
    probe = TripletProbe.load(path)
    S = dot_sims(X * 40, trip)
    assert np.abs(S).max() > 1000  # exp() of these overflows
    expected = np.mean(logsumexp(S, axis=1) - S[:, 0])
    assert probe.loss(X, trip) == pytest.approx(expected, rel=1e-6)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        naive = np.mean(-np.log(np.exp(S[:, 0]) / np.exp(S).sum(1)))
    assert not math.isfinite(naive)


def test_non_finite_training_raises_instead_of_scoring():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 6))
    trip = np.stack([rng.choice(30, 3, replace=False) for _ in range(40)])
    probe = TripletProbe(init="identity", tau=1e25, dtype="float32", max_iter=3)
    with pytest.raises(NumericalError):
        probe.fit(X, trip)


def test_zero_transform_is_a_full_tie_and_counts_wrong(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4))
    trip = np.stack([rng.choice(20, 3, replace=False) for _ in range(30)])
    path = tmp_path / "transform.npz"
    np.savez(path, weights=np.zeros((4, 4), np.float32), mean=0.0, std=1.0)
    probe = TripletProbe.load(path)
    assert probe.score(X, trip) == 0.0
    assert probe.loss(X, trip) == pytest.approx(math.log(3))
    assert (probe.predict(X, trip) == -1).all()


# ---------------------------------------------------------------------------- save / load


def test_save_load_round_trip_in_thingsvision_format(planted, tmp_path):
    X, _, trip = planted
    probe = TripletProbe(reg=1e-2, bias=True, normalize=True, max_iter=50).fit(X, trip)
    path = probe.save(tmp_path / "transform.npz")
    with np.load(path) as npz:
        assert {"weights", "bias", "mean", "std"} <= set(npz.files)
        assert npz["weights"].dtype == np.float32 and npz["weights"].shape == (12, 12)
        assert npz["bias"].shape == (12,) and npz["mean"].shape == npz["std"].shape == ()
        # thingsvision's gLocal transform, written out independently
        tv = (X - npz["mean"]) / npz["std"] @ npz["weights"] + npz["bias"]
    tv /= np.linalg.norm(tv, axis=1, keepdims=True)
    loaded = TripletProbe.load(path)
    assert loaded.normalize and loaded.bias
    np.testing.assert_allclose(loaded.transform(X), tv, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.transform(X), probe.transform(X), rtol=1e-4, atol=1e-5)
    assert loaded.score(X, trip) == pytest.approx(probe.score(X, trip), abs=2e-3)


@pytest.mark.parametrize(
    ("arrays", "field"),
    [
        ({"mean": 0.0, "std": 1.0}, "weights"),
        ({"weights": np.zeros((3, 4)), "mean": 0.0, "std": 1.0}, "weights"),
        ({"weights": np.eye(3), "bias": np.zeros(4), "mean": 0.0, "std": 1.0}, "bias"),
        ({"weights": np.eye(3), "mean": np.zeros(3), "std": 1.0}, "mean"),
        ({"weights": np.eye(3), "mean": 0.0, "std": 0.0}, "std"),
    ],
)
def test_load_rejects_malformed_transform(tmp_path, arrays, field):
    path = tmp_path / "transform.npz"
    np.savez(path, **arrays)
    with pytest.raises(InvalidInputError, match=field):
        TripletProbe.load(path)


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("call", "error", "field"),
    [
        (lambda X, t: TripletProbe().fit(X[0], t), InvalidInputError, "X"),
        (
            lambda X, t: TripletProbe().fit(np.where(X == X[3, 2], np.nan, X), t),
            NumericalError,
            r"X\[3, 2\]",
        ),
        (lambda X, t: TripletProbe().fit(X, t + 1000), InvalidInputError, r"triplets\[0\]"),
        (lambda X, t: TripletProbe(reg_kind="l1").fit(X, t), InvalidInputError, "reg_kind"),
        (lambda X, t: cross_validate_probe(X, t, colour="red"), InvalidInputError, "colour"),
        (lambda X, t: cross_validate_probe(X, t[:5], k=3), InvalidInputError, "fold"),
        (lambda X, t: cross_validate_probe(X, t, lambdas=()), InvalidInputError, "lambdas"),
    ],
)
def test_bad_input_names_the_field(call, error, field):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    t = np.stack([rng.choice(30, 3, replace=False) for _ in range(60)])
    with pytest.raises(error, match=field):
        call(X, t)


# ---------------------------------------------------------------------------- real data


def test_simulated_supervision_recovers_spose_on_real_held_out_responses(data_dir):
    """METHODS 3(b), SIMULATED SUPERVISION: training triplets come from SPoSE's own
    choice model over training objects; accuracy is measured on the REAL human
    responses whose three objects are all held out."""
    Y = spose(data_dir)
    real = things_triplets(data_dir)
    assert strict_accuracy(Y, real) == pytest.approx(0.643, abs=0.002)  # PROVENANCE.md
    rng = np.random.default_rng(0)
    U, _, Vt = np.linalg.svd(rng.normal(size=(66, 66)))
    X = Y @ (U * np.logspace(-1.5, 1, 66)) @ Vt  # ill-conditioned mix of SPoSE
    X += rng.normal(size=X.shape) * 0.01
    kf = ObjectKFold(3, 0)
    probe_acc, zero_shot = [], []
    for held, (_, test) in zip(kf.object_folds(1854), kf.split(1854, real), strict=True):
        train_objs = np.setdiff1d(np.arange(1854), held)
        sim = sample_choices(Y, train_objs, 3000, rng)
        probe = TripletProbe(reg=1e-3, max_iter=100).fit(X, sim)
        probe_acc.append(probe.score(X, real[test]))
        zero_shot.append(strict_accuracy(X, real[test]))
    assert np.mean(probe_acc) > np.mean(zero_shot) + 0.03
    assert np.mean(probe_acc) < 0.68  # cannot beat the human noise ceiling


def test_warm_start_reaches_the_cold_start_optimum_on_real_data(data_dir):
    """A warm start (previous lambda's weights, as ``warm_start=True`` does) optimises
    the same objective: on the real SPoSE embedding and THINGS responses its final
    training objective is no worse than the seeded cold start's and its held-out
    cross-entropy stays close (the objective is non-convex; it has flat directions)."""
    X, trip = spose(data_dir), things_triplets(data_dir)
    train, test = ObjectKFold(3, 0).split(X.shape[0], trip)[0]
    prev = None
    for lam in (1e-1, 1e-2):
        cold = TripletProbe(reg=lam).fit(X, trip[train])
        warm = TripletProbe(reg=lam)
        warm.fit(X, trip[train], init_weights=prev)
        prev = warm.weights_
        assert warm.loss_curve_[-1] <= cold.loss_curve_[-1] + 1e-3
        assert warm.loss(X, trip[test]) == pytest.approx(cold.loss(X, trip[test]), abs=0.05)
        assert cold.loss(X, trip[test]) < math.log(3) - 0.05  # learned something


def test_cross_validation_warm_start_picks_the_cold_start_lambda(planted):
    X, _, trip = planted
    kw = {"lambdas": (1e-1, 1e-2, 1e-3), "k": 3, "seed": 0, "refit": False}
    warm = cross_validate_probe(X, trip, warm_start=True, **kw)
    cold = cross_validate_probe(X, trip, warm_start=False, **kw)
    assert warm.lambda_ == cold.lambda_
    assert warm.cross_entropy <= cold.cross_entropy + 1e-3


# ---------------------------------------------------------------------------- estimator API


def test_params_come_from_the_signature_and_clone_round_trips():
    from align.metrics.glocal import GLocalProbe
    from align.metrics.probe import clone

    names = TripletProbe.param_names()
    assert names[:3] == ("reg", "reg_kind", "init") and "reduce" in names and "self" not in names
    # gLocal: its own three, then every TripletProbe parameter (its **probe_params)
    assert GLocalProbe.param_names() == ("alpha", "temperature", "local_batch_size", *names)
    probe = TripletProbe(reg=0.5, normalize=True, max_iter=7)
    params = probe.get_params()
    assert set(params) == set(names) and params["reg"] == 0.5 and params["max_iter"] == 7
    twin = clone(probe)
    assert type(twin) is TripletProbe and twin is not probe
    assert twin.get_params() == params and not hasattr(twin, "weights_")
    g = GLocalProbe(alpha=0.2, reg=0.3)
    g2 = clone(g).set_params(alpha=0.7)
    assert type(g2) is GLocalProbe and g2.alpha == 0.7 and g.alpha == 0.2 and g2.reg == 0.3
    assert repr(g).startswith("GLocalProbe(alpha=0.2")
    with pytest.raises(InvalidInputError, match="colour"):
        probe.set_params(colour="red")


def test_init_only_stores_and_fit_checks():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    t = np.stack([rng.choice(30, 3, replace=False) for _ in range(60)])
    bad = {"reg": -1.0, "tau": 0.0, "optimizer": "sgd", "max_iter": 0, "val_fraction": 1.0}
    for name, value in bad.items():
        probe = TripletProbe(**{name: value})  # no check here (scikit-learn's rule)
        assert getattr(probe, name) == value
        with pytest.raises(InvalidInputError, match=name) as err:
            probe.fit(X, t)
        assert err.value.field == name
    with pytest.raises(InvalidInputError, match="normalize"):
        TripletProbe(normalize=1).fit(X, t)  # 1 is not a flag


def test_cross_validate_clones_per_lambda_and_leaves_the_estimator_alone(planted):
    from align.metrics.probe import cross_validate

    X, _, trip = planted
    fitted: list[tuple[TripletProbe, float]] = []  # the estimators themselves: ids of
    # freed clones could be reused by later ones

    class Recording(TripletProbe):
        def fit(self, *args, **kwargs):
            fitted.append((self, self.reg))
            return super().fit(*args, **kwargs)

    est = Recording(reg=123.0, max_iter=30)
    lambdas = (1e-1, 1e-2)
    search = cross_validate(est, X, trip, lambdas=lambdas, cv=ObjectKFold(3, 0))
    assert est.get_params() == Recording(reg=123.0, max_iter=30).get_params()
    assert not hasattr(est, "weights_")  # never fitted
    assert len(fitted) == 3 * len(lambdas) + 1  # every (fold, lambda) + the refit
    assert len({id(e) for e, _ in fitted}) == len(fitted)  # a fresh clone each time
    assert sorted(r for _, r in fitted[:-1]) == sorted(list(lambdas) * 3)
    assert fitted[-1][1] == search.lambda_ and search.estimator.reg == search.lambda_
    assert type(search.estimator) is Recording
    # the classic entry point gives the same numbers as the generic one
    res = cross_validate_probe(X, trip, lambdas=lambdas, k=3, seed=0, max_iter=30)
    assert res.lambda_ == search.lambda_
    assert res.cross_entropy == float(search.mean_cross_entropy[search.best])
    np.testing.assert_array_equal(res.probe.weights_, search.estimator.weights_)


def test_glocal_through_the_generic_cv_equals_a_hand_written_loop(planted):
    """gLocal is just another estimator plus a training-set hook (its unlabeled rows are
    the training objects' features): the generic CV gives exactly what fitting every
    (lambda, fold) by hand gives."""
    from align.metrics.glocal import GLocalProbe
    from align.metrics.probe import cross_validate

    X, _, trip = planted
    X = X.copy()
    X[[4, 9]] = np.nan  # missing stimuli: their triplets are dropped
    trip = trip[:1500]
    lambdas = (1e-1, 1e-3)
    opts = {"alpha": 0.3, "temperature": 0.2, "local_batch_size": 64, "max_iter": 25}
    kf = ObjectKFold(3, 1)

    def hook(fold, objects, real):
        return real, {"X_local": X[objects]}

    search = cross_validate(
        GLocalProbe(seed=1, **opts), X, trip, lambdas=lambdas, cv=kf, training_set=hook
    )
    # by hand
    keep = ~np.isnan(X).all(axis=1)[trip].any(axis=1)
    kept = trip[keep]
    present = np.flatnonzero(~np.isnan(X).all(axis=1))
    ce = np.zeros((2, 3))
    acc = np.zeros((2, 3))
    for i, ((train, test), held) in enumerate(
        zip(kf.split(X.shape[0], kept), kf.object_folds(X.shape[0]), strict=True)
    ):
        local = X[np.setdiff1d(present, held)]
        for j, lam in enumerate(lambdas):
            g = GLocalProbe(seed=1, reg=lam, **opts).fit(X, kept[train], X_local=local)
            ce[j, i] = g.loss(X, kept[test])
            acc[j, i] = g.score(X, kept[test])
    np.testing.assert_array_equal(search.cross_entropy, ce)
    np.testing.assert_array_equal(search.accuracy, acc)
    assert search.n_dropped == int((~keep).sum()) > 0
    best = int(np.argmin(ce.mean(axis=1)))
    final = GLocalProbe(seed=1, reg=lambdas[best], **opts).fit(X, kept, X_local=X[present])
    np.testing.assert_array_equal(search.estimator.weights_, final.weights_)


def test_reporting_probe_numbers_equal_the_old_lambda_fold_loop(data_dir):
    """reporting.probing.heldout_probe now runs through metrics.probe.cross_validate; its
    numbers equal, bit for bit, those of the loop it used to carry (written out here),
    on real data: SPoSE projected on 6 principal components, the THINGS responses,
    human and simulated supervision and the gLocal variant."""
    from align.metrics.glocal import GLocalProbe
    from align.reporting.probing import PROBE_FIT, fit_pca, heldout_probe, simulate_triplets

    Y = spose(data_dir)
    T = things_triplets(data_dir)
    Z = fit_pca(Y, 6).project(Y)
    Z[[3, 40]] = np.nan
    lambdas, k, seed = (1.0, 1e-2), 3, 0
    for simulate, alpha in ((False, 0.0), (True, 0.0), (True, 0.1)):
        res = heldout_probe(
            Z,
            T,
            label="x",
            simulate_from=Y if simulate else None,
            n_simulated=600,
            lambdas=lambdas,
            k=k,
            seed=seed,
            alpha=alpha,
            n_threads=1,
        )
        # the old loop
        missing = np.isnan(Z).all(axis=1)
        trip = T[~missing[T].any(axis=1)]
        folds = ObjectKFold(k, seed).object_folds(Z.shape[0])
        splits = ObjectKFold(k, seed).split(Z.shape[0], trip)

        def make(lam, alpha=alpha):
            if alpha > 0:
                return GLocalProbe(
                    alpha=alpha, local_batch_size=256, reg=lam, seed=seed, n_threads=1, **PROBE_FIT
                )
            return TripletProbe(reg=lam, seed=seed, n_threads=1, **PROBE_FIT)

        def fit(probe, objs, t, alpha=alpha):
            return probe.fit(Z, t, X_local=Z[objs]) if alpha > 0 else probe.fit(Z, t)

        sets = []
        for i, (train_idx, _) in enumerate(splits):
            objs = np.setdiff1d(np.flatnonzero(~missing), folds[i])
            t = simulate_triplets(Y, objs, 600, seed + i) if simulate else trip[train_idx]
            sets.append((objs, t))
        ce = np.zeros((2, k))
        acc = np.zeros((2, k))
        for j, lam in enumerate(lambdas):
            for i, (_, test_idx) in enumerate(splits):
                probe = fit(make(lam), *sets[i])
                ce[j, i] = probe.loss(Z, trip[test_idx])
                acc[j, i] = float((probe.predict(Z, trip[test_idx]) == 2).mean())
        best = int(np.argmin(ce.mean(axis=1)))
        assert res.lambda_ == lambdas[best]
        # (the headline accuracy pools the folds' responses; the per-fold and per-lambda
        # numbers are the loop's)
        assert [f["accuracy"] for f in res.folds] == acc[best].tolist()
        assert [c["accuracy"] for c in res.cv] == acc.mean(axis=1).tolist()
        assert [c["cross_entropy"] for c in res.cv] == ce.mean(axis=1).tolist()
        assert res.correct.mean() == pytest.approx(res.accuracy, abs=1e-12)
        assert res.cross_entropy == float(ce.mean(axis=1)[best])
        assert [f["cross_entropy"] for f in res.folds] == ce[best].tolist()
        assert [f["n_train"] for f in res.folds] == [len(s[1]) for s in sets]
        all_objs = np.flatnonzero(~missing)
        all_t = simulate_triplets(Y, all_objs, 600, seed + k) if simulate else trip
        final = fit(make(lambdas[best]), all_objs, all_t)
        np.testing.assert_array_equal(res.probe.weights_, final.weights_)


def test_empty_triplets_are_refused_everywhere_with_one_message():
    from align.metrics.oddoneout import odd_one_out

    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 4))
    empty = np.zeros((0, 3), dtype=np.int64)
    calls = [
        lambda: odd_one_out(X, empty),
        lambda: ObjectKFold(3, 0).split(12, empty),
        lambda: TripletProbe().fit(X, empty),
        lambda: cross_validate_probe(X, empty),
    ]
    for call in calls:
        with pytest.raises(InvalidInputError) as err:
            call()
        assert (err.value.field, err.value.problem) == ("triplets", "is empty")
