"""The L-BFGS objective's closed-form gradient (core.TripletObjective) equals autograd
of the stated objective, written here with torch ops from METHODS.md section 3."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from align.metrics.glocal import LocalNeighbourhoodTerm  # noqa: E402
from align.metrics.probe import core  # noqa: E402
from align.metrics.probe.core import FitOptions, TripletObjective, compress, localise  # noqa: E402


def _opts(reg_kind: str, normalize: bool, bias: bool, reg: float = 0.3) -> FitOptions:
    return FitOptions(
        reg=reg, reg_kind=reg_kind, init="normal", tau=1.0, normalize=normalize, bias=bias,
        optimizer="lbfgs", max_iter=None, tol=1e-7, lr=1e-3, batch_size=256, patience=10,
        val_fraction=0.1, dtype="float64", seed=0, device="cpu", n_threads=None, reduce=False,
    )  # fmt: skip


def _autograd(Xs, trip, W, b, reg, reg_kind, normalize, extra=None, Ls=None, tc=None):
    """Objective and gradient from the rule text: mean over RESPONSES (repeats kept) of
    logsumexp(s) - s_ab, E = Xs W + b (rows L2-normalised if asked), plus reg * R(W)."""
    Wt = torch.tensor(W, requires_grad=True)
    bt = None if b is None else torch.tensor(b, requires_grad=True)

    def embed(R):
        E = R @ Wt
        if bt is not None:
            E = E + bt
        if normalize:
            E = E / E.norm(dim=1, keepdim=True).clamp_min(1e-12)
        return E

    E = embed(torch.tensor(Xs))
    t = torch.as_tensor(trip)
    a, bb, c = E[t[:, 0]], E[t[:, 1]], E[t[:, 2]]
    S = torch.stack([(a * bb).sum(1), (a * c).sum(1), (bb * c).sum(1)], 1)
    ce = (torch.logsumexp(S, 1) - S[:, 0]).mean()
    if extra is not None:
        ce = extra.mix(ce, torch.tensor(Ls), tc[0], tc[1], embed, None)
    if reg_kind == "frobenius":
        pen = torch.sqrt((Wt**2).sum())
    elif reg_kind == "squared":
        pen = (Wt**2).sum()
    else:
        pen = ((Wt - torch.diagonal(Wt).mean() * torch.eye(Wt.shape[0], dtype=Wt.dtype)) ** 2).sum()
    f = ce + reg * pen
    f.backward()
    gb = None if bt is None else bt.grad.numpy()
    return float(f.detach()), Wt.grad.numpy(), gb


def _data(seed: int = 0, n: int = 25, p: int = 9, m: int = 300):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, p))
    trip = np.array([rng.choice(n, 3, replace=False) for _ in range(m // 3)])
    trip = np.concatenate([trip, trip[: m // 4], trip[: m // 8, [1, 0, 2]]])  # repeats
    W = rng.normal(size=(p, p)) * 0.4
    return X, trip, W, rng.normal(size=p) * 0.3


@pytest.mark.parametrize("reg_kind", ["frobenius", "squared", "identity"])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("bias", [False, True])
def test_closed_form_gradient_equals_autograd(reg_kind: str, normalize: bool, bias: bool):
    X, trip, W, b = _data()
    uniq, counts = compress(trip)  # distinct triplets with counts: the same mean
    objs, tloc = localise(uniq)
    fit = core._Fit(_opts(reg_kind, normalize, bias), 0.0, 1.0, None)
    obj = TripletObjective(fit, X[objs], tloc, counts, bias)
    x = W.ravel() if not bias else np.concatenate([W.ravel(), b])
    f, g = obj(x)
    f_ref, gW_ref, gb_ref = _autograd(X, trip, W, b if bias else None, 0.3, reg_kind, normalize)
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g[: W.size].reshape(W.shape), gW_ref, rtol=1e-10, atol=1e-13)
    if bias:
        np.testing.assert_allclose(g[W.size :], gb_ref, rtol=1e-10, atol=1e-13)
    assert np.abs(gW_ref).max() > 1e-3  # a gradient worth comparing


def test_closed_form_gradient_with_the_glocal_term_equals_autograd():
    X, trip, W, _b = _data(seed=1)
    rng = np.random.default_rng(2)
    L = rng.normal(size=(30, X.shape[1]))
    term = LocalNeighbourhoodTerm(alpha=0.4, temperature=0.5, local_batch_size=16, seed=0)
    uniq, counts = compress(trip)
    objs, tloc = localise(uniq)
    fit = core._Fit(_opts("frobenius", False, False), 0.0, 1.0, term)
    targets, chunks = term.setup(L, True, fit.tensor)
    obj = TripletObjective(fit, X[objs], tloc, counts, False, L, targets, chunks)
    with torch.no_grad():  # as inside the L-BFGS closure: the term's autograd still runs
        f, g = obj(W.ravel())
    f_ref, gW_ref, _ = _autograd(
        X, trip, W, None, 0.3, "frobenius", False, term, L, (targets, chunks)
    )
    assert f == pytest.approx(f_ref, rel=1e-12)
    np.testing.assert_allclose(g.reshape(W.shape), gW_ref, rtol=1e-10, atol=1e-13)


def test_collapsed_start_refuses_only_a_transform_near_zero():
    # lambda = 10 (unsquared penalty) drives W onto the kink at 0: collapsed. A weak
    # penalty leaves a transform whose norm is BELOW the N(0, 1e-3^2) init's yet far
    # from collapsed (the old "norm below the init's" rule refused it).
    from align.metrics.probe import TripletProbe
    from align.metrics.probe.cv import collapsed_start

    X, trip, _, _ = _data(seed=3, n=40, p=60, m=400)
    strong = TripletProbe(reg=10.0, seed=0).fit(X, trip)
    assert collapsed_start(strong, X, trip)
    weak = TripletProbe(reg=1e-2, seed=0).fit(X, trip)
    init_norm = np.linalg.norm(weak.initial_weights(X.shape[1]))
    Z = (X - weak.mean_) / weak.std_
    S = (Z @ weak.weights_) @ (Z @ weak.weights_).T
    assert np.abs(S).max() > 1e-2  # its similarities are not ~0
    weak.weights_ = weak.weights_ * (0.5 * init_norm / np.linalg.norm(weak.weights_))
    assert not collapsed_start(weak, X, trip)  # half the init's norm: still a start
    weak.weights_ = weak.weights_ * 1e-4
    assert collapsed_start(weak, X, trip)
