"""Transfer (METHODS.md section 4): a linear transform applied with its training mean/std,
RSA before and after. Real features: grey-level pixels of the 92 Mur et al. stimuli,
against the 16 subjects' behavioural RDMs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.stats as ss
from align.errors import DataMissingError, InvalidInputError
from align.metrics.transfer import apply_transform, load_transform, transfer_rsa
from scipy.spatial.distance import pdist, squareform


@pytest.fixture(scope="module")
def mur92(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    rdms = data_dir / "mur92" / "behav_rdms_92_16subjects.npy"
    folder = data_dir / "mur92" / "images92"
    if not rdms.is_file() or not folder.is_dir():
        pytest.skip(f"{rdms} or {folder} not found")
    rows = []
    for k in range(1, 93):
        with Image.open(folder / f"{k:02d}.png") as im:
            rows.append(np.asarray(im.convert("L").resize((8, 8)), dtype=np.float64).ravel())
    return np.stack(rows), np.load(rdms)


def _human_vector(rdms: np.ndarray) -> np.ndarray:
    return rdms.mean(axis=0)[np.triu_indices(rdms.shape[1], 1)]


def _mean_over_subjects(model_pairs: np.ndarray, rdms: np.ndarray) -> float:
    """The headline RSA scale (METHODS.md section 5): mean over subjects of Spearman."""
    iu = np.triu_indices(rdms.shape[1], 1)
    return float(np.mean([ss.spearmanr(model_pairs, r[iu])[0] for r in rdms]))


def test_identity_transform_changes_nothing(mur92: tuple[np.ndarray, np.ndarray]) -> None:
    X, rdms = mur92
    identity = {"weights": np.eye(64), "mean": 0.0, "std": 1.0}
    result = transfer_rsa(X, rdms, "dissimilarity", identity, n_bootstrap=20, seed=3)
    assert result.after.spearman == pytest.approx(result.before.spearman, abs=1e-12)
    assert result.after.pearson == pytest.approx(result.before.pearson, abs=1e-12)
    assert result.after.ci == pytest.approx(result.before.ci, abs=1e-12)
    assert result.delta == pytest.approx(0.0, abs=1e-12)


def test_known_transform_score_computed_independently(
    mur92: tuple[np.ndarray, np.ndarray],
) -> None:
    X, rdms = mur92
    rng = np.random.default_rng(0)
    W = rng.normal(size=(64, 64))
    b = rng.normal(size=64)
    mean, std = 120.0, 55.0
    result = transfer_rsa(
        X,
        rdms,
        "dissimilarity",
        {"weights": W, "bias": b, "mean": mean, "std": std},
        n_bootstrap=0,
    )
    E = ((X - mean) / std) @ W + b
    expected_after = _mean_over_subjects(pdist(E, "cosine"), rdms)
    expected_before = _mean_over_subjects(pdist(X, "cosine"), rdms)
    assert result.after.spearman == pytest.approx(expected_after, abs=1e-12)
    assert result.before.spearman == pytest.approx(expected_before, abs=1e-12)
    assert result.after.group is not None
    assert result.after.group.spearman == pytest.approx(
        ss.spearmanr(pdist(E, "cosine"), _human_vector(rdms))[0], abs=1e-12
    )
    assert abs(result.after.spearman - result.before.spearman) > 1e-3  # it did change
    assert result.delta == pytest.approx(expected_after - expected_before, abs=1e-12)


def test_normalize_l2_normalises_rows(mur92: tuple[np.ndarray, np.ndarray]) -> None:
    # cosine distances ignore row norms, so check normalisation with euclidean RDMs
    X, rdms = mur92
    rng = np.random.default_rng(1)
    W = rng.normal(size=(64, 16))
    t = {"weights": W, "mean": 100.0, "std": 60.0}
    result = transfer_rsa(
        X, rdms, "dissimilarity", t, normalize=True, rdm_metric="euclidean", n_bootstrap=0
    )
    E = ((X - 100.0) / 60.0) @ W
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    expected = _mean_over_subjects(pdist(E, "euclidean"), rdms)
    assert result.normalize
    assert result.after.spearman == pytest.approx(expected, abs=1e-12)
    # "before" is in the same normalisation: L2-normalised raw rows
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    expected_before = _mean_over_subjects(pdist(Xn, "euclidean"), rdms)
    assert result.before.spearman == pytest.approx(expected_before, abs=1e-12)
    assert result.delta == pytest.approx(expected - expected_before, abs=1e-12)
    np.testing.assert_allclose(np.linalg.norm(apply_transform(X, t, normalize=True), axis=1), 1.0)


def test_npz_dict_and_probe_give_the_same_transform(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    arrays = {
        "weights": rng.normal(size=(6, 6)).astype(np.float32),
        "bias": rng.normal(size=6).astype(np.float32),
        "mean": np.float64(0.5),
        "std": np.float64(2.0),
    }
    path = tmp_path / "transform.npz"
    np.savez(path, **arrays)
    X = rng.normal(size=(10, 6))
    from_file = apply_transform(X, path)
    from_dict = apply_transform(X, arrays)
    expected = ((X - 0.5) / 2.0) @ arrays["weights"].astype(np.float64) + arrays["bias"]
    np.testing.assert_allclose(from_file, expected, rtol=1e-12)
    np.testing.assert_array_equal(from_file, from_dict)
    assert load_transform(path).digest == load_transform(arrays).digest
    probe_mod = pytest.importorskip("align.metrics.probe", reason="TripletProbe needs torch")
    probe = probe_mod.TripletProbe.load(path)
    np.testing.assert_allclose(apply_transform(X, probe), expected, rtol=1e-12)
    np.testing.assert_allclose(probe.transform(X), expected, rtol=1e-6)


def test_missing_rows_stay_missing() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(12, 4))
    X[3] = np.nan
    E = apply_transform(X, {"weights": rng.normal(size=(4, 4)), "mean": 0.0, "std": 1.0})
    assert np.isnan(E[3]).all() and np.isfinite(np.delete(E, 3, axis=0)).all()


def test_missing_key_is_named(tmp_path: Path) -> None:
    path = tmp_path / "t.npz"
    np.savez(path, weights=np.eye(3), mean=0.0)
    with pytest.raises(InvalidInputError, match="'std'") as err:
        load_transform(path)
    assert str(path) in err.value.field


def test_bias_shape_is_checked() -> None:
    with pytest.raises(InvalidInputError, match=r"transform:bias: has shape \(2,\)"):
        load_transform({"weights": np.eye(3), "bias": np.zeros(2), "mean": 0, "std": 1})


def test_feature_width_must_match_weights() -> None:
    with pytest.raises(InvalidInputError, match="features: has 5 columns"):
        apply_transform(np.ones((4, 5)), {"weights": np.eye(3), "mean": 0, "std": 1})


def test_nonpositive_std_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="std"):
        load_transform({"weights": np.eye(3), "mean": 0, "std": 0})
    with pytest.raises(DataMissingError, match="no such transform file"):
        load_transform(tmp_path / "absent.npz")
    with pytest.raises(InvalidInputError, match="transform: is a int"):
        load_transform(3)


def test_delta_has_a_paired_stimulus_bootstrap_interval(
    mur92: tuple[np.ndarray, np.ndarray],
) -> None:
    from align.metrics.rsa import paired_rsa_delta

    X, rdms = mur92
    rng = np.random.default_rng(4)
    t = {"weights": rng.normal(size=(64, 64)), "mean": 120.0, "std": 55.0}
    result = transfer_rsa(X, rdms, "dissimilarity", t, n_bootstrap=50, seed=2)
    paired = paired_rsa_delta(X, apply_transform(X, t), rdms, n_bootstrap=50, seed=2)
    assert result.delta_ci == paired.ci_delta and result.delta_ci is not None
    assert result.delta_ci[0] <= result.delta <= result.delta_ci[1]
    # the identity gives a zero-width paired interval (same resamples on both sides)
    identity = {"weights": np.eye(64), "mean": 0.0, "std": 1.0}
    same = transfer_rsa(X, rdms, "dissimilarity", identity, n_bootstrap=20, seed=3)
    assert same.delta_ci == pytest.approx((0.0, 0.0), abs=1e-12)


def test_target_objects_and_triplets_without_them() -> None:
    from align.metrics.transfer import target_objects, triplets_without

    things_ids = ["aardvark", "bee", "cat", "dog", "eel"]
    assert target_objects(["dog", "bee", "unicorn"], things_ids).tolist() == [1, 3]
    T = np.array([[0, 2, 4], [1, 2, 4], [0, 3, 2]])
    assert triplets_without(T, [1, 3]).tolist() == [True, False, False]
    assert triplets_without(T, []).all()


@pytest.mark.parametrize("variant", ["human", "simulated", "glocal"])
def test_transfer_fit_for_things48_never_sees_its_objects(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch, variant: str
) -> None:
    """The report's transform for things48 is fitted without things48's 48 THINGS objects:
    the PCA basis gets their rows as missing, no training triplet touches them, and
    gLocal's unlabeled rows leave them out (asserted on what the fit actually receives)."""
    pytest.importorskip("torch", reason="the probe needs torch")
    import warnings

    from align.datasets import load_dataset, load_spose_embedding
    from align.metrics.glocal import GLocalProbe
    from align.metrics.probe import TripletProbe
    from align.metrics.transfer import target_objects
    from align.reporting import experiments

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        things = load_dataset("things", data_dir)
        things48 = load_dataset("things48", data_dir)
    excluded = target_objects(things48.stimulus_ids, things.stimulus_ids)
    assert excluded.size == 48
    T = np.asarray(things.triplets, dtype=np.int64)
    assert np.isin(T, excluded).any()  # the real data do touch them
    rng = np.random.default_rng(0)
    X = rng.normal(size=(len(things.stimulus_ids), 12))
    seen: dict[str, list] = {"pca": [], "fit": [], "local": []}
    real_pca = experiments.fit_pca

    def spy_pca(Xf: np.ndarray, rank: int):  # type: ignore[no-untyped-def]
        seen["pca"].append(np.array(Xf))
        return real_pca(Xf, rank)

    def spy(cls):  # type: ignore[no-untyped-def]
        real = cls.fit

        def fit(self, Z, triplets, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen["fit"].append((np.array(Z), np.asarray(triplets)))
            if kwargs.get("X_local") is not None:
                seen["local"].append(np.asarray(kwargs["X_local"]))
            return real(self, Z, triplets, *args, **kwargs)

        return fit

    monkeypatch.setattr(experiments, "fit_pca", spy_pca)
    monkeypatch.setattr(TripletProbe, "fit", spy(TripletProbe))
    monkeypatch.setattr(GLocalProbe, "fit", spy(GLocalProbe))
    cfg = experiments.ReportConfig(rank=4, n_simulated=500, n_threads=1)
    ctx = experiments.Context({}, {}, None, load_spose_embedding(data_dir), [], data_dir)
    simulated, glocal = variant != "human", variant == "glocal"
    transform = experiments.fit_transform_excluding(
        X, T, excluded, 0.1, simulated, glocal, ctx, cfg
    )
    assert seen["pca"] and seen["fit"]
    for Xf in seen["pca"]:
        assert np.isnan(Xf[excluded]).all() and not np.isnan(np.delete(Xf, excluded, 0)).any()
    for Z, trip in seen["fit"]:
        assert np.isnan(Z[excluded]).all()  # the probe gets their rows as missing
        assert not np.isin(trip, excluded).any()  # and no triplet over them
    if glocal:
        assert seen["local"] and all(not np.isnan(L).any() for L in seen["local"])
        assert all(L.shape[0] == X.shape[0] - 48 for L in seen["local"])
    # the composed transform still applies to every row, the target's included
    E = apply_transform(X[excluded], transform)
    assert np.isfinite(E).all() and E.shape[0] == 48


def test_save_transform_writes_the_thingsvision_npz(tmp_path: Path) -> None:
    """METHODS.md section 3, "Export": ``transform.npz`` with keys weights (p x p float32),
    bias (p,) float32 when used, mean and std (scalars), plus any extra arrays; it reads
    back (np.load and read_transform_file) to the same arrays and the same mapping."""
    from align.metrics.transfer import read_transform_file, save_transform

    rng = np.random.default_rng(7)
    W = rng.normal(size=(5, 5))
    b = rng.normal(size=5)
    given = {"weights": W, "bias": b, "mean": 1.25, "std": 3.5}
    path = tmp_path / "transform.npz"
    assert save_transform(given, path, extra={"labels": np.arange(3)}) == path
    with np.load(path, allow_pickle=False) as npz:
        raw = {k: npz[k] for k in npz.files}
    assert sorted(raw) == ["bias", "labels", "mean", "std", "weights"]
    assert raw["weights"].dtype == np.float32 and raw["weights"].shape == (5, 5)
    np.testing.assert_array_equal(raw["weights"], W.astype(np.float32))
    assert raw["bias"].dtype == np.float32 and raw["bias"].shape == (5,)
    np.testing.assert_array_equal(raw["bias"], b.astype(np.float32))
    for key, value in (("mean", 1.25), ("std", 3.5)):
        assert raw[key].shape == () and raw[key].dtype == np.float64 and raw[key] == value
    np.testing.assert_array_equal(raw["labels"], [0, 1, 2])
    back = read_transform_file(path)
    assert sorted(back) == sorted(raw)
    for key in raw:
        np.testing.assert_array_equal(back[key], raw[key])
    X = rng.normal(size=(4, 5))
    expected = ((X - 1.25) / 3.5) @ W.astype(np.float32).astype(np.float64)
    expected += b.astype(np.float32)
    np.testing.assert_allclose(apply_transform(X, path), expected, rtol=1e-12)

    # without a bias there is no bias key; a saved file saves again to the same arrays
    plain = tmp_path / "plain.npz"
    save_transform({"weights": np.eye(2), "mean": 0, "std": 1}, plain)
    with np.load(plain) as npz:
        assert sorted(npz.files) == ["mean", "std", "weights"]
        assert npz["weights"].dtype == np.float32 and npz["mean"].dtype == np.float64
    again = save_transform(str(path), tmp_path / "again.npz")
    with np.load(again) as npz:
        assert sorted(npz.files) == ["bias", "mean", "std", "weights"]
        np.testing.assert_array_equal(npz["weights"], raw["weights"])
        np.testing.assert_array_equal(npz["bias"], raw["bias"])


def test_transform_scalars_and_probe_attributes_are_validated() -> None:
    """mean/std: one finite number (a one-element array of any shape is that number);
    booleans, strings and several values are refused and named. A probe-like object
    without ``bias_`` has no bias; one without mean_/std_ is refused by its class name."""
    W = np.eye(2)
    t = load_transform({"weights": W, "mean": np.array([2.0]), "std": np.array([[4.0]])})
    assert (t.mean, t.std, t.bias) == (2.0, 4.0, None)
    for bad in (np.array([0.0, 1.0]), True, np.array(["a"]), "a"):
        with pytest.raises(InvalidInputError) as err:
            load_transform({"weights": W, "mean": bad, "std": 1.0})
        assert err.value.field == "transform:mean"

    class Fitted:
        def __init__(self, **attrs: object) -> None:
            self.__dict__.update(attrs)

    probe = load_transform(Fitted(weights_=2 * W, mean_=1.0, std_=0.5))
    assert probe.bias is None and probe.source == "Fitted"
    np.testing.assert_array_equal(apply_transform(np.ones((1, 2)), probe), [[0.0, 0.0]])
    with pytest.raises(InvalidInputError, match="'mean', 'std'") as err:
        load_transform(Fitted(weights_=W))
    assert err.value.field == "Fitted"


def test_transform_file_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    """A transform.npz is read without unpickling (no code from a file runs)."""
    from align.metrics.transfer import read_transform_file

    path = tmp_path / "evil.npz"
    np.savez(path, weights=np.array([{"a": 1}], dtype=object), mean=0.0, std=1.0)
    with pytest.raises(InvalidInputError, match=r"not a readable \.npz"):
        read_transform_file(path)


def test_apply_transform_checks_features_and_names_the_bad_row() -> None:
    """Features: a numeric (n, p) matrix (integers welcome) with p = the weights' rows
    (a non-square transform maps p -> k); the first non-finite row of a present
    stimulus and the first row mapped to zero (before normalising) are named by index."""
    W = np.arange(8.0).reshape(4, 2) - 3.0  # 4 features -> 2
    t = {"weights": W, "mean": 1.0, "std": 2.0}
    Xi = np.array([[1, 2, 3, 4], [0, 0, 1, 1], [5, 1, 0, 2]])
    np.testing.assert_array_equal(apply_transform(Xi, t), ((Xi - 1.0) / 2.0) @ W)
    for bad in (np.ones(4), np.array([["a", "b", "c", "d"]])):
        with pytest.raises(InvalidInputError) as err:
            apply_transform(bad, t)
        assert err.value.field == "features"
    X = np.ones((4, 4))
    X[0] = np.nan  # a missing stimulus: allowed
    X[2, 1] = np.inf
    from align.errors import NumericalError

    with pytest.raises(NumericalError, match="row 2 has NaN or infinite"):
        apply_transform(X, t)
    # rows 2 and 3 map to the zero vector; row 1 has norm exactly 1; row 0 missing
    ident = {"weights": np.eye(2), "mean": 0.0, "std": 1.0}
    Z = np.array([[np.nan, np.nan], [0.6, 0.8], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(NumericalError, match="row 2 maps to the zero vector"):
        apply_transform(Z, ident, normalize=True)
    Y = np.array([[np.nan, np.nan], [0.6, 0.8], [3.0, -4.0], [0.0, 2.0]])
    want = np.array([[np.nan, np.nan], [0.6, 0.8], [0.6, -0.8], [0.0, 1.0]])
    np.testing.assert_allclose(apply_transform(Y, ident, normalize=True), want, rtol=1e-15)


def test_l2_normalize_rows_of_integers_missing_and_zero_rows() -> None:
    """Rows divided by their Euclidean norm in float64 (integer input too); all-NaN rows
    stay all-NaN; a present zero row is refused by its index; a unit row is kept."""
    from align.errors import NumericalError
    from align.metrics.transfer import l2_normalize_rows

    X = np.array([[3, 4], [0, 1], [-5, 12]])
    got = l2_normalize_rows(X)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, [[0.6, 0.8], [0.0, 1.0], [-5 / 13, 12 / 13]], rtol=1e-15)
    Y = np.array([[np.nan, np.nan], [0.6, 0.8], [0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(NumericalError, match="row 2 is the zero vector"):
        l2_normalize_rows(Y)
    Y[2:] = [[2.0, 0.0], [0.0, -0.5]]
    want = np.array([[np.nan, np.nan], [0.6, 0.8], [1.0, 0.0], [0.0, -1.0]])
    np.testing.assert_allclose(l2_normalize_rows(Y), want, rtol=1e-15)


@pytest.mark.parametrize("normalize", [False, True])
def test_transfer_rsa_passes_every_option_and_describes_the_transform(normalize: bool) -> None:
    """Small synthetic case: a non-square transform with bias, human SIMILARITY matrices
    of three subjects (negated into RDMs), Pearson on euclidean RDMs. Before and after
    are the mean over subjects of scipy's Pearson (METHODS.md section 5) on the raw (or
    L2-normalised) and the transformed rows; the paired interval is the stated paired
    stimulus bootstrap with the same options; the result names the transform."""
    from align.metrics.rsa import paired_rsa_delta

    rng = np.random.default_rng(11)
    X = rng.normal(size=(10, 4)) + 2.0
    t = {"weights": rng.normal(size=(4, 3)), "bias": rng.normal(size=3), "mean": 0.5, "std": 2}
    base = rng.normal(size=(10, 2))
    noisy = [base + rng.normal(scale=s, size=base.shape) for s in (0.3, 1.0, 2.0)]
    sims = np.stack([-squareform(pdist(b, "sqeuclidean")) for b in noisy])  # (3, 10, 10)
    opts = {"method": "pearson", "rdm_metric": "euclidean", "n_bootstrap": 40}
    opts.update({"confidence": 0.8, "seed": 5})
    if normalize:
        result = transfer_rsa(X, sims, "similarity", t, normalize=True, **opts)
    else:
        result = transfer_rsa(X, sims, "similarity", t, **opts)  # default: raw rows
    E = ((X - 0.5) / 2.0) @ t["weights"] + t["bias"]
    Xb = X
    if normalize:
        E /= np.linalg.norm(E, axis=1, keepdims=True)
        Xb = X / np.linalg.norm(X, axis=1, keepdims=True)
    iu = np.triu_indices(10, 1)

    def score(F: np.ndarray) -> float:
        return float(np.mean([ss.pearsonr(pdist(F), -m[iu])[0] for m in sims]))

    assert result.before.score == pytest.approx(score(Xb), abs=1e-12)
    assert result.after.score == pytest.approx(score(E), abs=1e-12)
    assert result.delta == pytest.approx(score(E) - score(Xb), abs=1e-12)
    for side in (result.before, result.after):
        assert side.method == "pearson" and side.rdm_metric == "euclidean"
        assert side.converted and side.n_bootstrap == 40 and side.confidence == 0.8
    paired = paired_rsa_delta(Xb, E, sims, "similarity", **opts)
    assert result.delta_ci is not None and result.delta_ci == pytest.approx(paired.ci_delta)
    assert result.normalize is normalize
    assert result.transform_shape == (4, 3) and result.transform_source == "transform"
    assert result.transform_digest == load_transform(t).digest
    before = "L2-normalised rows" if normalize else "raw rows"
    assert result.options == {**opts, "before": before}


def test_transform_arrays_must_be_numeric_of_the_right_shape() -> None:
    """weights: a numeric (p, k) matrix; bias: numeric (k,); booleans and strings are not
    numbers; each refusal names the array ("<where>:weights", ":bias", ":std")."""
    ok = {"weights": np.eye(2), "mean": 0.0, "std": 1.0}
    cases = [
        ({"weights": np.ones(2)}, "transform:weights"),
        ({"weights": np.eye(2, dtype=bool)}, "transform:weights"),
        ({"weights": np.array([["1", "0"], ["0", "1"]])}, "transform:weights"),
        ({"bias": np.array([True, False])}, "transform:bias"),
        ({"bias": np.array(["0", "1"])}, "transform:bias"),
        ({"std": "a"}, "transform:std"),
        ({"std": np.array([1.0, 2.0])}, "transform:std"),
    ]
    for change, field in cases:
        with pytest.raises(InvalidInputError) as err:
            load_transform({**ok, **change})
        assert err.value.field == field, change


def test_target_objects_and_triplets_without_edge_cases() -> None:
    """No matching object: an EMPTY int64 index (it still indexes arrays); no excluded
    object: every triplet kept, as a bool mask over all rows; one excluded object works."""
    from align.metrics.transfer import target_objects, triplets_without

    none = target_objects(["unicorn"], ["aardvark", "bee"])
    assert none.dtype == np.int64 and none.size == 0
    assert np.ones((2, 3))[none].shape == (0, 3)
    T = np.array([[0, 2, 4], [1, 2, 4], [0, 3, 2], [4, 1, 0]])
    keep = triplets_without(T, [])
    assert keep.dtype == np.bool_ and keep.tolist() == [True] * 4
    assert T[keep].shape == (4, 3)
    assert triplets_without(T, [3]).tolist() == [True, True, False, True]
    assert triplets_without(T, np.array([1])).dtype == np.bool_
