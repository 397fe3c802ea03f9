"""Known answers for the science core, computed independently of the implementation.

Each test states one behaviour with a number derived here from the rule text (an
analytical distribution, a numpy objective written from METHODS.md, the optimality
condition of the stated objective), never the implementation's own output. Each was
checked by planting the wrong implementation it names and watching it fail
(docs/mutation-report.md lists planted bug -> failing test).

Everything goes through the public API (``align.metrics...``) so it survives refactors
of the modules behind it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from align.metrics.oddoneout import anchor_accuracy, odd_one_out
from align.metrics.rsa import rsa
from align.metrics.wordsim import word_similarity
from scipy import stats

# --------------------------------------------------------------------------- helpers


def repeated_triplets(n_distinct: int, reps: int, n_correct: int) -> tuple[np.ndarray, np.ndarray]:
    """Features and responses: ``n_distinct`` distinct triplets over disjoint objects,
    each answered ``reps`` times, all answers to one triplet the same; the model gets the
    first ``n_correct`` distinct triplets right and the others wrong (no ties).

    Per distinct triplet (objects 3g, 3g+1, 3g+2): features make (3g, 3g+1) the most
    similar pair, so the model's odd one out is 3g+2. A "correct" triplet's responses say
    3g+2, a "wrong" one's say 3g.
    """
    rows = []
    X = np.zeros((3 * n_distinct, 2))
    for g in range(n_distinct):
        a, b, c = 3 * g, 3 * g + 1, 3 * g + 2
        X[a] = [1.0, 0.0]
        X[b] = [0.9, 0.1]
        X[c] = [0.0, 1.0]
        row = [a, b, c] if g < n_correct else [b, c, a]
        rows += [row] * reps
    return X, np.asarray(rows, dtype=np.int64)


def binomial_mean_quantiles(n: int, p: float, q: float) -> float:
    """The q-quantile of Binomial(n, p) / n (the resampled mean of n 0/1 units)."""
    return float(stats.binom.ppf(q, n, p) / n)


# --------------------------------------------------------------------------- bootstrap unit


def test_odd_one_out_ci_resamples_distinct_triplets_not_responses() -> None:
    # 10 distinct triplets, 20 identical responses each, 5 of 10 right: the independent
    # unit is the distinct triplet, so a resample's accuracy is Binomial(10, 0.5) / 10
    # (every group has the same size). Its 2.5 % / 97.5 % quantiles are 0.2 and 0.8.
    # Resampling the 200 responses instead would give Binomial(200, 0.5) / 200, whose
    # quantiles are about 0.43 and 0.57.
    X, T = repeated_triplets(10, 20, 5)
    r = odd_one_out(X, T, n_bootstrap=4000, seed=3)
    assert r.accuracy == 0.5 and r.n_responses == 200 and r.n_distinct == 10
    assert r.ci is not None
    lo, hi = r.ci
    assert binomial_mean_quantiles(10, 0.5, 0.025) == pytest.approx(0.2)
    assert 0.1 <= lo <= 0.2 + 1e-12
    assert 0.8 - 1e-12 <= hi <= 0.9
    # the response-level interval would be far narrower: make sure we are not near it
    assert hi - lo > 2 * (
        binomial_mean_quantiles(200, 0.5, 0.975) - binomial_mean_quantiles(200, 0.5, 0.025)
    )


def test_majority_variant_ci_is_over_distinct_triplets() -> None:
    X, T = repeated_triplets(10, 20, 5)
    r = odd_one_out(X, T, variant="majority", n_bootstrap=4000, seed=3)
    assert r.accuracy == 0.5 and r.n_triplets == 10
    assert r.ci is not None
    assert 0.1 <= r.ci[0] <= 0.2 + 1e-12 and 0.8 - 1e-12 <= r.ci[1] <= 0.9


def test_single_responses_ci_matches_the_binomial_quantiles() -> None:
    # 400 distinct triplets answered once, 200 right: the resampled accuracy is
    # Binomial(400, 0.5) / 400 with 2.5 % / 97.5 % quantiles 0.45 / 0.55 (+- one step).
    X, T = repeated_triplets(400, 1, 200)
    r = odd_one_out(X, T, n_bootstrap=4000, seed=1)
    assert r.ci is not None
    lo_ref = binomial_mean_quantiles(400, 0.5, 0.025)
    hi_ref = binomial_mean_quantiles(400, 0.5, 0.975)
    assert r.ci[0] == pytest.approx(lo_ref, abs=0.0051)
    assert r.ci[1] == pytest.approx(hi_ref, abs=0.0051)


# --------------------------------------------------------------------------- confidence


@pytest.mark.parametrize("confidence", [0.5, 0.8, 0.99])
def test_odd_one_out_interval_has_the_requested_confidence(confidence: float) -> None:
    X, T = repeated_triplets(400, 1, 200)
    r = odd_one_out(X, T, n_bootstrap=4000, seed=2, confidence=confidence)
    assert r.ci is not None and r.confidence == confidence
    tail = (1 - confidence) / 2
    lo_ref = binomial_mean_quantiles(400, 0.5, tail)
    hi_ref = binomial_mean_quantiles(400, 0.5, 1 - tail)
    assert r.ci[0] == pytest.approx(lo_ref, abs=0.0051)
    assert r.ci[1] == pytest.approx(hi_ref, abs=0.0051)


def test_anchor_interval_has_the_requested_confidence() -> None:
    # anchor (a, b, c): correct when s(a, b) > s(a, c). 200 of 400 right.
    X, T = repeated_triplets(400, 1, 200)
    anchor = T[:, [0, 1, 2]].copy()
    # correct rows [a, b, c] (b closer to a); wrong rows were [b, c, a]: anchor b, c is
    # farther from b than a is -> wrong.
    r50 = anchor_accuracy(X, anchor, n_bootstrap=4000, seed=2, confidence=0.5)
    r99 = anchor_accuracy(X, anchor, n_bootstrap=4000, seed=2, confidence=0.99)
    assert r50.accuracy == 0.5
    assert r50.ci is not None and r99.ci is not None
    assert r50.ci[0] == pytest.approx(binomial_mean_quantiles(400, 0.5, 0.25), abs=0.0051)
    assert r99.ci[0] == pytest.approx(binomial_mean_quantiles(400, 0.5, 0.005), abs=0.0051)


def _wordsim_data(n: int = 60, seed: int = 0):
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(2 * n)]
    E = rng.normal(size=(2 * n, 8))
    pairs = [(f"w{2 * i}", f"w{2 * i + 1}") for i in range(n)]
    cos = np.array(
        [
            E[2 * i] @ E[2 * i + 1] / np.linalg.norm(E[2 * i]) / np.linalg.norm(E[2 * i + 1])
            for i in range(n)
        ]
    )
    scores = cos + rng.normal(scale=0.5, size=n)
    return E, words, pairs, scores, cos


def _naive_wordsim_ci(cos, scores, confidence, n_boot=4000, seed=123):
    """Percentile bootstrap of Spearman over pairs, a plain loop (independent RNG)."""
    rng = np.random.default_rng(seed)
    n = len(cos)
    boot = []
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        boot.append(stats.spearmanr(cos[idx], scores[idx]).statistic)
    tail = (1 - confidence) / 2
    return np.quantile(boot, [tail, 1 - tail])


@pytest.mark.parametrize("confidence", [0.5, 0.95])
def test_word_similarity_interval_matches_a_naive_bootstrap(confidence: float) -> None:
    E, words, pairs, scores, cos = _wordsim_data()
    r = word_similarity(E, words, pairs, scores, n_bootstrap=4000, confidence=confidence)
    assert r.spearman == pytest.approx(stats.spearmanr(cos, scores).statistic)
    ref = _naive_wordsim_ci(cos, scores, confidence)
    assert r.ci is not None
    # Monte-Carlo error of a percentile with 4000 resamples is ~0.01 here.
    assert r.ci[0] == pytest.approx(ref[0], abs=0.03)
    assert r.ci[1] == pytest.approx(ref[1], abs=0.03)


def test_word_similarity_interval_follows_its_seed() -> None:
    E, words, pairs, scores, _ = _wordsim_data()
    a = word_similarity(E, words, pairs, scores, n_bootstrap=200, seed=1)
    b = word_similarity(E, words, pairs, scores, n_bootstrap=200, seed=1)
    c = word_similarity(E, words, pairs, scores, n_bootstrap=200, seed=2)
    assert a.ci == b.ci  # same seed, same interval
    assert a.ci != c.ci  # another seed draws other resamples (continuous data)


def test_rsa_interval_has_the_requested_confidence() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 5))
    human = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1)) + rng.uniform(0, 2, (30, 30))
    human = (human + human.T) / 2
    np.fill_diagonal(human, 0)
    wide = rsa(X, human, n_bootstrap=500, seed=4, confidence=0.95)
    narrow = rsa(X, human, n_bootstrap=500, seed=4, confidence=0.5)
    assert wide.ci is not None and narrow.ci is not None
    assert wide.ci[0] < narrow.ci[0] < narrow.ci[1] < wide.ci[1]
    other = rsa(X, human, n_bootstrap=500, seed=5, confidence=0.95)
    assert other.ci != wide.ci


# --------------------------------------------------------------------------- probe objective


def _numpy_objective(X, T, W, reg, reg_kind, normalize, b=None):
    """The probe objective written from METHODS.md section 3, in numpy (float64)."""
    Xs = (X - X.mean()) / X.std()
    E = Xs @ W
    if b is not None:
        E = E + b
    if normalize:
        E = E / np.linalg.norm(E, axis=1, keepdims=True)
    a, bb, c = E[T[:, 0]], E[T[:, 1]], E[T[:, 2]]
    S = np.stack([(a * bb).sum(1), (a * c).sum(1), (bb * c).sum(1)], axis=1)
    ce = float(np.mean(np.log(np.exp(S).sum(1)) - S[:, 0]))
    if reg_kind == "frobenius":
        pen = float(np.sqrt((W**2).sum()))
    elif reg_kind == "squared":
        pen = float((W**2).sum())
    else:
        pen = float(((W - np.mean(np.diag(W)) * np.eye(W.shape[0])) ** 2).sum())
    return ce + reg * pen


def _torch_objective_grad(X, T, W, reg, reg_kind, normalize):
    """Gradient of the same objective (autograd on an independent torch rewrite)."""
    import torch

    Xs = torch.as_tensor((X - X.mean()) / X.std())
    Wt = torch.as_tensor(W).clone().requires_grad_(True)
    E = Xs @ Wt
    if normalize:
        E = E / E.norm(dim=1, keepdim=True)
    t = torch.as_tensor(T)
    a, b, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack(((a * b).sum(1), (a * c).sum(1), (b * c).sum(1)), 1)
    ce = (torch.logsumexp(S, 1) - S[:, 0]).mean()
    if reg_kind == "frobenius":
        pen = torch.sqrt((Wt**2).sum())
    elif reg_kind == "squared":
        pen = (Wt**2).sum()
    else:
        pen = ((Wt - torch.diagonal(Wt).mean() * torch.eye(W.shape[0], dtype=Wt.dtype)) ** 2).sum()
    (ce + reg * pen).backward()
    assert Wt.grad is not None
    return Wt.grad.numpy()


def probe_data(n: int = 24, p: int = 5, m: int = 120, seed: int = 0):
    """Features with structure and triplets whose human pair is the model's closest
    pair under a hidden transform, with 20 % label noise (a learnable, non-trivial task)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p)) * 2.0 + 0.5
    M = rng.normal(size=(p, p))
    Z = X @ M
    trips = []
    while len(trips) < m:
        a, b, c = rng.choice(n, 3, replace=False)
        s = {(a, b): Z[a] @ Z[b], (a, c): Z[a] @ Z[c], (b, c): Z[b] @ Z[c]}
        pair = max(s, key=s.get)
        odd = ({a, b, c} - set(pair)).pop()
        if rng.random() < 0.2:
            pair = (pair[0], odd)
            odd = ({a, b, c} - set(pair)).pop()
        trips.append([pair[0], pair[1], odd])
    return X, np.asarray(trips, dtype=np.int64)


