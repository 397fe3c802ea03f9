"""Where the evaluation service gets feature matrices from.

``--embedder local``            in-process with ``align.models`` (tests, single machine)
``--embedder grpc://host:port`` the Ray Serve embedding application through Ray Serve's
                                gRPC proxy (metadata ``application: embedding``), in
                                bounded chunks of dataset stimulus ids, so the embedding
                                server resolves and decodes the images itself.

Both return an :class:`Embedding`: the (n, p) float32 matrix in the dataset's stimulus
order (all-NaN rows for missing stimuli) plus the model's digests for provenance.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from align.errors import InvalidInputError, NotFoundError

from .errors import EmbedderUnavailableError

Progress = Callable[[int, int, str], Awaitable[None]]


@dataclass(frozen=True)
class ModelRef:
    """What the cache keys and the provenance need before anything is computed (the
    same values embedded ``align.score`` takes from the ModelSpec)."""

    id: str
    spec_digest: str  # ModelSpec.digest: weights + preprocessing + architecture
    family: str = "torch"
    preprocessing: Any = None  # JSON form of ModelSpec.preprocessing
    layers: tuple[str, ...] = ()
    modality: str = "image"


@dataclass
class Embedding:
    features: np.ndarray
    model: str
    layer: str
    model_digest: str = ""  # weights digest reported by the embedder
    spec_digest: str = ""
    spec: dict[str, Any] = field(default_factory=dict)


class LocalEmbedder:
    """Embeds in this process with ``align.models`` (loaded models are kept)."""

    name = "local"

    def __init__(self, device: str | None = None, max_models: int = 2) -> None:
        self.device = device
        self.max_models = max_models
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    async def resolve(self, model: str) -> ModelRef:
        from align.models import get_spec
        from align.results import to_jsonable

        spec = get_spec(model)
        return ModelRef(
            id=str(spec.id),
            spec_digest=str(spec.digest),
            family=str(spec.family),
            preprocessing=to_jsonable(spec.preprocessing),
            layers=tuple(spec.layers),
            modality=str(spec.modality),
        )

    def _load(self, model: str) -> Any:
        from align.models import load_model

        with self._lock:
            if model not in self._models:
                while len(self._models) >= self.max_models:
                    self._models.pop(next(iter(self._models)))
                self._models[model] = load_model(model, device=self.device)
            return self._models[model]

    def _embed_sync(self, model: str, layer: str, dataset: Any) -> Embedding:
        from align.models import embed_dataset

        m = self._load(model)
        out = embed_dataset(m, dataset, layers=(layer,))
        spec = m.spec
        sha = getattr(getattr(spec, "weights", None), "sha256", None)
        return Embedding(
            features=np.asarray(out[layer]),
            model=str(spec.id),
            layer=layer,
            model_digest=str(sha or spec.digest),
            spec_digest=str(spec.digest),
        )

    async def embed_dataset(
        self, ref: ModelRef, layer: str, dataset: Any, progress: Progress, executor: Executor
    ) -> Embedding:
        n = len(dataset.stimulus_ids)
        await progress(0, n, f"embedding {n} stimuli with {ref.id} in-process")
        loop = asyncio.get_running_loop()
        emb = await loop.run_in_executor(executor, self._embed_sync, ref.id, layer, dataset)
        await progress(n, n, "embedded")
        return emb

    async def health(self) -> bool:
        return True

    async def close(self) -> None:
        self._models.clear()


class GrpcEmbedder:
    """Client of the EmbeddingService behind Ray Serve's gRPC proxy."""

    name = "grpc"

    def __init__(
        self,
        target: str,
        *,
        application: str = "embedding",
        chunk_size: int = 256,
        timeout_s: float = 600.0,
        max_message_bytes: int = 256 << 20,
    ) -> None:
        import grpc
        from align.remote import channel_options

        if chunk_size < 1:
            raise InvalidInputError("chunk_size", f"is {chunk_size}", "at least 1")
        self.target = target
        self.application = application
        self.chunk_size = chunk_size
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(
            target, options=channel_options(max_message_bytes)
        )
        from align.v1 import align_pb2_grpc

        self._stub = align_pb2_grpc.EmbeddingServiceStub(self._channel)
        # the internal credential the embedding service requires (align serve sets it)
        internal = os.environ.get("ALIGN_INTERNAL_TOKEN", "")
        self._metadata: tuple[tuple[str, str], ...] = (("application", application),)
        if internal:
            self._metadata += (("x-align-internal", internal),)

    async def _call(self, method: Any, request: Any) -> Any:
        import grpc

        try:
            return await method(request, metadata=self._metadata, timeout=self.timeout_s)
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise EmbedderUnavailableError(self.target, exc.details() or code.name) from None
            from align.remote import error_from_status

            raise error_from_status(code, exc.details() or "", exc.trailing_metadata()) from None

    async def resolve(self, model: str) -> ModelRef:
        from align.v1 import align_pb2

        reply = await self._call(self._stub.ListModels, align_pb2.ListModelsRequest(pattern=model))
        for info in reply.models:
            if info.id == model:
                if info.preprocessing_json:
                    preprocessing = json.loads(info.preprocessing_json)
                else:  # older embedding servers: take it from our registry if the same spec
                    preprocessing = _local_preprocessing(info.id, info.digest)
                return ModelRef(
                    id=info.id,
                    spec_digest=info.digest,
                    family=info.family or "torch",
                    preprocessing=preprocessing,
                    layers=tuple(info.layers),
                    modality=info.modality or "image",
                )
        known = await self._call(self._stub.ListModels, align_pb2.ListModelsRequest(pattern="*"))
        raise NotFoundError("model", model, [m.id for m in known.models])

    async def embed_dataset(
        self, ref: ModelRef, layer: str, dataset: Any, progress: Progress, executor: Executor
    ) -> Embedding:
        from align.v1 import align_pb2

        ids = list(dataset.stimulus_ids)
        n = len(ids)
        # registered datasets go by id (the embedding server reads its own copy); an
        # upload or a lab folder of this server travels as image bytes
        by_id = not str(dataset.id).startswith(("folder:", "upload:")) and not getattr(
            dataset, "image_paths_local", False
        )
        parts: list[np.ndarray] = []
        meta: Any = None
        await progress(0, n, f"embedding {n} stimuli with {ref.id} on {self.target}")
        for start in range(0, n, self.chunk_size):
            chunk = ids[start : start + self.chunk_size]
            if by_id:
                request = align_pb2.EmbedRequest(
                    model=ref.id, layer=layer, dataset=str(dataset.id), stimulus_ids=chunk
                )
            elif ref.modality == "text":
                words = list((dataset.words or ())[start : start + len(chunk)])
                request = align_pb2.EmbedRequest(model=ref.id, layer=layer, words=words)
            elif dataset.image_paths is not None and None not in dataset.image_paths:
                paths = dataset.image_paths[start : start + len(chunk)]
                images = await asyncio.to_thread(_read_all, paths)
                request = align_pb2.EmbedRequest(model=ref.id, layer=layer, images=images)
            else:
                raise InvalidInputError(
                    "dataset",
                    f"{dataset.id} is a local folder the embedding service cannot read",
                    "a registered dataset id, or --embedder local",
                )
            reply = await self._call(self._stub.Embed, request)
            block = decode_features(reply.data, reply.shape, f"Embed[{start}:{start + len(chunk)}]")
            if block.shape[0] != len(chunk):
                raise InvalidInputError(
                    "EmbedResponse.shape", f"has {block.shape[0]} rows", f"{len(chunk)} rows"
                )
            parts.append(block)
            meta = reply
            await progress(start + len(chunk), n, f"embedded {start + len(chunk)}/{n}")
        if meta is None:
            raise InvalidInputError("dataset", "has no stimuli", "at least one stimulus")
        spec = json.loads(meta.spec_json) if meta.spec_json else {}
        return Embedding(
            features=np.concatenate(parts, axis=0),
            model=meta.model or ref.id,
            layer=meta.layer or layer,
            model_digest=meta.model_digest,
            spec_digest=meta.spec_digest or ref.spec_digest,
            spec=spec,
        )

    async def health(self) -> bool:
        from align.v1 import align_pb2

        try:
            await self._call(self._stub.Health, align_pb2.HealthRequest())
        except Exception:
            return False
        return True

    async def close(self) -> None:
        await self._channel.close()


