"""Benchmark: the embedding engine against a bare timm loop, and its peak memory.

    python -m bench engine [--n 128] [--batch-size 32] [--threads 1] [--repeats 5]
                           [--num-workers 0] [--full] [--json]

Ours: ``load_model("timm/tf_efficientnet_lite0").embed(paths, batch_size=B)`` (PIL
decode + our preprocessing in the DataLoader, one forward pass, float32 out, written into
a preallocated array). Baseline, on the SAME torch module, images and batch size: a bare
loop of ``Image.open(p).convert("RGB")`` -> ``timm.data.create_transform(...)`` ->
``torch.stack`` -> ``forward_features`` + ``forward_head(pre_logits=True)`` under
``torch.inference_mode``. The two run in ``--repeats`` pairs, the order alternating
within pairs; ``ratio`` is best against best, ``paired_ratios`` the bare loop's time over
ours in each pair (with their median: on a VM whose speed moves by 10-15 % between
runs, one best-of ratio is within that noise). The rows are checked equal (same
numbers, so the timing compares equal work).

``--full`` also embeds all 1,853 THINGS images (minutes on 2 cores) and reports the
process's peak RSS (``resource.getrusage``) before and after, and the output size.
Images are read from the data folder (``ALIGN_DATA_DIR``, default ../shared/data) and
never copied.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path
from typing import Any

import numpy as np

MODEL = "timm/tf_efficientnet_lite0"


def _data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("ALIGN_DATA_DIR", default))


def _things_images(n: int | None) -> list[Path]:
    folder = _data_dir() / "things" / "images"
    paths = sorted(folder.glob("*_[0-9][0-9][bs].jpg"))
    if not paths:
        raise SystemExit(f"bench engine: no THINGS images under {folder} (set ALIGN_DATA_DIR)")
    return paths if n is None else paths[:n]


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _baseline(module: Any, paths: list[Path], batch_size: int) -> np.ndarray:
    import timm
    import torch
    from PIL import Image

    cfg = timm.data.resolve_data_config({}, model=module)
    transform = timm.data.create_transform(**cfg)
    out = []
    for start in range(0, len(paths), batch_size):
        batch = []
        for p in paths[start : start + batch_size]:
            with Image.open(p) as im:
                batch.append(transform(im.convert("RGB")))
        x = torch.stack(batch)
        with torch.inference_mode():
            out.append(module.forward_head(module.forward_features(x), pre_logits=True).numpy())
    return np.concatenate(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench engine", description=__doc__)
    ap.add_argument("--n", type=int, default=128, help="THINGS images for the throughput run")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    ap.add_argument("--repeats", type=int, default=5, help="paired repeats (default 5)")
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also embed all 1,853 THINGS images")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from align.models import load_model

    torch.set_num_threads(args.threads)
    paths = _things_images(args.n)
    rss_start = _peak_rss_mib()
    model = load_model(MODEL, device="cpu")
    module = model.module  # type: ignore[attr-defined]

    # warm-up (first-call allocations, lazy imports), and the equal-work check
    ours = model.embed(paths[: args.batch_size], batch_size=args.batch_size)["penultimate"]
    ref = _baseline(module, paths[: args.batch_size], args.batch_size)
    max_diff = float(np.abs(ours - ref).max())

    def time_base() -> float:
        t0 = time.perf_counter()
        _baseline(module, paths, args.batch_size)
        return time.perf_counter() - t0

    def time_ours() -> float:
        t0 = time.perf_counter()
        model.embed(paths, batch_size=args.batch_size, num_workers=args.num_workers)
        return time.perf_counter() - t0

    # paired repeats, the order alternating (bare first, then ours first, ...) so that a
    # drift of the machine's speed within a pair does not favour either side
    t_ours, t_base = [], []
    for r in range(args.repeats):
        if r % 2 == 0:
            t_base.append(time_base())
            t_ours.append(time_ours())
        else:
            t_ours.append(time_ours())
            t_base.append(time_base())
    pair_ratios = [b / o for b, o in zip(t_base, t_ours, strict=True)]
    n = len(paths)
    summary: dict[str, Any] = {
        "model": MODEL,
        "images": n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "num_workers": args.num_workers,
        "engine_img_per_s": round(n / min(t_ours), 2),
        "bare_timm_img_per_s": round(n / min(t_base), 2),
        "ratio": round(min(t_base) / min(t_ours), 3),
        "paired_ratios": [round(x, 3) for x in pair_ratios],
        "paired_ratio_median": round(float(np.median(pair_ratios)), 3),
        "max_abs_diff_vs_bare": max_diff,
        "peak_rss_mib_after_throughput": round(_peak_rss_mib(), 1),
        "rss_mib_at_start": round(rss_start, 1),
        "machine": f"{platform.machine()} {os.cpu_count()} cpus, torch {torch.__version__}",
    }
    if args.full:
        allp = _things_images(None)
        before = _peak_rss_mib()
        t0 = time.perf_counter()
        out = model.embed(
            allp,
            layers=("penultimate", "logits"),
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            progress=True,
        )
        summary["full"] = {
            "images": len(allp),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_mib_before": round(before, 1),
            "peak_rss_mib_after": round(_peak_rss_mib(), 1),
            "output_mib": round(sum(a.nbytes for a in out.values()) / 2**20, 2),
        }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        for k, v in summary.items():
            print(f"{k:32s} {v}")
    return summary


if __name__ == "__main__":
    main()
