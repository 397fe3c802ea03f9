"""RSA (METHODS.md section 5) on the real human RDMs, checked against rsatoolbox, scipy,
published numbers and plain loops written here."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io as sio
import scipy.stats as ss
from align.errors import InvalidInputError, NumericalError
from align.metrics.rsa import (
    compare_rdms,
    compute_rdm,
    kendall_tau_a,
    rsa,
    rsa_noise_ceiling,
    to_dissimilarity,
    upper_triangle,
)
from scipy.spatial.distance import pdist, squareform

# -- real data ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mur92(data_dir: Path) -> np.ndarray:
    path = data_dir / "mur92" / "behav_rdms_92_16subjects.npy"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return np.load(path)


@pytest.fixture(scope="module")
def pixels92(data_dir: Path) -> np.ndarray:
    """A real (if simple) model: 24x24 grey-level pixels of the 92 stimuli (576-d)."""
    from PIL import Image

    folder = data_dir / "mur92" / "images92"
    if not folder.is_dir():
        pytest.skip(f"{folder} not found")
    rows = []
    for k in range(1, 93):
        with Image.open(folder / f"{k:02d}.png") as im:
            rows.append(np.asarray(im.convert("L").resize((24, 24)), dtype=np.float64).ravel())
    return np.stack(rows)


@pytest.fixture(scope="module")
def peterson(data_dir: Path) -> dict[str, np.ndarray]:
    path = data_dir / "peterson_animals" / "turkResults_CogSci2016.mat"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    return sio.loadmat(path)


def _rsatoolbox():
    return pytest.importorskip("rsatoolbox", reason="rsatoolbox cross-checks need rsatoolbox")


def _tri(M: np.ndarray) -> np.ndarray:
    return M[np.triu_indices(M.shape[0], 1)]


# -- model RDMs --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "scipy_name"),
    [("cosine", "cosine"), ("correlation", "correlation"), ("euclidean", "euclidean")],
)
def test_compute_rdm_matches_scipy_pdist(pixels92: np.ndarray, ours: str, scipy_name: str) -> None:
    expected = squareform(pdist(pixels92, scipy_name))
    got = compute_rdm(pixels92, ours)
    assert got.shape == (92, 92)
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-9)
    assert np.array_equal(got, got.T) and not np.diag(got).any()


def test_compute_rdm_float32_in_float32_out(pixels92: np.ndarray) -> None:
    got = compute_rdm(pixels92.astype(np.float32))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, squareform(pdist(pixels92, "cosine")), atol=1e-5)


def test_compute_rdm_zero_row_is_named() -> None:
    X = np.ones((4, 3))
    X[2] = 0.0
    with pytest.raises(InvalidInputError, match="row 2"):
        compute_rdm(X, "cosine")


@pytest.mark.parametrize(
    ("metric", "X_row", "what", "expected"),
    [
        ("cosine", 0.0, "zero norm", "non-zero rows"),
        ("correlation", 3.0, "constant values", "rows with non-zero variation"),
    ],
)
def test_compute_rdm_undefined_rows_are_named_and_counted(
    metric: str, X_row: float, what: str, expected: str
) -> None:
    X = np.random.default_rng(2).normal(size=(6, 4))
    X[2] = X_row  # a zero row (cosine) or a constant row (correlation), twice
    X[4] = X_row
    message = (
        f"features: row 2 has {what}, so its {metric} distance is undefined (2 such rows) "
        f"(expected {expected})"
    )
    with pytest.raises(InvalidInputError, match=f"^{re.escape(message)}$"):
        compute_rdm(X, metric)


def test_compute_rdm_names_the_first_missing_row() -> None:
    # all-NaN rows pass the feature check (they mark missing stimuli); rsa() drops them,
    # compute_rdm itself refuses them, naming the first
    X = np.arange(18, dtype=float).reshape(6, 3)
    X[3] = np.nan
    X[5] = np.nan
    with pytest.raises(NumericalError, match=r"^features: row 3 has NaN or infinite values"):
        compute_rdm(X, "euclidean")


@pytest.mark.parametrize("metric", ["cosine", "correlation", "euclidean"])
def test_compute_rdm_matches_scipy_at_small_and_large_scales(metric: str) -> None:
    # pixels92 (above) has every euclidean distance > 1; here they span 1e-3 .. 1e3
    rng = np.random.default_rng(5)
    for scale in (1e-3, 1.0, 1e3):
        X = rng.normal(size=(12, 5)) * scale
        atol = 1e-12 * (scale if metric == "euclidean" else 1.0)
        np.testing.assert_allclose(
            compute_rdm(X, metric), squareform(pdist(X, metric)), rtol=1e-9, atol=atol
        )


def test_compute_rdm_clips_rounding_to_the_metric_range() -> None:
    """Duplicated and negated rows: exact distances 0 and 2 (cosine, correlation) and 0
    (euclidean). Rounding takes the raw formulas past them for some of the 60 rows
    (checked below, written out), so an unclipped result would hold negative distances,
    cosine distances above 2, or NaN from the square root of a negative."""
    rng = np.random.default_rng(11)
    base = rng.normal(size=(60, 7)) * 10.0 ** rng.uniform(-3, 3, size=(60, 1))
    X = np.concatenate([base, base, -base])
    n = len(base)
    dup = (np.arange(n), np.arange(n) + n)
    neg = (np.arange(n), np.arange(n) + 2 * n)
    Zn = X / np.linalg.norm(X, axis=1)[:, None]
    raw = 1.0 - Zn @ Zn.T
    Zc = X - X.mean(axis=0, keepdims=True)
    sq = np.einsum("ij,ij->i", Zc, Zc)
    raw_sq = sq[:, None] + sq[None, :] - 2.0 * (Zc @ Zc.T)
    assert (raw[dup] < 0).any() and (raw[neg] > 2).any() and (raw_sq[dup] < 0).any()
    for metric in ("cosine", "correlation"):
        D = compute_rdm(X, metric)
        assert D.min() >= 0.0 and D.max() <= 2.0, metric
        np.testing.assert_allclose(D[dup], 0.0, atol=1e-12)
        np.testing.assert_allclose(D[neg], 2.0, atol=1e-12)
    E = compute_rdm(X, "euclidean")
    assert np.isfinite(E).all() and E.min() >= 0.0
    assert (E[dup] <= 1e-7 * np.linalg.norm(Zc[:n], axis=1)).all()


def test_compute_rdm_names_its_input_features() -> None:
    with pytest.raises(InvalidInputError) as err:
        compute_rdm(np.ones(5))
    assert err.value.field == "features"


@pytest.mark.parametrize(("alias", "kind"), [("RDM", "dissimilarity"), ("rsm", "similarity")])
def test_matrix_kind_aliases_rdm_and_rsm_any_case(alias: str, kind: str) -> None:
    M = np.array([[0.0, 1.0, 2.0], [1.0, 0.0, 3.0], [2.0, 3.0, 0.0]])
    got, converted = to_dissimilarity(M, alias)
    expected = M if kind == "dissimilarity" else -M
    np.testing.assert_array_equal(got[0], expected)
    assert converted == (kind == "similarity")


def test_human_matrices_checks_at_their_boundaries() -> None:
    M3 = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]])  # integers, 3 stimuli: the minimum
    got, _ = to_dissimilarity(M3, "dissimilarity")
    assert got.dtype == np.float64 and got.shape == (1, 3, 3)
    with pytest.raises(InvalidInputError, match=r"^matrices: has shape \(0, 4, 4\)"):
        to_dissimilarity(np.zeros((0, 4, 4)), "dissimilarity")
    # symmetry tolerance 1e-8 * max(|M|, 1): at the tolerance accepted, above it refused
    tiny_asym = np.zeros((3, 3))
    tiny_asym[0, 1] = 1e-8  # |M| < 1: tolerance 1e-8, asymmetry exactly 1e-8
    to_dissimilarity(tiny_asym, "dissimilarity")
    tiny_asym[0, 1] = 1.5e-8
    with pytest.raises(InvalidInputError, match="not symmetric"):
        to_dissimilarity(tiny_asym, "dissimilarity")
    big = M3 * 1e4  # |M| = 3e4: tolerance 3e-4
    big = big.astype(float)
    big[0, 1] += 2e-4
    to_dissimilarity(big, "dissimilarity")
    big[0, 1] += 2e-4
    with pytest.raises(InvalidInputError, match=r"not symmetric: \[0, 1\]"):
        to_dissimilarity(big, "dissimilarity")


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_a_constant_rdm_on_one_side_is_refused(method: str) -> None:
    varying = np.array([1.0, 2.0, 3.0, 5.0])
    for a, b in ((np.full(4, 2.0), varying), (varying, np.full(4, 2.0))):
        with pytest.raises(NumericalError, match=f"^{method} is undefined: one RDM has"):
            compare_rdms(a, b, method)


def test_kendall_tau_a_with_no_or_one_pair() -> None:
    assert math.isnan(kendall_tau_a(np.array([]), np.array([])))
    assert math.isnan(kendall_tau_a(np.array([1.0]), np.array([2.0])))
    assert kendall_tau_a(np.array([1.0, 2.0]), np.array([1.0, 2.0])) == 1.0
    assert kendall_tau_a(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == -1.0
    assert kendall_tau_a(np.array([1.0, 2.0]), np.array([1.0, 1.0])) == 0.0


def _strict_inversions_loop(v: np.ndarray, w: np.ndarray) -> float:
    return float(
        sum(w[i] * w[j] for i in range(len(v)) for j in range(i + 1, len(v)) if v[i] > v[j])
    )


def test_weighted_strict_inversions_equals_the_pair_loop_at_every_length() -> None:
    from align.metrics.rsa import _weighted_strict_inversions

    assert _weighted_strict_inversions(np.array([1, 0]), np.array([2.0, 3.0]), 2) == 6.0
    rng = np.random.default_rng(8)
    for n in range(0, 40):
        v = rng.integers(0, 5, n)
        w = rng.integers(0, 4, n).astype(float)
        assert _weighted_strict_inversions(v, w, 5) == _strict_inversions_loop(v, w), n


# -- comparisons -------------------------------------------------------------------------


def _tau_a_loop(x: np.ndarray, y: np.ndarray) -> float:
    n = len(x)
    s = 0.0
    for i in range(n):
        for j in range(i + 1, n):
            s += np.sign(x[i] - x[j]) * np.sign(y[i] - y[j])
    return s / (n * (n - 1) / 2)


def test_kendall_tau_a_equals_quadratic_loop_with_ties() -> None:
    rng = np.random.default_rng(3)
    for _ in range(40):
        n = int(rng.integers(2, 60))
        x = rng.integers(0, 4, n).astype(float)  # heavy ties in both
        y = rng.integers(0, 3, n).astype(float)
        assert kendall_tau_a(x, y) == pytest.approx(_tau_a_loop(x, y), abs=1e-12)


def test_kendall_tau_a_is_not_tau_b() -> None:
    x = np.array([1.0, 1.0, 2.0, 3.0])
    y = np.array([1.0, 2.0, 2.0, 3.0])
    # 6 pairs: 4 concordant, 0 discordant, 2 tied -> tau-a 4/6; tau-b is larger
    assert kendall_tau_a(x, y) == pytest.approx(4 / 6)
    assert ss.kendalltau(x, y).statistic > 4 / 6 + 0.1


def test_weighted_tau_a_equals_repeated_elements() -> None:
    rng = np.random.default_rng(4)
    for _ in range(30):
        n = int(rng.integers(2, 30))
        x = rng.integers(0, 5, n).astype(float)
        y = rng.integers(0, 5, n).astype(float)
        w = rng.integers(0, 4, n)
        if w.sum() < 2:
            continue
        expected = _tau_a_loop(np.repeat(x, w), np.repeat(y, w))
        assert kendall_tau_a(x, y, weights=w) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(
    ("ours", "theirs"), [("spearman", "spearman"), ("pearson", "corr"), ("kendall_tau_a", "tau-a")]
)
def test_mur92_scores_match_rsatoolbox(
    pixels92: np.ndarray, mur92: np.ndarray, ours: str, theirs: str
) -> None:
    rsatoolbox = _rsatoolbox()
    from rsatoolbox.inference import eval_fixed
    from rsatoolbox.model import ModelFixed
    from rsatoolbox.rdm import RDMs, compare

    result = rsa(pixels92, mur92, "dissimilarity", method=ours, n_bootstrap=0)
    model = RDMs(_tri(squareform(pdist(pixels92, "cosine")))[None])
    subjects = RDMs(np.stack([_tri(m) for m in mur92]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rsatoolbox warns about averaged ranks for tau
        evaluations = eval_fixed(ModelFixed("pixels", model), subjects, method=theirs)
    per_subject = np.asarray(evaluations.evaluations).reshape(-1)
    assert rsatoolbox is not None and per_subject.size == 16
    # the headline score is rsatoolbox's eval_fixed: mean over subjects (the ceiling's scale)
    assert result.score == pytest.approx(float(per_subject.mean()), abs=1e-6)
    assert np.asarray(result.per_subject) == pytest.approx(per_subject, abs=1e-6)
    assert getattr(result, ours) == result.score
    assert result.scale == "mean over subjects"
    # the subject-mean RDM is another scale, reported apart as the group score
    human = RDMs(_tri(mur92.mean(axis=0))[None])
    assert result.group is not None
    expected_group = float(compare(model, human, method=theirs)[0, 0])
    assert getattr(result.group, ours) == pytest.approx(expected_group, abs=1e-6)
    assert result.n_stimuli == 92 and result.n_pairs == 92 * 91 // 2 and result.n_subjects == 16
    assert result.noise_ceiling is not None
    assert result.normalized == pytest.approx(result.score / result.noise_ceiling.lower)


@pytest.mark.parametrize(
    ("ours", "theirs"), [("spearman", "spearman"), ("pearson", "corr"), ("kendall_tau_a", "tau-a")]
)
def test_mur92_normalized_noise_ceiling_matches_rsatoolbox(
    mur92: np.ndarray, ours: str, theirs: str
) -> None:
    # rsatoolbox's boot_noise_ceiling pools subjects as the method sees them (ranks for
    # spearman / tau-a, z-scores for corr): our pooling="normalized".
    _rsatoolbox()
    from rsatoolbox.inference import boot_noise_ceiling
    from rsatoolbox.rdm import RDMs

    rdms = RDMs(np.stack([_tri(m) for m in mur92]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rsatoolbox warns about averaged ranks for tau
        lower, upper = boot_noise_ceiling(rdms, method=theirs)
    nc = rsa_noise_ceiling(mur92, ours, pooling="normalized")
    assert nc.lower == pytest.approx(lower, abs=1e-6)
    assert nc.upper == pytest.approx(upper, abs=1e-6)


def test_mur92_noise_ceiling_mean_pooling_equals_loop(
    pixels92: np.ndarray, mur92: np.ndarray
) -> None:
    # METHODS.md: lower = mean corr(subject, mean of the OTHER subjects); upper = mean
    # corr(subject, mean of ALL). Independent loop with scipy.
    vecs = np.stack([_tri(m) for m in mur92])
    lower = np.mean(
        [ss.spearmanr(vecs[k], np.delete(vecs, k, axis=0).mean(0))[0] for k in range(16)]
    )
    upper = np.mean([ss.spearmanr(vecs[k], vecs.mean(0))[0] for k in range(16)])
    result = rsa(pixels92, mur92, "dissimilarity", n_bootstrap=0)
    assert result.noise_ceiling is not None
    assert result.noise_ceiling.lower == pytest.approx(lower, abs=1e-10)
    assert result.noise_ceiling.upper == pytest.approx(upper, abs=1e-10)
    assert result.noise_ceiling.lower < result.noise_ceiling.upper


def test_result_json_shape(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    d = rsa(pixels92, mur92, "dissimilarity", n_bootstrap=20).to_dict()
    assert isinstance(d["spearman"], float) and d["score"] == d["spearman"]
    assert set(d["noise_ceiling"]) >= {"lower", "upper"}
    assert len(d["ci"]) == 2 and d["human_kind"] == "dissimilarity" and d["converted"] is False


def test_single_matrix_has_no_noise_ceiling(mur92: np.ndarray, pixels92: np.ndarray) -> None:
    result = rsa(pixels92, mur92[0], "dissimilarity", n_bootstrap=0)
    assert result.noise_ceiling is None and result.n_subjects == 1
    assert result.spearman == pytest.approx(
        ss.spearmanr(_tri(squareform(pdist(pixels92, "cosine"))), _tri(mur92[0]))[0], abs=1e-12
    )


# -- things48: the published sanity number ----------------------------------------------


@pytest.fixture(scope="module")
def things48(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    rdm_path = data_dir / "things48" / "RDM48_triplet.mat"
    order_path = data_dir / "things48" / "rdm48_order.csv"
    spose_path = data_dir / "things_spose66d" / "spose_embedding_66d.txt"
    for p in (rdm_path, order_path, spose_path):
        if not p.is_file():
            pytest.skip(f"{p} not found")
    rdm = sio.loadmat(rdm_path)["RDM48_triplet"]
    rows = pd.read_csv(order_path)["things_concepts_index0"].to_numpy()
    spose = np.loadtxt(spose_path)
    return rdm, spose[rows]


def test_things48_dot_similarity_reproduces_published_0_883(
    things48: tuple[np.ndarray, np.ndarray],
) -> None:
    rdm, emb = things48
    # PROVENANCE: corr(-RDM48, dot-product similarity of SPoSE 66-d) = 0.883 (Pearson).
    # Compare like with like: the dot-product RSM becomes an RDM by negation.
    model_rdm, converted = to_dissimilarity(emb @ emb.T, "similarity")
    assert converted
    assert round(compare_rdms(model_rdm[0], rdm, "pearson"), 3) == 0.883


def test_things48_cosine_rsa_equals_scipy(things48: tuple[np.ndarray, np.ndarray]) -> None:
    rdm, emb = things48
    result = rsa(emb, rdm, "dissimilarity", n_bootstrap=0)
    expected = ss.spearmanr(pdist(emb, "cosine"), squareform(rdm, checks=False))[0]
    assert result.spearman == pytest.approx(expected, abs=1e-12)


# -- similarity matrices (RSM): explicit sign handling ----------------------------------


def test_peterson_rsm_is_negated_and_recorded(peterson: dict[str, np.ndarray]) -> None:
    sim = peterson["simMatrix"].astype(np.float64)
    # features whose cosine geometry follows the ratings: top eigenvectors of the RSM
    vals, vecs = np.linalg.eigh(sim)
    X = vecs[:, -10:] * np.sqrt(vals[-10:])
    as_rsm = rsa(X, sim, "similarity", n_bootstrap=0)
    as_rdm = rsa(X, -sim, "dissimilarity", n_bootstrap=0)
    assert as_rsm.converted and as_rsm.human_kind == "similarity"
    assert not as_rdm.converted and as_rdm.human_kind == "dissimilarity"
    assert as_rsm.spearman == as_rdm.spearman > 0.5
    # the silent mistake (ratings treated as distances) flips the sign
    wrong = rsa(X, sim, "dissimilarity", n_bootstrap=0)
    assert wrong.spearman == pytest.approx(-as_rsm.spearman)


def test_peterson_split_halves_noise_ceiling_is_published_r(
    peterson: dict[str, np.ndarray],
) -> None:
    halves = np.stack([peterson["simMatrixFirstBatch"], peterson["simMatrixSecondBatch"]])
    nc = rsa_noise_ceiling(halves, "pearson", matrix_kind="similarity")
    # two subjects: lower bound = corr(half 1, half 2); PROVENANCE: r = 0.91
    assert round(nc.lower, 2) == 0.91
    a, b = (_tri(m) for m in halves)
    assert nc.upper == pytest.approx(
        (ss.pearsonr(a, (a + b) / 2)[0] + ss.pearsonr(b, (a + b) / 2)[0]) / 2, abs=1e-12
    )


# -- bootstrap ---------------------------------------------------------------------------


def _naive_bootstrap(
    X: np.ndarray, human: np.ndarray, method: str, n_bootstrap: int, seed: int
) -> np.ndarray:
    """Rebuild both RDMs from resampled stimuli, drop duplicate pairs, compare."""
    """(s, n, n) human matrices: the mean over subjects of the per-subject correlations."""
    rng = np.random.default_rng(seed)
    n = X.shape[0]
    humans = human[None] if human.ndim == 2 else human
    out = []
    for _ in range(n_bootstrap):
        idx = rng.integers(0, n, size=n)
        i, j = np.triu_indices(n, 1)
        keep = idx[i] != idx[j]
        model = squareform(pdist(X[idx], "cosine"))[i, j][keep]
        values = []
        for h in humans:
            hum = h[np.ix_(idx, idx)][i, j][keep]
            if model.size < 2:  # no correlation over fewer than 2 pairs
                values.append(math.nan)
            elif method == "spearman":
                values.append(ss.spearmanr(model, hum)[0])
            elif method == "pearson":
                values.append(ss.pearsonr(model, hum)[0])
            else:
                values.append(_tau_a_fast_reference(model, hum))
        out.append(np.mean(values))
    return np.asarray(out)


def _tau_a_fast_reference(x: np.ndarray, y: np.ndarray) -> float:
    # tau-b from scipy converted to tau-a: (C - D) = tau_b * sqrt((n0 - n1)(n0 - n2))
    n0 = len(x) * (len(x) - 1) / 2

    def tied(v: np.ndarray) -> float:
        _, c = np.unique(v, return_counts=True)
        return float((c * (c - 1) / 2).sum())

    tau_b = ss.kendalltau(x, y).statistic
    return float(tau_b * math.sqrt((n0 - tied(x)) * (n0 - tied(y))) / n0)


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_bootstrap_equals_naive_rebuild(
    pixels92: np.ndarray, mur92: np.ndarray, method: str
) -> None:
    X, human = pixels92[:40], mur92[:4, :40, :40]
    n_boot = 30
    result = rsa(X, human, "dissimilarity", method=method, n_bootstrap=n_boot, seed=7)
    # headline (mean over subjects): stimuli resampled, the same stimuli for every subject
    naive = _naive_bootstrap(X, human, method, n_boot, seed=7)
    lo, hi = np.quantile(naive, [0.025, 0.975])
    assert result.ci is not None
    assert result.ci[0] == pytest.approx(lo, abs=1e-9)
    assert result.ci[1] == pytest.approx(hi, abs=1e-9)
    # group score: the same resamples against the subject-mean RDM
    naive_group = _naive_bootstrap(X, human.mean(axis=0), method, n_boot, seed=7)
    assert result.group is not None and result.group.ci is not None
    assert result.group.ci == pytest.approx(tuple(np.quantile(naive_group, [0.025, 0.975])))


def test_bootstrap_ci_contains_estimate_and_is_seeded(
    pixels92: np.ndarray, mur92: np.ndarray
) -> None:
    a = rsa(pixels92, mur92, "dissimilarity", n_bootstrap=200, seed=1)
    b = rsa(pixels92, mur92, "dissimilarity", n_bootstrap=200, seed=1)
    c = rsa(pixels92, mur92, "dissimilarity", n_bootstrap=200, seed=2)
    assert a.ci is not None and c.ci is not None
    assert a.ci[0] < a.score < a.ci[1]
    assert a.ci == b.ci
    assert a.ci != c.ci


def test_ties_in_human_rdm_bootstrap(peterson: dict[str, np.ndarray]) -> None:
    # peterson ratings are heavily tied: the weighted tie-aware ranks must still equal
    # the naive rebuild
    sim = peterson["simMatrix"].astype(np.float64)[:30, :30]
    human = np.round(-sim)  # coarse, many ties
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 8))
    naive = _naive_bootstrap(X, human, "spearman", 25, seed=3)
    result = rsa(X, human, "dissimilarity", n_bootstrap=25, seed=3)
    assert result.ci is not None
    assert result.ci[0] == pytest.approx(np.quantile(naive, 0.025), abs=1e-9)
    assert result.ci[1] == pytest.approx(np.quantile(naive, 0.975), abs=1e-9)


# -- missing stimuli ---------------------------------------------------------------------


def test_all_nan_rows_are_dropped_with_warning(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    X = pixels92.copy()
    gone = [3, 40, 77]
    X[gone] = np.nan
    with pytest.warns(UserWarning, match="dropped 3"):
        result = rsa(X, mur92, "dissimilarity", n_bootstrap=0)
    keep = np.setdiff1d(np.arange(92), gone)
    reference = rsa(pixels92[keep], mur92[:, keep][:, :, keep], "dissimilarity", n_bootstrap=0)
    assert result.n_dropped == 3 and result.n_stimuli == 89
    assert result.spearman == reference.spearman
    assert result.noise_ceiling == reference.noise_ceiling


def test_missing_stimuli_warning_points_at_the_callers_line() -> None:
    rng = np.random.default_rng(9)
    X = rng.normal(size=(8, 4))
    X[[2, 5]] = np.nan
    H = np.abs(rng.normal(size=(8, 8)))
    H = H + H.T
    np.fill_diagonal(H, 0.0)
    with pytest.warns(UserWarning) as caught:
        rsa(X, H, "dissimilarity", n_bootstrap=0)
    assert [str(w.message) for w in caught] == [
        "rsa: dropped 2 missing stimuli (all-NaN feature rows) from both RDMs"
    ]
    import sys

    # (under mutation testing, mutmut's trampolines add stack frames in between)
    if not any(name.startswith("mutmut") for name in sys.modules):
        assert caught[0].filename == __file__


def test_partial_nan_row_raises(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    X = pixels92.copy()
    X[5, 2] = np.nan
    with pytest.raises(NumericalError, match="row 5"):
        rsa(X, mur92, "dissimilarity", n_bootstrap=0)


# -- bad input ---------------------------------------------------------------------------


def test_feature_rows_must_match_matrix_size(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match=r"features.*91 rows.*92x92"):
        rsa(pixels92[:91], mur92, "dissimilarity")


def test_asymmetric_matrix_is_named(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    bad = mur92.copy()
    bad[4, 1, 2] += 0.5
    with pytest.raises(InvalidInputError, match=r"matrices: subject 4 is not symmetric"):
        rsa(pixels92, bad, "dissimilarity")


def test_nan_in_human_matrix_is_named(pixels92: np.ndarray, mur92: np.ndarray) -> None:
    bad = mur92.copy()
    bad[2, 7, 9] = bad[2, 9, 7] = np.nan
    with pytest.raises(InvalidInputError, match=r"matrices: subject 2 .*\(7, 9\)"):
        rsa(pixels92, bad, "dissimilarity")


def test_non_square_matrix_is_rejected(pixels92: np.ndarray) -> None:
    with pytest.raises(InvalidInputError, match="matrices: has shape"):
        rsa(pixels92, np.zeros((92, 91)), "dissimilarity")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"method": "kendall"}, "method"),
        ({"rdm_metric": "dot"}, "rdm_metric"),
        ({"matrix_kind": "distance"}, "matrix_kind"),
        ({"n_bootstrap": -1}, "n_bootstrap"),
        ({"confidence": 1.5}, "confidence"),
    ],
)
def test_bad_options_name_their_field(
    pixels92: np.ndarray, mur92: np.ndarray, kwargs: dict[str, object], field: str
) -> None:
    args = {"matrix_kind": "dissimilarity", **kwargs}
    with pytest.raises(InvalidInputError) as err:
        rsa(pixels92, mur92, **args)  # type: ignore[arg-type]
    assert err.value.field == field


def test_compare_rdms_rejects_different_sizes() -> None:
    with pytest.raises(InvalidInputError, match="b: has 3 pairs"):
        compare_rdms(np.ones((4, 4)) - np.eye(4), np.ones((3, 3)) - np.eye(3))


def test_upper_triangle_excludes_diagonal() -> None:
    M = np.arange(16.0).reshape(4, 4)
    assert upper_triangle(M).tolist() == [1.0, 2.0, 3.0, 6.0, 7.0, 11.0]


# -- split halves, paired differences (issue 11) -------------------------------------------


def test_single_peterson_matrix_gets_spearman_brown_ceiling_from_its_halves(
    peterson: dict[str, np.ndarray],
) -> None:
    from align.metrics.rsa import split_half_ceiling

    halves = np.stack([peterson["simMatrixFirstBatch"], peterson["simMatrixSecondBatch"]])
    nc = split_half_ceiling(halves, "pearson", matrix_kind="similarity")
    r = ss.pearsonr(_tri(halves[0]), _tri(halves[1]))[0]
    assert nc.lower == nc.upper == pytest.approx(2 * r / (1 + r), abs=1e-12)
    assert round(r, 2) == 0.91  # PROVENANCE: split-half r = 0.91
    rng = np.random.default_rng(0)
    X = rng.normal(size=(halves.shape[1], 5))
    full = peterson["simMatrix"].astype(np.float64)
    with_halves = rsa(X, full, "similarity", "pearson", n_bootstrap=0, split_halves=halves)
    assert with_halves.noise_ceiling == nc and with_halves.group is None
    assert with_halves.scale == "group matrix"
    assert rsa(X, full, "similarity", "pearson", n_bootstrap=0).noise_ceiling is None


def test_paired_rsa_delta_equals_naive_paired_rebuild(
    pixels92: np.ndarray, mur92: np.ndarray
) -> None:
    from align.metrics.rsa import paired_rsa_delta

    X_a = pixels92[:30]
    X_b = np.sqrt(pixels92[:30])  # another real feature set of the same stimuli
    human = mur92[:3, :30, :30]
    res = paired_rsa_delta(X_a, X_b, human, n_bootstrap=25, seed=3)
    a = rsa(X_a, human, n_bootstrap=0).score
    b = rsa(X_b, human, n_bootstrap=0).score
    assert res.a == pytest.approx(a, abs=1e-12) and res.b == pytest.approx(b, abs=1e-12)
    assert res.delta == pytest.approx(b - a, abs=1e-12)
    diff = _naive_bootstrap(X_b, human, "spearman", 25, 3) - _naive_bootstrap(
        X_a, human, "spearman", 25, 3
    )
    assert res.ci_delta == pytest.approx(tuple(np.quantile(diff, [0.025, 0.975])), abs=1e-9)


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_bootstrap_with_ties_and_degenerate_resamples_equals_naive_rebuild(method: str) -> None:
    # 5 stimuli: two identical feature rows, three orthogonal ones (equidistant) and
    # integer human dissimilarities give tied pair values on both sides; with 5 draws
    # many resamples hold 1-2 distinct stimuli, or only the 3 equidistant ones (the
    # model side constant, the human side not): no correlation, left out of the interval.
    X = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 1, 0]])
    rng = np.random.default_rng(4)
    H = rng.integers(1, 4, size=(2, 5, 5)).astype(np.float64)
    H = H + H.transpose(0, 2, 1)
    H[:, np.arange(5), np.arange(5)] = 0.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = _naive_bootstrap(X, H, method, 400, seed=3)
    assert np.isnan(naive).any()  # degenerate resamples happen
    for confidence in (0.95, 0.5, 0.2):
        result = rsa(X, H, method=method, n_bootstrap=400, confidence=confidence, seed=3)
        tail = (1 - confidence) / 2
        assert result.ci is not None
        assert result.ci == pytest.approx(tuple(np.nanquantile(naive, [tail, 1 - tail])), abs=1e-9)


@pytest.mark.parametrize("method", ["spearman", "pearson", "kendall_tau_a"])
def test_bootstrap_with_a_constant_human_side_in_some_resamples_equals_naive_rebuild(
    method: str,
) -> None:
    # 4 stimuli; the human dissimilarities among stimuli 0, 1, 2 are all 1.0 and those
    # to stimulus 3 differ: every resample without stimulus 3 has a constant human side
    # (and a varying model side), no correlation there (NaN, left out), as scipy says
    X = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.1, 0.2, 1.0], [0.5, 0.5, 0.5]])
    H = np.ones((4, 4))
    H[3, :3] = H[:3, 3] = [2.0, 3.0, 5.0]
    H[np.arange(4), np.arange(4)] = 0.0
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = _naive_bootstrap(X, H, method, 300, seed=2)
    result = rsa(X, H, method=method, n_bootstrap=300, seed=2)
    assert result.options["n_bootstrap_valid"] == int(np.isfinite(naive).sum()) < 300
    assert result.ci is not None
    assert result.ci == pytest.approx(tuple(np.nanquantile(naive, [0.025, 0.975])), abs=1e-9)


def test_ceilings_record_the_method_and_pooling_they_used() -> None:
    from align.metrics.rsa import split_half_ceiling

    rng = np.random.default_rng(8)
    A = rng.random((3, 6, 6))
    A = A + A.transpose(0, 2, 1)
    A[:, np.arange(6), np.arange(6)] = 0.0
    for method in ("pearson", "kendall_tau_a"):
        nc = rsa_noise_ceiling(A, method, pooling="normalized")
        assert (nc.method, nc.pooling, nc.n_subjects) == (method, "normalized", 3)
        sh = split_half_ceiling(A[:2], method)
        assert (sh.method, sh.pooling, sh.n_subjects) == (method, "split-half", 2)


@pytest.mark.parametrize("pooling", ["mean", "normalized"])
def test_noise_ceiling_is_refused_when_one_leave_one_out_mean_is_constant(pooling: str) -> None:
    # subjects 0 and 1 add up to a constant: the mean of the others of subject 2 is
    # constant, so its lower bound (a Spearman correlation with a constant) does not
    # exist, while every upper bound does; ranks of a and 3 - a add up to a constant too
    rng = np.random.default_rng(9)
    iu = np.triu_indices(5, 1)
    a = rng.random(iu[0].size)
    vecs = [a, 3.0 - a, rng.random(iu[0].size)]
    M = np.zeros((3, 5, 5))
    for k, v in enumerate(vecs):
        M[k][iu] = v
        M[k] = M[k] + M[k].T
    with pytest.raises(NumericalError, match="noise ceiling is undefined"):
        rsa_noise_ceiling(M, "spearman", pooling=pooling)


def test_spearman_noise_ceiling_names_a_constant_subject() -> None:
    rng = np.random.default_rng(10)
    A = rng.random((2, 5, 5))
    A = A + A.transpose(0, 2, 1)
    A[1] = 1.0
    A[:, np.arange(5), np.arange(5)] = 0.0
    with pytest.raises(NumericalError, match="subject 1 has the same value for every pair"):
        rsa_noise_ceiling(A)


def _random_rdms(rng: np.random.Generator, s: int, n: int) -> np.ndarray:
    A = rng.random((s, n, n))
    A = A + A.transpose(0, 2, 1)
    A[:, np.arange(n), np.arange(n)] = 0.0
    return A


def test_rsa_fields_defaults_and_normalisation_by_the_ceiling() -> None:
    from align.metrics.rsa import split_half_ceiling

    rng = np.random.default_rng(11)
    X = rng.normal(size=(6, 4))
    iu = np.triu_indices(6, 1)
    model = pdist(X, "cosine")
    H = _random_rdms(rng, 1, 6) + 0.3 * _random_rdms(rng, 2, 6)  # two noisy subjects
    # one matrix, every default: spearman, cosine, 1000 resamples, seed 0, 95 %
    one = rsa(X, H[0])
    assert (one.method, one.rdm_metric, one.human_kind, one.converted) == (
        "spearman",
        "cosine",
        "dissimilarity",
        False,
    )
    assert (one.n_bootstrap, one.seed, one.confidence, one.n_subjects) == (1000, 0, 0.95, 1)
    assert one.score == pytest.approx(ss.spearmanr(model, H[0][iu]).statistic)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive = _naive_bootstrap(X, H[0], "spearman", 1000, seed=0)
    assert one.options == {
        "ceiling_pooling": "mean",
        "n_bootstrap_valid": int(np.isfinite(naive).sum()),
        "ci_kind": "percentile, stimuli resampled, subjects fixed",
    }
    assert one.ci == pytest.approx(tuple(np.nanquantile(naive, [0.025, 0.975])), abs=1e-9)
    assert one.noise_ceiling is None and one.normalized is None and one.normalized_upper is None
    assert one.group is None and one.per_subject is None and one.scale == "group matrix"
    # no resamples: no interval; one resample: an interval of one value
    none = rsa(X, H, method="pearson", rdm_metric="euclidean", n_bootstrap=0, seed=4)
    assert none.ci is None and none.group is not None and none.group.ci is None
    assert none.options["n_bootstrap_valid"] == 0
    assert (none.method, none.rdm_metric, none.n_bootstrap, none.seed) == (
        "pearson",
        "euclidean",
        0,
        4,
    )
    single = rsa(X, H[0], n_bootstrap=1, confidence=0.5, seed=3)
    value = _naive_bootstrap(X, H[0], "spearman", 1, seed=3)[0]
    assert np.isfinite(value)
    assert single.ci == pytest.approx((value, value)) and single.confidence == 0.5
    assert single.options["n_bootstrap_valid"] == 1
    # two subjects: the mean over subjects, the leave-one-out ceiling and its ratios, and
    # the group interval from the same resamples against the subject-mean RDM
    two = rsa(X, H, n_bootstrap=50, seed=5)
    per = [ss.spearmanr(model, h[iu]).statistic for h in H]
    assert two.score == pytest.approx(np.mean(per)) and two.per_subject == pytest.approx(per)
    nc = rsa_noise_ceiling(H)
    assert two.noise_ceiling == nc and nc.lower > 0
    assert two.normalized == pytest.approx(two.score / nc.lower)
    assert two.normalized_upper == pytest.approx(two.score / nc.upper)
    assert two.scale == "mean over subjects" and two.n_subjects == 2
    assert two.group is not None and two.group.ci is not None
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        naive_group = _naive_bootstrap(X, H.mean(axis=0), "spearman", 50, seed=5)
    assert two.group.ci == pytest.approx(tuple(np.nanquantile(naive_group, [0.025, 0.975])))
    # a missing stimulus: the split halves lose it too
    Xm = X.copy()
    Xm[2] = np.nan
    halves = _random_rdms(rng, 2, 6) + H[0]
    with pytest.warns(UserWarning, match="dropped 1 missing"):
        res = rsa(Xm, H[0], split_halves=halves, n_bootstrap=0)
    keep = [0, 1, 3, 4, 5]
    expected = split_half_ceiling(halves[:, keep][:, :, keep])
    assert res.noise_ceiling == expected and res.n_dropped == 1 and res.n_stimuli == 5
    assert res.normalized == pytest.approx(res.score / expected.lower)


def test_rsa_has_no_normalised_score_when_the_ceiling_is_zero() -> None:
    # split halves whose pair values (and ranks) are uncorrelated, r = 0 exactly: the
    # Spearman-Brown ceiling is 0, and a score divided by it is not reported
    x = np.array([3.0, 1.0, 3.0, 1.0, 2.0, 2.0])
    y = np.array([3.0, 3.0, 1.0, 1.0, 2.0, 2.0])
    assert ss.spearmanr(x, y).statistic == 0.0 and ss.pearsonr(x, y).statistic == 0.0
    halves = np.stack([squareform(x), squareform(y)])
    X = np.random.default_rng(12).normal(size=(4, 3))
    res = rsa(X, squareform(x + y), split_halves=halves, n_bootstrap=0)
    assert res.noise_ceiling is not None and res.noise_ceiling.lower == 0.0
    assert res.normalized is None and res.normalized_upper is None
