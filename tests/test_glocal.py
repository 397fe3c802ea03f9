"""gLocal probe (METHODS.md section 3): alpha = 0 is the plain probe; alpha > 0 keeps
neighbourhoods; the local loss and kNN overlap against independent implementations."""

from __future__ import annotations

import numpy as np
import pytest
from align.errors import InvalidInputError
from align.metrics.glocal import GLocalProbe, knn_overlap, local_loss
from align.metrics.probe import TripletProbe


def planted(n: int = 120, p: int = 10, m: int = 1500, seed: int = 0):
    """Features X and triplets whose human pair is the most similar under a planted
    transform A (so a probe has something to learn that distorts X's neighbourhoods)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    A = rng.normal(size=(p, p)) * (rng.random(p) < 0.5)  # drops about half the directions
    H = X @ A
    t = np.array([rng.choice(n, 3, replace=False) for _ in range(m)])
    S = np.stack(
        [
            (H[t[:, 0]] * H[t[:, 1]]).sum(1),
            (H[t[:, 0]] * H[t[:, 2]]).sum(1),
            (H[t[:, 1]] * H[t[:, 2]]).sum(1),
        ],
        axis=1,
    )
    order = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])[S.argmax(1)]
    return X, np.take_along_axis(t, order, axis=1)


@pytest.mark.parametrize("reduce", [True, False])
def test_alpha_zero_is_the_plain_probe_lbfgs(reduce: bool) -> None:
    X, T = planted()
    plain = TripletProbe(reg=1e-2, reduce=reduce, max_iter=60).fit(X, T)
    glocal = GLocalProbe(alpha=0.0, reg=1e-2, reduce=reduce, max_iter=60).fit(X, T, X_local=X)
    np.testing.assert_allclose(glocal.weights_, plain.weights_, rtol=0, atol=1e-10)
    assert glocal.mean_ == plain.mean_ and glocal.std_ == plain.std_
    np.testing.assert_array_equal(glocal.predict(X, T), plain.predict(X, T))


def test_alpha_zero_is_the_plain_probe_adam() -> None:
    X, T = planted(m=600)
    plain = TripletProbe(reg=1e-3, optimizer="adam", max_iter=4, lr=1e-2).fit(X, T)
    glocal = GLocalProbe(alpha=0.0, reg=1e-3, optimizer="adam", max_iter=4, lr=1e-2).fit(X, T)
    np.testing.assert_allclose(glocal.weights_, plain.weights_, rtol=0, atol=1e-12)
    assert glocal.val_curve_ == pytest.approx(plain.val_curve_)


def test_alpha_positive_keeps_more_of_the_neighbourhood() -> None:
    X, T = planted()
    plain = TripletProbe(reg=1e-3, max_iter=100).fit(X, T)
    glocal = GLocalProbe(alpha=0.5, temperature=0.1, reg=1e-3, max_iter=100).fit(X, T, X_local=X)
    before_plain = knn_overlap(X, plain.transform(X), k=8)
    before_glocal = knn_overlap(X, glocal.transform(X), k=8)
    assert before_glocal > before_plain + 0.05
    # and it still learns the human triplets better than chance
    assert glocal.score(X, T) > 0.5


def _knn_overlap_loop(X: np.ndarray, E: np.ndarray, k: int) -> float:
    def nbrs(A: np.ndarray, i: int) -> set[int]:
        sims = []
        for j in range(A.shape[0]):
            if j != i:
                c = A[i] @ A[j] / (np.linalg.norm(A[i]) * np.linalg.norm(A[j]))
                sims.append((-c, j))
        return {j for _, j in sorted(sims)[:k]}

    return float(np.mean([len(nbrs(X, i) & nbrs(E, i)) / k for i in range(X.shape[0])]))


def test_knn_overlap_matches_a_loop() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 5))
    E = X @ rng.normal(size=(5, 4))
    assert knn_overlap(X, E, 5) == pytest.approx(_knn_overlap_loop(X, E, 5))
    assert knn_overlap(X, 3.0 * X, 5) == 1.0


def _local_loss_loop(X: np.ndarray, E: np.ndarray, tau: float) -> float:
    def probs(A: np.ndarray, i: int) -> dict[int, float]:
        logits = {
            j: A[i] @ A[j] / (np.linalg.norm(A[i]) * np.linalg.norm(A[j])) / tau
            for j in range(A.shape[0])
            if j != i
        }
        z = sum(np.exp(v) for v in logits.values())
        return {j: np.exp(v) / z for j, v in logits.items()}

    total = 0.0
    for i in range(X.shape[0]):
        p, q = probs(X, i), probs(E, i)
        total += -sum(p[j] * np.log(q[j]) for j in p)
    return total / X.shape[0]


def test_local_loss_matches_a_loop_and_is_minimal_at_the_identity() -> None:
    rng = np.random.default_rng(4)
    X = rng.normal(size=(25, 6))
    E = X @ rng.normal(size=(6, 6))
    assert local_loss(X, E, 0.5) == pytest.approx(_local_loss_loop(X, E, 0.5), rel=1e-9)
    # student == teacher: cross-entropy = teacher entropy, the minimum over students
    assert local_loss(X, 2.0 * X, 0.5) < local_loss(X, E, 0.5)


def test_save_load_keeps_the_glocal_options(tmp_path) -> None:
    X, T = planted(m=400)
    probe = GLocalProbe(alpha=0.3, temperature=0.2, reg=1e-2, max_iter=20).fit(X, T, X_local=X)
    path = probe.save(tmp_path / "transform.npz")
    back = GLocalProbe.load(path)
    assert back.alpha == 0.3 and back.temperature == 0.2
    np.testing.assert_allclose(back.transform(X), probe.transform(X), atol=1e-5)


def test_bad_inputs_name_the_field() -> None:
    X, T = planted(m=100)
    with pytest.raises(InvalidInputError, match="X_local"):
        GLocalProbe(alpha=0.5).fit(X, T)
    with pytest.raises(InvalidInputError, match="X_local"):
        GLocalProbe(alpha=0.5).fit(X, T, X_local=X[:, :3])
    with pytest.raises(InvalidInputError, match="alpha"):
        GLocalProbe(alpha=1.5).fit(X, T, X_local=X)
    with pytest.raises(InvalidInputError, match="temperature"):
        GLocalProbe(temperature=0.0).fit(X, T, X_local=X)
    with pytest.raises(InvalidInputError, match="k"):
        knn_overlap(X, X, k=0)
