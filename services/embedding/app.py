"""Ray Serve application ``embedding``: stimuli in, feature matrices out, over gRPC.

Thin deployments over :mod:`align.models` (the one loading path; numbers are the
embedded library's own):

``EmbeddingIngress``
    The gRPC ingress (``align.v1.EmbeddingService``: Embed, ListModels, Health, plus
    ``grpc.health.v1.Health/Check``). Checks the request against the configured limits,
    resolves the model id (NOT_FOUND with close matches) and the dataset's stimuli, then
    hands the work to the deployment of the model's family, tagged with the model id as
    the multiplexed model id. A family replica that dies mid-request is retried.
``TimmEmbedder`` / ``OpenClipEmbedder`` / ``TextEmbedder``
    One deployment per model family (the same class bound three times). Each replica
    keeps an LRU set of loaded models (``@serve.multiplexed``) and merges concurrent
    requests for one model into one forward batch (``@serve.batch``; batches are split
    by model id by Serve). Their ``ray_actor_options`` come from :func:`build_app`: the
    ``resources`` preset of the chosen device (``args.device``, overridden by the env var
    ``ALIGN_DEVICE``; see :func:`replica_resources`). A replica given a GPU runs on CUDA.

Deploy with ``serve deploy deploy/serve_config.yaml`` / ``serve run
deploy/serve_config.yaml`` or ``align serve``; ``app`` is the default application.

Custom metrics (exported by Ray with the prefix ``ray_``, with Serve's own tags
``application``, ``deployment``, ``replica``): see :data:`METRIC_NAMES`.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from align._version import METRIC_CODE_VERSION, __version__
from align.errors import (
    AlignError,
    DataMissingError,
    InvalidInputError,
    NotFoundError,
    ResourceLimitError,
    error_from_payload,
    error_payload,
)
from align.results import to_jsonable
from align.v1 import align_pb2
from align_services.evaluation.errors import EmbedderUnavailableError, describe
from ray import serve
from ray.serve.metrics import Counter, Histogram

logger = logging.getLogger("ray.serve")

DEFAULT_LAYER = "penultimate"

#: Model family -> the deployment that embeds it.
FAMILY_DEPLOYMENTS: dict[str, str] = {
    "timm": "TimmEmbedder",
    "torch": "TimmEmbedder",
    "open_clip": "OpenClipEmbedder",
    "text": "TextEmbedder",
}
ALL_FAMILIES: tuple[str, ...] = ("timm", "open_clip", "text")

#: Custom metric names (Prometheus adds the ``ray_`` prefix; counters get ``_total``).
METRIC_NAMES = {
    "align_embed_requests": "ingress: Embed calls by model and gRPC status code",
    "align_embed_request_seconds": "ingress: Embed latency in seconds by model",
    "align_embed_retries": "ingress: retries after a family replica died, by model",
    "align_embeddings_computed": "embedder: stimuli embedded, by model",
    "align_embed_batch_stimuli": "embedder: stimuli per forward batch, by model",
    "align_embed_batch_requests": "embedder: requests merged into one forward batch",
    "align_embed_forward_seconds": "embedder: seconds per forward batch, by model",
    "align_model_loads": "embedder: models loaded into a replica (LRU misses), by model",
    "align_model_load_seconds": "embedder: seconds to load a model, by model",
}


# ----------------------------------------------------------------------------------------
# Configuration

#: Env var that overrides ``args.device`` (set on GPU hosts: compose.gpu.yml, KubeRay pods).
DEVICE_ENV = "ALIGN_DEVICE"
DEVICES = ("auto", "cpu", "gpu")
#: ``ray_actor_options`` of every family replica, by device (``args.resources`` replaces
#: a device's preset as a whole). A GPU fraction: the three families share one GPU.
DEFAULT_RESOURCES: dict[str, dict[str, Any]] = {
    "cpu": {"num_cpus": 1},
    "gpu": {"num_cpus": 1, "num_gpus": 0.25},
}


def _device(value: Any, where: str) -> str:
    name = str(value).strip().lower()
    if name == "cuda" or name.startswith("cuda:"):  # ALIGN_DEVICE as a torch device
        return "gpu"
    if name not in DEVICES:
        raise InvalidInputError(where, f"is {value!r}", "auto, cpu or gpu (or cuda)")
    return name


def _cluster_gpus() -> float:
    """GPUs of the connected Ray cluster now (0 when this process is not in Ray)."""
    import ray

    return float(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0.0


def replica_resources(
    args: Mapping[str, Any],
    environ: Mapping[str, str] | None = None,
    cluster_gpus: Callable[[], float] | None = None,
) -> tuple[str, dict[str, Any]]:
    """The device of the family replicas (``"cpu"`` or ``"gpu"``) and their
    ``ray_actor_options``.

    The device: ``environ["ALIGN_DEVICE"]`` when set (non-empty), else ``args["device"]``
    (default ``auto``); ``cuda``/``cuda:N`` mean ``gpu``; ``auto`` is ``gpu`` when
    ``cluster_gpus()`` (default: the connected Ray cluster's, at build time) is > 0,
    else ``cpu``. The options: ``args["resources"][device]``, else
    :data:`DEFAULT_RESOURCES`. A GPU preset must ask for ``num_gpus`` > 0 (that request
    also makes Ray's autoscaler add GPU nodes); a CPU preset must not.
    """
    environ = os.environ if environ is None else environ
    if environ.get(DEVICE_ENV, "").strip():
        device = _device(environ[DEVICE_ENV], DEVICE_ENV)
    else:
        device = _device(args.get("device", "auto"), "args.device")
    if device == "auto":
        device = "gpu" if (cluster_gpus or _cluster_gpus)() > 0 else "cpu"
    presets = args.get("resources") or {}
    if not isinstance(presets, Mapping) or set(presets) - {"cpu", "gpu"}:
        raise InvalidInputError(
            "args.resources", f"is {presets!r}", "a mapping {cpu: {...}, gpu: {...}}"
        )
    options = presets.get(device, DEFAULT_RESOURCES[device])
    where = f"args.resources.{device}"
    if not isinstance(options, Mapping):
        raise InvalidInputError(where, f"is {options!r}", "ray_actor_options (a mapping)")
    for key in ("num_cpus", "num_gpus"):
        value = options.get(key, 0)
        if not isinstance(value, int | float) or value < 0:
            raise InvalidInputError(f"{where}.{key}", f"is {value!r}", "a number >= 0")
    gpus = options.get("num_gpus", 0)
    if device == "gpu" and not gpus > 0:
        raise InvalidInputError(f"{where}.num_gpus", f"is {gpus}", "> 0 on the gpu device")
    if device == "cpu" and gpus > 0:
        raise InvalidInputError(f"{where}.num_gpus", f"is {gpus}", "0 on the cpu device")
    return device, dict(options)


@dataclass(frozen=True)
class Limits:
    """Per-request limits, checked by the ingress (RESOURCE_EXHAUSTED when exceeded)."""

    max_stimuli_per_request: int = 4096
    max_request_bytes: int = 256 * 1024 * 1024

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> Limits:
        values = dict(values or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                "limits", f"has unknown keys {unknown}", f"only {sorted(known)}"
            )
        out = cls(**{k: int(v) for k, v in values.items()})
        for name, value in asdict(out).items():
            if value <= 0:
                raise InvalidInputError(f"limits.{name}", f"is {value}", "a positive integer")
        return out


@dataclass(frozen=True)
class BatchConfig:
    """``user_config`` of a family deployment (reconfigurable without a restart)."""

    max_batch_stimuli: int = 64
    batch_wait_timeout_s: float = 0.01
    torch_threads: int = 1
    #: run concurrent requests as ONE forward batch (throughput). On CPU a merged batch
    #: can round the last bits differently from embedding each request alone; False
    #: keeps the embedded library's exact bits per request (requests still queue here).
    merge_requests: bool = True

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> BatchConfig:
        values = dict(values or {})
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InvalidInputError(
                "user_config", f"has unknown keys {unknown}", f"only {sorted(known)}"
            )
        out = cls(
            max_batch_stimuli=int(values.get("max_batch_stimuli", cls.max_batch_stimuli)),
            batch_wait_timeout_s=float(
                values.get("batch_wait_timeout_s", cls.batch_wait_timeout_s)
            ),
            torch_threads=int(values.get("torch_threads", cls.torch_threads)),
            merge_requests=bool(values.get("merge_requests", cls.merge_requests)),
        )
        if out.max_batch_stimuli < 1:
            raise InvalidInputError(
                "user_config.max_batch_stimuli", f"is {out.max_batch_stimuli}", ">= 1"
            )
        if out.batch_wait_timeout_s < 0:
            raise InvalidInputError(
                "user_config.batch_wait_timeout_s", f"is {out.batch_wait_timeout_s}", ">= 0"
            )
        if out.torch_threads < 1:
            raise InvalidInputError("user_config.torch_threads", f"is {out.torch_threads}", ">= 1")
        return out


# ----------------------------------------------------------------------------------------
# What travels between the ingress and a family replica


@dataclass
class Work:
    """One request's stimuli for one model (the model id travels as multiplexed id).

    ``strict``: a bad stimulus fails the request (InvalidInputError naming
    ``<field>[index]``), as ``EmbeddingModel.embed`` does; otherwise (dataset requests)
    it becomes an all-NaN row, as ``embed_dataset`` does.
    """

    stimuli: list[Any]
    layers: tuple[str, ...]
    batch_size: int | None = None
    strict: bool = True
    field: str = "stimuli"

    def __len__(self) -> int:
        return len(self.stimuli)


@dataclass
class Failure:
    """An align error raised in a replica, carried back as data (not a Ray exception)."""

    type: str
    message: str
    fields: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, exc: AlignError) -> Failure:
        payload = error_payload(exc)
        return cls(type=type(exc).__name__, message=str(exc), fields=payload)

    def rebuild(self) -> AlignError:
        rebuilt = error_from_payload({**self.fields, "type": self.type}, self.message)
        if rebuilt is not None:
            return rebuilt
        import align.errors as errors

        cls = getattr(errors, self.type, AlignError)
        try:
            return cls(self.message)
        except TypeError:
            return AlignError(self.message)


Outcome = dict[str, np.ndarray] | Failure


def _batch_size_of(items: Sequence[Work]) -> int:
    return sum(len(w) for w in items)


# ----------------------------------------------------------------------------------------
# Family deployment


@serve.deployment(name="Embedder", max_ongoing_requests=64)
class Embedder:
    """Embeds with the models of one family; an LRU set of models per replica."""

    def __init__(self, family: str, max_models_per_replica: int = 2) -> None:
        import ray

        self.family = family
        self.device = "cuda" if ray.get_gpu_ids() else "cpu"
        self.config = BatchConfig()
        self._forward_lock = asyncio.Lock()
        self._stats = {"batches": 0, "requests": 0, "stimuli": 0, "max_requests_per_batch": 0}
        if int(max_models_per_replica) < 1:
            raise InvalidInputError(
                "max_models_per_replica", f"is {max_models_per_replica}", ">= 1"
            )

        async def load(model_id: str) -> Any:
            return await self._load(model_id)

        # An instance-level multiplexed loader so that the LRU size comes from the config.
        self._load_fn = load
        self.get_model = serve.multiplexed(max_num_models_per_replica=int(max_models_per_replica))(
            load
        )
        tags = ("model",)
        self._m_computed = Counter(
            "align_embeddings_computed", METRIC_NAMES["align_embeddings_computed"], tags
        )
        self._m_batch_stimuli = Histogram(
            "align_embed_batch_stimuli",
            METRIC_NAMES["align_embed_batch_stimuli"],
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
            tag_keys=tags,
        )
        self._m_batch_requests = Histogram(
            "align_embed_batch_requests",
            METRIC_NAMES["align_embed_batch_requests"],
            boundaries=[1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64],
            tag_keys=tags,
        )
        self._m_forward = Histogram(
            "align_embed_forward_seconds",
            METRIC_NAMES["align_embed_forward_seconds"],
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
            tag_keys=tags,
        )
        self._m_loads = Counter("align_model_loads", METRIC_NAMES["align_model_loads"], tags)
        self._m_load_seconds = Histogram(
            "align_model_load_seconds",
            METRIC_NAMES["align_model_load_seconds"],
            boundaries=[0.1, 0.5, 1, 2, 5, 10, 30, 60, 120],
            tag_keys=tags,
        )

    def reconfigure(self, user_config: Mapping[str, Any] | None) -> None:
        import torch

        self.config = BatchConfig.from_mapping(user_config)
        torch.set_num_threads(self.config.torch_threads)
        self._embed_batch.set_max_batch_size(self.config.max_batch_stimuli)  # type: ignore[attr-defined]
        self._embed_batch.set_batch_wait_timeout_s(self.config.batch_wait_timeout_s)  # type: ignore[attr-defined]

    async def _load(self, model_id: str) -> Any:
        from align.models import load_model

        start = time.perf_counter()
        model = await asyncio.to_thread(load_model, model_id, self.device)
        self._m_loads.inc(tags={"model": model_id})
        self._m_load_seconds.observe(time.perf_counter() - start, tags={"model": model_id})
        logger.info("loaded %s on %s in %.1fs", model_id, self.device, time.perf_counter() - start)
        return model

    async def stats(self) -> dict[str, Any]:
        """This replica's counters (for tests and debugging; Prometheus has the same)."""
        import ray

        wrapper = getattr(self._load_fn, "__serve_multiplex_wrapper", None)
        loaded = list(getattr(wrapper, "models", {}))  # least recently used first
        return {
            **self._stats,
            "loaded_models": loaded,
            "family": self.family,
            "device": self.device,
            "actor_name": ray.get_runtime_context().get_actor_name(),
            "config": asdict(self.config),
        }

    async def embed(self, work: Work) -> Outcome:
        """Embed one request's stimuli with the multiplexed model of this call."""
        try:
            if len(work) > self.config.max_batch_stimuli:
                # Already a full batch on its own: no point waiting for others.
                model = await self.get_model(serve.get_multiplexed_model_id())
                return (await self._forward(model, [work]))[0]
            return await self._embed_batch(work)
        except AlignError as e:
            return Failure.of(e)

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=_batch_size_of)
    async def _embed_batch(self, items: list[Work]) -> list[Outcome]:
        # Serve splits batches by multiplexed model id: one model per call.
        model_id = serve.get_multiplexed_model_id()
        try:
            model = await self.get_model(model_id)
        except AlignError as e:
            return [Failure.of(e)] * len(items)
        if len(items) > 1 and not self.config.merge_requests:
            return [await self._one(model, item) for item in items]
        try:
            return await self._forward(model, items)
        except AlignError as e:
            if len(items) == 1:
                return [Failure.of(e)]
        # A request-level error (e.g. an unknown layer) must not fail the other requests
        # of the batch: redo them one by one.
        return [await self._one(model, item) for item in items]

    async def _one(self, model: Any, item: Work) -> Outcome:
        try:
            return (await self._forward(model, [item]))[0]
        except AlignError as e:
            return Failure.of(e)

    async def _forward(self, model: Any, items: Sequence[Work]) -> list[Outcome]:
        """One forward pass over the concatenated stimuli of ``items`` (same model).

        A request alone is embedded exactly as the embedded library does it (same call,
        same batch size: the same bits on the same device and torch thread count). Merged
        requests run as ONE forward batch: on CPU the kernels may then round the last
        bits differently (measured on tf_efficientnet_lite0: up to 2.5e-6 absolute at 1
        thread; see BatchConfig.merge_requests).
        """
        layers = tuple(dict.fromkeys(layer for item in items for layer in item.layers))
        stimuli = [s for item in items for s in item.stimuli]
        if len(items) == 1:
            batch_size = items[0].batch_size
        else:
            batch_size = len(stimuli)
        tags = {"model": model.spec.id}
        async with self._forward_lock:
            start = time.perf_counter()
            if hasattr(model, "embed_images"):
                result, failures = await asyncio.to_thread(
                    model.embed_images, stimuli, layers, batch_size, strict=False
                )
            else:
                result = await asyncio.to_thread(model.embed, stimuli, layers, batch_size)
                failures = []
            seconds = time.perf_counter() - start
        st = self._stats
        st["batches"] += 1
        st["requests"] += len(items)
        st["stimuli"] += len(stimuli)
        st["max_requests_per_batch"] = max(st["max_requests_per_batch"], len(items))
        self._m_forward.observe(seconds, tags=tags)
        self._m_batch_stimuli.observe(len(stimuli), tags=tags)
        self._m_batch_requests.observe(len(items), tags=tags)
        self._m_computed.inc(len(stimuli) - len(failures), tags=tags)
        failed = {i for i, _ in failures}
        out: list[Outcome] = []
        offset = 0
        for item in items:
            stop = offset + len(item)
            bad = sorted(i - offset for i in failed if offset <= i < stop)
            if bad and item.strict:
                out.append(Failure.of(self._stimulus_error(model, item, bad[0])))
            elif len(bad) == len(item):
                out.append(
                    Failure.of(
                        DataMissingError(
                            f"none of the {len(item)} images could be read, e.g. "
                            f"{self._stimulus_error(model, item, bad[0])}. Is the data directory "
                            "(ALIGN_DATA_DIR) of the server complete?"
                        )
                    )
                )
            else:
                out.append(
                    {
                        layer: np.asarray(result[layer][offset:stop], dtype=np.float32)
                        for layer in item.layers
                    }
                )
            offset = stop
        return out

    @staticmethod
    def _stimulus_error(model: Any, item: Work, index: int) -> AlignError:
        """The engine's own error for ``item.stimuli[index]``, named as the request field."""
        from align.models.images import load_and_preprocess

        try:
            load_and_preprocess(item.stimuli[index], index, model.spec.preprocessing)
        except InvalidInputError as e:
            where = e.field.replace("stimuli[", f"{item.field}[", 1)
            return InvalidInputError(where, e.problem, e.expected)
        return InvalidInputError(f"{item.field}[{index}]", "could not be embedded", "an image")


# ----------------------------------------------------------------------------------------
# Ingress


def _model_tag(model_id: str) -> str:
    """A metric label for a model: its id when known, else one shared value (labels from
    arbitrary client strings would grow the series without bound)."""
    from align.models import get_spec

    try:
        return str(get_spec(model_id).id)
    except Exception:
        return "<unknown>"


def _weights_available(spec: Any) -> bool:
    weights = spec.weights
    if weights.source in ("random",):
        return True
    if weights.source == "file":
        return Path(weights.location).exists()
    if weights.source == "package":
        return Path(weights.location).exists() if weights.location else False
    if weights.source == "hub":
        from align.models.spec import hub_online

        return hub_online()
    return False


@serve.deployment(name="EmbeddingIngress", max_ongoing_requests=128)
class EmbeddingIngress:
    """gRPC ingress of ``align.v1.EmbeddingService``."""

    def __init__(
        self,
        embedders: Mapping[str, Any],
        limits: Mapping[str, Any] | None = None,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
        data_dir: str | None = None,
    ) -> None:
        self.embedders = dict(embedders)
        self.limits = Limits.from_mapping(limits)
        self.retries = int(retries)
        self.retry_backoff_s = float(retry_backoff_s)
        self.data_dir = data_dir
        self._datasets: dict[str, Any] = {}
        tags = ("model",)
        self._m_requests = Counter(
            "align_embed_requests",
            METRIC_NAMES["align_embed_requests"],
            ("model", "code"),  # type: ignore[arg-type]
        )
        self._m_latency = Histogram(
            "align_embed_request_seconds",
            METRIC_NAMES["align_embed_request_seconds"],
            boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300],
            tag_keys=tags,
        )
        self._m_retries = Counter("align_embed_retries", METRIC_NAMES["align_embed_retries"], tags)

    # -- gRPC methods ---------------------------------------------------------------

    async def Embed(
        self, request: align_pb2.EmbedRequest, grpc_context: Any = None
    ) -> align_pb2.EmbedResponse:
        start = time.perf_counter()
        try:
            response = await self._embed(request)
        except Exception as e:  # every failure becomes a status, never a traceback
            code = self._set_error(grpc_context, e, "Embed")
            model_tag = _model_tag(request.model)
            self._m_requests.inc(tags={"model": model_tag, "code": code.name})
            return align_pb2.EmbedResponse()
        self._m_requests.inc(tags={"model": response.model, "code": "OK"})
        self._m_latency.observe(time.perf_counter() - start, tags={"model": response.model})
        return response

    async def ListModels(
        self, request: align_pb2.ListModelsRequest, grpc_context: Any = None
    ) -> align_pb2.ListModelsResponse:
        from align.models import list_models

        pattern = request.pattern or "*"
        try:
            specs = list_models(pattern)
        except Exception as e:
            self._set_error(grpc_context, e, "ListModels")
            return align_pb2.ListModelsResponse()
        models = [
            align_pb2.ModelInfo(
                id=s.id,
                family=s.family,
                architecture=s.architecture,
                modality=s.modality,
                layers=list(s.layers),
                digest=s.digest,
                weights_available=_weights_available(s),
                preprocessing_json=json.dumps(to_jsonable(s.preprocessing)),
            )
            for s in specs
            if fnmatch.fnmatchcase(s.id, pattern)
        ]
        return align_pb2.ListModelsResponse(models=models)

    async def Health(
        self, request: align_pb2.HealthRequest, grpc_context: Any = None
    ) -> align_pb2.HealthResponse:
        details = {
            "families": ",".join(sorted(self.embedders)),
            "max_stimuli_per_request": str(self.limits.max_stimuli_per_request),
            "max_request_bytes": str(self.limits.max_request_bytes),
        }
        return align_pb2.HealthResponse(
            status="ok",
            version=__version__,
            metric_code_version=METRIC_CODE_VERSION,
            device="ray-serve",
            details=details,
        )

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:
        """``grpc.health.v1.Health/Check``: SERVING while the application runs."""
        from grpc_health.v1 import health_pb2

        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

    # -- the work -------------------------------------------------------------------

    @staticmethod
    def _set_error(grpc_context: Any, exc: Exception, method: str) -> grpc.StatusCode:
        """Put ``exc`` on the call as a status (shared mapping of align.errors); an
        unexpected error is logged with an incident id and only that id is returned."""
        if grpc_context is None:  # called through a handle, not gRPC
            raise exc
        code, message, trailing = describe(exc, logger, method)
        grpc_context.set_code(code)
        grpc_context.set_details(message)
        if trailing:
            grpc_context.set_trailing_metadata(list(trailing))
        return code

    async def _embed(self, request: align_pb2.EmbedRequest) -> align_pb2.EmbedResponse:
        from align.models import get_spec

        if not request.model:
            raise InvalidInputError(
                "model", "is empty", "a model id, e.g. 'timm/tf_efficientnet_lite0'"
            )
        spec = get_spec(request.model)  # NotFoundError with close matches
        layer = request.layer or DEFAULT_LAYER
        if request.batch_size < 0:
            raise InvalidInputError("batch_size", f"is {request.batch_size}", ">= 0 (0: default)")
        stimuli, present, field_name = self._stimuli(request, spec)
        n = len(present)
        deployment = FAMILY_DEPLOYMENTS.get(spec.family)
        handle = self.embedders.get(deployment or "")
        if handle is None:
            raise InvalidInputError(
                "model",
                f"{spec.id!r} is of family {spec.family!r}, which this server does not serve",
                f"a model of the families {sorted(self.embedders)}",
            )
        work = Work(
            stimuli=stimuli,
            layers=(layer,),
            batch_size=request.batch_size or None,
            strict=field_name != "dataset",
            field=field_name,
        )
        if stimuli:
            outcome = await self._call(handle, spec.id, work)
            if isinstance(outcome, Failure):
                raise outcome.rebuild()
            features = outcome[layer]
        else:
            features = np.zeros((0, 0), dtype=np.float32)
        if len(stimuli) != n:
            full = np.full((n, features.shape[1]), np.nan, dtype=np.float32)
            full[np.asarray(present, dtype=bool)] = features
            features = full
        features = np.ascontiguousarray(features, dtype="<f4")
        return align_pb2.EmbedResponse(
            data=features.tobytes(order="C"),
            shape=list(features.shape),
            # the weights' sha256; random/unhashed weights: the spec digest (as the
            # evaluation service's in-process embedder reports it)
            model_digest=spec.weights.sha256 or spec.digest,
            layer=layer,
            spec_digest=spec.digest,
            model=spec.id,
            spec_json=json.dumps(to_jsonable(spec), sort_keys=True),
            dtype="float32",
        )

    def _stimuli(
        self, request: align_pb2.EmbedRequest, spec: Any
    ) -> tuple[list[Any], list[bool], str]:
        """The stimuli to embed, per requested stimulus whether it is present, and the
        request field that gave them."""
        ways = [
            name
            for name, given in (
                ("images", len(request.images) > 0),
                ("words", len(request.words) > 0),
                ("dataset", bool(request.dataset)),
            )
            if given
        ]
        if not ways:
            if request.stimulus_ids:
                raise InvalidInputError(
                    "dataset",
                    "is empty but stimulus_ids are given",
                    "a dataset id with stimulus_ids",
                )
            raise InvalidInputError(
                "request",
                "is empty: no images, words or dataset",
                "exactly one of images, words, or dataset (+ stimulus_ids)",
            )
        if len(ways) > 1:
            raise InvalidInputError(
                "request",
                f"gives the stimuli in more than one way ({', '.join(ways)})",
                "exactly one of images, words, or dataset (+ stimulus_ids)",
            )
        if request.stimulus_ids and ways[0] != "dataset":
            raise InvalidInputError(
                "stimulus_ids",
                "are given without a dataset",
                "stimulus_ids only together with dataset",
            )
        limit = self.limits.max_stimuli_per_request
        if ways[0] == "images":
            self._check_modality(spec, "image", "images")
            n_bytes = sum(len(b) for b in request.images)
            self._check_size(len(request.images), n_bytes)
            return list(request.images), [True] * len(request.images), "images"
        if ways[0] == "words":
            self._check_modality(spec, "text", "words")
            n_bytes = sum(len(w.encode()) for w in request.words)
            self._check_size(len(request.words), n_bytes)
            for i, w in enumerate(request.words):
                if not w.strip():
                    raise InvalidInputError(f"words[{i}]", "is empty", "a non-empty word or phrase")
            return list(request.words), [True] * len(request.words), "words"
        dataset = self._dataset(request.dataset)
        ids = list(request.stimulus_ids) or list(dataset.stimulus_ids)
        if len(ids) > limit:
            raise ResourceLimitError(
                f"request: {len(ids)} stimuli exceed the limit of {limit} per request "
                "(max_stimuli_per_request); split the request"
            )
        index = {sid: i for i, sid in enumerate(dataset.stimulus_ids)}
        rows: list[int] = []
        for sid in ids:
            if sid not in index:
                raise NotFoundError(
                    f"stimulus of dataset {dataset.id!r}", sid, dataset.stimulus_ids
                )
            rows.append(index[sid])
        if spec.modality == "text":
            if dataset.words is None:
                raise InvalidInputError(
                    "dataset",
                    f"{dataset.id!r} has no words",
                    "a dataset with words for a text model",
                )
            return [dataset.words[r] for r in rows], [True] * len(rows), "dataset"
        if dataset.image_paths is None:
            raise InvalidInputError(
                "dataset",
                f"{dataset.id!r} has no images for the image model {spec.id!r}",
                "a dataset with images, or a text model",
            )
        present = [dataset.image_paths[r] is not None for r in rows]
        if not any(present):
            raise DataMissingError(
                f"dataset {dataset.id!r}: none of the {len(rows)} requested images is on "
                f"the server (data dir {dataset.source})"
            )
        paths = [Path(dataset.image_paths[r]) for r, ok in zip(rows, present, strict=True) if ok]
        return paths, present, "dataset"

    def _check_modality(self, spec: Any, needed: str, given: str) -> None:
        if spec.modality != needed:
            other = "words" if spec.modality == "text" else "images"
            raise InvalidInputError(
                given,
                f"were given to the {spec.modality} model {spec.id!r}",
                f"{other} (or a dataset) for this model",
            )

    def _check_size(self, n: int, n_bytes: int) -> None:
        if n > self.limits.max_stimuli_per_request:
            raise ResourceLimitError(
                f"request: {n} stimuli exceed the limit of "
                f"{self.limits.max_stimuli_per_request} per request (max_stimuli_per_request);"
                " split the request"
            )
        if n_bytes > self.limits.max_request_bytes:
            raise ResourceLimitError(
                f"request: {n_bytes} bytes of stimuli exceed the limit of "
                f"{self.limits.max_request_bytes} per request (max_request_bytes);"
                " split the request"
            )

    def _dataset(self, name: str) -> Any:
        if name.startswith("folder:"):
            raise InvalidInputError(
                "dataset",
                f"{name!r} is a folder: the server does not read client paths",
                "a registered dataset id, or the images themselves in 'images'",
            )
        if name not in self._datasets:
            from align.datasets import load_dataset

            dataset = load_dataset(name, data_dir=self.data_dir)
            while len(self._datasets) >= 8:  # a few datasets; oldest out
                self._datasets.pop(next(iter(self._datasets)))
            self._datasets[name] = dataset
        return self._datasets[name]

    async def _call(self, handle: Any, model_id: str, work: Work) -> Outcome:
        """Call the family deployment; retry when the replica died under the call."""
        from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError

        attempt = 0
        while True:
            try:
                return await handle.options(multiplexed_model_id=model_id).embed.remote(work)
            except (RayActorError, ActorDiedError, ActorUnavailableError) as e:
                attempt += 1
                if attempt > self.retries:
                    raise EmbedderUnavailableError(
                        f"family deployment of {model_id!r}", str(e)
                    ) from e
                self._m_retries.inc(tags={"model": model_id})
                logger.warning("embedder replica lost (%s); retry %d for %s", e, attempt, model_id)
                await asyncio.sleep(self.retry_backoff_s * 2 ** (attempt - 1))


