"""A real Ray + Ray Serve, started ONCE per test session, running the ``embedding``
application from deploy/serve_config.yaml (ports and CPU shares scaled down for a small
machine). Serve's local testing mode cannot run @serve.batch / @serve.multiplexed, so
the service tests need the real thing.

Fixture ``serve_embedding`` -> :class:`ServeEmbedding` (grpc address, the deployed config).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("ALIGN_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))

#: Environment of every Ray worker: offline, no auth, few threads.
WORKER_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "OMP_NUM_THREADS": "1",
    "ALIGN_DATA_DIR": str(DATA_DIR),
}


#: torch threads of the family replicas (on CPU the bits of a result depend on it).
REPLICA_TORCH_THREADS = 1


@dataclass
class ServeEmbedding:
    """The running embedding application."""

    grpc_address: str
    http_address: str
    config: dict[str, Any]
    app_name: str = "embedding"

    def stub(self) -> Any:
        """A new channel's EmbeddingService stub (callers pass ``metadata()``)."""
        import grpc
        from align.v1 import align_pb2_grpc

        channel = grpc.insecure_channel(self.grpc_address)
        return align_pb2_grpc.EmbeddingServiceStub(channel)

    def metadata(self, model: str | None = None) -> tuple[tuple[str, str], ...]:
        md: tuple[tuple[str, str], ...] = (("application", self.app_name),)
        if model:
            md += (("multiplexed_model_id", model),)
        return md


def small_config(grpc_port: int, http_port: int) -> dict[str, Any]:
    """deploy/serve_config.yaml with free ports and CPU shares that fit 2 CPUs."""
    from align_services.embedding import deploy

    return deploy.override(
        deploy.load_config(),
        grpc_port=grpc_port,
        http_port=http_port,
        http_host="127.0.0.1",
        app_args={
            "data_dir": str(DATA_DIR),
            "retry_backoff_s": 0.2,
            "retries": 5,
            "limits": {"max_stimuli_per_request": 256, "max_request_bytes": 8 << 20},
        },
        deployments={
            "EmbeddingIngress": {"ray_actor_options": {"num_cpus": 0.1}},
            "TimmEmbedder": {
                "ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0},
                "user_config": {
                    "torch_threads": REPLICA_TORCH_THREADS,
                    "batch_wait_timeout_s": 0.05,
                },
            },
            "OpenClipEmbedder": {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}},
            "TextEmbedder": {"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 0}},
        },
    )


@pytest.fixture(scope="session")
def serve_embedding() -> Iterator[ServeEmbedding]:
    pytest.importorskip("ray.serve", reason="ray[serve] is not installed (extra 'serve')")
    pytest.importorskip("grpc", reason="grpcio is not installed (extra 'serve')")
    for key, value in WORKER_ENV.items():
        os.environ.setdefault(key, value)
    import ray
    from align_services.embedding import deploy
    from ray import serve

    config = small_config(free_port(), free_port())
    started_ray = False
    if not ray.is_initialized():
        ray.init(
            address="local",
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": WORKER_ENV},
        )
        started_ray = True
    try:
        deploy.deploy(config, timeout_s=240)
        yield ServeEmbedding(
            grpc_address=f"127.0.0.1:{deploy.grpc_port(config)}",
            http_address=f"http://127.0.0.1:{deploy.http_port(config)}",
            config=config,
        )
    finally:
        try:
            serve.shutdown()
        finally:
            if started_ray:
                ray.shutdown()
