"""The family deployment: one class, bound once per model family by the builder
(``TimmEmbedder``, ``OpenClipEmbedder``, ``TextEmbedder``).

Each replica keeps an LRU set of loaded models (``@serve.multiplexed``) and merges
concurrent requests for one model into one forward batch (``@serve.batch``; Serve splits
batches by model id). The models come from :mod:`align.models` (the one loading path: the
numbers are the embedded library's own). A replica given a GPU runs on CUDA.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from align.errors import AlignError, DataMissingError, InvalidInputError
from ray import serve

from .config import BatchConfig
from .metrics import counter, histogram
from .wire import Failure, Outcome, Work, batch_size_of

logger = logging.getLogger("ray.serve")


#: forward batches whose composition :meth:`Embedder.stats` keeps
RECENT_BATCHES = 32


def fingerprint(stimuli: Sequence[Any]) -> str:
    """A short digest of one request's stimuli (image bytes, paths or words, in order):
    names a request in :meth:`Embedder.stats`'s ``recent_batches`` without its data."""
    h = hashlib.sha256()
    for s in stimuli:
        data = s if isinstance(s, bytes) else str(s).encode()
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]


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
        # composition of the last forward batches: one fingerprint per request, in the
        # order its stimuli were concatenated (stats(); for tests and debugging)
        self._recent_batches: deque[list[str]] = deque(maxlen=RECENT_BATCHES)

        async def load(model_id: str) -> Any:
            return await self._load(model_id)

        # An instance-level multiplexed loader so that the LRU size comes from the args
        # (EmbeddingArgs.max_models_per_replica, validated >= 1 by the builder).
        self._load_fn = load
        self.get_model = serve.multiplexed(max_num_models_per_replica=int(max_models_per_replica))(
            load
        )
        self._m_computed = counter("align_embeddings_computed")
        self._m_batch_stimuli = histogram(
            "align_embed_batch_stimuli", [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
        )
        self._m_batch_requests = histogram(
            "align_embed_batch_requests", [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64]
        )
        self._m_forward = histogram(
            "align_embed_forward_seconds", [0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60]
        )
        self._m_loads = counter("align_model_loads")
        self._m_load_seconds = histogram(
            "align_model_load_seconds", [0.1, 0.5, 1, 2, 5, 10, 30, 60, 120]
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
            "config": self.config.model_dump(),
            "recent_batches": list(self._recent_batches),
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

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.01, batch_size_fn=batch_size_of)
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
        self._recent_batches.append([fingerprint(item.stimuli) for item in items])
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