# ----------------------------------------------------------------------------------------
# Application


def build_app(args: Mapping[str, Any] | None = None) -> Any:
    """Serve application builder (``import_path: align_services.embedding.app:build_app``).

    ``args`` (the ``args`` of the application in deploy/serve_config.yaml):
    ``families`` (default all: timm, open_clip, text), ``max_models_per_replica``
    (LRU size, default 2), ``limits`` ({max_stimuli_per_request, max_request_bytes}),
    ``retries`` (default 3), ``data_dir`` (default: ALIGN_DATA_DIR / ../shared/data),
    ``device`` (auto|cpu|gpu, default auto; env ALIGN_DEVICE wins) and ``resources``
    ({cpu: ray_actor_options, gpu: ray_actor_options}): see :func:`replica_resources`.

    Runs where Serve builds the application (a Ray task on the cluster, with the env of
    the node's raylet plus the application's runtime_env). A family deployment that has
    ``ray_actor_options`` in the config file gets those instead, as a whole (Serve).
    """
    args = dict(args or {})
    known = {
        "device",
        "resources",
        "families",
        "max_models_per_replica",
        "limits",
        "retries",
        "retry_backoff_s",
        "data_dir",
    }
    unknown = sorted(set(args) - known)
    if unknown:
        raise InvalidInputError("args", f"has unknown keys {unknown}", f"only {sorted(known)}")
    families = tuple(args.get("families") or ALL_FAMILIES)
    for fam in families:
        if fam not in FAMILY_DEPLOYMENTS:
            raise NotFoundError("model family", str(fam), FAMILY_DEPLOYMENTS)
    max_models = int(args.get("max_models_per_replica", 2))
    device, actor_options = replica_resources(args)
    if device == "gpu" and _cluster_gpus() == 0:
        logger.warning(
            "embedding: family replicas ask for GPUs (%s) but the Ray cluster has none yet; "
            "they start once the autoscaler adds a GPU node",
            actor_options,
        )
    embedders: dict[str, Any] = {}
    for fam in families:
        name = FAMILY_DEPLOYMENTS[fam]
        if name not in embedders:
            embedders[name] = Embedder.options(  # type: ignore[attr-defined]
                name=name, ray_actor_options=dict(actor_options)
            ).bind(fam, max_models)
    Limits.from_mapping(args.get("limits"))  # fail at build time, not per request
    return EmbeddingIngress.bind(  # type: ignore[attr-defined]
        embedders,
        limits=args.get("limits"),
        retries=int(args.get("retries", 3)),
        retry_backoff_s=float(args.get("retry_backoff_s", 0.5)),
        data_dir=args.get("data_dir"),
    )


#: The default application (``serve run align_services.embedding.app:app``).
app = build_app()
