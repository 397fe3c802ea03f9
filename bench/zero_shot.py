"""Benchmark: zero-shot odd-one-out accuracy at the scale of the full THINGS set.

    python -m bench zero_shot [--n 1854] [--p 1280] [--m 4700000] [--loop 20000]
                              [--repeats 3] [--threads 1] [--json]

Data: ``n x p`` float32 random features (the size of THINGS embedded by an
EfficientNet-Lite0) and ``m`` random triplets of distinct stimuli (the size of the
4.7 M-triplet THINGS set). Ours: ``align.metrics.oddoneout.predict_odd_one_out`` per
similarity (best of ``--repeats``), and the full ``odd_one_out`` (grouping, noise ceiling,
1000-resample bootstrap). Baseline, measured in the same run: a plain per-triplet Python
loop (numpy dot products for each pair, the way a first implementation is written) on
the first ``--loop`` triplets; its predictions are checked against ours. The speed-up
is per triplet of CPU time (``time.process_time``; wall time is printed too, and on a
busy shared machine it includes waiting for a core). BLAS is limited to ``--threads``
threads (default one core).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIMILARITIES = ("cosine", "dot", "euclidean")


def _limit_threads(threads: int) -> Any:
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(threads))
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - env vars above cover a fresh process
        return None
    return threadpool_limits(limits=threads)


def _triplets(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """``m`` triplets of three distinct stimuli, drawn uniformly."""
    T = rng.integers(0, n, size=(m, 3))
    while True:
        bad = (T[:, 0] == T[:, 1]) | (T[:, 0] == T[:, 2]) | (T[:, 1] == T[:, 2])
        if not bad.any():
            return T
        T[bad] = rng.integers(0, n, size=(int(bad.sum()), 3))


def _best_of(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(best wall seconds, best CPU seconds of this process, last result).

    CPU time is what one core spends; on a shared machine it is the fairer number (wall
    time there includes waiting for the CPU)."""
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best_cpu = min(best_cpu, time.process_time() - cpu)
        best_wall = min(best_wall, time.perf_counter() - wall)
    return best_wall, best_cpu, out


def naive_predict(X: np.ndarray, T: np.ndarray, similarity: str) -> np.ndarray:
    """The plain loop: one triplet at a time, three numpy similarities each."""

    def sim(u: np.ndarray, v: np.ndarray) -> float:
        if similarity == "dot":
            return float(np.dot(u, v))
        if similarity == "cosine":
            return float(np.dot(u, v) / (np.linalg.norm(u) * np.linalg.norm(v)))
        return -float(np.linalg.norm(u - v))

    out = np.empty(len(T), dtype=np.int64)
    for t, (a, b, c) in enumerate(T):
        s = (sim(X[a], X[b]), sim(X[a], X[c]), sim(X[b], X[c]))
        out[t] = -1 if s[0] == s[1] == s[2] else 2 - int(np.argmax(s))
    return out


_BASELINE_SCRIPT = r"""
import json, sys, time
import numpy as np
from align.metrics.oddoneout import odd_one_out, predict_odd_one_out
folder, repeats = sys.argv[1], int(sys.argv[2])
X, T = np.load(folder + "/X.npy"), np.load(folder + "/T.npy")
out = {}
def best(fn):
    cpu, res = float("inf"), None
    for _ in range(repeats):
        c = time.process_time(); res = fn(); cpu = min(cpu, time.process_time() - c)
    return cpu, res
for s in ("cosine", "dot", "euclidean"):
    cpu, pred = best(lambda: predict_odd_one_out(X, T, s))
    np.save(folder + "/pred_" + s + ".npy", pred)
    out[s] = cpu
cpu, r = best(lambda: odd_one_out(X, T, n_bootstrap=1000))
out["full"] = cpu
out["full_result"] = [r.accuracy, list(r.ci), r.ceiling, r.ceiling_loo, r.n_distinct]
print(json.dumps(out))
"""