@pytest.mark.parametrize("reg_kind", ["frobenius", "squared", "identity"])
@pytest.mark.parametrize("normalize", [False, True])
def test_probe_first_objective_is_the_stated_loss_at_the_initial_weights(
    reg_kind: str, normalize: bool
) -> None:
    # init="identity": W0 = tau * I, known without the implementation. The first entry
    # of loss_curve_ is the L-BFGS objective at W0 (n_objects > p: nothing is reduced).
    from align.metrics.probe import TripletProbe

    X, T = probe_data()
    tau, reg = 0.7, 0.5
    probe = TripletProbe(
        reg=reg, reg_kind=reg_kind, init="identity", tau=tau, normalize=normalize, max_iter=3
    ).fit(X, T)
    W0 = tau * np.eye(X.shape[1])
    expected = _numpy_objective(X, T, W0, reg, reg_kind, normalize)
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    ("reg_kind", "reg"), [("frobenius", 0.05), ("squared", 0.05), ("identity", 0.3)]
)
def test_fitted_probe_is_a_stationary_point_of_the_stated_objective(
    reg_kind: str, reg: float
) -> None:
    # The optimum of CE + reg * R(W) has zero gradient; R is written here from the rule
    # text (unsquared ||W||_F, squared ||W||_F^2, identity: sum((W - mean(diag W) I)^2)),
    # so a probe that minimised another penalty is far from stationary for this one
    # (measured: >= 1e-2 for each wrong penalty, ~1e-7 for the right one). Identity init:
    # W = 0 is a local minimum of the unsquared penalty (the loss is flat to first order
    # there), so a normal init near 0 would collapse to it. normalize=False: with cosine
    # similarities the objective is scale-free and the optimum degenerates.
    from align.metrics.probe import TripletProbe

    X, T = probe_data()
    probe = TripletProbe(reg=reg, reg_kind=reg_kind, init="identity", tol=1e-12, max_iter=2000).fit(
        X, T
    )
    W = probe.weights_
    assert np.sqrt((W**2).sum()) > 0.5  # not collapsed to the kink at 0
    g = _torch_objective_grad(X, T, W, reg, reg_kind, False)
    assert np.abs(g).max() < 1e-4, np.abs(g).max()
    # and the penalty matters at this reg: the unpenalised gradient is far from zero
    g0 = _torch_objective_grad(X, T, W, 0.0, reg_kind, False)
    assert np.abs(g0).max() > 1e-2


def test_probe_transform_normalises_rows_only_when_asked() -> None:
    from align.metrics.probe import TripletProbe

    X, T = probe_data()
    E = TripletProbe(reg=0.1, normalize=True, init="identity").fit(X, T).transform(X)
    np.testing.assert_allclose(np.linalg.norm(E, axis=1), 1.0, rtol=1e-12)


def test_adam_stops_early_and_keeps_the_best_validation_weights() -> None:
    # Validation triplets that contradict the training ones (same objects, the human
    # pair swapped with the odd one out): every epoch of training makes them worse, so
    # the best validation loss is after epoch 1, early stopping ends the run after
    # 1 + patience epochs, and the weights returned are those of epoch 1.
    from align.metrics.probe import TripletProbe

    X, T = probe_data(m=200)
    V = T[:, [0, 2, 1]]  # pair (a, c), odd one out b
    patience = 3
    probe = TripletProbe(
        reg=0.0, optimizer="adam", lr=0.05, batch_size=32, patience=patience, max_iter=60
    ).fit(X, T, val_triplets=V)
    curve = np.asarray(probe.val_curve_)
    assert np.all(np.diff(curve) > 0), curve  # the premise: validation only gets worse
    assert probe.n_iter_ == 1 + patience
    assert len(curve) == 1 + patience
    assert probe.loss(X, V) == pytest.approx(curve[0], rel=1e-9)


def test_adam_without_validation_data_runs_all_epochs() -> None:
    from align.metrics.probe import TripletProbe

    X, T = probe_data(m=8)  # < 10 triplets: nothing is held back for early stopping
    probe = TripletProbe(reg=0.0, optimizer="adam", max_iter=7).fit(X, T)
    assert probe.n_iter_ == 7 and probe.val_curve_ == []


# --------------------------------------------------------------------------- probe CV


def test_cross_validation_picks_lambda_by_held_out_not_training_loss() -> None:
    # Random features and random triplets: nothing generalises. The training loss always
    # prefers the smallest lambda (it can fit noise); the held-out loss prefers the
    # largest, where the unsquared penalty drives W to ~0 and every triplet gets
    # probability 1/3, held-out cross-entropy log 3 exactly.
    from align.metrics.probe import TripletProbe, cross_validate_probe

    rng = np.random.default_rng(0)
    n, p = 30, 12
    X = rng.normal(size=(n, p))
    T = np.array([rng.choice(n, 3, replace=False) for _ in range(150)])
    lambdas = (10.0, 1e-4)
    res = cross_validate_probe(X, T, lambdas=lambdas, k=3, seed=0)
    assert res.lambda_ == 10.0
    assert res.cross_entropy == pytest.approx(math.log(3), abs=1e-3)
    # the premise: on the TRAINING triplets the small lambda is better
    train_ce = {
        lam: TripletProbe(reg=lam, seed=0).fit(X, T).loss(X, T) - math.log(3) for lam in lambdas
    }
    assert train_ce[1e-4] < train_ce[10.0] - 0.05
    # the mean held-out cross-entropy of the small lambda is worse than log 3
    small = next(row for row in res.cv if row["lambda"] == 1e-4)
    assert small["cross_entropy"] > math.log(3) + 0.05


