"""The gRPC ingress of ``align.v1.EmbeddingService`` (Embed, ListModels, Health, plus
``grpc.health.v1.Health/Check``), behind Ray Serve's gRPC proxy.

Every RPC goes through :meth:`EmbeddingIngress._rpc` once: an exception becomes its
status (the shared mapping of :mod:`align_services.grpc_errors`; unexpected ones are
logged under an incident id), and the call is counted and timed. Embed checks the request
against the configured :class:`~align_services.embedding.config.Limits`, resolves the
model id (NOT_FOUND with close matches) and the dataset's stimuli, then hands the work to
the deployment of the model's family, tagged with the model id as the multiplexed model
id. A family replica that dies mid-request is retried.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from align._version import METRIC_CODE_VERSION, __version__
from align.errors import DataMissingError, InvalidInputError, NotFoundError, ResourceLimitError
from align.results import to_jsonable
from align.v1 import align_pb2
from align_services.grpc_errors import EmbedderUnavailableError, describe, status_for
from ray import serve

from .config import FAMILY_DEPLOYMENTS, Limits
from .metrics import REQUEST_SECONDS, counter, histogram
from .wire import Failure, Outcome, Work

logger = logging.getLogger("ray.serve")

DEFAULT_LAYER = "penultimate"
#: The internal credential: when the replica's environment holds ALIGN_INTERNAL_TOKEN (as
#: `align serve` sets it), gRPC calls must carry it in this metadata key (Check excepted).
INTERNAL_ENV = "ALIGN_INTERNAL_TOKEN"
INTERNAL_HEADER = "x-align-internal"


def _internal_ok(grpc_context: Any) -> bool:
    import hmac
    import os

    expected = os.environ.get(INTERNAL_ENV, "")
    if not expected:
        return True  # not configured (compose/KubeRay: the network policy confines us)
    try:
        metadata = grpc_context.invocation_metadata() or ()
    except Exception:
        return False
    given = next((str(v) for k, v in metadata if str(k).lower() == INTERNAL_HEADER), "")
    return hmac.compare_digest(given.encode(), expected.encode())


Request = TypeVar("Request")
Response = TypeVar("Response")


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
        self._m_rpcs = counter("align_embedding_rpcs", ("method", "code"))
        self._m_rpc_seconds = histogram("align_embedding_rpc_seconds", REQUEST_SECONDS, ("method",))
        self._m_requests = counter("align_embed_requests", ("model", "code"))
        self._m_latency = histogram("align_embed_request_seconds", REQUEST_SECONDS)
        self._m_retries = counter("align_embed_retries")

    # -- gRPC methods (Serve passes ``grpc_context`` on gRPC calls, None via a handle) --

    async def Embed(
        self, request: align_pb2.EmbedRequest, grpc_context: Any = None
    ) -> align_pb2.EmbedResponse:
        return await self._rpc(
            "Embed", grpc_context, self._embed, request, align_pb2.EmbedResponse, per_model=True
        )

    async def ListModels(
        self, request: align_pb2.ListModelsRequest, grpc_context: Any = None
    ) -> align_pb2.ListModelsResponse:
        return await self._rpc(
            "ListModels", grpc_context, self._list_models, request, align_pb2.ListModelsResponse
        )

    async def Health(
        self, request: align_pb2.HealthRequest, grpc_context: Any = None
    ) -> align_pb2.HealthResponse:
        return await self._rpc(
            "Health", grpc_context, self._health, request, align_pb2.HealthResponse
        )

    async def Check(self, request: Any, grpc_context: Any = None) -> Any:
        """``grpc.health.v1.Health/Check``: SERVING while the application runs."""
        from grpc_health.v1 import health_pb2

        async def serving(_: Any) -> Any:
            return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)

        return await self._rpc(
            "Check", grpc_context, serving, request, health_pb2.HealthCheckResponse
        )

    # -- around every RPC -------------------------------------------------------------

    async def _rpc(
        self,
        method: str,
        grpc_context: Any,
        handler: Callable[[Request], Awaitable[Response]],
        request: Request,
        empty: Callable[[], Response],
        per_model: bool = False,
    ) -> Response:
        """Run ``handler(request)``: an exception becomes the call's status (the shared
        mapping; an empty response goes back), and the call is counted and timed by
        method (Embed also by model). Called through a handle (no ``grpc_context``), the
        exception is raised instead."""
        started, code, model = time.perf_counter(), grpc.StatusCode.OK, None
        if method != "Check" and grpc_context is not None and not _internal_ok(grpc_context):
            # only the evaluation service (it holds ALIGN_INTERNAL_TOKEN) may call us
            code = grpc.StatusCode.UNAUTHENTICATED
            grpc_context.set_code(code)
            grpc_context.set_details(
                f"missing or wrong metadata '{INTERNAL_HEADER}': the embedding service is "
                "internal; call the evaluation service"
            )
            self._record(method, code, started, None)
            return empty()
        try:
            response = await handler(request)
            if per_model:
                model = str(getattr(response, "model", ""))
            return response
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:  # every failure becomes a status, never a traceback
            code = status_for(exc)
            if per_model:
                model = _model_tag(str(getattr(request, "model", "")))
            if grpc_context is None:
                raise
            self._set_status(grpc_context, exc, method)
            return empty()
        finally:
            self._record(method, code, started, model)

    def _record(
        self, method: str, code: grpc.StatusCode, started: float, model: str | None
    ) -> None:
        seconds = time.perf_counter() - started
        self._m_rpcs.inc(tags={"method": method, "code": code.name})
        self._m_rpc_seconds.observe(seconds, tags={"method": method})
        if model is not None:
            self._m_requests.inc(tags={"model": model, "code": code.name})
            if code is grpc.StatusCode.OK:
                self._m_latency.observe(seconds, tags={"model": model})

    @staticmethod
    def _set_status(grpc_context: Any, exc: Exception, method: str) -> None:
        """Put ``exc`` on the call as its status; an unexpected error is logged with an
        incident id and only that id goes back."""
        code, message, trailing = describe(exc, logger, method)
        grpc_context.set_code(code)
        grpc_context.set_details(message)
        if trailing:
            grpc_context.set_trailing_metadata(list(trailing))

    # -- the work -------------------------------------------------------------------

    async def _list_models(
        self, request: align_pb2.ListModelsRequest
    ) -> align_pb2.ListModelsResponse:
        from align.models import list_models

        pattern = request.pattern or "*"
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
            for s in list_models(pattern)
            if fnmatch.fnmatchcase(s.id, pattern)
        ]
        return align_pb2.ListModelsResponse(models=models)

    async def _health(self, request: align_pb2.HealthRequest) -> align_pb2.HealthResponse:
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