def run_baseline(src: str, X: np.ndarray, T: np.ndarray, repeats: int, threads: int) -> Any:
    """Time the same calls with the package under ``src`` (e.g. an older commit's
    ``client/`` from ``git archive``) in a subprocess on the same data; returns its CPU
    seconds per call and its predictions (for the bit-for-bit check)."""
    import subprocess
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        np.save(f"{folder}/X.npy", X)
        np.save(f"{folder}/T.npy", T)
        env = {
            **os.environ,
            "PYTHONPATH": src,
            **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")},
        }
        done = subprocess.run(
            [sys.executable, "-c", _BASELINE_SCRIPT, folder, str(repeats)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out = json.loads(done.stdout.strip().splitlines()[-1])
        out["pred"] = {s: np.load(f"{folder}/pred_{s}.npy") for s in SIMILARITIES}
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m bench zero_shot", description=__doc__)
    parser.add_argument("--n", type=int, default=1854, help="stimuli")
    parser.add_argument("--p", type=int, default=1280, help="feature dimensions")
    parser.add_argument("--m", type=int, default=4_700_000, help="triplets")
    parser.add_argument("--loop", type=int, default=20_000, help="triplets for the plain loop")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    parser.add_argument("--threads", type=int, default=1, help="BLAS threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--baseline-src",
        default=None,
        help="also time the package under this folder (e.g. `git archive OLD client/align | "
        "tar -x -C DIR`, then DIR/client) on the same data, and check its predictions equal",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args(argv)
    limiter = _limit_threads(args.threads)

    from align.metrics.oddoneout import odd_one_out, predict_odd_one_out

    rng = np.random.default_rng(args.seed)
    X = rng.standard_normal((args.n, args.p)).astype(np.float32)
    T = _triplets(rng, args.n, args.m)
    loop_T = T[: args.loop]

    rows = []
    for similarity in SIMILARITIES:

        def ours(s: str = similarity) -> np.ndarray:
            return predict_odd_one_out(X, T, s)

        def loop(s: str = similarity) -> np.ndarray:
            return naive_predict(X, loop_T, s)

        ours_s, ours_cpu, pred = _best_of(ours, args.repeats)
        _, loop_cpu, loop_pred = _best_of(loop, 1)
        agree = float(np.mean(loop_pred == pred[: args.loop]))
        ours_per = ours_cpu / args.m
        loop_per = loop_cpu / len(loop_T)
        rows.append(
            {
                "what": f"predict_odd_one_out {similarity}",
                "triplets": args.m,
                "seconds": ours_s,
                "cpu_seconds": ours_cpu,
                "us_per_triplet": ours_per * 1e6,
                "loop_us_per_triplet": loop_per * 1e6,
                "speedup": loop_per / ours_per,
                "agreement_with_loop": agree,
                "accuracy": float(np.mean(pred == 2)),
            }
        )
    full_s, full_cpu, result = _best_of(lambda: odd_one_out(X, T, n_bootstrap=1000), args.repeats)
    rows.append(
        {
            "what": "odd_one_out cosine (+ceiling, 1000 bootstrap)",
            "triplets": args.m,
            "seconds": full_s,
            "cpu_seconds": full_cpu,
            "us_per_triplet": full_cpu / args.m * 1e6,
            "loop_us_per_triplet": None,
            "speedup": None,
            "agreement_with_loop": None,
            "accuracy": result.accuracy,
        }
    )
    if limiter is not None:
        limiter.restore_original_limits()
    if args.baseline_src:
        base = run_baseline(args.baseline_src, X, T, args.repeats, args.threads)
        for r, key in zip(rows, [*SIMILARITIES, "full"], strict=True):
            r["baseline_cpu_seconds"] = base[key]
            r["times_faster"] = base[key] / r["cpu_seconds"]
        for r, s in zip(rows[:-1], SIMILARITIES, strict=True):
            ours_pred = predict_odd_one_out(X, T, s)
            r["identical_to_baseline"] = bool(np.array_equal(ours_pred, base["pred"][s]))
        ci = list(result.ci or ())
        res = [result.accuracy, ci, result.ceiling, result.ceiling_loo, result.n_distinct]
        rows[-1]["identical_to_baseline"] = res == base["full_result"]

    summary = {
        "benchmark": "zero_shot",
        "n": args.n,
        "p": args.p,
        "m": args.m,
        "loop_triplets": len(loop_T),
        "repeats": args.repeats,
        "threads": args.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpus": os.cpu_count(),
        "numpy": np.__version__,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(
            f"zero-shot odd-one-out: {args.m:,} triplets over {args.n} x {args.p} float32, "
            f"{args.threads} BLAS thread(s), best of {args.repeats}; plain loop on "
            f"{len(loop_T):,} triplets"
        )
        print(
            f"{'what':48s} {'wall s':>8s} {'cpu s':>8s} {'us/triplet':>11s} {'loop us/trip':>13s} "
            f"{'speed-up':>9s} {'agree':>6s} {'acc':>6s}"
        )
        for r in rows:
            if "baseline_cpu_seconds" in r:
                print(
                    f"  baseline {args.baseline_src}: {r['baseline_cpu_seconds']:.3f} cpu s, "
                    f"ours {r['times_faster']:.2f}x faster, identical: {r['identical_to_baseline']}"
                )
            looped = f"{r['loop_us_per_triplet']:13.2f}" if r["loop_us_per_triplet"] else " " * 13
            speed = f"{r['speedup']:8.0f}x" if r["speedup"] else " " * 9
            agreed = f"{r['agreement_with_loop']:6.4f}" if r["agreement_with_loop"] else " " * 6
            print(
                f"{r['what']:48s} {r['seconds']:8.3f} {r['cpu_seconds']:8.3f} "
                f"{r['us_per_triplet']:11.4f} {looped} "
                f"{speed} {agreed} {r['accuracy']:6.4f}"
            )
    return summary


if __name__ == "__main__":
    main()