def test_refit_probe_is_fitted_on_all_triplets() -> None:
    # squared penalty: the unsquared one at this size collapses W to ~0 whatever the data
    from align.metrics.probe import TripletProbe, cross_validate_probe

    X, T = probe_data(m=150)
    res = cross_validate_probe(X, T, lambdas=(0.05,), k=3, seed=0, reg_kind="squared")
    assert res.probe is not None
    alone = TripletProbe(reg=0.05, reg_kind="squared", seed=0).fit(X, T)
    np.testing.assert_allclose(res.probe.weights_, alone.weights_, rtol=1e-6, atol=1e-9)
    # a probe fitted on a third of the triplets is measurably different
    third = TripletProbe(reg=0.05, reg_kind="squared", seed=0).fit(X, T[: len(T) // 3])
    assert np.abs(third.weights_ - alone.weights_).max() > 1e-2


# --------------------------------------------------------------------------- gLocal


def _local_loss_np(Xs: np.ndarray, E: np.ndarray, temperature: float) -> float:
    def logits(Z):
        U = Z / np.linalg.norm(Z, axis=1, keepdims=True)
        L = U @ U.T / temperature
        np.fill_diagonal(L, -np.inf)
        return L

    Lp, Lq = logits(Xs), logits(E)
    P = np.exp(Lp - Lp.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    logq = Lq - Lq.max(1, keepdims=True)
    logq = logq - np.log(np.exp(logq).sum(1, keepdims=True))
    np.fill_diagonal(logq, 0.0)
    return float(-(P * logq).sum(1).mean())


@pytest.mark.parametrize(
    ("alpha", "optimizer"), [(0.25, "lbfgs"), (0.5, "lbfgs"), (0.9, "lbfgs"), (0.5, "adam")]
)
def test_glocal_first_objective_weighs_global_and_local_by_alpha(
    alpha: float, optimizer: str
) -> None:
    # total = (1 - alpha) CE + alpha L_local + reg R(W), at W0 = tau I, one local batch
    # (local_batch_size >= rows), written here in numpy from the gLocal paper's formula.
    from align.metrics.glocal import GLocalProbe

    X, T = probe_data()
    rng = np.random.default_rng(5)
    L = rng.normal(size=(40, X.shape[1]))
    tau, reg, temp = 0.8, 0.2, 0.5
    probe = GLocalProbe(
        alpha=alpha,
        temperature=temp,
        local_batch_size=64,
        reg=reg,
        init="identity",
        tau=tau,
        max_iter=2,
        optimizer=optimizer,
        batch_size=1024,  # Adam: one batch, so its first loss is the objective at W0
        val_fraction=0.0,  # (and every triplet in it)
    ).fit(X, T, X_local=L)
    W0 = tau * np.eye(X.shape[1])
    ce_and_pen = _numpy_objective(X, T, W0, reg, "frobenius", False)
    pen = reg * float(np.sqrt((W0**2).sum()))
    ce = ce_and_pen - pen
    Ls = (L - X.mean()) / X.std()  # the probe's own standardisation of X
    local = _local_loss_np(Ls, Ls @ W0, temp)
    expected = (1 - alpha) * ce + alpha * local + pen
    assert probe.loss_curve_[0] == pytest.approx(expected, rel=1e-9)


def test_glocal_with_alpha_one_ignores_the_triplet_labels() -> None:
    # alpha = 1: the objective is alpha L_local + reg R(W); the labels have weight
    # (1 - alpha) = 0, so swapping every human answer changes nothing.
    from align.metrics.glocal import GLocalProbe

    X, T = probe_data()
    L = np.random.default_rng(6).normal(size=(30, X.shape[1]))
    kw = dict(alpha=1.0, temperature=0.5, local_batch_size=64, reg=0.01, max_iter=50)
    a = GLocalProbe(**kw).fit(X, T, X_local=L)
    b = GLocalProbe(**kw).fit(X, T[:, [0, 2, 1]], X_local=L)
    np.testing.assert_array_equal(a.weights_, b.weights_)


# --------------------------------------------------------------------------- word similarity


def _cos(u: np.ndarray, v: np.ndarray) -> float:
    return float(u @ v / np.linalg.norm(u) / np.linalg.norm(v))


def test_word_similarity_fields_are_the_stated_numbers() -> None:
    # 3 covered pairs (the minimum for a correlation), one of them using the
    # alphabetically first word, human scores spanning less than 1, a homonym listed
    # twice (mean of its rows), and one uncovered pair.
    words = ["ant", "bee", "cat", "dog", "dog", "eel"]
    E = np.array([[1.0, 0.0], [0.9, 0.3], [0.2, 1.0], [0.0, 1.0], [1.0, 1.0], [0.5, 0.5]])
    dog = (E[3] + E[4]) / 2
    pairs = [("bee", "ant"), ("cat", "dog"), ("eel", "bee"), ("ant", "yak")]
    scores = [0.9, 0.5, 0.2, 0.1]
    r = word_similarity(E, words, pairs, scores)
    sims = [_cos(E[1], E[0]), _cos(E[2], dog), _cos(E[5], E[1])]
    assert r.n_pairs == 4 and r.n_covered == 3 and r.coverage == 0.75
    assert r.n_words_missing == 1 and r.missing_words == ("yak",)
    assert r.n_ambiguous_words == 1
    assert r.spearman == pytest.approx(stats.spearmanr(sims, scores[:3]).statistic)
    assert r.pearson == pytest.approx(stats.pearsonr(sims, scores[:3]).statistic)
    assert r.similarity == "cosine"
    assert (r.n_bootstrap, r.confidence, r.seed) == (1000, 0.95, 0)  # the defaults
    assert r.ci is not None
    explicit = word_similarity(E, words, pairs, scores, n_bootstrap=1000, seed=0)
    assert explicit.ci == r.ci


def test_word_similarity_is_undefined_for_constant_scores() -> None:
    words = ["a", "b", "c", "d"]
    E = np.array([[1.0, 0.0], [0.9, 0.3], [0.2, 1.0], [0.0, 1.0]])
    pairs = [("a", "b"), ("b", "c"), ("c", "d")]
    r = word_similarity(E, words, pairs, [2.0, 2.0, 2.0])
    assert r.spearman is None and r.pearson is None and r.ci is None
    assert r.n_covered == 3


def test_word_similarity_bootstrap_in_blocks_gives_a_valid_interval() -> None:
    # Many covered pairs: the resamples are drawn in several blocks (bounded memory);
    # every resample statistic is a Spearman correlation in [-1, 1] and the interval
    # brackets the estimate.
    rng = np.random.default_rng(0)
    n = 70_000  # 2_000_000 // n = 28 resamples per block
    words = [f"w{i}" for i in range(2 * n)]
    E = rng.normal(size=(2 * n, 3))
    pairs = [(f"w{2 * i}", f"w{2 * i + 1}") for i in range(n)]
    cos = np.einsum("ij,ij->i", E[0::2], E[1::2]) / (
        np.linalg.norm(E[0::2], axis=1) * np.linalg.norm(E[1::2], axis=1)
    )
    scores = cos + rng.normal(scale=1.0, size=n)
    r = word_similarity(E, words, pairs, scores, n_bootstrap=60, seed=1)
    assert r.ci is not None and r.spearman is not None
    assert -1 <= r.ci[0] < r.spearman < r.ci[1] <= 1
    se = (1 - r.spearman**2) / np.sqrt(n)  # ~ standard error of a correlation
    assert r.ci[1] - r.ci[0] < 8 * se


# --------------------------------------------------------------------------- bootstrap_ci


def test_bootstrap_ci_draws_n_indices_in_range_and_follows_the_binomial() -> None:
    from align.metrics.bootstrap import bootstrap_ci

    values = np.r_[np.ones(200), np.zeros(200)]
    seen: list[np.ndarray] = []

    def mean(idx: np.ndarray) -> float:
        seen.append(idx)
        return float(values[idx].mean())

    ci = bootstrap_ci(mean, 400, n_bootstrap=2000, seed=5)
    assert len(seen) == 2000
    assert all(i.shape == (400,) and i.min() >= 0 and i.max() < 400 for i in seen)
    drawn = np.concatenate(seen)
    assert drawn.min() == 0 and drawn.max() == 399  # every item can be drawn
    assert ci is not None
    assert ci[0] == pytest.approx(binomial_mean_quantiles(400, 0.5, 0.025), abs=0.0051)
    assert ci[1] == pytest.approx(binomial_mean_quantiles(400, 0.5, 0.975), abs=0.0051)


def test_bootstrap_ci_defaults_and_seed() -> None:
    from align.metrics.bootstrap import bootstrap_ci

    calls = []
    vals = np.arange(10.0)

    def stat(idx: np.ndarray) -> float:
        calls.append(1)
        return float(vals[idx].mean())

    default = bootstrap_ci(stat, 10)
    assert len(calls) == 1000  # n_bootstrap defaults to 1000
    assert default == bootstrap_ci(stat, 10, n_bootstrap=1000, confidence=0.95, seed=0)
    assert bootstrap_ci(stat, 10, seed=3) == bootstrap_ci(stat, 10, seed=3)
    assert bootstrap_ci(stat, 10, seed=3) != bootstrap_ci(stat, 10, seed=4)
    assert bootstrap_ci(stat, 10, n_bootstrap=0) is None
    one = bootstrap_ci(stat, 10, n_bootstrap=1)  # one resample: a degenerate interval
    assert one is not None and one[0] == one[1]
    assert bootstrap_ci(lambda idx: 1.0, 1, n_bootstrap=5) == (1.0, 1.0)  # n = 1 is fine
    from align.errors import InvalidInputError

    for bad in (0, True, 2.0):
        with pytest.raises(InvalidInputError):
            bootstrap_ci(stat, bad)  # type: ignore[arg-type]


def test_bootstrap_ci_with_groups_draws_whole_groups() -> None:
    from align.metrics.bootstrap import bootstrap_ci

    # 5 groups of sizes 1..5, labelled out of order
    sizes = [3, 1, 5, 2, 4]
    groups = np.repeat(np.array([30, 10, 50, 20, 40]), sizes)
    members = {g: set(np.flatnonzero(groups == g)) for g in (10, 20, 30, 40, 50)}
    drawn_groups: list[list[int]] = []

    def stat(idx: np.ndarray) -> float:
        idx_set = list(idx)
        got = []
        # decompose the resample into whole groups
        counts = {g: sum(1 for i in idx_set if i in m) for g, m in members.items()}
        for g, c in counts.items():
            size = len(members[g])
            assert c % size == 0, "a group was split"
            got += [g] * (c // size)
        drawn_groups.append(got)
        return float(len(idx))

    ci = bootstrap_ci(stat, groups.size, groups=groups, n_bootstrap=400, seed=2)
    assert ci is not None
    assert all(len(g) == 5 for g in drawn_groups)  # as many groups as there are
    assert {g for d in drawn_groups for g in d} == {10, 20, 30, 40, 50}


# --------------------------------------------------------------------------- cluster bootstrap


def test_distinct_unit_rows_equal_numpy_unique() -> None:
    # The linear-time distinct rows must equal np.unique(axis=0) (values, order and
    # counts): the multinomial draws are matched to rows in that order.
    from align.metrics.bootstrap import _distinct_rows_counts

    rng = np.random.default_rng(0)
    cases = [
        np.stack([rng.integers(0, 4, 500), rng.integers(1, 6, 500)], 1).astype(float),
        np.stack([rng.integers(0, 3, 300) * 0.5, rng.integers(1, 3, 300)], 1).astype(float),
        np.stack(
            [rng.integers(-2, 2, 200), rng.integers(0, 2, 200), rng.integers(1, 4, 200)], 1
        ).astype(float),
        np.array([[0.0, 1.0]]),
        np.stack([rng.integers(0, 2**21, 50), np.ones(50)], 1).astype(float),
    ]
    for rows in cases:
        got, counts = _distinct_rows_counts(rows)
        ref, ref_counts = np.unique(rows, axis=0, return_counts=True)
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(counts, ref_counts)


def test_cluster_mean_multinomial_path_has_the_binomial_interval() -> None:
    # G * n_bootstrap above the explicit-resampling limit: the distinct-rows multinomial
    # shortcut. 10,000 units of size 2, half all right, half all wrong: a resampled mean
    # is Binomial(10000, 0.5) / 10000.
    from align.metrics.bootstrap import cluster_mean

    values = np.repeat(np.r_[np.ones(5000), np.zeros(5000)], 2)
    groups = np.repeat(np.arange(10_000), 2)
    r = cluster_mean(values, groups, n_bootstrap=2500, seed=1)
    assert r.value == 0.5 and r.n_units == 10_000 and r.n_values == 20_000
    assert r.ci is not None
    assert r.ci[0] == pytest.approx(binomial_mean_quantiles(10_000, 0.5, 0.025), abs=0.0015)
    assert r.ci[1] == pytest.approx(binomial_mean_quantiles(10_000, 0.5, 0.975), abs=0.0015)


# ------------------------------------------------------------------- bootstrap_mean_ci paths


def test_resample_indices_plain_and_grouped() -> None:
    from align.metrics.bootstrap import resample_indices

    rng = np.random.default_rng(0)
    draws = np.concatenate([resample_indices(rng, 7) for _ in range(300)])
    assert draws.size == 2100 and set(draws.tolist()) == set(range(7))
    groups = np.array([2, 2, 0, 1, 1, 1])
    for _ in range(200):
        idx = resample_indices(rng, 6, groups)
        labels, counts = np.unique(groups[idx], return_counts=True)
        size = {0: 1, 1: 3, 2: 2}
        assert all(c % size[g] == 0 for g, c in zip(labels.tolist(), counts.tolist(), strict=True))
        assert sum(c // size[g] for g, c in zip(labels.tolist(), counts.tolist(), strict=True)) == 3


@pytest.mark.parametrize(
    ("values", "groups", "expected"),
    [
        # two units: a resampled mean is lo, mid or hi with probability 1/4, 1/2, 1/4,
        # so the 95 % percentile interval is exactly (lo, hi)
        (np.array([0.25, 0.75]), None, (0.25, 0.75)),  # non-integer values, no groups
        (np.array([-0.5, 0.5]), None, (-0.5, 0.5)),  # negative values
        (np.array([0.25, 0.25, 0.75, 0.75]), np.array([0, 0, 1, 1]), (0.25, 0.75)),
        # large integer sums (codes above the bincount limit): 1000 and 3000 right of
        # 4000 responses each
        (
            np.r_[np.ones(1000), np.zeros(3000), np.ones(3000), np.zeros(1000)],
            np.repeat([0, 1], 4000),
            (0.25, 0.75),
        ),
    ],
)
def test_bootstrap_mean_ci_two_units_exact_interval(values, groups, expected) -> None:
    from align.metrics.bootstrap import bootstrap_mean_ci

    ci = bootstrap_mean_ci(values, groups=groups, n_bootstrap=2000, seed=0)
    assert ci == pytest.approx(expected, abs=1e-12)


# --------------------------------------------------------------------------- oddoneout API details


def test_pairwise_triplet_similarities_are_the_stated_formulas() -> None:
    from align.metrics.oddoneout import pairwise_triplet_similarities

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 4))
    X[5] = np.nan  # a missing stimulus
    T = np.array([[0, 1, 2], [3, 4, 0], [1, 5, 2]])

    def ref(kind: str) -> np.ndarray:
        def s(u, v):
            if kind == "dot":
                return u @ v
            if kind == "cosine":
                return u @ v / np.linalg.norm(u) / np.linalg.norm(v)
            return -np.linalg.norm(u - v)

        return np.array([[s(X[a], X[b]), s(X[a], X[c]), s(X[b], X[c])] for a, b, c in T[:2]])

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        default = pairwise_triplet_similarities(X, T)
        cosine = pairwise_triplet_similarities(X, T, similarity="cosine")
        for kind in ("cosine", "dot", "euclidean"):
            got = pairwise_triplet_similarities(X, T, similarity=kind)
            np.testing.assert_allclose(got[:2], ref(kind), rtol=1e-12)
            assert np.isnan(got[2]).all()  # touches the missing stimulus
    np.testing.assert_array_equal(default, cosine)  # cosine is the default


def test_noise_ceiling_rejects_what_is_not_triplets() -> None:
    from align.errors import InvalidInputError
    from align.metrics.oddoneout import loo_noise_ceiling, noise_ceiling

    for fn in (noise_ceiling, loo_noise_ceiling):
        with pytest.raises(InvalidInputError) as info:
            fn(np.array([[0, 1, 2]] * 2), convention="odd")  # type: ignore[arg-type]
        assert info.value.field == "convention"
        for bad in (np.empty((0, 3), dtype=np.int64), np.array([["a", "b", "c"]] * 2)):
            with pytest.raises(InvalidInputError):
                fn(bad)


def test_anchor_accuracy_defaults_and_given_ceiling() -> None:
    from align.metrics.oddoneout import anchor_accuracy

    X, T = repeated_triplets(40, 1, 30)
    r = anchor_accuracy(X, T)
    assert (r.n_bootstrap, r.seed, r.confidence, r.clip_normalized) == (1000, 0, 0.95, False)
    assert r == anchor_accuracy(X, T, n_bootstrap=1000, seed=0, clip_normalized=False)
    given = anchor_accuracy(X, T, ceiling=0.9)
    assert given.ceiling == 0.9 and given.ceiling_source == "given"
    assert given.normalized == pytest.approx((0.75 - 0.5) / (0.9 - 0.5))


def test_odd_one_out_defaults_ceiling_checks_ties_and_drops() -> None:
    import warnings

    from align.errors import InvalidInputError
    from align.metrics.oddoneout import MissingStimuliWarning

    X, T = repeated_triplets(30, 1, 20)
    r = odd_one_out(X, T)
    assert (r.n_bootstrap, r.seed) == (1000, 0)
    assert r == odd_one_out(X, T, n_bootstrap=1000, seed=0)
    # ceiling: (1/3, 1] only, no booleans
    assert odd_one_out(X, T, ceiling=1.0, n_bootstrap=0).ceiling == 1.0
    for bad in (True, 1 / 3, 1.5):
        with pytest.raises(InvalidInputError) as info:
            odd_one_out(X, T, ceiling=bad, n_bootstrap=0)
        assert info.value.field == "ceiling"
    # a full three-way tie is wrong even when the human's odd one out is object 1
    same = np.ones((3, 2))
    tie = odd_one_out(same, np.array([[0, 2, 1], [2, 0, 1]]), n_bootstrap=0)
    assert tie.accuracy == 0.0 and tie.n_full_ties == 2
    # a prediction of position 0 is not a tie
    X2 = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])  # pair (1, 2) closest: odd one 0
    no_tie = odd_one_out(X2, np.array([[1, 2, 0]]), n_bootstrap=0)
    assert no_tie.accuracy == 1.0 and no_tie.n_full_ties == 0
    # exactly one dropped response: scored on the others, and warned about
    Xm = np.vstack([X, np.full((1, 2), np.nan)])
    Tm = np.vstack([T, [[0, 1, Xm.shape[0] - 1]]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dropped = odd_one_out(Xm, Tm, n_bootstrap=0)
    assert any(issubclass(w.category, MissingStimuliWarning) for w in caught)
    assert dropped.n_dropped == 1 and dropped.n_responses == len(T)
    assert dropped.accuracy == r.accuracy
    # distinct triplets answered exactly twice are repeated: cluster unit, data ceiling
    X3, T3 = repeated_triplets(20, 2, 10)
    twice = odd_one_out(X3, T3, n_bootstrap=10)
    assert twice.bootstrap_unit == "distinct triplet" and twice.ceiling == 1.0


# --------------------------------------------------------------------------- concepts


def test_concept_best_and_worst_rank_by_accuracy_with_a_triplet_minimum() -> None:
    from align.metrics.concepts import ConceptAccuracy, ConceptResult

    rows = (
        ConceptAccuracy(0, "a", 10, 0.9, None),
        ConceptAccuracy(1, "b", 1, 1.0, None),  # few triplets
        ConceptAccuracy(2, "c", 10, 0.2, None),
        ConceptAccuracy(3, "d", 0, None, None),  # no triplets
        ConceptAccuracy(4, "e", 10, 0.0, None),  # a real zero, not missing
        ConceptAccuracy(5, "f", 10, 0.9, None),  # tie with 0: lower dimension first
    )
    res = ConceptResult(rows, 0.5, None, 41, 0, 6, "cosine", "features")
    assert [c.dimension for c in res.best(k=6)] == [1, 0, 5, 2, 4]
    assert [c.dimension for c in res.best(k=6, min_triplets=10)] == [0, 5, 2, 4]
    assert [c.dimension for c in res.best(k=6, min_triplets=1)] == [1, 0, 5, 2, 4]
    assert [c.dimension for c in res.worst(k=6)] == [4, 2, 0, 5, 1]
    assert [c.dimension for c in res.worst(k=2, min_triplets=10)] == [4, 2]


def test_name_dimensions_handles_a_constant_dimension() -> None:
    from align.metrics.concepts import name_dimensions

    rng = np.random.default_rng(0)
    S = rng.random((50, 3))
    V = np.stack([S[:, 2] * 2 + 1, np.full(50, 0.5), S[:, 0]], axis=1)  # dim 1 constant
    names = name_dimensions(V, S, ["x", "y", "z"])
    assert [n.spose_dimension for n in names][::2] == [2, 0]
    assert names[0].match_r == pytest.approx(1.0) and names[2].match_r == pytest.approx(1.0)
    assert names[1].match_r == 0.0  # a constant dimension correlates with nothing


def test_scores_do_not_depend_on_how_large_the_object_indices_are() -> None:
    # Over 1.1 million objects the grouping keys of (object, object, object, answer)
    # no longer fit int64 and another code path groups the responses; relabelling the
    # objects must not change any number.
    rng = np.random.default_rng(0)
    small_X = rng.normal(size=(6, 3))
    small_T = np.array([[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 4, 5], [4, 5, 3], [5, 3, 4]] * 3)
    small_T = np.vstack([small_T, [[0, 4, 5], [1, 3, 2]]])
    n = 1_200_000
    where = np.array([5, 1_199_999, 17, 600_000, 3, 1_000_001])  # object i -> row where[i]
    big_X = np.zeros((n, 3))
    big_X[where] = small_X
    big_T = where[small_T]
    for variant in ("responses", "majority"):
        a = odd_one_out(small_X, small_T, variant=variant, n_bootstrap=50, seed=1)
        b = odd_one_out(big_X, big_T, variant=variant, n_bootstrap=50, seed=1)
        # (the interval's resamples follow the order of the distinct triplets, which
        # the labels decide, so only its existence is compared)
        assert a.accuracy == pytest.approx(b.accuracy, abs=1e-12)  # summation order
        assert (a.ceiling, a.n_distinct, a.n_triplets) == (b.ceiling, b.n_distinct, b.n_triplets)
        assert b.ci is not None and b.ci[0] <= b.accuracy <= b.ci[1]


def test_anchor_exact_tie_is_wrong_and_counted() -> None:
    from align.metrics.oddoneout import anchor_accuracy

    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, -1.0], [0.9, 0.1]])
    # anchor 0: s(0, 1) == s(0, 2) == 0, an exact tie, whichever is called closer
    T = np.array([[0, 1, 2], [0, 2, 1], [0, 3, 1]])
    r = anchor_accuracy(X, T, n_bootstrap=0)
    assert r.n_full_ties == 2
    assert r.accuracy == pytest.approx(1 / 3)  # only the untied (0, 3, 1) is right


