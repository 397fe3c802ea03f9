"""Benchmark: RSA with a stimulus bootstrap on thousands of stimuli.

    python -m bench rsa [--n 2000] [--p 1024] [--resamples 1000] [--naive-resamples 3]

Ours: ``align.metrics.rsa.rsa`` (model RDM once, float32; every resample is a weighted
comparison of the two fixed pair vectors). Baseline, measured in the same run: the
naive bootstrap that rebuilds the model RDM from the resampled feature rows with
``scipy.spatial.distance.pdist``, indexes the human RDM, drops the duplicate-stimulus
pairs and calls ``scipy.stats.spearmanr``; timed on a few resamples and extrapolated.
The first naive resamples are also checked against ours (same seed, same draws).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np


def _threads() -> None:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "2")


def _data(n: int, p: int, subjects: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Features (n, p) float32 and ``subjects`` noisy human RDMs that share structure."""
    from align.metrics.rsa import compute_rdm

    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 32))
    X = (latent @ rng.normal(size=(32, p)) + 3.0 * rng.normal(size=(n, p))).astype(np.float32)
    base = compute_rdm(latent, "euclidean")
    human = np.empty((subjects, n, n))
    for s in range(subjects):
        noise = rng.normal(scale=0.5 * base.std(), size=(n, n))
        human[s] = base + (noise + noise.T) / 2
        np.fill_diagonal(human[s], 0.0)
    return X, human


def _naive(
    X: np.ndarray, human_mean: np.ndarray, n_resamples: int, seed: int
) -> tuple[list[float], float]:
    from scipy.spatial.distance import pdist, squareform
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    n = X.shape[0]
    i, j = np.triu_indices(n, 1)
    values = []
    start = time.perf_counter()
    for _ in range(n_resamples):
        idx = rng.integers(0, n, size=n)
        keep = idx[i] != idx[j]
        model = squareform(pdist(X[idx].astype(np.float64), "cosine"))[i, j][keep]
        hum = human_mean[np.ix_(idx, idx)][i, j][keep]
        values.append(float(spearmanr(model, hum)[0]))
    return values, (time.perf_counter() - start) / n_resamples


def main(argv: list[str] | None = None) -> dict[str, object]:
    _threads()
    parser = argparse.ArgumentParser(prog="python -m bench rsa", description=__doc__)
    parser.add_argument("--n", type=int, default=2000, help="stimuli")
    parser.add_argument("--p", type=int, default=1024, help="features")
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON line only")
    args = parser.parse_args(argv)

    from align.metrics.rsa import _bootstrap, compute_rdm, rsa

    X, human = _data(args.n, args.p, args.subjects, args.seed)
    n_pairs = args.n * (args.n - 1) // 2

    t0 = time.perf_counter()
    rdm = compute_rdm(X, "cosine")
    t_rdm = time.perf_counter() - t0

    t0 = time.perf_counter()
    result = rsa(X, human, "dissimilarity", n_bootstrap=args.resamples, seed=args.seed)
    t_total = time.perf_counter() - t0

    iu = np.triu_indices(args.n, 1)
    model_vec = rdm[iu].astype(np.float64)
    human_mean = human.mean(axis=0)
    t0 = time.perf_counter()
    ours_first = _bootstrap(
        model_vec, human_mean[iu], args.n, "spearman", args.naive_resamples, args.seed
    )
    t_ours_few = (time.perf_counter() - t0) / max(args.naive_resamples, 1)

    t0 = time.perf_counter()
    rsa(X, human, "dissimilarity", n_bootstrap=0, seed=args.seed)
    t_no_boot = time.perf_counter() - t0
    t_boot_per = max(t_total - t_no_boot, 0.0) / max(args.resamples, 1)

    naive_values, t_naive_per = _naive(X, human_mean, args.naive_resamples, args.seed)
    max_diff = float(np.max(np.abs(np.asarray(naive_values) - ours_first)))

    out: dict[str, object] = {
        "benchmark": "rsa_bootstrap",
        "n_stimuli": args.n,
        "n_features": args.p,
        "n_pairs": n_pairs,
        "n_subjects": args.subjects,
        "resamples": args.resamples,
        "spearman": round(result.spearman, 6),
        "ci": [round(v, 6) for v in result.ci] if result.ci else None,
        "noise_ceiling": [
            round(result.noise_ceiling.lower, 4),
            round(result.noise_ceiling.upper, 4),
        ]
        if result.noise_ceiling
        else None,
        "model_rdm_s": round(t_rdm, 3),
        "ours_total_s": round(t_total, 2),
        "ours_without_bootstrap_s": round(t_no_boot, 2),
        "ours_per_resample_ms": round(1000 * t_boot_per, 2),
        "ours_per_resample_ms_first_few": round(1000 * t_ours_few, 2),
        "naive_per_resample_s": round(t_naive_per, 3),
        "naive_resamples_timed": args.naive_resamples,
        "naive_extrapolated_s": round(t_naive_per * args.resamples, 1),
        "speedup_bootstrap": round(t_naive_per / t_boot_per, 1) if t_boot_per > 0 else None,
        "speedup_total": round(t_naive_per * args.resamples / t_total, 1),
        "max_abs_diff_vs_naive": max_diff,
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
    }
    if args.json:
        print(json.dumps(out))
    else:
        for key, value in out.items():
            print(f"{key:32s} {value}")
    return out


if __name__ == "__main__":
    main()
