"""Benchmark: the embedding engine against a bare timm loop, and its peak memory.

    python -m bench engine [--n 128] [--batch-size 32] [--threads 1] [--repeats 5]
                           [--num-workers 0] [--full] [--json]

Ours: ``load_model("timm/tf_efficientnet_lite0").embed(paths, batch_size=B)`` (PIL
decode + our preprocessing in the DataLoader, one forward pass, float32 out, written into
a preallocated array). Baseline, with the same weights, images and batch size: a bare
loop of ``Image.open(p).convert("RGB")`` -> ``timm.data.create_transform(...)`` ->
``torch.stack`` -> ``forward_features`` + ``forward_head(pre_logits=True)`` under
``torch.inference_mode``, on a copy of the module in timm's default (NCHW) layout, and
``bare_nhwc``: the same loop on the engine's own module (NHWC, channels_last, like
ours), which separates the layout's gain from the engine's own overhead. They run in
``--repeats`` rounds, the order rotating between rounds; ``ratio`` is best against best,
``paired_ratios`` the bare loop's time over ours in each round (with their median: on a
VM whose speed moves by 10-15 % between runs, one best-of ratio is within that noise).
The rows are compared: equal to ``bare_nhwc``'s, and to the NCHW loop's up to float32
rounding (``max_diff_vs_bare_over_scale``: the largest difference over the largest
entry), so the timings compare the same work.

``--full`` also embeds all 1,853 THINGS images (minutes on 2 cores) and reports the
process's peak RSS (``resource.getrusage``) before and after, and the output size.
Images are read from the data folder (``ALIGN_DATA_DIR``, default ../shared/data) and
never copied.
"""

from __future__ import annotations

import argparse
import copy
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
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
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

    # the plain loop a timm user writes: the module in its default (NCHW) layout; the
    # engine's own module runs convolutions on NHWC (channels_last) activations
    plain = copy.deepcopy(module).to(memory_format=torch.contiguous_format)

    # warm-up (first-call allocations, lazy imports), and the equal-work check
    ours = model.embed(paths[: args.batch_size], batch_size=args.batch_size)["penultimate"]
    ref = _baseline(plain, paths[: args.batch_size], args.batch_size)
    ref_nhwc = _baseline(module, paths[: args.batch_size], args.batch_size)
    diff = float(np.abs(ours - ref).max())

    def timed(fn: Any) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    runs = {
        "bare": lambda: _baseline(plain, paths, args.batch_size),
        "bare_nhwc": lambda: _baseline(module, paths, args.batch_size),
        "ours": lambda: model.embed(
            paths, batch_size=args.batch_size, num_workers=args.num_workers
        ),
    }
    # rounds of all three, the order rotating (bare, bare_nhwc, ours; then bare_nhwc,
    # ours, bare; ...) so that a drift of the machine's speed within a round favours none
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % 3 :] + names[: r % 3]:
            times[name].append(timed(runs[name]))
    t_ours = times["ours"]

    def paired(base: str) -> list[float]:
        return [b / o for b, o in zip(times[base], t_ours, strict=True)]

    n = len(paths)
    summary: dict[str, Any] = {
        "model": MODEL,
        "images": n,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "num_workers": args.num_workers,
        "engine_img_per_s": round(n / min(t_ours), 2),
        "bare_timm_img_per_s": round(n / min(times["bare"]), 2),
        "ratio": round(min(times["bare"]) / min(t_ours), 3),
        "paired_ratios": [round(x, 3) for x in paired("bare")],
        "paired_ratio_median": round(float(np.median(paired("bare"))), 3),
        "max_abs_diff_vs_bare": diff,
        "max_diff_vs_bare_over_scale": diff / float(np.abs(ref).max()),
        "bare_nhwc_img_per_s": round(n / min(times["bare_nhwc"]), 2),
        "paired_ratios_vs_bare_nhwc": [round(x, 3) for x in paired("bare_nhwc")],
        "paired_ratio_median_vs_bare_nhwc": round(float(np.median(paired("bare_nhwc"))), 3),
        "max_abs_diff_vs_bare_nhwc": float(np.abs(ours - ref_nhwc).max()),
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
