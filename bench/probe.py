"""Linear probe at THINGS scale: full-batch L-BFGS vs the paper's mini-batch Adam.

``python -m bench probe [--p 1280] [--threads 2] [--adam-lambdas all|none|L,L,...]
[--adam-epochs 100] [--no-cold] [--features PATH.npy] [--json]``

Work: ``cross_validate_probe`` over the 20,000 real THINGS responses (1,854 objects,
3 object-disjoint folds, the 7-value lambda grid, lambda chosen by held-out
cross-entropy) on ``n x p`` features, with L-BFGS (ours, float32) twice: the old path
(``warm_start=False``: every fold and lambda from the seeded init, "lbfgs_cold") and the
default (``warm_start=True``: per fold, lambdas from large to small, each fit starting
from the previous solution unless it collapsed, "lbfgs"), and once with Adam as the
paper trains it (lr 1e-3, batch 256, at most 100 epochs, early stopping
on a 10 % validation split of the training triplets, patience 10), in the same run,
same folds. Reports wall and CPU seconds and the held-out cross-entropy/accuracy per
lambda for both; ours must be no worse at the chosen lambda.

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


def _run(X: np.ndarray, trip: np.ndarray, lambdas: tuple[float, ...], **params: Any):
    from align.metrics.probe import cross_validate_probe

    t0, c0 = time.perf_counter(), time.process_time()
    res = cross_validate_probe(X, trip, lambdas=lambdas, k=3, seed=0, refit=False, **params)
    return res, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench probe", description=__doc__.split("\n")[0])
    ap.add_argument("--p", type=int, default=1280, help="feature dimension (default 1280)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument(
        "--adam-lambdas",
        default="all",
        help="lambdas for the Adam run: 'all' (the grid), 'none', or a comma list",
    )
    ap.add_argument("--adam-epochs", type=int, default=100, help="Adam max epochs (paper: 100)")
    ap.add_argument(
        "--no-cold", action="store_true", help="skip the old warm_start=False L-BFGS run"
    )
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
    runs: list[tuple[str, tuple[float, ...], dict[str, Any]]] = []
    if not args.no_cold:
        runs.append(("lbfgs_cold", LAMBDA_GRID, {"optimizer": "lbfgs", "warm_start": False}))
    runs.append(("lbfgs", LAMBDA_GRID, {"optimizer": "lbfgs", "warm_start": True}))
    if adam_grid:
        runs.append(("adam", adam_grid, {"optimizer": "adam", "max_iter": args.adam_epochs}))
    for name, grid, params in runs:
        res, wall, cpu = _run(X, trip, grid, dtype="float32", **params)
        d = res.to_dict()
        summary["runs"][name] = {
            "wall_s": wall,
            "cpu_s": cpu,
            "lambda": d["lambda"],
            "cross_entropy": d["cross_entropy"],
            "accuracy": d["accuracy"],
            "cv": [{k: row[k] for k in ("lambda", "cross_entropy", "accuracy")} for row in d["cv"]],
            "n_iter": [f["n_iter"] for f in d["folds"]],
            "folds": [(f["n_train"], f["n_test"]) for f in d["folds"]],
        }
        if not args.json:
            r = summary["runs"][name]
            print(
                f"{name:10s} wall {wall:7.1f} s  cpu {cpu:7.1f} s  chosen lambda {r['lambda']:g}"
                f"  held-out CE {r['cross_entropy']:.4f}  acc {r['accuracy']:.4f}"
                f"  iters/epochs at chosen {r['n_iter']}",
                flush=True,
            )
    if not args.json:
        print(
            f"\nfeatures: {source}; {len(trip)} responses; folds (train, test): "
            f"{summary['runs']['lbfgs']['folds']}"
        )
        print("| lambda | L-BFGS CE | L-BFGS acc | Adam CE | Adam acc |")
        print("|---:|---:|---:|---:|---:|")
        adam_rows = {row["lambda"]: row for row in summary["runs"].get("adam", {}).get("cv", [])}
        for row in summary["runs"]["lbfgs"]["cv"]:
            a = adam_rows.get(row["lambda"])
            adam_txt = f"{a['cross_entropy']:.4f} | {a['accuracy']:.4f}" if a else "- | -"
            print(
                f"| {row['lambda']:g} | {row['cross_entropy']:.4f} | {row['accuracy']:.4f} "
                f"| {adam_txt} |"
            )
    if "lbfgs_cold" in summary["runs"]:
        old_run, new_run = summary["runs"]["lbfgs_cold"], summary["runs"]["lbfgs"]
        summary["warm_speedup_wall"] = old_run["wall_s"] / new_run["wall_s"]
        summary["warm_speedup_cpu"] = old_run["cpu_s"] / new_run["cpu_s"]
        summary["warm_ce_no_worse"] = all(
            n["cross_entropy"] <= o["cross_entropy"] + 1e-3
            for n, o in zip(new_run["cv"], old_run["cv"], strict=True)
        )
        if not args.json:
            print("\n| lambda | cold CE | cold acc | warm CE | warm acc |")
            print("|---:|---:|---:|---:|---:|")
            for o, n in zip(old_run["cv"], new_run["cv"], strict=True):
                print(
                    f"| {o['lambda']:g} | {o['cross_entropy']:.4f} | {o['accuracy']:.4f} "
                    f"| {n['cross_entropy']:.4f} | {n['accuracy']:.4f} |"
                )
            print(
                f"warm start: wall {summary['warm_speedup_wall']:.2f}x, cpu "
                f"{summary['warm_speedup_cpu']:.2f}x faster; held-out CE no worse at every "
                f"lambda: {summary['warm_ce_no_worse']}"
            )
    if "adam" in summary["runs"]:
        ours, paper = summary["runs"]["lbfgs"], summary["runs"]["adam"]
        summary["lbfgs_no_worse"] = ours["cross_entropy"] <= paper["cross_entropy"] + 1e-3
        if not args.json:
            print(
                f"\nheld-out CE at each run's chosen lambda: L-BFGS {ours['cross_entropy']:.4f}"
                f" vs Adam {paper['cross_entropy']:.4f} -> L-BFGS no worse: "
                f"{summary['lbfgs_no_worse']}"
            )
    if args.json:
        print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