def test_bootstrap_mean_ci_string_labels_and_many_distinct_values() -> None:
    from align.metrics.bootstrap import bootstrap_mean_ci

    vals = np.r_[np.ones(30), np.zeros(30)]
    ints = np.repeat(np.arange(20), 3)
    names = np.array([f"t{g:02d}" for g in ints])  # labels that are not integers
    assert bootstrap_mean_ci(vals, groups=names, seed=4) == bootstrap_mean_ci(
        vals, groups=ints, seed=4
    )
    default = bootstrap_mean_ci(vals)
    assert default == bootstrap_mean_ci(vals, n_bootstrap=1000, seed=0)
    # > 4096 distinct unit values: units resampled one by one; the interval is the
    # normal one, mean +- 1.96 sd / sqrt(n), within Monte-Carlo error
    x = np.random.default_rng(0).random(6000)
    ci = bootstrap_mean_ci(x, n_bootstrap=2000, seed=1)
    assert ci is not None
    half = 1.959964 * x.std() / np.sqrt(x.size)
    assert ci[0] == pytest.approx(x.mean() - half, abs=0.15 * half)
    assert ci[1] == pytest.approx(x.mean() + half, abs=0.15 * half)


# ------------------------------------------------------------- word similarity (mutants)


def _naive_spearman_interval(
    sims: np.ndarray, human: np.ndarray, n_boot: int, seed: int, confidence: float
) -> np.ndarray:
    """The stated bootstrap written as a loop: one ``(n_boot, n)`` draw of pair indices
    from ``default_rng(seed)``, scipy's Spearman per resample, constant resamples
    skipped (no correlation), numpy's linear percentiles."""
    idx = np.random.default_rng(seed).integers(0, sims.size, size=(n_boot, sims.size))
    boot = [
        stats.spearmanr(sims[row], human[row]).statistic
        for row in idx
        if np.ptp(sims[row]) > 0 and np.ptp(human[row]) > 0
    ]
    tail = (1 - confidence) / 2
    return np.quantile(boot, [tail, 1 - tail])


