"""score(), score_many(), Client and connect(): the user-facing entry points.

With no server configured (``ALIGN_SERVER`` unset) everything runs embedded, in this
process, with a disk cache (`align.cache`). ``align.connect(server)`` returns a Client
whose backend talks gRPC to the evaluation service (``align.remote``, imported lazily).
What a score computes (keys, provenance, report assembly) is `align.scoring`, shared
with the evaluation server.

httpx's rule: configuration lives on the Client (server, token, cache, data_dir, device,
batch_size, progress); a call's arguments apply to that call only and never change the
Client, its backend or the module (``align.score(..., device="cuda")`` does not leak into
the next call).

A backend is any object with::

    score(model, dataset, *, metrics, layer, data_dir, cache, options) -> Report
    close() -> None
    # optional, for sweeps: score_many(models, datasets, *, layers, metrics, data_dir,
    #                                  cache, options) -> list[Report]
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from .cache import DiskCache
from .errors import AlignError, InvalidInputError
from .evaluation import evaluate
from .report import FRAME_COLUMNS, Report
from .scoring import (
    ENGINE_OPTIONS,
    FEATURE_SUFFIXES,
    CacheArg,
    ModelSource,
    Plan,
    assemble_report,
    cache_put,
    check_request,
    dataset_embedding_key,
    features_path,
    is_dataset,
    is_embedding_model,
    is_features_path,
    load_features,
    make_plan,
    model_layers,
    open_cache,
    report_from_cache,
    resolve_dataset,
    resolve_model,
    split_engine_options,
    stored_form,
)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SERVER_ENV = "ALIGN_SERVER"
TOKEN_ENV = "ALIGN_TOKEN"

# Re-exported for callers that imported them from here before align.scoring existed.
__all__ = [
    "ENGINE_OPTIONS",
    "FEATURE_SUFFIXES",
    "Backend",
    "CacheArg",
    "Client",
    "EmbeddedBackend",
    "ModelSource",
    "connect",
    "features",
    "features_path",
    "is_features_path",
    "load_features",
    "open_cache",
    "resolve_dataset",
    "resolve_model",
    "score",
    "score_many",
]


class Backend(Protocol):
    def score(
        self,
        model: Any,
        dataset: Any,
        *,
        metrics: Sequence[str] | None,
        layer: str,
        data_dir: str | Path | None,
        cache: CacheArg,
        options: Mapping[str, Any],
    ) -> Report: ...

    def close(self) -> None: ...


# -- the embedded backend ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Engine:
    """How to embed (never what is computed): the backend's configuration, or a call's
    own override of it."""

    progress: bool = False
    batch_size: int | None = None
    device: str | None = None


class EmbeddedBackend:
    """Runs everything in this process (the default with no server configured).

    ``progress``, ``batch_size`` and ``device`` are its configuration; a call may pass
    them as options to override them for that call only. Loaded models are kept per
    (weights digest, device): everything that changes a model's output."""

    def __init__(
        self, *, progress: bool = False, batch_size: int | None = None, device: str | None = None
    ) -> None:
        self.engine = Engine(progress, batch_size, device)
        self._models: dict[tuple[str, str | None], Any] = {}

    @property
    def progress(self) -> bool:
        return self.engine.progress

    @property
    def batch_size(self) -> int | None:
        return self.engine.batch_size

    @property
    def device(self) -> str | None:
        return self.engine.device

    def close(self) -> None:
        self._models.clear()

    def _engine(self, overrides: Mapping[str, Any]) -> Engine:
        return dataclasses.replace(self.engine, **dict(overrides)) if overrides else self.engine

    def _load(self, source: ModelSource, device: str | None) -> Any:
        if source.model is not None:
            return source.model
        key = (source.weights_digest, device)
        if key not in self._models:
            from .models import load_model

            self._models[key] = load_model(source.spec or source.model_id, device=device)
        return self._models[key]

    def features(
        self,
        source: ModelSource,
        dataset: Any,
        layers: Sequence[str],
        cache: DiskCache | None,
        *,
        engine: Engine | None = None,
        keys: Mapping[str, str] | None = None,
    ) -> dict[str, tuple[np.ndarray, str, bool]]:
        """{layer: (features, features key, came from cache)}; embeds the missing layers
        in one pass."""
        if source.features is not None:
            return {layers[0]: (source.features, source.weights_digest, False)}
        engine = engine or self.engine
        if keys is None:
            keys = {layer: dataset_embedding_key(source, layer, dataset, cache) for layer in layers}
        out: dict[str, tuple[np.ndarray, str, bool]] = {}
        todo: list[str] = []
        for layer in layers:
            cached = cache.get_array(keys[layer]) if cache is not None else None
            if cached is not None and cached.shape[0] == len(dataset.stimulus_ids):
                out[layer] = (cached, keys[layer], True)
            else:
                todo.append(layer)
        if todo:
            from .models import embed_dataset

            embedded = embed_dataset(
                self._load(source, engine.device),
                dataset,
                layers=tuple(todo),
                batch_size=engine.batch_size,
                progress=engine.progress,
            )
            for layer in todo:
                X = np.asarray(embedded[layer])
                if cache is not None:
                    cache_put(cache.put_array, keys[layer], X)
                out[layer] = (X, keys[layer], False)
        return out

    def score(
        self,
        model: Any,
        dataset: Any,
        *,
        metrics: Sequence[str] | None = None,
        layer: str = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = True,
        options: Mapping[str, Any] | None = None,
    ) -> Report:
        reports = self.score_many(
            [model],
            [dataset],
            layers=[layer],
            metrics=metrics,
            data_dir=data_dir,
            cache=cache,
            options=options,
        )
        return reports[0]

    def score_many(
        self,
        models: Iterable[Any],
        datasets: Iterable[Any],
        *,
        layers: str | Sequence[str] = "penultimate",
        metrics: Sequence[str] | None = None,
        data_dir: str | Path | None = None,
        cache: CacheArg = True,
        options: Mapping[str, Any] | None = None,
    ) -> list[Report]:
        metric_options, overrides = split_engine_options(options)
        engine = self._engine(overrides)  # this call's; the backend is not changed
        store = open_cache(cache)
        sources: list[tuple[list[str], dict[str, ModelSource]]] = []
        for model in models:  # cheap: no weights, no torch when the spec is memoised
            layer_list = model_layers(model, layers, store)
            first = resolve_model(model, layer_list[0], store)
            if first.is_features:
                layer_list = layer_list[:1]
            by_layer = {name: dataclasses.replace(first, layer=name) for name in layer_list}
            by_layer[layer_list[0]] = first
            sources.append((layer_list, by_layer))
        uses_images = any(s[1][s[0][0]].uses_images for s in sources)
        checked = []
        for d in datasets:  # check everything before the slow part
            ds = resolve_dataset(d, data_dir, uses_images=uses_images)
            checked.append((ds, check_request(ds, metrics, metric_options, data_dir)))
        reports: list[Report] = []
        for layer_list, by_layer in sources:
            for ds, request in checked:
                plans = {
                    name: make_plan(
                        by_layer[name],
                        ds,
                        metrics,
                        metric_options,
                        layer=name,
                        checked=request,
                        store=store,
                    )
                    for name in layer_list
                }
                reports.extend(self._score_plans(plans, layer_list, store, engine))
        return reports

    def _score_plans(
        self,
        plans: Mapping[str, Plan],
        layers: Sequence[str],
        store: DiskCache | None,
        engine: Engine,
    ) -> list[Report]:
        start = time.perf_counter()
        reports: dict[str, Report] = {}
        todo: list[str] = []
        for layer in layers:
            plan = plans[layer]
            stored = store.get_json(plan.report_key) if store is not None else None
            if stored is not None:
                hit = report_from_cache(
                    stored, plan, wall_time=time.perf_counter() - start, backend="embedded"
                )
                if hit is not None:
                    reports[layer] = hit
                    continue
            todo.append(layer)
        if todo:
            first = plans[todo[0]]
            feats = self.features(
                first.source,
                first.dataset,
                todo,
                store,
                engine=engine,
                keys={layer: plans[layer].features_key for layer in todo},
            )
            embed_time = time.perf_counter() - start
            for layer in todo:
                plan = plans[layer]
                X, _fkey, from_cache = feats[todo[0] if plan.source.is_features else layer]
                t0 = time.perf_counter()
                results = evaluate(X, plan.dataset, plan.names, **plan.options)
                report = assemble_report(
                    plan,
                    results,
                    X,
                    wall_time=embed_time / len(todo) + time.perf_counter() - t0,
                    embedding_cache="hit" if from_cache else "miss",
                    backend="embedded",
                )
                if store is not None:
                    cache_put(store.put_json, plan.report_key, stored_form(report))
                reports[layer] = report
        return [reports[layer] for layer in layers]


