"""The custom metrics of the ``embedding`` application.

Exported by Ray with the prefix ``ray_`` and Serve's own tags ``application``,
``deployment``, ``replica``; Prometheus adds ``_total`` to counters.
"""

from __future__ import annotations

from collections.abc import Sequence

from ray.serve.metrics import Counter, Histogram

METRIC_NAMES = {
    "align_embedding_rpcs": "ingress: calls of every RPC by method and gRPC status code",
    "align_embedding_rpc_seconds": "ingress: seconds per RPC by method (every outcome)",
    "align_embed_requests": "ingress: Embed calls by model and gRPC status code",
    "align_embed_request_seconds": "ingress: Embed latency in seconds by model (OK calls)",
    "align_embed_retries": "ingress: retries after a family replica died, by model",
    "align_embeddings_computed": "embedder: stimuli embedded, by model",
    "align_embed_batch_stimuli": "embedder: stimuli per forward batch, by model",
    "align_embed_batch_requests": "embedder: requests merged into one forward batch",
    "align_embed_forward_seconds": "embedder: seconds per forward batch, by model",
    "align_model_loads": "embedder: models loaded into a replica (LRU misses), by model",
    "align_model_load_seconds": "embedder: seconds to load a model, by model",
}

#: histogram boundaries of request latencies, in seconds
REQUEST_SECONDS = [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300]


def counter(name: str, tags: Sequence[str] = ("model",)) -> Counter:
    return Counter(name, METRIC_NAMES[name], tuple(tags))  # type: ignore[arg-type]


def histogram(name: str, boundaries: list[float], tags: Sequence[str] = ("model",)) -> Histogram:
    return Histogram(name, METRIC_NAMES[name], boundaries=boundaries, tag_keys=tuple(tags))  # type: ignore[arg-type]