def test_word_similarity_interval_is_the_stated_resampling_of_pairs() -> None:
    # 10 covered pairs, 300 resamples drawn in one block (so the stream is the loop's);
    # rank ties inside resamples (a pair drawn twice) are frequent.
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(20)]
    E = rng.normal(size=(20, 3))
    pairs = [(f"w{2 * i}", f"w{2 * i + 1}") for i in range(10)]
    sims = np.array([_cos(E[2 * i], E[2 * i + 1]) for i in range(10)])
    human = sims + rng.normal(scale=0.5, size=10)
    r = word_similarity(E, words, pairs, human, n_bootstrap=300, confidence=0.8, seed=7)
    with np.errstate(all="ignore"):
        ref = _naive_spearman_interval(sims, human, 300, 7, 0.8)
    assert r.ci is not None
    assert r.ci == pytest.approx(tuple(ref), abs=1e-9)
    # scores as a column (one score per pair, shape (n, 1)) are the same scores
    column = word_similarity(
        E, words, pairs, human[:, None], n_bootstrap=300, confidence=0.8, seed=7
    )
    assert column.spearman == r.spearman and column.ci == r.ci


def test_word_similarity_cosine_with_a_zero_embedding_is_zero() -> None:
    # A word whose embedding is the zero vector has cosine 0 with every word (the
    # convention of sklearn's cosine_similarity), not NaN.
    from sklearn.metrics.pairwise import cosine_similarity

    words = ["z", "a", "b", "c", "d"]
    E = np.array([[0.0, 0.0], [1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.2]])
    pairs = [("z", "a"), ("a", "b"), ("a", "c"), ("b", "d")]
    human = [0.4, 0.9, 0.1, 0.3]
    C = cosine_similarity(E)
    sims = [C[0, 1], C[1, 2], C[1, 3], C[2, 4]]
    assert sims[0] == 0.0
    r = word_similarity(E, words, pairs, human, n_bootstrap=0)
    assert r.spearman == pytest.approx(stats.spearmanr(sims, human).statistic)
    assert r.pearson == pytest.approx(stats.pearsonr(sims, human).statistic)


def test_word_similarity_is_undefined_for_constant_model_similarities() -> None:
    # Every pair at the same cosine, exactly 1 (all embeddings on one axis): no rank
    # correlation.
    words = ["a", "b", "c", "d"]
    E = np.array([[1.0, 0.0], [2.0, 0.0], [0.5, 0.0], [3.0, 0.0]])
    pairs = [("a", "b"), ("b", "c"), ("c", "d")]
    r = word_similarity(E, words, pairs, [0.1, 0.5, 0.9])
    assert r.spearman is None and r.pearson is None and r.ci is None
    assert r.n_covered == 3


# ------------------------------------------------------------------- concepts (mutants)


