"""The evaluation service: grpc.aio server over ``align.evaluate`` with a Redis cache.

Score(model, dataset, metrics, layer, options) streams progress and ends with the report
(``Report.to_dict()`` as JSON: the same fields and numbers as embedded ``align.score``).

Flow of one Score call:
  authenticate -> validate and apply limits -> resolve model (digests) and dataset
  -> report cache (memory, then Redis) -> single flight (one computation per key in this
  process; a Redis lock with TTL across processes) -> a worker slot of the fair scheduler
  (queue position streamed) -> embedding cache or the embedder -> metrics -> one SET of
  the report -> final message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from align.errors import InvalidInputError, ResourceLimitError
from align.v1 import align_pb2, align_pb2_grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .auth import Authenticator, load_tokens
from .cache import Cache
from .embedder import GrpcEmbedder, LocalEmbedder, ModelRef, make_embedder
from .errors import describe
from .limits import (
    Policy,
    check_dataset_name,
    check_model_id,
    check_options,
    confine_folder,
    folder_datasets,
    parse_options_json,
    unknown_dataset,
)
from .logs import configure_logging
from .metrics import ServiceMetrics
from .pool import FairScheduler
from .uploads import UploadLimits

SERVICE_NAME = "align.v1.EvaluationService"
DEFAULT_LAYER = "penultimate"
log = logging.getLogger("align_services.evaluation")


@dataclass
class ServerConfig:
    """Everything the server reads from its command line / environment."""

    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int | None = 9101  # None: no HTTP endpoint; 0: a free port
    metrics_host: str = "127.0.0.1"
    redis_url: str | None = "redis://127.0.0.1:6379/0"
    embedder: str = "local"  # "local" | "grpc://host:port"
    embed_chunk_size: int = 256
    device: str | None = None
    tokens: dict[str, str] = field(default_factory=dict)  # {token: name}
    allow_anonymous: bool = False
    tls_cert: str | None = None
    tls_key: str | None = None
    max_workers: int = 2
    per_token: int = 1
    max_stimuli: int = 100_000
    max_request_bytes: int = 1 << 20
    max_metrics: int = 16
    lock_ttl_s: float = 30.0  # renewed every lock_ttl_s / 3 while the work runs
    grace_s: float = 30.0
    data_dir: str | None = None
    report_ttl_s: int | None = None
    embedding_ttl_s: int | None = None
    policy: Policy = field(default_factory=Policy)  # what remote clients may ask (limits.py)
    uploads_dir: str | None = None  # uploaded datasets (None: a temporary folder)
    upload_limits: UploadLimits = field(default_factory=UploadLimits)

    @classmethod
    def with_env_tokens(cls, **kwargs: Any) -> ServerConfig:
        cfg = cls(**kwargs)
        if not cfg.tokens:
            cfg.tokens = load_tokens()
        return cfg


# ----------------------------------------------------------------------------------------
# single flight


class Flight:
    """One running computation that several identical requests follow."""

    def __init__(self) -> None:
        self.version = 0
        self.last: dict[str, Any] = {"stage": "queued", "message": "starting"}
        self.cond = asyncio.Condition()
        self.finished = False
        self.result: tuple[str, bool] | None = None  # (report_json, cache_hit)
        self.error: BaseException | None = None
        self.followers = 0
        self.task: asyncio.Task[Any] | None = None

    async def publish(self, **event: Any) -> None:
        async with self.cond:
            self.last = event
            self.version += 1
            self.cond.notify_all()

    async def finish(self, result: tuple[str, bool] | None, error: BaseException | None) -> None:
        async with self.cond:
            self.result, self.error, self.finished = result, error, True
            self.version += 1
            self.cond.notify_all()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """The latest event, then each new one, until the flight finishes."""
        seen = -1
        while True:
            async with self.cond:
                last_seen = seen

                def moved(last_seen: int = last_seen) -> bool:
                    return self.version != last_seen or self.finished

                await self.cond.wait_for(moved)
                if self.finished:
                    return
                seen = self.version
                event = dict(self.last)
            yield event


# ----------------------------------------------------------------------------------------
# the servicer


def _progress(**kw: Any) -> align_pb2.ScoreProgress:
    return align_pb2.ScoreProgress(
        stage=str(kw.get("stage", "")),
        done=int(kw.get("done", 0)),
        total=int(kw.get("total", 0)),
        message=str(kw.get("message", "")),
        queue_position=int(kw.get("queue_position", 0)),
    )


def _parse_options(text: str) -> dict[str, Any]:
    if not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            "options_json", f"is not JSON ({exc.msg} at column {exc.colno})", "a JSON object"
        ) from None
    if not isinstance(value, dict):
        raise InvalidInputError("options_json", f"is a JSON {type(value).__name__}", "an object")
    return value


class EvaluationServicer(align_pb2_grpc.EvaluationServiceServicer):
    def __init__(
        self,
        config: ServerConfig,
        metrics: ServiceMetrics,
        cache: Cache,
        embedder: LocalEmbedder | GrpcEmbedder,
        scheduler: FairScheduler,
        auth: Authenticator,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.cache = cache
        self.embedder = embedder
        self.scheduler = scheduler
        self.auth = auth
        self._flights: dict[str, Flight] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._datasets: OrderedDict[str, Any] = OrderedDict()
        self._datasets_lock = asyncio.Lock()
        self._active: dict[str, int] = {}  # Score calls per token (running + waiting)

    # -- plumbing ----------------------------------------------------------------------
    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str) -> str:
        metadata = context.invocation_metadata()
        who = self.auth.identify(metadata)
        if who is None:
            self.metrics.auth_failures.inc()
            log.warning("refused call", extra={"method": method, "peer": context.peer()})
            raise _Refused(Authenticator.problem(metadata))
        return who

    async def _fail(
        self, context: grpc.aio.ServicerContext, method: str, exc: BaseException
    ) -> grpc.StatusCode:
        if isinstance(exc, _Refused):
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        code, message, trailing = describe(exc, log, method)
        if code is not grpc.StatusCode.INTERNAL:
            log.info(
                "request failed", extra={"method": method, "code": code.name, "error": message}
            )
        context.set_trailing_metadata(trailing)
        await context.abort(code, message, trailing_metadata=trailing)
        return code  # pragma: no cover - abort raises

    @contextlib.asynccontextmanager
    async def _rpc(self, context: grpc.aio.ServicerContext, method: str) -> AsyncIterator[str]:
        """Around every RPC: authenticate (yields who calls), turn an exception into its
        status (aborting the call), and record the request count and latency."""
        started, code = time.perf_counter(), grpc.StatusCode.OK
        try:
            yield await self._authenticate(context, method)
        except asyncio.CancelledError:
            code = grpc.StatusCode.CANCELLED
            raise
        except Exception as exc:
            code = _status_of(exc)
            await self._fail(context, method, exc)
            raise  # pragma: no cover - _fail aborts
        finally:
            self._record(method, code, started)

    def _record(self, method: str, code: grpc.StatusCode, started: float) -> None:
        self.metrics.requests.labels(method=method, code=code.name).inc()
        self.metrics.latency.labels(method=method).observe(time.perf_counter() - started)

    async def _load_dataset(self, name: str) -> Any:
        async with self._datasets_lock:
            if name in self._datasets:
                self._datasets.move_to_end(name)
                return self._datasets[name]
        ds = await asyncio.to_thread(self._load_dataset_sync, name)
        async with self._datasets_lock:
            self._datasets[name] = ds
            while len(self._datasets) > 8:
                self._datasets.popitem(last=False)
        return ds

    def _load_dataset_sync(self, name: str) -> Any:
        """A dataset a remote client may name: a registered id, a folder under the
        operator's roots (by name), or an upload; never a path (limits.py)."""
        import dataclasses

        from align.datasets import _SPECS, load_dataset
        from align.datasets.folder import load_folder

        check_dataset_name(name, _SPECS)
        if name in _SPECS:
            return load_dataset(name, self.config.data_dir)
        if name.startswith("upload:"):
            from .uploads import load_upload

            return load_upload(self.config.uploads_dir, name)
        folders = folder_datasets(self.config.policy.datasets_dirs)
        if name not in folders:
            raise unknown_dataset(name, [*_SPECS, *folders])
        confine_folder(folders[name], name)
        ds = load_folder(folders[name])
        from .uploads import public_description

        ds = dataclasses.replace(
            ds, id=name, source=name, description=public_description(ds, name), digest=""
        )
        # the embedding service cannot read this server's folders: send image bytes
        object.__setattr__(ds, "image_paths_local", True)
        return ds

    def _validate(self, request: align_pb2.ScoreRequest) -> tuple[list[str], str, dict[str, Any]]:
        size = request.ByteSize()
        if size > self.config.max_request_bytes:
            raise ResourceLimitError(
                f"request: {size} bytes is over this server's limit of "
                f"{self.config.max_request_bytes} bytes"
            )
        if not request.dataset.strip():
            raise InvalidInputError("dataset", "is empty", "a dataset id such as 'things'")
        metrics = [m.strip() for m in request.metrics]
        if any(not m for m in metrics):
            raise InvalidInputError("metrics", "contains an empty name", "metric names")
        if len(metrics) > self.config.max_metrics:
            raise ResourceLimitError(
                f"metrics: {len(metrics)} metrics in one request is over this server's "
                f"limit of {self.config.max_metrics}"
            )
        if len(set(metrics)) != len(metrics):
            raise InvalidInputError("metrics", f"has duplicates: {metrics}", "distinct names")
        layer = request.layer.strip()
        limits = self.config.policy.limits
        options = check_options(parse_options_json(request.options_json, limits), limits)
        model = request.model.strip()
        if model and not request.features:
            from align.models.registry import _known_ids

            check_model_id(model, self.config.policy, _known_ids())
        if len(layer) > limits.max_string:
            raise InvalidInputError("layer", f"is {len(layer)} characters", "a layer name")
        return metrics, layer, options

    # -- RPCs --------------------------------------------------------------------------
    async def Score(
        self, request: align_pb2.ScoreRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[align_pb2.ScoreProgress]:
        async with self._rpc(context, "Score") as who, self._admit(who):
            yield _progress(stage="dataset", message=f"loading dataset {request.dataset:.80}")
            plan = await self._plan(request, who)
            if not request.refresh:
                text = await self.cache.get_report(plan.key)
                if text is not None:
                    log.info("report cache hit", extra={"key": plan.key, "who": who})
                    yield self._final(text, plan, cache_hit=True)
                    return
            flight = self._flights.get(plan.key)
            if flight is None:
                flight = Flight()
                self._flights[plan.key] = flight
                task = asyncio.create_task(self._compute(plan, flight, request.refresh))
                flight.task = task
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                self.metrics.coalesced.inc()
                log.info("joined identical computation", extra={"key": plan.key, "who": who})
            # A deadline of the server's own when the client set none.
            remaining = context.time_remaining()
            limit = self.config.policy.limits.default_deadline_s
            budget = limit if remaining is None else min(remaining, limit)
            flight.followers += 1
            try:
                async for event in _until(flight.follow(), budget):
                    yield _progress(**event)
            except asyncio.TimeoutError:
                raise ResourceLimitError(
                    f"Score: no report within this server's deadline of {budget:.0f} s"
                ) from None
            finally:
                flight.followers -= 1
                if flight.followers == 0 and not flight.finished and flight.task is not None:
                    # the last waiter is gone (disconnected, cancelled, timed out): stop
                    # the work nobody waits for
                    log.info("work cancelled: no waiter left", extra={"key": plan.key})
                    self.metrics.cancelled.inc()
                    if self._flights.get(plan.key) is flight:
                        self._flights.pop(plan.key, None)
                    flight.task.cancel()
            if flight.error is not None:
                raise flight.error
            assert flight.result is not None
            text, hit = flight.result
            yield self._final(text, plan, cache_hit=hit)

    @contextlib.asynccontextmanager
    async def _admit(self, who: str) -> AsyncIterator[None]:
        """At most ``max_queued_per_token`` Score calls of one token at once."""
        cap = self.config.policy.limits.max_queued_per_token
        if self._active.get(who, 0) >= cap:
            raise ResourceLimitError(
                f"queue: {who} already has {cap} Score calls running or waiting, this "
                "server's limit per token; wait for one to finish"
            )
        self._active[who] = self._active.get(who, 0) + 1
        try:
            yield
        finally:
            self._active[who] -= 1
            if not self._active[who]:
                del self._active[who]

    async def _plan(self, request: align_pb2.ScoreRequest, who: str) -> _Plan:
        """Validate, resolve model and dataset, and plan the request with
        ``align.scoring``: the same keys and provenance as embedded ``align.score`` by
        construction (the embedding key includes the stimulus-content fingerprint)."""
        from align.scoring import ModelSource, features_source, make_plan

        started = time.perf_counter()
        metrics, layer, options = self._validate(request)
        model = request.model.strip()
        ref: ModelRef | None = None
        if request.features:
            X = _decode_request_features(request)
            source = features_source(X, model or None, layer or None)
            dataset = await self._load_dataset(request.dataset.strip())
        else:
            if not model:
                raise InvalidInputError(
                    "model", "is empty", "a model id such as 'timm/tf_efficientnet_lite0'"
                )
            layer = layer or DEFAULT_LAYER
            resolved, dataset = await asyncio.gather(
                self.embedder.resolve(model), self._load_dataset(request.dataset.strip())
            )
            ref = resolved
            source = ModelSource(
                resolved.id,
                resolved.family,
                resolved.spec_digest,
                resolved.preprocessing,
                layer=layer,
                layers=tuple(resolved.layers),
                modality=resolved.modality,
            )
        n = len(dataset.stimulus_ids)
        if n > self.config.max_stimuli:
            raise ResourceLimitError(
                f"dataset: {dataset.id} has {n} stimuli, over this server's limit of "
                f"{self.config.max_stimuli} per request"
            )
        # make_plan checks the metrics, the options and the features' rows; the stimulus
        # fingerprint reads the image files (memoised per path, mtime, size): a thread.
        plan = await asyncio.to_thread(
            make_plan,
            source,
            dataset,
            metrics or None,
            options,
            layer=layer or None,
            data_dir=self.config.data_dir,
        )
        return _Plan(plan, ref, who, started)

    def _final(self, text: str, plan: _Plan, cache_hit: bool) -> align_pb2.ScoreProgress:
        """The last message: the report rebuilt around THIS request (its model id, time,
        ``cache: hit|miss``), whoever computed it."""
        from align.scoring import report_from_cache

        wall = time.perf_counter() - plan.started if cache_hit else None
        report = report_from_cache(
            json.loads(text),
            plan.plan,
            wall_time=wall,
            backend="remote",
            cache="hit" if cache_hit else "miss",
        )
        if report is None:  # pragma: no cover - the server wrote it with assemble_report
            raise InvalidInputError("report", "in the cache is unreadable", "a stored report")
        return align_pb2.ScoreProgress(
            stage="done",
            done=1,
            total=1,
            message="served from cache" if cache_hit else "computed",
            report_json=report.to_json(),
            report_key=plan.key,
            cache_hit=cache_hit,
        )

    async def _compute(self, plan: _Plan, flight: Flight, refresh: bool = False) -> None:
        result: tuple[str, bool] | None = None
        error: BaseException | None = None
        try:
            result = await self._compute_once(plan, flight, refresh)
        except BaseException as exc:  # delivered to every follower
            error = exc
        finally:
            if self._flights.get(plan.key) is flight:
                self._flights.pop(plan.key, None)
            await flight.finish(result, error)

    async def _compute_once(
        self, plan: _Plan, flight: Flight, refresh: bool = False
    ) -> tuple[str, bool]:
        """Compute under the Redis lock. A stored report answers instead, unless the
        request asked to refresh (then the report in Redis is the one being replaced)."""
        key = plan.key
        ttl_ms = int(self.config.lock_ttl_s * 1000)
        owner, acquired = await self.cache.acquire_lock(key, ttl_ms)
        while not acquired:
            await flight.publish(
                stage="queued", message="an identical request is running on another server"
            )
            # A live holder renews its lock every ttl/3; one that crashed stops renewing
            # and its lock expires. A lock set to live far longer than any holder renews
            # it (an older server, or a hand-made key) is stale: taken away.
            await self.cache.break_stale_lock(key, ttl_ms)
            await asyncio.sleep(0.25)
            text = None if refresh else await self.cache.get_report(key)
            if text is not None:
                return text, True
            if not await self.cache.lock_exists(key):
                owner, acquired = await self.cache.acquire_lock(key, ttl_ms)
        renewing = asyncio.create_task(self._renew(key, owner, ttl_ms))
        try:
            # Another process may have finished it between our miss and our lock.
            text = None if refresh else await self.cache.get_report(key)
            if text is not None:
                return text, True
            ticket = self.scheduler.enqueue(plan.who)
            self.metrics.queued.inc()
            try:
                while not ticket.granted.is_set():
                    await flight.publish(
                        stage="queued",
                        queue_position=ticket.position,
                        message=f"waiting for a worker (position {ticket.position})",
                    )
                    await ticket.wait_change(timeout=1.0)
            except BaseException:
                self.metrics.queued.dec()
                ticket.release()
                raise
            self.metrics.queued.dec()
            self.metrics.inflight.inc()
            try:
                budget = self.config.policy.limits.job_timeout_s
                try:
                    stored, text = await asyncio.wait_for(self._run(plan, flight), budget)
                except asyncio.TimeoutError:
                    raise ResourceLimitError(
                        f"job: the computation ran past this server's time budget of "
                        f"{budget:.0f} s; ask for less (fewer bootstraps, a shorter "
                        "lambda grid) or ask the operator"
                    ) from None
                # One SET of the whole JSON, before the lock is released: a report is
                # either absent or complete, never half-written.
                await self.cache.put_report(key, stored)
                return text, False
            finally:
                self.metrics.inflight.dec()
                ticket.release()
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await self.cache.release_lock(key, owner)

    async def _renew(self, key: str, owner: str, ttl_ms: int) -> None:
        """Keep our lock alive while the work runs (every ttl/3)."""
        while True:
            await asyncio.sleep(ttl_ms / 3000)
            await self.cache.renew_lock(key, owner, ttl_ms)

    async def _run(self, plan: _Plan, flight: Flight) -> tuple[str, str]:
        """(report JSON to store, report JSON to send) for one plan, in the worker pool."""
        started = time.perf_counter()
        if plan.source.features is not None:
            X, from_cache = plan.source.features, False
        else:
            X, from_cache = await self._embedding(plan, flight)
        embed_time = time.perf_counter() - started
        await flight.publish(
            stage="metrics", done=0, total=len(plan.names), message="computing metrics"
        )
        loop = asyncio.get_running_loop()
        stored, sent = await loop.run_in_executor(
            self.scheduler.executor, _score_sync, plan, X, from_cache, embed_time
        )
        await flight.publish(
            stage="metrics", done=len(plan.names), total=len(plan.names), message="done"
        )
        self.metrics.computations.inc()
        log.info(
            "report computed",
            extra={
                "model": plan.source.model_id,
                "dataset": str(plan.dataset.id),
                "who": plan.who,
                "seconds": round(time.perf_counter() - started, 4),
            },
        )
        return stored, sent

    async def _embedding(self, plan: _Plan, flight: Flight) -> tuple[Any, bool]:
        n = len(plan.dataset.stimulus_ids)
        cached = await self.cache.get_embedding(plan.fkey)
        if cached is not None and cached.features.shape[0] == n:
            await flight.publish(stage="embedding", done=n, total=n, message="embeddings cached")
            return cached.features, True
        if cached is not None:  # decoded, but not this dataset's rows: a bad entry
            await self.cache.delete_embedding(plan.fkey)

        async def progress(done: int, total: int, message: str) -> None:
            await flight.publish(stage="embedding", done=done, total=total, message=message)

        assert plan.ref is not None and plan.layer is not None
        emb = await self.embedder.embed_dataset(
            plan.ref, plan.layer, plan.dataset, progress, self.scheduler.executor
        )
        if emb.features.shape[0] != n:
            raise InvalidInputError(
                "embedding", f"has {emb.features.shape[0]} rows", f"{n}, one per stimulus"
            )
        self.metrics.embeddings_computed.labels(model=plan.ref.id).inc(n)
        await self.cache.put_embedding(
            plan.fkey,
            emb.features,
            {"model": emb.model, "layer": emb.layer, "model_digest": emb.model_digest},
        )
        return emb.features, False

    async def ListDatasets(
        self, request: align_pb2.ListDatasetsRequest, context: grpc.aio.ServicerContext
    ) -> align_pb2.ListDatasetsResponse:
        async with self._rpc(context, "ListDatasets"):
            from align.datasets import list_datasets

            statuses = await asyncio.to_thread(list_datasets, self.config.data_dir)
            folders = await asyncio.to_thread(folder_datasets, self.config.policy.datasets_dirs)
            out = align_pb2.ListDatasetsResponse()
            for fname in sorted(folders):
                out.datasets.add(
                    id=fname, kind="folder", present=True, path=fname, description="lab dataset"
                )
            for s in statuses:
                out.datasets.add(
                    id=str(s.id),
                    kind=str(getattr(s, "kind", "")),
                    present=bool(getattr(s, "present", False)),
                    # relative to the data folder: clients learn no server paths
                    path=str(getattr(s, "path", "") or "").replace(
                        str(getattr(s, "data_dir", "")).rstrip("/") + "/", ""
                    ),
                    description=str(getattr(s, "description", "") or ""),
                )
            return out

    async def GetReport(
        self, request: align_pb2.GetReportRequest, context: grpc.aio.ServicerContext
    ) -> align_pb2.GetReportResponse:
        async with self._rpc(context, "GetReport"):
            key = request.key.strip()
            if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
                raise InvalidInputError("key", f"is {key!r}", "a 64-hex report key")
            text = await self.cache.get_report(key)
            if text is None:
                from align.errors import NotFoundError

                raise NotFoundError(
                    "report", key, hint="(not cached here: it expired, or was never computed)"
                )
            return align_pb2.GetReportResponse(key=key, report_json=text)

    async def UploadDataset(
        self, request: align_pb2.UploadDatasetRequest, context: grpc.aio.ServicerContext
    ) -> align_pb2.UploadDatasetResponse:
        async with self._rpc(context, "UploadDataset") as who:
            from .uploads import has_upload, store

            digest = request.digest.strip()
            name = f"upload:{digest}"
            if not request.files:
                present = await asyncio.to_thread(has_upload, self.config.uploads_dir, digest)
                return align_pb2.UploadDatasetResponse(dataset=name, present=present)
            files = [(f.name, f.data) for f in request.files]
            stored = await asyncio.to_thread(
                store, self.config.uploads_dir, digest, files, self.config.upload_limits
            )
            log.info("dataset uploaded", extra={"dataset": name, "who": who, "stored": stored})
            return align_pb2.UploadDatasetResponse(dataset=name, present=True, stored=stored)

    async def drain(self, timeout: float) -> None:
        """Wait for running computations (so their reports get written)."""
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout)


