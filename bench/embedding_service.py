"""Embedding throughput: the Ray Serve ``embedding`` application vs the in-process engine.

    python -m bench embedding_service                        # 64 THINGS images, CPU
    python -m bench embedding_service --images 512 --threads 4 --json out.json
    python -m bench embedding_service --gpu                  # replicas with num_gpus: 1

Starts a local Ray, deploys deploy/serve_config.yaml (free ports; the TimmEmbedder
replica gets ``--threads`` torch threads and as many CPUs, or one GPU with ``--gpu``),
and embeds the same real THINGS images (encoded JPEG bytes) with the same model:

1. in-process: ``load_model(model).embed(images, batch_size=B)`` at the same thread count;
2. service, one client: Embed requests of B images, one after the other (the ratio
   service / in-process is the cost of the service: gRPC, proxy, ingress, Ray objects);
3. service, ``--clients`` concurrent clients sending small requests of ``--small``
   images: dynamic batching merges them into larger forward batches; compared with the
   same small requests embedded one by one in-process.

Images/s are wall-clock over a pass after a warm-up; in-process and service passes are
interleaved for ``--rounds`` rounds and the medians reported.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _images(n: int) -> list[bytes]:
    data = Path(os.environ.get("ALIGN_DATA_DIR", ROOT.parent / "shared" / "data"))
    folder = data / "things" / "images"
    paths = sorted(folder.glob("*.jpg"))[:n]
    if len(paths) < n:
        raise SystemExit(f"bench: need {n} THINGS images in {folder} (set ALIGN_DATA_DIR)")
    return [p.read_bytes() for p in paths]


def _chunks(items: list[Any], size: int) -> list[list[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(prog="python -m bench embedding_service", description=__doc__)
    p.add_argument("--model", default="timm/tf_efficientnet_lite0")
    p.add_argument("--images", type=int, default=64, help="THINGS images per pass")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (median)")
    p.add_argument("--batch", type=int, default=32, help="images per request (one client)")
    p.add_argument("--small", type=int, default=4, help="images per request (concurrent)")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    p.add_argument("--max-batch", type=int, default=64, help="max_batch_stimuli of Serve")
    p.add_argument("--gpu", action="store_true", help="replica with num_gpus: 1; cuda in-process")
    p.add_argument("--json", default=None, help="write the summary here")
    args = p.parse_args(argv)
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "RAY_AUTH_MODE": "disabled",
        "RAY_USAGE_STATS_ENABLED": "0",
    }.items():
        os.environ.setdefault(key, value)

    import grpc
    import ray
    import torch
    from align.models import load_model
    from align.v1 import align_pb2, align_pb2_grpc
    from align_services.embedding import deploy
    from ray import serve

    blobs = _images(args.images)
    device = "cuda" if args.gpu else "cpu"
    torch.set_num_threads(args.threads)
    summary: dict[str, Any] = {
        "model": args.model,
        "images": args.images,
        "batch": args.batch,
        "small": args.small,
        "clients": args.clients,
        "threads": args.threads,
        "device": device,
        "cpus": os.cpu_count(),
    }

    model = load_model(args.model, device=device)
    model.embed(blobs[: args.batch], batch_size=args.batch)  # warm-up

    def inprocess() -> tuple[float, float, np.ndarray]:
        t0 = time.perf_counter()
        out = model.embed(blobs, batch_size=args.batch)["penultimate"]
        big = _rate(len(blobs), time.perf_counter() - t0)
        t0 = time.perf_counter()
        for chunk in _chunks(blobs, args.small):
            model.embed(chunk)
        return big, _rate(len(blobs), time.perf_counter() - t0), out

    # 2./3. the service ----------------------------------------------------------------
    resources = {"num_gpus": 1, "num_cpus": 1} if args.gpu else {"num_cpus": args.threads}
    config = deploy.override(
        deploy.load_config(),
        grpc_port=_free_port(),
        http_port=_free_port(),
        http_host="127.0.0.1",
        deployments={
            "EmbeddingIngress": {"ray_actor_options": {"num_cpus": 0}},
            "TimmEmbedder": {
                "ray_actor_options": resources,
                "user_config": {
                    "torch_threads": args.threads,
                    "max_batch_stimuli": args.max_batch,
                },
            },
            "OpenClipEmbedder": {"ray_actor_options": {"num_cpus": 0, "num_gpus": 0}},
            "TextEmbedder": {"ray_actor_options": {"num_cpus": 0, "num_gpus": 0}},
        },
    )
    env = {k: os.environ[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    ray.init(
        address="local",
        num_cpus=max(args.threads + 1, 2),
        num_gpus=1 if args.gpu else 0,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": env},
    )
    try:
        deploy.deploy(config, timeout_s=600)
        target = f"127.0.0.1:{deploy.grpc_port(config)}"
        md = (("application", deploy.APP_NAME),)
        opts = [("grpc.max_receive_message_length", 1 << 30)]
        stubs = [
            align_pb2_grpc.EmbeddingServiceStub(grpc.insecure_channel(target, options=opts))
            for _ in range(args.clients)
        ]

        def call(stub: Any, chunk: list[bytes]) -> np.ndarray:
            reply = stub.Embed(
                align_pb2.EmbedRequest(model=args.model, images=chunk), metadata=md, timeout=600
            )
            return np.frombuffer(reply.data, dtype="<f4").reshape(tuple(reply.shape))

        call(stubs[0], blobs[: args.batch])  # warm-up: loads the model in the replica
        handle = serve.get_deployment_handle("TimmEmbedder", app_name=deploy.APP_NAME)
        small = _chunks(blobs, args.small)
        runs: dict[str, list[float]] = {k: [] for k in ("inp", "inp_small", "svc", "svc_conc")}
        batches = requests = stimuli = 0
        # Interleaved rounds (in-process, then service) so that a change in machine load
        # hits both sides alike; the medians are reported.
        for _ in range(args.rounds):
            big, small_rate, reference = inprocess()
            runs["inp"].append(big)
            runs["inp_small"].append(small_rate)
            t0 = time.perf_counter()
            rows = [call(stubs[0], chunk) for chunk in _chunks(blobs, args.batch)]
            runs["svc"].append(_rate(len(blobs), time.perf_counter() - t0))
            service = np.concatenate(rows)
            before = handle.stats.remote().result()
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(lambda i: call(stubs[i % args.clients], small[i]), range(len(small))))
            runs["svc_conc"].append(_rate(len(blobs), time.perf_counter() - t0))
            after = handle.stats.remote().result()
            batches += after["batches"] - before["batches"]
            requests += after["requests"] - before["requests"]
            stimuli += after["stimuli"] - before["stimuli"]
        summary["runs_img_s"] = runs
        summary["inprocess_img_s"] = float(np.median(runs["inp"]))
        summary["inprocess_small_img_s"] = float(np.median(runs["inp_small"]))
        summary["service_img_s"] = float(np.median(runs["svc"]))
        summary["service_concurrent_img_s"] = float(np.median(runs["svc_conc"]))
        summary["bit_identical"] = bool(np.array_equal(service, reference))
        summary["max_abs_diff"] = float(np.max(np.abs(service - reference)))
        summary["concurrent_requests"] = requests
        summary["concurrent_forward_batches"] = batches
        summary["mean_images_per_forward"] = stimuli / max(batches, 1)
    finally:
        serve.shutdown()
        ray.shutdown()

    summary["ratio_service_vs_inprocess"] = summary["service_img_s"] / summary["inprocess_img_s"]
    summary["ratio_concurrent_vs_inprocess_small"] = (
        summary["service_concurrent_img_s"] / summary["inprocess_small_img_s"]
    )
    rows_out = [
        (f"in-process, batch {args.batch}", summary["inprocess_img_s"]),
        (f"service, 1 client, {args.batch} img/request", summary["service_img_s"]),
        (f"in-process, {args.small} img at a time", summary["inprocess_small_img_s"]),
        (
            f"service, {args.clients} clients, {args.small} img/request",
            summary["service_concurrent_img_s"],
        ),
    ]
    print(f"{args.model} on {device}, {args.images} THINGS images, {args.threads} torch threads")
    for name, value in rows_out:
        print(f"  {name:<40} {value:8.1f} img/s")
    print(
        f"  ratio service/in-process (batch {args.batch}): "
        f"{summary['ratio_service_vs_inprocess']:.2f}; bit-identical: {summary['bit_identical']}"
    )
    print(
        f"  concurrent: {summary['concurrent_requests']} requests in "
        f"{summary['concurrent_forward_batches']} forward batches "
        f"({summary['mean_images_per_forward']:.1f} images each); ratio vs in-process "
        f"{args.small} at a time: {summary['ratio_concurrent_vs_inprocess_small']:.2f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2))
    sys.stdout.flush()
    return summary


if __name__ == "__main__":
    main()