def test_per_concept_accuracy_of_masks_positions_and_a_reference_with_intervals() -> None:
    from align.errors import InvalidInputError
    from align.metrics.concepts import concept_of_triplets, per_concept_accuracy

    # 400 distinct triplets over disjoint objects, the model right on the first 200.
    # VICE puts distinct triplet g in dimension g % 2 (all its objects load on it).
    X, T = repeated_triplets(400, 1, 200)
    g = np.arange(400)
    obj_dim = (np.arange(X.shape[0]) // 3) % 2
    V = np.stack([obj_dim == 0, obj_dim == 1], axis=1).astype(np.float64)
    concept = concept_of_triplets(V, T)
    assert concept.dtype == np.int64 and concept.tolist() == (g % 2).tolist()
    probed = np.array([2, 2, 0, -1])[g % 4]  # positions; -1 (a tie) is wrong
    reference = g % 3 == 0  # a reference's correctness mask
    r = per_concept_accuracy(
        X, T, V, probed=probed, reference=reference, n_bootstrap=4000, confidence=0.5, seed=3
    )
    correct = g < 200
    assert r.similarity == "cosine" and r.source == "features"
    assert r.accuracy == 0.5 and r.probed_accuracy == 0.5
    for k in (0, 1):
        mask = g % 2 == k
        c = r.concepts[k]
        expected = {
            "ci": correct[mask].mean(),
            "probed_ci": (probed == 2)[mask].mean(),
            "reference_ci": reference[mask].mean(),
        }
        assert c.accuracy == expected["ci"]
        assert c.probed_accuracy == expected["probed_ci"]
        assert c.reference_accuracy == pytest.approx(expected["reference_ci"])
        assert c.n_triplets == c.n_distinct == 200
        # each interval: the 25 % and 75 % quantiles of Binomial(200, p) / 200
        for field, p in expected.items():
            ci = getattr(c, field)
            assert ci is not None, field
            assert ci[0] == pytest.approx(binomial_mean_quantiles(200, p, 0.25), abs=0.0101)
            assert ci[1] == pytest.approx(binomial_mean_quantiles(200, p, 0.75), abs=0.0101)
    # the defaults are 1000 resamples at 95 % with seed 0
    assert per_concept_accuracy(X, T, V) == per_concept_accuracy(
        X, T, V, n_bootstrap=1000, confidence=0.95, seed=0
    )
    # refusals name the argument they are about
    for kwargs, field in [
        ({"similarity": "cosinus"}, "similarity"),
        ({"reference": X, "reference_similarity": "cosinus"}, "reference_similarity"),
        ({"probed": np.full(400, 3)}, "probed"),
        ({"reference": np.full(400, 3)}, "reference"),
        ({"reference": np.ones(399, dtype=bool)}, "reference"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            per_concept_accuracy(X, T, V, n_bootstrap=0, **kwargs)
        assert err.value.field == field, kwargs


def test_concept_best_and_worst_default_to_five_and_apply_the_minimum() -> None:
    from align.metrics.concepts import ConceptAccuracy, ConceptResult

    accs = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3]
    rows = tuple(ConceptAccuracy(k, str(k), 10, a, None) for k, a in enumerate(accs))
    rows += (ConceptAccuracy(7, "few", 2, 0.0, None),)
    res = ConceptResult(rows, 0.5, None, 72, 0, 8, "cosine", "features")
    assert [c.dimension for c in res.best()] == [0, 1, 2, 3, 4]
    assert [c.dimension for c in res.worst()] == [7, 6, 5, 4, 3]
    assert [c.dimension for c in res.worst(k=8, min_triplets=3)] == [6, 5, 4, 3, 2, 1, 0]


# ------------------------------------------------------------------------ RSA (mutants)


def _sym(rng: np.random.Generator, s: int, n: int) -> np.ndarray:
    """``s`` random symmetric (n, n) dissimilarity matrices with a zero diagonal."""
    A = rng.random((s, n, n))
    A = A + A.transpose(0, 2, 1)
    A[:, np.arange(n), np.arange(n)] = 0.0
    return A


def _tri(M: np.ndarray) -> np.ndarray:
    return M[np.triu_indices(M.shape[0], 1)]


def test_compare_rdms_accepts_pair_vectors_and_names_its_arguments() -> None:
    from align.errors import InvalidInputError, NumericalError
    from align.metrics.rsa import compare_rdms, upper_triangle

    rng = np.random.default_rng(0)
    A, B = _sym(rng, 2, 6)
    assert compare_rdms(A, B) == pytest.approx(stats.spearmanr(_tri(A), _tri(B)).statistic)
    assert compare_rdms(_tri(A), _tri(B), "pearson") == pytest.approx(
        stats.pearsonr(_tri(A), _tri(B)).statistic
    )
    assert compare_rdms([1.0, 2.0], [1.0, 3.0], "pearson") == pytest.approx(1.0)  # 2 pairs
    with pytest.raises(InvalidInputError) as err:
        compare_rdms([1.0], [2.0])
    assert err.value.field == "a"
    for bad, field in [((np.ones((3, 4)), B), "a"), ((A, np.ones((2, 3, 3))), "b")]:
        with pytest.raises(InvalidInputError) as err:
            compare_rdms(*bad)
        assert err.value.field == field
    for bad, name in [
        ((np.r_[np.nan, _tri(A)[1:]], _tri(B)), "a"),
        ((_tri(A), _tri(B) * np.inf), "b"),
    ]:
        with pytest.raises(NumericalError, match=rf"^{name}: "):
            compare_rdms(*bad)
    with pytest.raises(InvalidInputError) as err:
        upper_triangle(np.ones((3, 4)))
    assert err.value.field == "matrix"
    assert upper_triangle(np.arange(9.0).reshape(3, 3)).tolist() == [1.0, 2.0, 5.0]


def test_split_half_ceiling_is_spearman_brown_with_its_defaults() -> None:
    from align.metrics.rsa import split_half_ceiling

    rng = np.random.default_rng(1)
    base = _sym(rng, 1, 8)[0]
    halves = np.stack([base + 0.3 * _sym(rng, 1, 8)[0], base + 0.3 * _sym(rng, 1, 8)[0]])
    r = stats.spearmanr(_tri(halves[0]), _tri(halves[1])).statistic
    nc = split_half_ceiling(halves)  # spearman on dissimilarities
    assert nc.lower == nc.upper == pytest.approx(2 * r / (1 + r), abs=1e-12)
    assert (nc.method, nc.n_subjects, nc.pooling) == ("spearman", 2, "split-half")
    rp = stats.pearsonr(_tri(halves[0]), _tri(halves[1])).statistic
    assert split_half_ceiling(halves, "pearson").lower == pytest.approx(2 * rp / (1 + rp))
    # two halves in exactly opposite order: r = -1, Spearman-Brown is undefined
    flipped = np.stack([halves[0], -halves[0]])
    assert math.isnan(split_half_ceiling(flipped, "pearson").lower)


def test_noise_ceiling_defaults_and_pearson_normalised_pooling() -> None:
    from align.metrics.rsa import rsa_noise_ceiling

    rng = np.random.default_rng(2)
    M = _sym(rng, 4, 7)
    v = np.stack([_tri(m) for m in M])
    # defaults: spearman on dissimilarities, mean pooling (a loop with scipy)
    low = [stats.spearmanr(v[k], np.delete(v, k, axis=0).mean(axis=0)).statistic for k in range(4)]
    up = [stats.spearmanr(v[k], v.mean(axis=0)).statistic for k in range(4)]
    nc = rsa_noise_ceiling(M)
    assert nc.lower == pytest.approx(np.mean(low)) and nc.upper == pytest.approx(np.mean(up))
    assert (nc.method, nc.n_subjects, nc.pooling) == ("spearman", 4, "mean")
    # pearson with "normalized" pooling averages z-scored vectors (Nili et al. 2014)
    z = (v - v.mean(axis=1, keepdims=True)) / v.std(axis=1, keepdims=True)
    low = [stats.pearsonr(v[k], np.delete(z, k, axis=0).mean(axis=0)).statistic for k in range(4)]
    up = [stats.pearsonr(v[k], z.mean(axis=0)).statistic for k in range(4)]
    nz = rsa_noise_ceiling(M, "pearson", pooling="normalized")
    assert nz.lower == pytest.approx(np.mean(low)) and nz.upper == pytest.approx(np.mean(up))


def test_paired_rsa_delta_fields_scale_and_missing_rows() -> None:
    from align.errors import InvalidInputError
    from align.metrics.rsa import paired_rsa_delta
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(3)
    n = 10
    X_a, X_b = rng.normal(size=(n, 4)), rng.normal(size=(n, 4))
    M = _sym(rng, 2, n)

    def score(X: np.ndarray, humans: np.ndarray) -> float:
        model = pdist(X, "cosine")  # row-major upper triangle, like _tri
        return float(np.mean([stats.spearmanr(model, _tri(h)).statistic for h in humans]))

    # two subjects: the mean of per-subject correlations
    r = paired_rsa_delta(X_a, X_b, M, n_bootstrap=0)
    assert r.a == pytest.approx(score(X_a, M)) and r.b == pytest.approx(score(X_b, M))
    assert r.delta == pytest.approx(r.b - r.a) and r.ci_delta is None
    assert (r.scale, r.method, r.n_bootstrap, r.seed) == ("mean over subjects", "spearman", 0, 0)
    # one group matrix
    g = paired_rsa_delta(X_a, X_b, M[0], n_bootstrap=1, confidence=0.5, seed=4)
    assert g.scale == "group matrix" and g.a == pytest.approx(score(X_a, M[:1]))
    assert g.ci_delta is not None  # one resample is an interval (of one value)
    assert (g.n_bootstrap, g.confidence, g.seed) == (1, 0.5, 4)
    # defaults: 1000 resamples at 95 % with seed 0
    d = paired_rsa_delta(X_a, X_b, M)
    assert d == paired_rsa_delta(X_a, X_b, M, "dissimilarity", "spearman", "cosine", 1000, 0.95, 0)
    assert (d.n_bootstrap, d.confidence, d.seed) == (1000, 0.95, 0)
    # both feature sets must miss the same stimuli
    miss_2, miss_3 = X_a.copy(), X_b.copy()
    miss_2[2] = np.nan
    miss_3[3] = np.nan
    ok = X_b.copy()
    ok[2] = np.nan
    paired_rsa_delta(miss_2, ok, M, n_bootstrap=0)  # same missing row: fine
    for xa, xb in [(miss_2, miss_3), (miss_2, X_b), (X_a, miss_3)]:
        with pytest.raises(InvalidInputError) as err:
            paired_rsa_delta(xa, xb, M, n_bootstrap=0)
        assert err.value.field == "X_b"


def test_vice_embedding_checks() -> None:
    from align.errors import InvalidInputError, NumericalError
    from align.metrics.concepts import concept_of_triplets

    T = np.array([[0, 1, 2], [2, 3, 0]])
    # one dimension is a VICE embedding: every triplet falls in it
    assert concept_of_triplets(np.ones((4, 1)), T).tolist() == [0, 0]
    for bad in (np.ones(4), np.ones((4, 0)), np.ones((0, 2)), np.ones((4, 2), dtype=bool)):
        with pytest.raises(InvalidInputError) as err:
            concept_of_triplets(bad, T)
        assert err.value.field == "vice"
    with pytest.raises(InvalidInputError):
        concept_of_triplets(np.ones((4, 2), dtype=complex), T)
    V = np.ones((4, 2))
    V[2, 1] = np.nan
    with pytest.raises(NumericalError, match=r"vice: row 2 "):
        concept_of_triplets(V, T)


def test_rsa_refusals_name_the_subject_and_three_stimuli_suffice() -> None:
    from align.errors import NumericalError
    from scipy.spatial.distance import pdist

    rng = np.random.default_rng(5)
    H = _sym(rng, 2, 4)
    # model dissimilarities spanning exactly 1 (cosine 0 .. 1) and human ones spanning
    # exactly 1 are fine; the euclidean metric is the one asked for
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    H1 = np.array([[0, 1, 2, 1], [1, 0, 1, 2], [2, 1, 0, 1], [1, 2, 1, 0]], dtype=float)
    r = rsa(X, H1, n_bootstrap=0)
    assert r.score == pytest.approx(stats.spearmanr(pdist(X, "cosine"), _tri(H1)).statistic)
    Y = rng.normal(size=(4, 3))
    r = rsa(Y, H, rdm_metric="euclidean", n_bootstrap=0)
    expected = np.mean([stats.spearmanr(pdist(Y), _tri(h)).statistic for h in H])
    assert r.score == pytest.approx(expected)
    # constant model or human dissimilarities: no correlation, said so
    with pytest.raises(NumericalError, match="same model dissimilarity"):
        rsa(np.ones((4, 3)), H, n_bootstrap=0)  # identical rows: every distance 0
    with pytest.raises(NumericalError, match="the human RDM has the same value"):
        rsa(Y, np.ones((4, 4)) - np.eye(4), n_bootstrap=0)
    flat = np.stack([H[0], np.ones((4, 4)) - np.eye(4)])
    with pytest.raises(NumericalError, match="subject 1 has the same value"):
        rsa(Y, flat, n_bootstrap=0)
    # 3 stimuli left after dropping a missing one is enough
    W = rng.normal(size=(4, 3))
    W[2] = np.nan
    with pytest.warns(UserWarning, match="dropped 1 missing"):
        r = rsa(W, H, n_bootstrap=0)
    keep = [0, 1, 3]
    sub = [
        stats.spearmanr(pdist(W[keep], "cosine"), _tri(h[np.ix_(keep, keep)])).statistic for h in H
    ]
    assert r.score == pytest.approx(np.mean(sub))


def test_noise_ceiling_of_two_subjects_and_an_undefined_one() -> None:
    from align.errors import NumericalError
    from align.metrics.rsa import rsa_noise_ceiling

    rng = np.random.default_rng(6)
    M = _sym(rng, 2, 6)
    a, b = _tri(M[0]), _tri(M[1])
    nc = rsa_noise_ceiling(M)  # spearman: lower = each subject vs the other one
    assert nc.lower == pytest.approx(stats.spearmanr(a, b).statistic)
    assert nc.upper == pytest.approx(
        np.mean([stats.spearmanr(v, (a + b) / 2).statistic for v in (a, b)])
    )
    flat = np.stack([M[0], np.ones((6, 6)) - np.eye(6)])  # subject 1 constant
    with pytest.raises(NumericalError):
        rsa_noise_ceiling(flat, "pearson")


# ------------------------------------------------------------ bootstrap_mean_ci (mutants)


def _exact_cluster_interval(sums, sizes, n_boot, seed, confidence):
    """The stated sampler written out: the distinct (unit sum, unit size) values in
    lexicographic order, one multinomial draw of the unit count per resample over their
    frequencies, statistic = drawn sum / drawn size, numpy's linear percentiles."""
    distinct, counts = np.unique(np.stack([sums, sizes], axis=1), axis=0, return_counts=True)
    n = len(sums)
    draws = np.random.default_rng(seed).multinomial(n, counts / n, size=n_boot)
    boot = (draws @ distinct[:, 0]) / (draws @ distinct[:, 1])
    tail = (1 - confidence) / 2
    return tuple(np.quantile(boot, [tail, 1 - tail]))


def test_bootstrap_mean_ci_is_the_exact_multinomial_over_distinct_units() -> None:
    from align.metrics.bootstrap import bootstrap_mean_ci

    rng = np.random.default_rng(8)
    # integer values (not just 0/1) in groups of 1..4 members, labels with gaps (unused
    # labels are not units) and singletons
    sizes = rng.integers(1, 5, size=40)
    labels = np.repeat(np.arange(40) * 3 + 2, sizes)  # 2, 5, 8, ...: gaps
    vals = rng.integers(0, 7, size=labels.size).astype(float)
    sums = np.bincount(np.repeat(np.arange(40), sizes), weights=vals)
    ci = bootstrap_mean_ci(vals, groups=labels, n_bootstrap=500, confidence=0.9, seed=2)
    assert ci == pytest.approx(_exact_cluster_interval(sums, sizes, 500, 2, 0.9), abs=1e-12)
    # non-integer values (another encoding of the distinct units), as strings labels
    fvals = vals + rng.random(vals.size)
    fsums = np.bincount(np.repeat(np.arange(40), sizes), weights=fvals)
    names = np.array([f"g{lab:03d}" for lab in labels])
    ci = bootstrap_mean_ci(fvals, groups=names, n_bootstrap=500, confidence=0.9, seed=2)
    assert ci == pytest.approx(_exact_cluster_interval(fsums, sizes, 500, 2, 0.9), abs=1e-12)
    # no groups: each value a unit
    ci = bootstrap_mean_ci(fvals, n_bootstrap=300, seed=5)
    ones = np.ones(fvals.size)
    assert ci == pytest.approx(_exact_cluster_interval(fvals, ones, 300, 5, 0.95), abs=1e-12)
    # the defaults: 1000 resamples at 95 % with seed 0
    assert bootstrap_mean_ci(fvals) == pytest.approx(
        _exact_cluster_interval(fvals, ones, 1000, 0, 0.95), abs=1e-12
    )
    # one value is a sample; one resample is an interval (of one value)
    assert bootstrap_mean_ci(np.array([0.25]), n_bootstrap=10) == (0.25, 0.25)
    assert bootstrap_mean_ci(fvals, n_bootstrap=1) is not None


def test_bootstrap_mean_ci_past_4096_distinct_values_draws_every_unit() -> None:
    from align.metrics.bootstrap import bootstrap_mean_ci

    # 5000 distinct values: units are drawn one by one (rng.integers(0, n, n) per
    # resample, the same stream written out here). Unit 0 is huge, so whether it is
    # drawn decides each resample.
    n = 5000
    x = np.random.default_rng(1).random(n)
    x[0] = 1e6
    rng = np.random.default_rng(3)
    boot = [x[rng.integers(0, n, size=n)].mean() for _ in range(200)]
    ci = bootstrap_mean_ci(x, n_bootstrap=200, seed=3)
    assert ci == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), rel=1e-12)
    # unit 0 is drawn at least twice in more than 2.5 % of resamples (Poisson(1))
    assert ci[1] > x[1:].mean() + 1.5e6 / n