def _read_all(paths: Any) -> list[bytes]:
    return [Path(p).read_bytes() for p in paths]


def _local_preprocessing(model: str, digest: str) -> Any:
    """The preprocessing of ``model`` from this process's registry, when its spec has the
    same digest as the embedding server's (else None: unknown here)."""
    try:
        from align.models import get_spec
        from align.results import to_jsonable

        spec = get_spec(model)
    except Exception:
        return None
    return to_jsonable(spec.preprocessing) if spec.digest == digest else None


def decode_features(data: bytes, shape: Any, where: str = "EmbedResponse") -> np.ndarray:
    """float32 little-endian bytes + shape -> (n, p) float32 array (checked)."""
    dims = tuple(int(s) for s in shape)
    if len(dims) != 2 or min(dims) < 0:
        raise InvalidInputError(f"{where}.shape", f"is {dims}", "(n, p)")
    if len(data) != 4 * dims[0] * dims[1]:
        raise InvalidInputError(
            f"{where}.data", f"has {len(data)} bytes", f"{4 * dims[0] * dims[1]} for {dims}"
        )
    return np.frombuffer(data, dtype="<f4").reshape(dims).astype(np.float32)


def encode_features(features: np.ndarray) -> tuple[bytes, list[int]]:
    a = np.ascontiguousarray(features, dtype="<f4")
    return a.tobytes(), list(a.shape)


def make_embedder(spec: str, **kwargs: Any) -> LocalEmbedder | GrpcEmbedder:
    """``"local"`` or ``"grpc://host:port"`` (as ``--embedder`` takes it)."""
    if spec == "local":
        return LocalEmbedder(device=kwargs.get("device"))
    if spec.startswith("grpc://"):
        target = spec[len("grpc://") :]
        if not target or ":" not in target:
            raise InvalidInputError("embedder", f"is {spec!r}", "grpc://host:port")
        return GrpcEmbedder(target, **{k: v for k, v in kwargs.items() if k != "device"})
    raise InvalidInputError("embedder", f"is {spec!r}", "'local' or 'grpc://host:port'")
