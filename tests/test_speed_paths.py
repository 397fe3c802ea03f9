"""The fast paths of issue 14 give the reference path's answers.

- Probe: the per-fold reduction cache (SVD of the training rows and the QR of the
  reduced start, computed once per fold instead of once per lambda) gives the same
  weights bit for bit, and the same held-out cross-entropy, as recomputing them; on the
  real THINGS responses with SPoSE features.
- Engine: in-process decoding in a background thread (prefetch) gives the same rows bit
  for bit as serial decoding, on real THINGS images; errors still name the bad image.
"""

from __future__ import annotations

import itertools
import math
import threading
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from align.errors import DataMissingError, InvalidInputError  # noqa: E402
from align.metrics.probe import TripletProbe, core  # noqa: E402
from align.metrics.splits import ObjectKFold  # noqa: E402
from align.models import load_model  # noqa: E402
from align.models.engine import _prefetched  # noqa: E402

# ----------------------------------------------------------------------------- probe


def _things(data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """THINGS responses (odd one out in column 2) and 700-d features built from the
    human SPoSE embedding (more features than a fold's training objects, so the exact
    r x r reduction applies)."""
    raw = np.loadtxt(
        data_dir / "things" / "test_triplets_things_concepts_order0.csv",
        delimiter=",",
        skiprows=1,
        dtype=np.int64,
    )
    order = np.array([[1, 2, 0], [0, 2, 1], [0, 1, 2]])[raw[:, 3] - 1]
    trip = np.take_along_axis(raw[:, :3], order, axis=1)
    spose = np.loadtxt(data_dir / "things_spose66d" / "spose_embedding_66d.txt")
    rng = np.random.default_rng(0)
    X = spose @ rng.normal(size=(66, 700)) + 2.0 * rng.normal(size=(len(spose), 700))
    return np.maximum(X, 0.0).astype(np.float32), trip


def test_reduction_cache_gives_the_recomputed_fit_bit_for_bit(data_dir, monkeypatch):
    X, trip = _things(data_dir)
    train, test = ObjectKFold(3, 0).split(X.shape[0], trip)[0]
    assert X.shape[1] > len(np.unique(trip[train]))  # the reduction applies
    cache = core.ReductionCache(size=4)
    monkeypatch.setattr(core, "REDUCTIONS", cache)
    fits = {}
    for size in (0, 4):  # 0: every fit factorises (the old path); 4: once per fold
        cache.size = size
        cache.clear()
        for lam in (1.0, 1e-2):
            est = TripletProbe(reg=lam, dtype="float32", max_iter=25, seed=0)
            fits[size, lam] = est.fit(X, trip[train])
        assert len(cache._bases) == (1 if size else 0)  # one SVD for both lambdas
    for lam in (1.0, 1e-2):
        ref, new = fits[0, lam], fits[4, lam]
        assert np.array_equal(ref.weights_, new.weights_)
        assert ref.loss_curve_ == new.loss_curve_
        assert ref.loss(X, trip[test]) == new.loss(X, trip[test])
    # and the reduced fit is the full p x p fit (reduce=False) up to convergence
    full = TripletProbe(reg=1.0, dtype="float64", seed=0, reduce=False).fit(X, trip[train])
    red = TripletProbe(reg=1.0, dtype="float64", seed=0).fit(X, trip[train])
    assert abs(full.loss(X, trip[test]) - red.loss(X, trip[test])) < 1e-4


def test_folds_in_threads_give_the_serial_search(data_dir):
    """cross_validate(n_jobs=3): the three folds in threads (one torch thread each here)
    give the serial search's numbers exactly, on real SPoSE features and responses."""
    from align.metrics.probe import cross_validate

    spose = np.loadtxt(data_dir / "things_spose66d" / "spose_embedding_66d.txt")
    _, trip = _things(data_dir)
    est = TripletProbe(dtype="float32", max_iter=20, seed=0)
    kw = {"lambdas": (1.0, 1e-2), "cv": ObjectKFold(3, 0), "refit": False}
    serial = cross_validate(est, spose, trip, n_jobs=1, **kw)
    threaded = cross_validate(est, spose, trip, n_jobs=3, **kw)
    assert np.array_equal(serial.cross_entropy, threaded.cross_entropy)
    assert np.array_equal(serial.n_iter, threaded.n_iter)
    for a, b in zip(serial.correct, threaded.correct, strict=True):
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(InvalidInputError, match="n_jobs"):
        cross_validate(est, spose, trip, n_jobs=0, **kw)


def test_reduction_cache_keys_on_content_not_identity():
    rng = np.random.default_rng(1)
    rows, W0 = rng.normal(size=(5, 9)), rng.normal(size=(9, 9))
    cache = core.ReductionCache(size=2)
    V, Q, R = cache.get(rows, W0)
    assert np.allclose(V.T @ V, np.eye(5)) and np.allclose(Q @ Q.T, np.eye(5))
    assert np.allclose(R @ Q, V.T @ W0)  # B0 Q = V^T W0: the start is W0 on the rows
    V2, Q2, _ = cache.get(rows.copy(), W0.copy())
    assert V2 is V and Q2 is Q  # same content: the cached arrays
    changed = rows.copy()
    changed[0, 0] += 1e-12
    assert cache.get(changed, W0)[0] is not V  # any change: recomputed
    for _ in range(3):  # bounded: the oldest entries go
        cache.get(rng.normal(size=(5, 9)), W0)
    assert len(cache._bases) == 2 and len(cache._starts) == 2
    with pytest.raises(InvalidInputError, match="constant"):
        cache.get(np.zeros((3, 9)), W0)


def _logistic(seed: int, n: int = 60, p: int = 8, spread: float = 0.0):
    """A smooth convex objective with a closed-form gradient in the shape the probe's
    L-BFGS runs on: ``evaluate(W, b) -> (f, dW, db)``; W (p, p), b (p,). ``spread``
    scales the columns of A over 10^0 .. 10^spread (ill-conditioned: more iterations)."""
    rng = np.random.default_rng(seed)
    A = torch.from_numpy(rng.normal(size=(n, p)) * np.logspace(0, spread, p))
    y = torch.from_numpy(rng.integers(0, 2, size=(n, p)).astype(np.float64))

    def evaluate(W, b):
        Z = A @ W + (0.0 if b is None else b)
        f = float((torch.nn.functional.softplus(Z) - y * Z).mean() + 0.05 * (W * W).sum())
        G = (torch.sigmoid(Z) - y) / Z.numel()
        return f, A.T @ G + 0.1 * W, None if b is None else G.sum(0)

    return evaluate


def _tiny_quadratic(W, b):
    """1e-3 * ||W - 1||^2 (+ the same for b): the first step (t = 1 along -g, |g| ~ 1e-3)
    is far too short, so the line search extrapolates for several evaluations and the
    evaluation budget (2 max_iter) ends the fit."""
    f = 1e-3 * float(((W - 1) ** 2).sum())
    if b is not None:
        f += 1e-3 * float(((b - 1) ** 2).sum())
    return f, 2e-3 * (W - 1), None if b is None else 2e-3 * (b - 1)


def _rosenbrock(W, b):
    """Rosenbrock's valley over the entries of W (and b): curved, so the strong-Wolfe
    line search often brackets and returns an earlier trial than its last one."""
    x = W.reshape(-1) if b is None else torch.cat([W.reshape(-1), b])
    f = float((100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum())
    g = torch.zeros_like(x)
    g[:-1] += -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    n = W.numel()
    return f, g[:n].reshape(W.shape), None if b is None else g[n:]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    ("problem", "max_iter", "start"),
    [
        ("logistic", 3, 0.0),
        ("logistic", 60, 0.0),
        ("tiny", 1, 0.0),
        ("tiny", 2, 0.0),
        ("rosenbrock", 80, -0.5),
    ],
)
def test_lbfgs_follows_torchs_lbfgs_to_rounding(bias, problem, max_iter, start):
    """lbfgs_minimise is torch's L-BFGS (history, scaling, first step, line search, budget
    and stopping rules) with the two-loop recursion done on inner products: with the stall
    rule off, in float64, it must take the same iterations and evaluations as torch's ONE
    step() call, with the objective and the iterates equal to rounding: past the 20-pair
    history (logistic, 60), when the evaluation budget ends the fit (tiny), on a curved
    valley where line searches bracket (rosenbrock)."""
    evaluate = {
        "logistic": _logistic(3, spread=2.5),
        "tiny": _tiny_quadratic,
        "rosenbrock": _rosenbrock,
    }[problem]
    p = 8 if problem == "logistic" else 3
    runs = []
    for mode in ("torch", "ours"):
        W = torch.full((p, p), start, dtype=torch.float64, requires_grad=True)
        b = torch.full((p,), start, dtype=torch.float64, requires_grad=True) if bias else None
        params = [W] if b is None else [W, b]
        curve: list[float] = []

        def logged(W_, b_, curve=curve):
            f, gW, gb = evaluate(W_, b_)
            curve.append(f)
            return f, gW, gb

        if mode == "ours":
            n_iter = core.lbfgs_minimise(params, logged, max_iter=max_iter, tol=1e-9, stall_tol=0.0)
        else:
            opt = torch.optim.LBFGS(
                params,
                lr=1.0,
                max_iter=max_iter,
                max_eval=2 * max_iter,
                tolerance_grad=1e-12,
                tolerance_change=1e-9,
                history_size=core.LBFGS_HISTORY,
                line_search_fn="strong_wolfe",
            )

            def closure(W=W, b=b, logged=logged):
                with torch.no_grad():
                    f, gW, gb = logged(W, b)
                    W.grad = gW
                    if b is not None:
                        b.grad = gb
                return torch.tensor(f, dtype=torch.float64)

            opt.step(closure)
            n_iter = opt.state[W]["n_iter"]
        runs.append((W.detach().clone(), None if b is None else b.detach().clone(), curve, n_iter))
    (W1, b1, c1, n1), (W2, b2, c2, n2) = runs
    assert n1 == n2
    assert len(c1) == len(c2)  # the same evaluations, in the same order
    # the valley amplifies rounding: 1e-16 at the first evaluations, up to 2e-5 after
    # 80 as f -> 1e-9 (the same counts and the first 10 evaluations tie the paths)
    rtol = 1e-4 if problem == "rosenbrock" else 1e-10
    np.testing.assert_allclose(c2, c1, rtol=rtol, atol=1e-12 if problem == "rosenbrock" else 0)
    np.testing.assert_allclose(c2[:10], c1[:10], rtol=1e-13)
    torch.testing.assert_close(W2, W1, rtol=rtol, atol=1e-12)
    if b1 is not None:
        torch.testing.assert_close(b2, b1, rtol=rtol, atol=1e-12)
    if problem == "logistic" and max_iter == 60:  # the history size is part of the path
        assert n1 > core.LBFGS_HISTORY + 5
    if problem == "tiny":  # the evaluation budget (2 max_iter) was reached: it ended the
        # fit (max_iter 1: inside the first line search, which may take one more)
        assert len(c1) >= 2 * max_iter and n1 <= max_iter
    if problem == "logistic" and max_iter == 3:
        assert n1 == 3


@pytest.mark.parametrize("p", [3, 20])
def test_lbfgs_gradient_rule_stops_at_tol_times_1e_3_and_not_before(p):
    """A flat, badly scaled quadratic (curvatures 1e-10 .. 1e-8, optimum at 1e9): the
    loss still falls by more than tol = 1 per iteration when the largest gradient entry
    reaches tol * 1e-3, so the gradient rule is the one that ends the fit, there and
    not earlier (the start's gradient, <= 10, is below 1e3: a looser rule stops at once).
    At p = 20 (400 entries) the gradient's 2-norm is up to 20 times its largest entry:
    the rule is on the largest entry, not on the norm."""
    curv = torch.from_numpy(np.logspace(-10, -8, p * p).reshape(p, p))
    target = 1e9

    def evaluate(W, b):
        D = W - target
        return float(0.5 * (curv * D * D).sum()), curv * D, None

    W = torch.zeros(p, p, dtype=torch.float64, requires_grad=True)
    n = core.lbfgs_minimise([W], evaluate, max_iter=200, tol=1.0, stall_tol=0.0)
    g = evaluate(W.detach(), None)[1]
    assert n >= 2 and float(g.abs().max()) <= 1e-3
    # one iteration fewer: the gradient was still above the threshold
    W1 = torch.zeros(p, p, dtype=torch.float64, requires_grad=True)
    core.lbfgs_minimise([W1], evaluate, max_iter=n - 1, tol=1.0, stall_tol=0.0)
    assert float(evaluate(W1.detach(), None)[1].abs().max()) > 1e-3


def test_lbfgs_stall_rule_stops_when_the_window_gain_is_below_its_tolerance():
    """The stall rule ends a fit once the objective fell by less than stall_tol * window *
    max(1, |f|) over the last `window` iterations, and not before: checked against the
    objective values at the accepted iterates (the last evaluation of each iteration)."""
    evaluate = _logistic(4, n=200, p=12)
    ref_values = []
    for stall in (0.0, 1e-4):
        W = torch.zeros(12, 12, dtype=torch.float64, requires_grad=True)
        accepted: list[float] = []
        n = core.lbfgs_minimise([W], evaluate, max_iter=200, tol=0.0, stall_tol=stall, window=3)
        # replay: the accepted objective after each iteration = f at the final W of a
        # run capped at that many iterations (the iterates do not depend on the cap)
        for k in range(1, n + 1):
            Wk = torch.zeros(12, 12, dtype=torch.float64, requires_grad=True)
            core.lbfgs_minimise([Wk], evaluate, max_iter=k, tol=0.0, stall_tol=0.0)
            accepted.append(evaluate(Wk.detach(), None)[0])
        if stall == 0.0:
            ref_values = accepted
            continue
        drops = [ref_values[k - 4] - ref_values[k - 1] for k in range(4, len(ref_values) + 1)]
        limit = [1e-4 * 3 * max(1.0, abs(ref_values[k - 1])) for k in range(4, len(ref_values) + 1)]
        first = next(i for i, (d, lim) in enumerate(zip(drops, limit, strict=True)) if d <= lim)
        assert n == first + 4  # stops at the first iteration whose window gain is small
        assert n < len(ref_values)  # and earlier than without the rule


def test_triangular_basis_spans_the_rows_and_makes_them_lower_trapezoidal():
    """Fewer rows than features: r = the rows' rank; otherwise r = p (a rotation), even
    for rank-deficient square rows; float64 whatever the input's dtype."""
    rng = np.random.default_rng(5)
    for n, p, rank, dtype in (
        (7, 12, 5, np.float64),
        (9, 6, 6, np.float64),
        (6, 6, 6, np.float64),
        (6, 6, 4, np.float64),
        (5, 9, 5, np.float32),
    ):
        rows = (rng.normal(size=(n, rank)) @ rng.normal(size=(rank, p))).astype(dtype)
        V, L = core.triangular_basis(rows)
        assert V.dtype == np.float64 and L.dtype == np.float64
        r = V.shape[1]
        assert r == (rank if n < p else p)
        np.testing.assert_allclose(V.T @ V, np.eye(r), atol=1e-12)
        np.testing.assert_allclose(L @ V.T, rows, atol=1e-10)  # rows = L V^T
        np.testing.assert_allclose(rows @ V, L, atol=1e-10)
        assert np.all(np.triu(L, 1) == 0.0)  # exactly lower trapezoidal


@pytest.mark.parametrize("n,q", [(200, 200), (260, 200), (97, 96), (40, 40), (410, 400)])
def test_lower_products_equal_the_dense_products(n, q):
    rng = np.random.default_rng(n + q)
    X = torch.from_numpy(np.tril(rng.normal(size=(n, q))))
    W = torch.from_numpy(rng.normal(size=(q, 30)))
    D = torch.from_numpy(rng.normal(size=(n, 30)))
    blocks = core.triangular_blocks(X)
    assert bool(blocks) == (q >= 2 * core.MIN_TRIANGLE_BLOCK)
    if blocks:  # the blocks tile [0, q) in order, about TRIANGLE_BLOCKS of them
        assert blocks[0][0] == 0 and blocks[-1][1] == q
        step = max(core.MIN_TRIANGLE_BLOCK, math.ceil(q / core.TRIANGLE_BLOCKS))
        assert len(blocks) == math.ceil(q / step)
        assert all(a2 == b1 for (_, b1), (a2, _) in itertools.pairwise(blocks))
    torch.testing.assert_close(core.lower_product(X, W, blocks), X @ W, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        core.lower_transposed_product(X, D, blocks), X.T @ D, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_all_finite_is_isfinite_all(dtype):
    big = torch.finfo(dtype).max
    cases = [
        torch.zeros(5, dtype=dtype),
        torch.full((1000,), big, dtype=dtype),  # a float64 sum overflows: falls back
        torch.tensor([1.0, float("inf")], dtype=dtype),
        torch.tensor([1.0, -float("inf"), float("inf")], dtype=dtype),
        torch.tensor([float("nan"), 2.0], dtype=dtype),
        torch.tensor([-big, big, 3.0], dtype=dtype),
    ]
    for t in cases:
        assert core.all_finite(t) == bool(torch.isfinite(t).all())
    assert core.all_finite(torch.arange(4))  # integers are finite


# ----------------------------------------------------------------------------- engine


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("timm")
    try:
        return load_model("timm/tf_efficientnet_lite0", device="cpu")
    except DataMissingError as e:  # pragma: no cover - the weights extra is not installed
        pytest.skip(f"EfficientNet-Lite0 weights not installed: {e}")


def _images(data_dir: Path, n: int) -> list[Path]:
    paths = sorted((data_dir / "things" / "images").glob("*_[0-9][0-9][bs].jpg"))[:n]
    if len(paths) < n:
        pytest.skip("THINGS images not found")
    return paths


def test_prefetched_decoding_gives_the_serial_rows_bit_for_bit(lite0, data_dir, monkeypatch):
    paths = _images(data_dir, 7)
    monkeypatch.setattr(lite0, "prefetch_batches", 0)
    serial = lite0.embed(paths, layers=("penultimate", "logits"), batch_size=3)
    monkeypatch.setattr(lite0, "prefetch_batches", 2)
    seen: list[str] = []
    real = lite0._run

    def spy(x, names):  # record which thread ran the forward pass
        seen.append(threading.current_thread().name)
        return real(x, names)

    monkeypatch.setattr(lite0, "_run", spy)
    overlapped = lite0.embed(paths, layers=("penultimate", "logits"), batch_size=3)
    assert seen == [threading.current_thread().name] * 3  # forward in the caller, 3 batches
    for name in ("penultimate", "logits"):
        assert np.array_equal(overlapped[name], serial[name])


def test_prefetched_decoding_raises_the_bad_images_error_and_stops(lite0, data_dir, tmp_path):
    paths = _images(data_dir, 5)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(paths[0].read_bytes()[:200])  # a truncated JPEG
    stimuli = [*paths[:4], bad, paths[4]]
    before = {t.ident for t in threading.enumerate()}
    with pytest.raises(InvalidInputError, match=r"stimuli\[4\].*broken\.jpg"):
        lite0.embed(stimuli, batch_size=2)
    leftover = [t for t in threading.enumerate() if t.ident not in before]
    assert not [t for t in leftover if t.name == "align-decode"]  # producer joined


def test_prefetched_keeps_order_passes_errors_and_stops_early():
    assert list(_prefetched(iter(range(10)), 2)) == list(range(10))

    def failing():
        yield 1
        raise ValueError("decode failed")

    got = []
    with pytest.raises(ValueError, match="decode failed"):
        for item in _prefetched(failing(), 2):
            got.append(item)
    assert got == [1]

    produced: list[int] = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = _prefetched(endless(), 2)
    assert next(gen) == 0
    gen.close()  # the consumer stops: the producer is told to stop and joined
    assert not [t for t in threading.enumerate() if t.name == "align-decode"]
    assert len(produced) <= 1 + 2 + 2  # the one taken, <= 2 queued, 1 in hand, 1 offered