def test_distinct_rows_counts_equal_numpy_unique_on_every_path() -> None:
    from align.metrics.bootstrap import _distinct_rows_counts

    rng = np.random.default_rng(9)
    cases = {
        # many float levels in both columns: the combined code passes 10^7
        "large codes": np.stack([rng.random(6000).round(4), rng.random(6000).round(4)], axis=1),
        # whole numbers that are negative or past 2^20 are coded by rank
        "big and negative integers": np.stack(
            [rng.integers(-3, 3, 500), rng.integers(0, 3, 500) + (1 << 20)], axis=1
        ).astype(float),
        # combined codes past 2^62 (4 and 5 columns of 50,000 distinct values)
        "4 huge columns": rng.random((50_000, 4)),
        "5 huge columns": rng.random((50_000, 5)),
    }
    for name, rows in cases.items():
        got, got_counts = _distinct_rows_counts(rows)
        ref, ref_counts = np.unique(rows, axis=0, return_counts=True)
        np.testing.assert_array_equal(got, ref, err_msg=name)
        np.testing.assert_array_equal(got_counts, ref_counts, err_msg=name)


def test_paired_cluster_difference_is_the_written_out_paired_resampling() -> None:
    from align.errors import InvalidInputError
    from align.metrics.bootstrap import paired_cluster_difference

    rng = np.random.default_rng(10)
    a = rng.random(30)
    b = a + rng.normal(scale=0.1, size=30)

    def loop(n_boot: int, seed: int, confidence: float) -> list[tuple[float, float]]:
        draw = np.random.default_rng(seed)
        s = np.array(
            [[a[i].mean(), b[i].mean()] for i in (draw.integers(0, 30, 30) for _ in range(n_boot))]
        )
        tail = (1 - confidence) / 2
        q = [tail, 1 - tail]
        return [tuple(np.quantile(v, q)) for v in (s[:, 0], s[:, 1], s[:, 0] - s[:, 1])]

    r = paired_cluster_difference(a, b)  # defaults: 1000 resamples, 95 %, seed 0
    ref = loop(1000, 0, 0.95)
    assert r.ci_a == pytest.approx(ref[0]) and r.ci_b == pytest.approx(ref[1])
    assert r.ci_difference == pytest.approx(ref[2])
    assert r.difference == pytest.approx(a.mean() - b.mean())
    assert (r.n_units, r.n_values, r.n_bootstrap, r.confidence, r.seed, r.unit) == (
        30,
        30,
        1000,
        0.95,
        0,
        "value",
    )
    g = paired_cluster_difference(a, b, np.arange(30) // 2, n_bootstrap=0, seed=3, confidence=0.8)
    assert g.ci_a is None and g.ci_b is None and g.ci_difference is None
    assert (g.n_units, g.n_values, g.unit, g.seed, g.confidence) == (
        15,
        30,
        "distinct triplet",
        3,
        0.8,
    )
    assert paired_cluster_difference(a, b, n_bootstrap=0, unit="subject").unit == "subject"
    for args, field in [(([], b), "values_a"), ((a, b[:5]), "values_b")]:
        with pytest.raises(InvalidInputError) as err:
            paired_cluster_difference(*args)
        assert err.value.field == field


def test_distinct_triplet_groups_refuses_what_is_not_triplets() -> None:
    from align.errors import InvalidInputError
    from align.metrics.bootstrap import distinct_triplet_groups

    assert distinct_triplet_groups([[0, 1, 2], [2, 1, 0], [0, 1, 3]]).tolist() == [0, 0, 1]
    for bad in (np.zeros((4, 2), int), np.zeros((4, 4), int), np.zeros(3, int)):
        with pytest.raises(InvalidInputError) as err:
            distinct_triplet_groups(bad)
        assert err.value.field == "triplets"


# ------------------------------------------------------------------ ObjectKFold (mutants)


def test_object_kfold_is_the_stated_object_split() -> None:
    from align.errors import InvalidInputError
    from align.metrics.splits import ObjectKFold

    n, k, seed = 23, 4, 5
    rng = np.random.default_rng(0)
    T = np.array([rng.choice(n, 3, replace=False) for _ in range(300)])
    kf = ObjectKFold(k, seed)
    assert kf.get_n_splits() == 4 and repr(kf) == "ObjectKFold(n_splits=4, seed=5)"
    # held-out objects: a seeded permutation of the objects cut into k near-equal parts
    perm = np.random.default_rng(seed).permutation(n)
    bounds = [0, 6, 12, 18, 23]  # 23 = 6 + 6 + 6 + 5
    folds = kf.object_folds(n)
    assert [f.tolist() for f in folds] == [
        sorted(perm[bounds[i] : bounds[i + 1]].tolist()) for i in range(k)
    ]
    assert all(f.dtype == np.int64 for f in folds)
    fold_of = kf.fold_of_objects(n)
    assert fold_of.dtype == np.int64
    for i, f in enumerate(folds):
        assert (fold_of[f] == i).all()
    # a triplet trains when none of its objects is held out, tests when all three are
    splits = kf.split(n, T)
    assert len(splits) == k
    for i, (train, test) in enumerate(splits):
        held = set(folds[i].tolist())
        inside = [sum(int(o) in held for o in t) for t in T]
        assert train.tolist() == [r for r, c in enumerate(inside) if c == 0]
        assert test.tolist() == [r for r, c in enumerate(inside) if c == 3]
    # defaults: 3 folds, seed 0
    assert repr(ObjectKFold()) == "ObjectKFold(n_splits=3, seed=0)"
    d = ObjectKFold().object_folds(9)
    perm0 = np.random.default_rng(0).permutation(9)
    assert [f.tolist() for f in d] == [sorted(perm0[3 * i : 3 * i + 3].tolist()) for i in range(3)]
    # as many objects as folds is the minimum; 2 folds the fewest; whole numbers only
    assert len(ObjectKFold(2, 0).object_folds(2)) == 2
    refusals = [
        (lambda: ObjectKFold(1, 0), "n_splits"),
        (lambda: ObjectKFold(2.5, 0), "n_splits"),
        (lambda: ObjectKFold(3, -1), "seed"),
        (lambda: ObjectKFold(3, 0.5), "seed"),
        (lambda: ObjectKFold(3, 0).object_folds(2), "n_objects"),
        (lambda: ObjectKFold(3, 0).object_folds(7.5), "n_objects"),
    ]
    for bad, field in refusals:
        with pytest.raises(InvalidInputError) as err:
            bad()
        assert err.value.field == field


def test_cluster_mean_on_each_sampler_is_the_written_out_resampling() -> None:
    from align.errors import InvalidInputError
    from align.metrics.bootstrap import cluster_mean

    rng = np.random.default_rng(11)
    # explicit draws (G x n_bootstrap <= 2e7): one rng.integers(0, G, G) per resample
    v = rng.random(40)
    r = cluster_mean(v)  # defaults: 1000 resamples, 95 %, seed 0, every value a unit
    draw = np.random.default_rng(0)
    boot = [v[draw.integers(0, 40, 40)].mean() for _ in range(1000)]
    assert r.ci == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])))
    assert (r.value, r.n_units, r.n_values) == (pytest.approx(v.mean()), 40, 40)
    assert (r.n_bootstrap, r.confidence, r.seed, r.unit) == (1000, 0.95, 0, "value")
    with pytest.raises(InvalidInputError) as err:
        cluster_mean([])
    assert err.value.field == "values"
    # past 2e7 group draws with few distinct (sum, size) units: the exact multinomial
    G = 21_000
    sizes = rng.integers(1, 4, size=G)
    labels = np.repeat(np.arange(G), sizes)
    correct = (rng.random(labels.size) < 0.6).astype(float)
    sums = np.bincount(labels, weights=correct)
    r = cluster_mean(correct, labels, n_bootstrap=1000, confidence=0.9, seed=4)
    assert r.ci == pytest.approx(_exact_cluster_interval(sums, sizes, 1000, 4, 0.9), abs=1e-12)
    assert r.unit == "distinct triplet" and r.n_units == G
    # past 2e7 draws and past 4096 distinct units: units drawn one by one
    x = rng.random(G)
    r = cluster_mean(x, n_bootstrap=1000, seed=6)
    draw = np.random.default_rng(6)
    boot = [x[draw.integers(0, G, size=G)].sum() / G for _ in range(1000)]
    assert r.ci == pytest.approx(tuple(np.quantile(boot, [0.025, 0.975])), abs=1e-12)