class _Refused(Exception):
    pass


async def _until(events: AsyncIterator[Any], seconds: float) -> AsyncIterator[Any]:
    """``events`` until ``seconds`` have passed (then asyncio.TimeoutError)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    iterator = events.__aiter__()
    while True:
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise asyncio.TimeoutError
        try:
            event = await asyncio.wait_for(iterator.__anext__(), remaining)
        except StopAsyncIteration:
            return
        yield event


def _status_of(exc: BaseException) -> grpc.StatusCode:
    from .errors import status_for

    if isinstance(exc, _Refused):
        return grpc.StatusCode.UNAUTHENTICATED
    return status_for(exc)


@dataclass
class _Plan:
    """One validated Score request: the ``align.scoring.Plan`` (every key, the metrics and
    options, the source and dataset), the embedder's model ref and who asked."""

    plan: Any  # align.scoring.Plan
    ref: ModelRef | None  # None for given features
    who: str
    started: float = 0.0  # perf_counter when the request was planned

    @property
    def key(self) -> str:  # report key (same as the embedded disk cache's)
        return str(self.plan.report_key)

    @property
    def fkey(self) -> str:  # embedding key, or the digest of given features
        return str(self.plan.features_key)

    @property
    def source(self) -> Any:
        return self.plan.source

    @property
    def dataset(self) -> Any:
        return self.plan.dataset

    @property
    def names(self) -> list[str]:
        return list(self.plan.names)

    @property
    def layer(self) -> str | None:
        return self.plan.layer