# -- Client and the module-level functions -------------------------------------------------


class Client:
    """Scores models on datasets, embedded (no server) or through a remote server.

    ``Client()`` runs embedded unless ``ALIGN_SERVER`` is set; ``Client(server=...)`` or
    ``align.connect(server)`` use the gRPC backend of ``align.remote``. Configuration
    (``cache``, ``data_dir``, and for the embedded backend ``device``, ``batch_size``,
    ``progress``) is fixed here; a call's ``cache=``/``data_dir=`` and engine options apply
    to that call only.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        backend: Backend | None = None,
        progress: bool = False,
        cache: CacheArg = True,
        data_dir: str | Path | None = None,
        device: str | None = None,
        batch_size: int | None = None,
    ) -> None:
        if backend is None:
            server = server or os.environ.get(SERVER_ENV) or None
            token = token or os.environ.get(TOKEN_ENV) or None
            if server:
                backend = _remote_backend(server, token)
            else:
                backend = EmbeddedBackend(progress=progress, batch_size=batch_size, device=device)
        self.server = server
        self.token = token
        self.backend = backend
        self.cache = cache
        self.data_dir = data_dir

    def __repr__(self) -> str:
        where = self.server or "embedded"
        return f"Client({where!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def _call_settings(
        self, data_dir: str | Path | None, cache: CacheArg
    ) -> tuple[str | Path | None, CacheArg]:
        return (
            self.data_dir if data_dir is None else data_dir,
            self.cache if cache is None else cache,
        )

    def score(
        self,
        model: Any,
        dataset: Any,
        metrics: str | Sequence[str] | None = None,
        layer: str = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = None,
        **options: Any,
    ) -> Report:
        """Score one model (id, features path, array or EmbeddingModel) on one dataset
        (id or Dataset). Returns a Report. ``data_dir``/``cache`` None: the Client's."""
        data_dir, cache = self._call_settings(data_dir, cache)
        return self.backend.score(
            model,
            dataset,
            metrics=_metric_list(metrics),
            layer=layer,
            data_dir=data_dir,
            cache=cache,
            options=options,
        )

    def score_reports(
        self,
        models: Any,
        datasets: Any,
        metrics: str | Sequence[str] | None = None,
        layers: str | Sequence[str] = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = None,
        **options: Any,
    ) -> list[Report]:
        """Every (model, dataset, layer) as Reports; ``layers="all"`` sweeps each model's
        named layers."""
        data_dir, cache = self._call_settings(data_dir, cache)
        models = _as_list(models)
        datasets = _as_list(datasets)
        sweep = getattr(self.backend, "score_many", None)
        if callable(sweep):
            return list(
                sweep(
                    models,
                    datasets,
                    layers=layers,
                    metrics=_metric_list(metrics),
                    data_dir=data_dir,
                    cache=cache,
                    options=options,
                )
            )
        out = []
        for model in models:
            for ds in datasets:
                for layer in model_layers(model, layers):
                    out.append(self.score(model, ds, metrics, layer, data_dir, cache, **options))
        return out

    def score_many(
        self,
        models: Any,
        datasets: Any,
        metrics: str | Sequence[str] | None = None,
        layers: str | Sequence[str] = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = None,
        **options: Any,
    ) -> pd.DataFrame:
        """One long DataFrame (Report.to_frame columns) over models x datasets x layers."""
        import pandas as pd

        reports = self.score_reports(models, datasets, metrics, layers, data_dir, cache, **options)
        frames = [r.to_frame() for r in reports]
        if not frames:
            return pd.DataFrame(columns=list(FRAME_COLUMNS))
        return pd.concat(frames, ignore_index=True)