# ----------------------------------------------------------------- gLocal helpers (mutants)


def test_local_loss_defaults_and_checks() -> None:
    from align.errors import InvalidInputError
    from align.metrics.glocal import local_loss

    rng = np.random.default_rng(12)
    X, E = rng.normal(size=(6, 1)), rng.normal(size=(6, 1))  # one column is fine
    assert local_loss(X, E) == pytest.approx(_local_loss_np(X, E, 0.1))  # default 0.1
    two = rng.normal(size=(2, 3))
    assert local_loss(two, two * 2.0, 0.5) == pytest.approx(_local_loss_np(two, two * 2.0, 0.5))
    for args, field in [
        ((np.ones(3), E), "X"),
        ((X, np.ones(3)), "E"),
        ((X, E[:5]), "E"),
        ((X[:1], E[:1]), "E"),
        ((X, E, 0.0), "temperature"),
        ((X, E, -1.0), "temperature"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            local_loss(*args)
        assert err.value.field == field


def _knn_loop(X: np.ndarray, E: np.ndarray, k: int) -> float:
    """Share of each row's k cosine neighbours (itself excluded, ties to the lower
    index) kept in E, a loop."""

    def nn(A: np.ndarray, i: int) -> set[int]:
        cos = [
            (-(A[i] @ A[j]) / (np.linalg.norm(A[i]) * np.linalg.norm(A[j])), j)
            for j in range(len(A))
            if j != i
        ]
        return {j for _, j in sorted(cos)[:k]}

    return float(np.mean([len(nn(X, i) & nn(E, i)) / k for i in range(len(X))]))


def test_knn_overlap_defaults_ties_missing_rows_and_bounds() -> None:
    from align.errors import InvalidInputError
    from align.metrics.glocal import knn_overlap

    rng = np.random.default_rng(13)
    X, E = rng.normal(size=(15, 4)), rng.normal(size=(15, 4))
    assert knn_overlap(X, E) == pytest.approx(_knn_loop(X, E, 10))  # default k = 10
    # cosine: rows of tiny norm are the same directions
    assert knn_overlap(X * 1e-3, E * 1e-3, 3) == pytest.approx(_knn_loop(X, E, 3))
    # 40 rows in 4 directions: every neighbour list is decided by the tie rule
    D = rng.normal(size=(4, 3))
    T = D[np.arange(40) % 4]  # identical rows: exactly equal cosines
    F = rng.normal(size=(5, 3))[np.arange(40) % 5]  # ties in E too, another pattern
    assert knn_overlap(T, F, 5) == pytest.approx(_knn_loop(T, F, 5))
    # a row missing in either set is dropped from both
    Xm, Em = X.copy(), E.copy()
    Xm[3] = np.nan
    Em[7] = np.nan
    keep = [i for i in range(15) if i not in (3, 7)]
    assert knn_overlap(Xm, Em, 4) == pytest.approx(_knn_loop(X[keep], E[keep], 4))
    # k from 1 to n - 1, whole numbers only
    assert knn_overlap(X, E, 1) == pytest.approx(_knn_loop(X, E, 1))
    assert knn_overlap(X, E, 14) == 1.0  # every other row
    for bad_k in (0, 15, 2.5):
        with pytest.raises(InvalidInputError) as err:
            knn_overlap(X, E, bad_k)
        assert err.value.field == "k"
    for args, field in [((np.ones(3), E), "X"), ((X, np.ones(3)), "E")]:
        with pytest.raises(InvalidInputError) as err:
            knn_overlap(*args)
        assert err.value.field == field


def test_local_chunks_are_a_seeded_partition_without_one_row_chunks() -> None:
    from align.metrics.glocal import LocalNeighbourhoodTerm

    for n, size, sizes in [
        (9, 4, [4, 5]),
        (5, 4, [5]),
        (10, 4, [4, 4, 2]),
        (4, 4, [4]),
        (3, 8, [3]),
    ]:
        chunks = LocalNeighbourhoodTerm(0.5, 0.1, size, seed=3).chunks(n)
        assert [len(c) for c in chunks] == sizes
        assert sorted(np.concatenate(chunks).tolist()) == list(range(n))
    a = LocalNeighbourhoodTerm(0.5, 0.1, 4, seed=3).chunks(10)
    b = LocalNeighbourhoodTerm(0.5, 0.1, 4, seed=3).chunks(10)
    assert all((x == y).all() for x, y in zip(a, b, strict=True))  # fixed for a seed


def test_glocal_probe_checks_its_options_and_passes_its_fit_arguments_on() -> None:
    from align.errors import InvalidInputError
    from align.metrics.glocal import GLocalProbe

    X, T = probe_data()
    L = np.random.default_rng(7).normal(size=(12, X.shape[1]))
    refusals = [
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"temperature": 0.0}, "temperature"),
        ({"local_batch_size": 1}, "local_batch_size"),
        ({"local_batch_size": 2.5}, "local_batch_size"),
    ]
    for kwargs, field in refusals:
        with pytest.raises(InvalidInputError) as err:
            GLocalProbe(max_iter=1, **kwargs).fit(X, T, X_local=L)
        assert err.value.field == field
    for X_local in (np.ones(5), L[:1], np.vstack([L[:1], np.full((3, X.shape[1]), np.nan)])):
        with pytest.raises(InvalidInputError) as err:
            GLocalProbe(max_iter=1).fit(X, T, X_local=X_local)
        assert err.value.field == "X_local"
    # two unlabeled rows, a local batch of two and alpha = 1 are allowed
    GLocalProbe(alpha=1.0, local_batch_size=2, max_iter=1).fit(X, T, X_local=L[:2])
    # init_weights: the first objective is the one at the given weights
    W = 0.3 * np.eye(X.shape[1])
    kw = dict(alpha=0.5, temperature=0.5, local_batch_size=64, reg=0.2, max_iter=1)
    a = GLocalProbe(**kw).fit(X, T, X_local=L, init_weights=W)
    b = GLocalProbe(init="identity", tau=0.3, **kw).fit(X, T, X_local=L)
    assert a.loss_curve_[0] == pytest.approx(b.loss_curve_[0], rel=1e-12)
    # explicit validation triplets reach Adam's early stopping (other than the seeded
    # hold-out of the training triplets it uses without them)
    adam = dict(alpha=0.5, local_batch_size=64, optimizer="adam", max_iter=3, lr=0.01)
    X_val = X + np.random.default_rng(8).normal(scale=0.5, size=X.shape)
    with_val = GLocalProbe(**adam).fit(X, T, X_local=L, X_val=X_val, val_triplets=T[:30])
    without = GLocalProbe(**adam).fit(X, T, X_local=L)
    assert not np.array_equal(with_val.weights_, without.weights_)


def test_bootstrap_options_are_checked_and_named() -> None:
    from align.errors import InvalidInputError
    from align.metrics.bootstrap import check_bootstrap_options

    check_bootstrap_options(0, 0.5, 0)  # no resamples, any confidence in (0, 1), seed 0
    for args, field in [
        ((True, 0.95, 0), "n_bootstrap"),
        ((1.5, 0.95, 0), "n_bootstrap"),
        ((-1, 0.95, 0), "n_bootstrap"),
        ((10, 0.0, 0), "confidence"),
        ((10, 1.0, 0), "confidence"),
        ((10, True, 0), "confidence"),
        ((10, 0.95, -1), "seed"),
        ((10, 0.95, True), "seed"),
        ((10, 0.95, 1.5), "seed"),
    ]:
        with pytest.raises(InvalidInputError) as err:
            check_bootstrap_options(*args)
        assert err.value.field == field, args


def test_glocal_default_objective_averages_the_local_loss_over_chunks_of_512() -> None:
    # defaults: temperature 0.1, local batches of 512 rows; 600 unlabeled rows make two
    # chunks (512 + 88) whose local losses are averaged, then weighed by alpha
    from align.metrics.glocal import GLocalProbe, LocalNeighbourhoodTerm

    X, T = probe_data()
    L = np.random.default_rng(9).normal(size=(600, X.shape[1]))
    alpha, tau, reg = 0.5, 0.8, 0.2
    probe = GLocalProbe(alpha=alpha, reg=reg, init="identity", tau=tau, max_iter=1, seed=0)
    probe.fit(X, T, X_local=L)
    W0 = tau * np.eye(X.shape[1])
    pen = reg * float(np.sqrt((W0**2).sum()))
    ce = _numpy_objective(X, T, W0, reg, "frobenius", False) - pen
    Ls = (L - X.mean()) / X.std()
    chunks = LocalNeighbourhoodTerm(alpha, 0.1, 512, seed=0).chunks(600)  # seeded rows
    assert sorted(len(c) for c in chunks) == [88, 512]
    local = np.mean([_local_loss_np(Ls[c], Ls[c] @ W0, 0.1) for c in chunks])
    assert probe.loss_curve_[0] == pytest.approx((1 - alpha) * ce + alpha * local + pen, rel=1e-9)


def test_cluster_mean_units_do_not_depend_on_how_groups_are_labelled() -> None:
    from align.metrics.bootstrap import cluster_mean, paired_cluster_difference

    rng = np.random.default_rng(14)
    sizes = rng.integers(1, 4, size=25)
    compact = np.repeat(np.arange(25), sizes)  # 0..24
    v = rng.random(compact.size)
    w = v + rng.normal(scale=0.1, size=v.size)
    # the written-out loop over the 25 units (one rng.integers(0, 25, 25) per resample)
    sums, n = np.bincount(compact, weights=v), np.bincount(compact)
    draw = np.random.default_rng(2)
    boot = []
    for _ in range(300):
        c = np.bincount(draw.integers(0, 25, 25), minlength=25)
        boot.append(c @ sums / (c @ n))
    ref = tuple(np.quantile(boot, [0.025, 0.975]))
    for labels in (
        compact,
        compact * 7 + 3,
        compact - 10,
        np.array([f"u{i:02d}" for i in compact]),
    ):
        r = cluster_mean(v, labels, n_bootstrap=300, seed=2)
        assert r.n_units == 25 and r.ci == pytest.approx(ref, abs=1e-12), labels[:3]
        d = paired_cluster_difference(v, w, labels, n_bootstrap=300, seed=2)
        assert d.ci_a == pytest.approx(ref, abs=1e-12)