def _decode_request_features(request: align_pb2.ScoreRequest) -> Any:
    import numpy as np

    dtype = request.features_dtype or "<f4"
    if dtype not in ("<f4", "<f8"):
        raise InvalidInputError("features_dtype", f"is {dtype!r}", "'<f4' or '<f8'")
    shape = tuple(int(s) for s in request.features_shape)
    if len(shape) != 2 or min(shape) < 1:
        raise InvalidInputError("features_shape", f"is {list(shape)}", "[n, p] with n, p >= 1")
    itemsize = int(dtype[-1])
    if len(request.features) != itemsize * shape[0] * shape[1]:
        raise InvalidInputError(
            "features",
            f"has {len(request.features)} bytes",
            f"{itemsize * shape[0] * shape[1]} bytes for {list(shape)} {dtype}",
        )
    return np.frombuffer(request.features, dtype=dtype).reshape(shape).copy()


def _score_sync(plan: _Plan, X: Any, from_cache: bool, embed_time: float) -> tuple[str, str]:
    """Metrics and the report, in a worker thread: the same evaluate() and report
    assembly (align.scoring) as embedded ``align.score``. Returns (JSON to store, JSON to
    send)."""
    from align.evaluation import evaluate
    from align.scoring import assemble_report, stored_form

    t0 = time.perf_counter()
    results = evaluate(X, plan.dataset, plan.names, **plan.plan.options)
    report = assemble_report(
        plan.plan,
        results,
        X,
        wall_time=embed_time + time.perf_counter() - t0,
        embedding_cache="hit" if from_cache else "miss",
        backend="remote",
    )
    return json.dumps(stored_form(report)), report.to_json()