def _as_list(value: Any) -> list[Any]:
    if isinstance(value, (str, Path, np.ndarray)) or is_embedding_model(value):
        return [value]
    if is_dataset(value):
        return [value]
    return list(value)


def _metric_list(metrics: str | Sequence[str] | None) -> list[str] | None:
    if metrics is None:
        return None
    if isinstance(metrics, str):
        return [m for m in metrics.replace(",", " ").split() if m]
    return list(metrics)


def _remote_backend(server: str, token: str | None) -> Backend:
    try:
        from .remote import RemoteBackend  # type: ignore[attr-defined,unused-ignore]
    except ModuleNotFoundError as exc:
        if exc.name in ("align.remote", None) or (exc.name or "").startswith("align"):
            raise AlignError(
                f"cannot connect to {server!r}: this install of align has no remote backend "
                "(align.remote is missing); unset ALIGN_SERVER to run embedded"
            ) from None
        raise AlignError(
            f"cannot connect to {server!r}: the remote backend needs {exc.name!r}; "
            "install it with: pip install 'align[serve]'"
        ) from None
    backend: Backend = RemoteBackend(server, token)
    return backend


def features(
    model: Any,
    dataset: Any,
    layer: str = "penultimate",
    data_dir: str | Path | None = None,
    cache: CacheArg = True,
    progress: bool = False,
) -> np.ndarray:
    """The (n, p) features of ``model`` on ``dataset`` (embedded; cached like score())."""
    store = open_cache(cache)
    source = resolve_model(model, layer, store)
    ds = resolve_dataset(dataset, data_dir, uses_images=source.uses_images)
    backend = EmbeddedBackend(progress=progress)
    out = backend.features(source, ds, [layer], store)
    return next(iter(out.values()))[0]


