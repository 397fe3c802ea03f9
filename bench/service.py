"""Evaluation service latency: cold score, cached re-score p50/p95, 8 concurrent clients,
and (``--embedding``) embedding throughput in-process vs through the service.

    python -m bench service                      # real redis-server on a free port
    python -m bench service --redis redis://h:6379/0 --repeats 200 --json out.json
    python -m bench service --embedding --model timm/tf_efficientnet_lite0 --dataset things48
    python -m bench service --embedding --embedder grpc://127.0.0.1:9000   # via Ray Serve

Real data: the SPoSE 66-d THINGS embedding scored on the 20,000 THINGS triplets (the
server reads the features file: model id ``bench/spose66`` registered in-process).
Latencies are client wall times of ``RemoteBackend.score`` over loopback gRPC, including
the stream and JSON decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

TOKEN = "bench-token-0123"


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def _summary(name: str, seconds: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "n": len(seconds),
        "p50_ms": 1000 * _pct(seconds, 50),
        "p95_ms": 1000 * _pct(seconds, 95),
        "mean_ms": 1000 * statistics.fmean(seconds) if seconds else float("nan"),
    }


def _timed(fn: Any, *args: Any, **kw: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench service", description=__doc__)
    p.add_argument(
        "--redis", default=None, help="Redis URL, or 'off' (default: start a redis-server)"
    )
    p.add_argument("--repeats", type=int, default=50, help="cached re-scores to time")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--per-client", type=int, default=20)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--embedding", action="store_true", help="also time embedding throughput")
    p.add_argument("--model", default="timm/tf_efficientnet_lite0")
    p.add_argument("--dataset", default="things48")
    p.add_argument("--embedder", default="local", help="local | grpc://host:port (Ray Serve)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore", UserWarning)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch

        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    except ImportError:
        pass

    from align.datasets import load_spose_embedding
    from align.remote import RemoteBackend
    from align_services.evaluation.server import ServerConfig, ThreadedServer

    tmp = Path(tempfile.mkdtemp(prefix="align-bench-"))
    spose = tmp / "spose66.npy"
    np.save(spose, load_spose_embedding())
    # A model id the (in-process) server resolves to the features file, so requests carry
    # an id, as for any registry model (a features *path* would upload the matrix).
    from align.models import register_model

    model = "bench/spose66"
    register_model(model, f"features:{spose}")

    redis = None
    url = None if args.redis == "off" else args.redis
    if args.redis is None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from tests.services.redis_fixtures import RedisServer

        redis = RedisServer(tmp / "redis")
        redis.start()
        url = redis.url
    server = ThreadedServer(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            metrics_port=None,
            redis_url=url,
            tokens={TOKEN: "bench"},
            max_workers=args.workers,
            per_token=args.workers,
            embedder=args.embedder,
            device=args.device,
        )
    )
    results: dict[str, Any] = {"redis": url, "embedder": args.embedder, "rows": []}
    rows: list[dict[str, Any]] = results["rows"]
    try:
        client = RemoteBackend(server.address, TOKEN, progress=False)
        opts = {"n_bootstrap": 1000}
        cold, report = _timed(client.score, model, "things", options=opts, cache=False)
        rows.append(_summary("cold score (SPoSE on THINGS, 20k triplets)", [cold]))
        accuracy = report.value("odd_one_out", "accuracy")

        seconds = [
            _timed(client.score, model, "things", options=opts)[0] for _ in range(args.repeats)
        ]
        rows.append(_summary("cached re-score, 1 client", seconds))

        clients = [
            RemoteBackend(server.address, TOKEN, progress=False) for _ in range(args.clients)
        ]

        def loop(c: Any) -> list[float]:
            return [
                _timed(c.score, model, "things", options=opts)[0] for _ in range(args.per_client)
            ]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            per = list(pool.map(loop, clients))
        wall = time.perf_counter() - t0
        flat = [s for xs in per for s in xs]
        row = _summary(f"cached re-score, {args.clients} concurrent clients", flat)
        row["throughput_rps"] = len(flat) / wall
        rows.append(row)

        # distinct cold requests (different seeds -> different keys) through the fair pool
        def cold_one(i: int) -> float:
            c = clients[i]
            return _timed(c.score, model, "things", options={"n_bootstrap": 1000, "seed": 100 + i})[
                0
            ]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            colds = list(pool.map(cold_one, range(args.clients)))
        row = _summary(f"{args.clients} concurrent distinct cold scores", colds)
        row["wall_s"] = time.perf_counter() - t0
        rows.append(row)
        for c in clients:
            c.close()

        if args.embedding:
            from align.datasets import load_dataset
            from align.models import embed_dataset, load_model

            ds = load_dataset(args.dataset)
            n = len(ds.stimulus_ids)
            m = load_model(args.model, device=args.device)
            embed_dataset(m, ds)  # warm-up (weights, allocator)
            t_in, _ = _timed(embed_dataset, m, ds)
            rows.append({"name": f"in-process embed {args.model} on {args.dataset}",
                         "n": n, "images_per_s": n / t_in, "seconds": t_in})  # fmt: skip
            t_svc, _ = _timed(client.score, args.model, args.dataset, cache=False)
            rows.append({"name": f"service cold score {args.model} on {args.dataset} "
                                 f"(embedder {args.embedder}, incl. metrics)",
                         "n": n, "images_per_s": n / t_svc, "seconds": t_svc})  # fmt: skip
        client.close()
        m = server.metrics
        results["counters"] = {
            "report_computations": m.total("align_report_computations_total"),
            "cache_hits": m.total("align_cache_hits_total"),
            "cache_errors": m.total("align_cache_errors_total"),
        }
        results["spose_things_accuracy"] = accuracy
    finally:
        server.stop(grace=5)
        if redis is not None:
            redis.stop()

    print(f"{'benchmark':62s} {'n':>5s} {'p50 ms':>9s} {'p95 ms':>9s}  extra")
    for row in rows:
        extra = ", ".join(
            f"{k}={v:.2f}"
            for k, v in row.items()
            if k in ("throughput_rps", "wall_s", "images_per_s", "seconds")
        )
        print(
            f"{row['name'][:62]:62s} {row['n']:5d} {row.get('p50_ms', float('nan')):9.2f} "
            f"{row.get('p95_ms', float('nan')):9.2f}  {extra}"
        )
    print(json.dumps(results["counters"]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