# ----------------------------------------------------------------------------------------
# the server


class EvaluationServer:
    """One grpc.aio server with its cache, embedder, scheduler and metrics."""

    def __init__(self, config: ServerConfig, metrics: ServiceMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or ServiceMetrics()
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._servicer: EvaluationServicer | None = None
        self._health: Any = None

    async def start(self) -> int:
        cfg = self.config
        auth = Authenticator(cfg.tokens, allow_anonymous=cfg.allow_anonymous)
        cache = Cache(
            cfg.redis_url,
            self.metrics,
            report_ttl_s=cfg.report_ttl_s,
            embedding_ttl_s=cfg.embedding_ttl_s,
        )
        embedder = make_embedder(cfg.embedder, device=cfg.device, chunk_size=cfg.embed_chunk_size)
        scheduler = FairScheduler(cfg.max_workers, cfg.per_token)
        self._servicer = EvaluationServicer(cfg, self.metrics, cache, embedder, scheduler, auth)
        self._server = grpc.aio.server(
            options=[
                # gRPC's own hard cap sits above ours, so that an oversize request gets
                # our RESOURCE_EXHAUSTED message naming the limit, not a transport error.
                (
                    "grpc.max_receive_message_length",
                    max(
                        4 * cfg.max_request_bytes,
                        cfg.upload_limits.max_total_bytes + (1 << 20),
                        4 << 20,
                    ),
                ),
                ("grpc.max_send_message_length", 256 << 20),
                ("grpc.so_reuseport", 0),
            ]
        )
        align_pb2_grpc.add_EvaluationServiceServicer_to_server(self._servicer, self._server)
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        address = f"{cfg.host}:{cfg.port}"
        if cfg.tls_cert or cfg.tls_key:
            if not (cfg.tls_cert and cfg.tls_key):
                raise InvalidInputError("tls", "needs both --tls-cert and --tls-key", "both files")
            creds = grpc.ssl_server_credentials(
                [(Path(cfg.tls_key).read_bytes(), Path(cfg.tls_cert).read_bytes())]
            )
            self.port = self._server.add_secure_port(address, creds)
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise InvalidInputError("port", f"cannot bind {address}", "a free port")
        await self._server.start()
        for name in ("", SERVICE_NAME):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port is not None:
            self.metrics_port = self.metrics.serve_http(cfg.metrics_port, cfg.metrics_host)
        log.info(
            "evaluation service started",
            extra={
                "port": self.port,
                "metrics_port": self.metrics_port,
                "embedder": cfg.embedder,
                "redis": cfg.redis_url or "off",
                "tls": bool(cfg.tls_cert),
                "workers": cfg.max_workers,
                "per_token": cfg.per_token,
            },
        )
        return self.port

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting calls, let in-flight calls finish (``grace`` seconds), then close."""
        grace = self.config.grace_s if grace is None else grace
        if self._server is None:
            return
        log.info("evaluation service stopping", extra={"grace_s": grace})
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        assert self._servicer is not None
        await self._server.stop(grace)
        await self._servicer.drain(timeout=grace)
        self._servicer.scheduler.shutdown(wait=False)
        await self._servicer.cache.close()
        await self._servicer.embedder.close()
        self.metrics.stop_http()
        self._server = None
        log.info("evaluation service stopped")

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def serve(config: ServerConfig) -> None:
    """Run until SIGTERM/SIGINT, then shut down gracefully."""
    server = EvaluationServer(config)
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()


class ThreadedServer:
    """An evaluation server on its own event loop in a background thread (tests, bench)."""

    def __init__(self, config: ServerConfig, metrics: ServiceMetrics | None = None) -> None:
        self.server = EvaluationServer(config, metrics)
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.server.start(), self.loop)
        try:
            self.port: int = fut.result(timeout=60)
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            raise

    @property
    def metrics(self) -> ServiceMetrics:
        return self.server.metrics

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        if not self.loop.is_running():
            return
        fut = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        try:
            fut.result(timeout=grace + 30)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
            self.loop.close()

    def __enter__(self) -> ThreadedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = [
    "EvaluationServer",
    "EvaluationServicer",
    "ServerConfig",
    "ThreadedServer",
    "configure_logging",
    "serve",
]