def connect(server: str, token: str | None = None, **config: Any) -> Client:
    """A Client of the evaluation server at ``server`` (host:port); ``config``: the
    Client's other settings (cache, data_dir)."""
    if not isinstance(server, str) or not server:
        raise InvalidInputError("server", f"is {server!r}", "host:port of an align server")
    return Client(server=server, token=token, **config)


_default_client: Client | None = None


def _client() -> Client:
    """The Client of the module-level functions, configured from the environment only
    (ALIGN_SERVER, ALIGN_TOKEN). Calls never change it: their options apply to the call.
    It keeps loaded models (keyed by weights digest and device) between calls."""
    global _default_client
    where = (os.environ.get(SERVER_ENV) or None, os.environ.get(TOKEN_ENV) or None)
    current = _default_client
    if current is None or (current.server, current.token) != where:
        if current is not None:
            current.close()
        current = _default_client = Client(server=where[0], token=where[1])
    return current


def score(
    model: Any,
    dataset: Any,
    metrics: str | Sequence[str] | None = None,
    layer: str = "penultimate",
    data_dir: str | Path | None = None,
    cache: CacheArg = True,
    **options: Any,
) -> Report:
    """Score ``model`` on ``dataset``: embedded unless ALIGN_SERVER names a server.

    ``model``: a model id ("timm/tf_efficientnet_lite0", "text/all-MiniLM-L6-v2"), a
    .npy/.npz features path (rows in the dataset's stimulus order, all-NaN rows =
    missing), an ndarray, or a loaded EmbeddingModel. ``cache``: True (ALIGN_CACHE_DIR or
    ~/.cache/align), False, a folder or a DiskCache. Options go to the metrics
    (similarity, n_bootstrap, seed, ...); ``device``, ``batch_size``, ``progress`` set how
    this call embeds, and this call only.
    """
    return _client().score(model, dataset, metrics, layer, data_dir, cache, **options)


def score_many(
    models: Any,
    datasets: Any,
    metrics: str | Sequence[str] | None = None,
    layers: str | Sequence[str] = "penultimate",
    data_dir: str | Path | None = None,
    cache: CacheArg = True,
    **options: Any,
) -> pd.DataFrame:
    """Score every model on every dataset (and layer: ``layers="all"`` sweeps each
    model's named layers); one long DataFrame."""
    return _client().score_many(models, datasets, metrics, layers, data_dir, cache, **options)
