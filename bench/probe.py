"""Linear probe at THINGS scale: the fast path vs today's cold L-BFGS (and the paper's Adam).

``python -m bench probe [--p 1280] [--threads 2] [--adam-lambdas none|all|L,L,...]
[--adam-epochs 100] [--no-warm] [--features PATH.npy] [--json]``

Work: ``cross_validate`` of a float32 ``TripletProbe`` (L-BFGS) over the 20,000 real
THINGS responses (1,854 objects, 3 object-disjoint folds, the 7-value lambda grid,
lambda chosen by held-out cross-entropy, then the refit at the chosen lambda) on
``n x p`` features, in the same run:

- ``reference``: the path as it was before issue 14: folds one after another on
  ``--threads`` torch threads, every fit factorising its exact r x r reduction again
  (``core.REDUCTIONS.size = 0``), every lambda from the seeded init (cold);
- ``cached``: the reference with the fold's reduction factorised once for the whole
  grid (the same fits bit for bit: same thread count per fit);
- ``fast``: the default now: folds in parallel threads (``n_jobs`` = threads), the
  fold's reduction factorised once for the whole grid, cold starts;
- ``warm`` (unless ``--no-warm``): ``fast`` plus ``warm_start=True``;
- ``adam`` (``--adam-lambdas``): the paper's Adam (lr 1e-3, batch 256, <= 100 epochs,
  early stopping on 10 % of the training triplets, patience 10), default off (minutes).

Reports wall and CPU seconds, the load average before/after, and the held-out
cross-entropy/accuracy per lambda of every run, and whether each run's CE is no worse
than the reference's at every lambda (to the 4 printed digits).

Features (default): "real-ish" 1280-d features with human-relevant structure and no
images needed: ``relu(SPoSE_66d @ R + 2 * noise)`` with ``R`` Gaussian (66 x 1280),
seeded; SPoSE is the human-derived THINGS embedding in ../shared/data. Pass
``--features`` to use a saved ``(1854, p)`` model embedding in things_concepts order.
NOTE: only 1,000 distinct triplets exist here; a p x p probe overfits them (see
METHODS.md section 3, "Small data"): this benchmark measures the optimiser, not the
alignment of any model.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DATA_DIR = Path(os.environ.get("ALIGN_DATA_DIR", HERE.parent.parent / "shared" / "data"))
PAIR_ORDER = np.array([[0, 1, 2], [0, 2, 1], [1, 2, 0]])


def load_things_triplets(data_dir: Path) -> np.ndarray:
    """20,000 responses, 0-based concept order, odd one out moved to column 2."""
    path = data_dir / "things" / "test_triplets_things_concepts_order0.csv"
    if not path.is_file():
        raise SystemExit(f"bench probe: {path} not found (set ALIGN_DATA_DIR)")
    raw = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    pair = np.array([2, 1, 0])[raw[:, 3] - 1]  # odd position 1..3 -> pair bc, ac, ab
    return np.take_along_axis(raw[:, :3], PAIR_ORDER[pair], axis=1)


def realish_features(data_dir: Path, p: int, seed: int = 0) -> np.ndarray:
    path = data_dir / "things_spose66d" / "spose_embedding_66d.txt"
    if not path.is_file():
        raise SystemExit(f"bench probe: {path} not found (set ALIGN_DATA_DIR)")
    spose = np.loadtxt(path)
    rng = np.random.default_rng(seed)
    F = spose @ rng.normal(size=(spose.shape[1], p)) + 2.0 * rng.normal(size=(len(spose), p))
    return np.maximum(F, 0.0).astype(np.float32)


def _run(
    X: np.ndarray,
    trip: np.ndarray,
    lambdas: tuple[float, ...],
    n_jobs: int,
    cache: bool,
    warm_start: bool = False,
    **params: Any,
) -> tuple[Any, float, float]:
    from align.metrics.probe import TripletProbe, core, cross_validate
    from align.metrics.splits import ObjectKFold

    core.REDUCTIONS.clear()
    core.REDUCTIONS.size = 4 if cache else 0
    est = TripletProbe(seed=0, dtype="float32", **params)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        res = cross_validate(
            est,
            X,
            trip,
            lambdas=lambdas,
            cv=ObjectKFold(3, 0),
            refit=True,
            warm_start=warm_start,
            n_jobs=n_jobs,
        )
    finally:
        core.REDUCTIONS.size = 4
        core.REDUCTIONS.clear()
    return res, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench probe", description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, default=1280, help="feature dimension (default 1280)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--adam-lambdas",
        default="none",
        help="lambdas for an Adam run: 'none' (default), 'all' (the grid), or a comma list",
    )
    ap.add_argument("--adam-epochs", type=int, default=100, help="Adam max epochs (paper: 100)")
    ap.add_argument("--no-warm", action="store_true", help="skip the warm-start run")
    ap.add_argument("--features", type=Path, help="(1854, p) .npy features instead")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    import torch
    from align.metrics.probe import LAMBDA_GRID

    torch.set_num_threads(args.threads)
    trip = load_things_triplets(DATA_DIR)
    if args.features:
        X = np.load(args.features).astype(np.float32)
        source = str(args.features)
    else:
        X = realish_features(DATA_DIR, args.p)
        source = f"relu(SPoSE66 @ R + 2 noise), p={args.p}"
    if args.adam_lambdas == "all":
        adam_grid = LAMBDA_GRID
    elif args.adam_lambdas == "none":
        adam_grid = ()
    else:
        adam_grid = tuple(float(v) for v in args.adam_lambdas.split(","))

    summary: dict[str, Any] = {
        "features": source,
        "shape": list(X.shape),
        "n_triplets": len(trip),
        "threads": args.threads,
        "runs": {},
    }
    runs: list[tuple[str, tuple[float, ...], dict[str, Any]]] = [
        ("reference", LAMBDA_GRID, {"n_jobs": 1, "cache": False}),
        ("cached", LAMBDA_GRID, {"n_jobs": 1, "cache": True}),
        ("fast", LAMBDA_GRID, {"n_jobs": args.threads, "cache": True}),
    ]
    if not args.no_warm:
        runs.append(
            ("warm", LAMBDA_GRID, {"n_jobs": args.threads, "cache": True, "warm_start": True})
        )
    if adam_grid:
        adam = {
            "n_jobs": args.threads,
            "cache": True,
            "optimizer": "adam",
            "max_iter": args.adam_epochs,
        }
        runs.append(("adam", adam_grid, adam))
    for name, grid, params in runs:
        load_before = os.getloadavg()[0]
        res, wall, cpu = _run(X, trip, grid, **params)
        ce, acc = res.cross_entropy.mean(axis=1), res.accuracy.mean(axis=1)
        summary["runs"][name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "load": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "lambda": res.lambda_,
            "cross_entropy": float(ce[res.best]),
            "accuracy": float(acc[res.best]),
            "cv": [
                {"lambda": lam, "cross_entropy": float(c), "accuracy": float(a)}
                for lam, c, a in zip(grid, ce, acc, strict=True)
            ],
            "n_iter": res.n_iter.tolist(),
            "folds": [
                (n_tr, len(te)) for n_tr, (_, te) in zip(res.n_train, res.splits, strict=True)
            ],
        }
        if not args.json:
            r = summary["runs"][name]
            print(
                f"{name:10s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  load {r['load']}  chosen lambda "
                f"{r['lambda']:g}  held-out CE {r['cross_entropy']:.4f}  acc {r['accuracy']:.4f}",
                flush=True,
            )
    ref = summary["runs"]["reference"]
    for name, r in summary["runs"].items():
        if name in ("reference", "adam"):
            continue
        r["speedup_wall"] = ref["wall_s"] / r["wall_s"]
        r["speedup_cpu"] = ref["cpu_s"] / r["cpu_s"]
        r["ce_no_worse_every_lambda"] = all(
            round(n["cross_entropy"], 4) <= round(o["cross_entropy"], 4)
            for n, o in zip(r["cv"], ref["cv"], strict=True)
        )
    if not args.json:
        names = list(summary["runs"])
        print(f"\nfeatures: {source}; {len(trip)} responses; folds (train, test): {ref['folds']}")
        print("| lambda | " + " | ".join(f"{n} CE | {n} acc" for n in names) + " |")
        print("|---:|" + "---:|---:|" * len(names))
        rows: dict[float, list[str]] = {}
        for n in names:
            got = {row["lambda"]: row for row in summary["runs"][n]["cv"]}
            for lam in LAMBDA_GRID:
                row = got.get(lam)
                cell = f"{row['cross_entropy']:.4f} | {row['accuracy']:.4f}" if row else "- | -"
                rows.setdefault(lam, []).append(cell)
        for lam, cells in rows.items():
            print(f"| {lam:g} | " + " | ".join(cells) + " |")
        for name, r in summary["runs"].items():
            if "speedup_wall" in r:
                print(
                    f"{name}: {r['speedup_wall']:.2f}x wall, {r['speedup_cpu']:.2f}x CPU vs "
                    f"reference; held-out CE no worse at every lambda: "
                    f"{r['ce_no_worse_every_lambda']}"
                )
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
