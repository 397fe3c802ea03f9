"""Ray Serve application ``embedding``: stimuli in, feature matrices out, over gRPC.

Thin deployments over :mod:`align.models` (the one loading path; numbers are the
embedded library's own), in these modules:

``config``
    The application's ``args`` (:class:`EmbeddingArgs`), a family deployment's
    ``user_config`` (:class:`BatchConfig`) and the request limits (:class:`Limits`) as
    typed models; the device of the family replicas (:func:`replica_resources`).
``wire``
    What travels between the ingress and a family replica (:class:`Work`, ``Failure``).
``embedders``
    ``TimmEmbedder`` / ``OpenClipEmbedder`` / ``TextEmbedder``: one deployment class
    (:class:`Embedder`) bound once per model family; LRU set of models per replica
    (``@serve.multiplexed``), concurrent requests merged into forward batches
    (``@serve.batch``).
``ingress``
    ``EmbeddingIngress``, the gRPC ingress (``align.v1.EmbeddingService``: Embed,
    ListModels, Health, plus ``grpc.health.v1.Health/Check``); every RPC is wrapped once
    (error mapping of :mod:`align_services.grpc_errors`, count and latency).
``metrics``
    The custom metrics (:data:`METRIC_NAMES`).
this module
    The builder :func:`build_app` (``import_path: align_services.embedding.app:build_app``)
    and the default application ``app``.

Deploy with ``serve deploy deploy/serve_config.yaml`` / ``serve run
deploy/serve_config.yaml`` or ``align serve``.
"""

# No ``from __future__ import annotations`` here: Ray Serve reads build_app's annotation
# as a class to validate the config's ``args`` into EmbeddingArgs.

import logging

from ray import serve

from .config import (
    ALL_FAMILIES,
    DEVICE_ENV,
    FAMILY_DEPLOYMENTS,
    BatchConfig,
    EmbeddingArgs,
    Limits,
    replica_resources,
)
from .config import cluster_gpus as _cluster_gpus
from .embedders import Embedder
from .ingress import DEFAULT_LAYER, EmbeddingIngress
from .metrics import METRIC_NAMES
from .wire import Work

__all__ = [
    "ALL_FAMILIES",
    "DEFAULT_LAYER",
    "DEVICE_ENV",
    "FAMILY_DEPLOYMENTS",
    "METRIC_NAMES",
    "BatchConfig",
    "Embedder",
    "EmbeddingArgs",
    "EmbeddingIngress",
    "Limits",
    "Work",
    "app",
    "build_app",
    "replica_resources",
]

logger = logging.getLogger("ray.serve")


def build_app(args: EmbeddingArgs) -> serve.Application:
    """Serve application builder (``import_path: align_services.embedding.app:build_app``).

    ``args``: the ``args`` of the application in deploy/serve_config.yaml, which Serve
    validates into :class:`EmbeddingArgs` (a plain mapping is validated here): the
    ``families`` served, ``max_models_per_replica``, ``limits``, ``retries``,
    ``retry_backoff_s``, ``data_dir``, and the replicas' ``device`` and ``resources``
    (see :func:`replica_resources`). A bad key fails the build with an InvalidInputError
    naming it (``args.limits.max_stimuli_per_request``).

    Runs where Serve builds the application (a Ray task on the cluster, with the env of
    the node's raylet plus the application's runtime_env). A family deployment that has
    ``ray_actor_options`` in the config file gets those instead, as a whole (Serve).
    """
    args = EmbeddingArgs.from_mapping(args)
    device, actor_options = replica_resources(args, cluster_gpus=_cluster_gpus)
    if device == "gpu" and _cluster_gpus() == 0:
        logger.warning(
            "embedding: family replicas ask for GPUs (%s) but the Ray cluster has none yet; "
            "they start once the autoscaler adds a GPU node",
            actor_options,
        )
    embedders = {
        name: Embedder.options(  # type: ignore[attr-defined]
            name=name, ray_actor_options=dict(actor_options)
        ).bind(family, args.max_models_per_replica)
        for name, family in args.deployments().items()
    }
    return EmbeddingIngress.bind(  # type: ignore[attr-defined]
        embedders,
        limits=args.limits.model_dump(),
        retries=args.retries,
        retry_backoff_s=args.retry_backoff_s,
        data_dir=args.data_dir,
    )


#: The default application (``serve run align_services.embedding.app:app``).
app = build_app(EmbeddingArgs())
