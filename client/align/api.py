"""score(), score_many(), Client and connect(): the user-facing entry points.

With no server configured (``ALIGN_SERVER`` unset) everything runs embedded, in this
process, with a disk cache (`align.cache`). ``align.connect(server)`` returns a Client
whose backend talks gRPC to the evaluation service (``align.remote``, imported lazily).

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
import warnings
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from . import digest
from ._version import METRIC_CODE_VERSION, __version__
from .cache import DiskCache, embedding_key, report_key, stimuli_fingerprint
from .errors import AlignError, InvalidInputError
from .evaluation import check_options, evaluate, resolve_metrics
from .report import FRAME_COLUMNS, Report
from .results import to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

SERVER_ENV = "ALIGN_SERVER"
TOKEN_ENV = "ALIGN_TOKEN"
FEATURE_SUFFIXES = (".npy", ".npz")
# Options the embedded backend reads itself (how to embed); they never change a number.
ENGINE_OPTIONS = ("progress", "batch_size", "device")

CacheArg = bool | str | Path | DiskCache | None


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


# -- features files ------------------------------------------------------------------------


def is_features_path(model: Any) -> bool:
    """True for a path (or ``features:<path>``) naming a .npy/.npz features file."""
    if isinstance(model, Path):
        return model.suffix.lower() in FEATURE_SUFFIXES
    if isinstance(model, str):
        if model.startswith("features:"):
            return True
        return model.lower().endswith(FEATURE_SUFFIXES)
    return False


def features_path(model: str | Path) -> Path:
    text = str(model)
    if text.startswith("features:"):
        text = text[len("features:") :]
    return Path(text).expanduser()


def load_features(path: str | Path, key: str | None = None) -> tuple[np.ndarray, str | None]:
    """Read a features matrix from .npy, or from .npz (the only array, ``key``, or
    "features"). Returns (array, the npz key used or None)."""
    path = features_path(path)
    if not path.is_file():
        raise InvalidInputError(
            str(path), "does not exist", "a .npy or .npz file of features (n stimuli x p)"
        )
    try:
        loaded = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise InvalidInputError(
            str(path), f"cannot be read as numpy data ({exc})", "a .npy or .npz file"
        ) from None
    if isinstance(loaded, np.ndarray):
        return loaded, None
    with loaded:
        keys = list(loaded.files)
        if key is not None and key in keys:
            chosen = key
        elif len(keys) == 1:
            chosen = keys[0]
        elif "features" in keys:
            chosen = "features"
        else:
            raise InvalidInputError(
                str(path),
                f"holds arrays {keys} and none was chosen",
                "one array, an array named 'features', or --layer naming one",
            )
        return np.asarray(loaded[chosen]), chosen


# -- what a model argument turns into ------------------------------------------------------


@dataclasses.dataclass
class ModelSource:
    """A model argument, resolved (without computing features yet): what the embedded
    backend and the evaluation server key caches and provenance on. Build one with
    ``resolve_model``, or directly for a model resolved elsewhere (the server)."""

    model_id: str
    family: str
    weights_digest: str
    preprocessing: Any = None
    features: np.ndarray | None = None  # given features
    spec: Any = None  # ModelSpec for a model id
    model: Any = None  # a loaded EmbeddingModel (loaded lazily from spec)
    layer: str | None = None

    @property
    def is_features(self) -> bool:
        return self.features is not None


def _is_embedding_model(model: Any) -> bool:
    return hasattr(model, "spec") and callable(getattr(model, "embed", None))


def resolve_model(model: Any, layer: str) -> ModelSource:
    """Resolve a model argument (id, .npy/.npz features path, ndarray or EmbeddingModel)
    for ``layer``; InvalidInputError for anything else. Loads no weights."""
    if isinstance(model, np.ndarray):
        d = digest.digest_array(model)
        return ModelSource(f"array:{d[:12]}", "features", d, features=model)
    if is_features_path(model):
        path = features_path(model)
        X, key = load_features(path, key=layer if layer != "penultimate" else None)
        return ModelSource(
            f"features:{path}", "features", digest.digest_array(X), features=X, layer=key
        )
    if _is_embedding_model(model):
        spec = model.spec
        return ModelSource(
            str(spec.id),
            str(getattr(spec, "family", "torch")),
            str(spec.digest),
            to_jsonable(getattr(spec, "preprocessing", None)),
            spec=spec,
            model=model,
            layer=layer,
        )
    if isinstance(model, str) and model:
        from .models import get_spec

        spec = get_spec(model)
        return ModelSource(
            str(spec.id),
            str(spec.family),
            str(spec.digest),
            to_jsonable(spec.preprocessing),
            spec=spec,
            layer=layer,
        )
    raise InvalidInputError(
        "model",
        f"is {type(model).__name__} {model!r:.60}",
        "a model id (see `align models`), a .npy/.npz features path, an array or an EmbeddingModel",
    )


def resolve_dataset(dataset: Any, data_dir: str | Path | None) -> Any:
    if hasattr(dataset, "kind") and hasattr(dataset, "stimulus_ids"):
        return dataset
    if isinstance(dataset, (str, Path)) and str(dataset):
        from .datasets import load_dataset

        return load_dataset(str(dataset), data_dir=data_dir)
    raise InvalidInputError(
        "dataset", f"is {type(dataset).__name__} {dataset!r:.60}", "a dataset id or Dataset"
    )


def open_cache(cache: CacheArg) -> DiskCache | None:
    """The DiskCache a ``cache`` argument means: True (the default folder), a folder, a
    DiskCache, or None/False for no cache."""
    if cache is None or cache is False:
        return None
    if cache is True:
        return DiskCache()
    if isinstance(cache, DiskCache):
        return cache
    if isinstance(cache, (str, Path)):
        return DiskCache(cache)
    raise InvalidInputError("cache", f"is {cache!r}", "True, False, a folder or a DiskCache")


def _cache_put(action: Any, *args: Any) -> None:
    try:
        action(*args)
    except OSError as exc:  # a read-only or full disk must not lose the result
        warnings.warn(f"align cache: could not write an entry ({exc})", stacklevel=3)


# -- the embedded backend ------------------------------------------------------------------


class EmbeddedBackend:
    """Runs everything in this process (the default with no server configured)."""

    def __init__(
        self, *, progress: bool = False, batch_size: int | None = None, device: str | None = None
    ) -> None:
        self.progress = progress
        self.batch_size = batch_size
        self.device = device
        self._models: dict[str, Any] = {}

    def close(self) -> None:
        self._models.clear()

    def _load(self, source: ModelSource) -> Any:
        if source.model is None:
            if source.model_id not in self._models:
                from .models import load_model

                self._models[source.model_id] = load_model(source.spec, device=self.device)
            source.model = self._models[source.model_id]
        return source.model

    def features(
        self,
        source: ModelSource,
        dataset: Any,
        layers: Sequence[str],
        cache: DiskCache | None,
    ) -> dict[str, tuple[np.ndarray, str, bool]]:
        """{layer: (features, features key, came from cache)}; embeds the missing layers
        in one pass."""
        if source.features is not None:
            X = source.features
            return {layers[0]: (X, source.weights_digest, False)}
        out: dict[str, tuple[np.ndarray, str, bool]] = {}
        todo: list[str] = []
        keys = {layer: _embedding_key(source, layer, dataset) for layer in layers}
        for layer in layers:
            cached = cache.get_array(keys[layer]) if cache is not None else None
            if cached is not None and cached.shape[0] == len(dataset.stimulus_ids):
                out[layer] = (cached, keys[layer], True)
            else:
                todo.append(layer)
        if todo:
            from .models import embed_dataset

            model = self._load(source)
            embedded = embed_dataset(
                model,
                dataset,
                layers=tuple(todo),
                batch_size=self.batch_size,
                progress=self.progress,
            )
            for layer in todo:
                X = np.asarray(embedded[layer])
                if cache is not None:
                    _cache_put(cache.put_array, keys[layer], X)
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
        options = {k: v for k, v in dict(options or {}).items() if v is not None}
        for name in ENGINE_OPTIONS:  # how to embed, not what to compute
            if name in options:
                setattr(self, name, options.pop(name))
        store = open_cache(cache)
        resolved_datasets = [resolve_dataset(d, data_dir) for d in datasets]
        plans = []
        for ds in resolved_datasets:  # check everything before the slow part
            names = resolve_metrics(ds, metrics)
            opts = dict(options)
            if "concepts" in names and data_dir is not None:
                opts.setdefault("data_dir", str(data_dir))
            check_options(names, opts)
            plans.append((ds, names, opts))
        reports: list[Report] = []
        for model in models:
            layer_list = _layer_list(model, layers)
            sources = {layer: resolve_model(model, layer) for layer in layer_list}
            if next(iter(sources.values())).is_features:
                layer_list = layer_list[:1]
            for ds, names, opts in plans:
                reports.extend(self._score_layers(sources, layer_list, ds, names, opts, store))
        return reports

    def _score_layers(
        self,
        sources: Mapping[str, ModelSource],
        layers: Sequence[str],
        dataset: Any,
        names: list[str],
        options: dict[str, Any],
        store: DiskCache | None,
    ) -> list[Report]:
        start = time.perf_counter()
        key_options = {k: v for k, v in options.items() if k != "data_dir"}
        first = sources[layers[0]]
        reports: dict[str, Report] = {}
        todo: list[str] = []
        report_keys: dict[str, str] = {}
        for layer in layers:
            source = sources[layer]
            if source.is_features:
                fkey = source.weights_digest
            else:
                fkey = _embedding_key(source, layer, dataset)
            report_keys[layer] = report_key(
                features_key=fkey,
                dataset_digest=str(dataset.digest),
                metrics=names,
                options=key_options,
            )
            cached = store.get_json(report_keys[layer]) if store is not None else None
            if cached is not None:
                try:
                    report = Report.from_dict(cached)
                    report.provenance["cache"] = "hit"
                    reports[layer] = report
                    continue
                except AlignError:
                    pass  # a corrupt entry: recompute
            todo.append(layer)
        if todo:
            feats = self.features(first, dataset, todo, store)
            embed_time = time.perf_counter() - start
            for layer in todo:
                X, _fkey, from_cache = feats[todo[0] if first.is_features else layer]
                t0 = time.perf_counter()
                results = evaluate(X, dataset, names, **options)
                source = sources[layer]
                prov = provenance(
                    source,
                    layer=source.layer if source.is_features else layer,
                    dataset=dataset,
                    names=names,
                    options=key_options,
                    features=X,
                    wall_time=embed_time / len(todo) + time.perf_counter() - t0,
                    embedding_cache="hit" if from_cache else "miss",
                )
                metric_dicts = {name: result.to_dict() for name, result in results.items()}
                report = Report(source.model_id, str(dataset.id), metric_dicts, prov)
                if store is not None:
                    _cache_put(store.put_json, report_keys[layer], report.to_dict())
                report.provenance["cache"] = "miss"
                reports[layer] = report
        return [reports[layer] for layer in layers]


def _embedding_key(source: ModelSource, layer: str, dataset: Any) -> str:
    return embedding_key(
        model_digest=source.weights_digest,
        preprocessing=source.preprocessing,
        layer=layer,
        dataset_digest=str(dataset.digest),
        stimuli=stimuli_fingerprint(dataset),
    )


def _layer_list(model: Any, layers: str | Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        if layers != "all":
            return [layers]
        if isinstance(model, np.ndarray) or is_features_path(model):
            return ["penultimate"]
        spec = model.spec if _is_embedding_model(model) else None
        if spec is None:
            from .models import get_spec

            spec = get_spec(str(model))
        return list(spec.layers)
    out = [str(x) for x in layers]
    if not out:
        raise InvalidInputError("layers", "is empty", "a layer name, a list of them, or 'all'")
    return out


def provenance(
    source: ModelSource,
    *,
    layer: str | None,
    dataset: Any,
    names: Sequence[str],
    options: Mapping[str, Any],
    features: np.ndarray,
    wall_time: float,
    embedding_cache: str,
) -> dict[str, Any]:
    """The provenance of a report (model, weights, layer, dataset, metrics, options,
    versions, timing): one builder for the embedded backend and the evaluation server."""
    missing = int(np.isnan(features).all(axis=1).sum()) if features.size else 0
    return {
        "model_id": source.model_id,
        "model_family": source.family,
        "weights_digest": source.weights_digest,
        "layer": layer,
        "preprocessing": source.preprocessing,
        "features_shape": list(features.shape),
        "n_missing_stimuli": missing,
        "dataset_id": str(dataset.id),
        "dataset_digest": str(dataset.digest),
        "dataset_kind": str(dataset.kind),
        "dataset_source": str(getattr(dataset, "source", "")),
        "metrics": list(names),
        "options": to_jsonable(dict(options)),
        "library_version": __version__,
        "metric_code_version": METRIC_CODE_VERSION,
        "wall_time_s": round(float(wall_time), 4),
        "embedding_cache": embedding_cache,
        "backend": "embedded",
    }


# -- Client and the module-level functions -------------------------------------------------


class Client:
    """Scores models on datasets, embedded (no server) or through a remote server.

    ``Client()`` runs embedded unless ``ALIGN_SERVER`` is set; ``Client(server=...)`` or
    ``align.connect(server)`` use the gRPC backend of ``align.remote``.
    """

    def __init__(
        self,
        server: str | None = None,
        token: str | None = None,
        *,
        backend: Backend | None = None,
        progress: bool = False,
    ) -> None:
        if backend is None:
            server = server or os.environ.get(SERVER_ENV) or None
            token = token or os.environ.get(TOKEN_ENV) or None
            backend = (
                _remote_backend(server, token) if server else EmbeddedBackend(progress=progress)
            )
        self.server = server
        self.backend = backend

    def __repr__(self) -> str:
        where = self.server or "embedded"
        return f"Client({where!r})"

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.backend.close()

    def score(
        self,
        model: Any,
        dataset: Any,
        metrics: str | Sequence[str] | None = None,
        layer: str = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = True,
        **options: Any,
    ) -> Report:
        """Score one model (id, features path, array or EmbeddingModel) on one dataset
        (id or Dataset). Returns a Report."""
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
        cache: CacheArg = True,
        **options: Any,
    ) -> list[Report]:
        """Every (model, dataset, layer) as Reports; ``layers="all"`` sweeps each model's
        named layers."""
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
                for layer in _layer_list(model, layers):
                    out.append(self.score(model, ds, metrics, layer, data_dir, cache, **options))
        return out

    def score_many(
        self,
        models: Any,
        datasets: Any,
        metrics: str | Sequence[str] | None = None,
        layers: str | Sequence[str] = "penultimate",
        data_dir: str | Path | None = None,
        cache: CacheArg = True,
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
    if isinstance(value, (str, Path, np.ndarray)) or _is_embedding_model(value):
        return [value]
    if hasattr(value, "kind") and hasattr(value, "stimulus_ids"):
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
    ds = resolve_dataset(dataset, data_dir)
    source = resolve_model(model, layer)
    backend = EmbeddedBackend(progress=progress)
    out = backend.features(source, ds, [layer], open_cache(cache))
    return out[layer][0]


def connect(server: str, token: str | None = None) -> Client:
    """A Client of the evaluation server at ``server`` (host:port)."""
    if not isinstance(server, str) or not server:
        raise InvalidInputError("server", f"is {server!r}", "host:port of an align server")
    return Client(server=server, token=token)


_default_client: Client | None = None


def _client() -> Client:
    global _default_client
    server = os.environ.get(SERVER_ENV) or None
    if _default_client is None or _default_client.server != server:
        _default_client = Client(server=server)
    return _default_client


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
    (similarity, n_bootstrap, seed, ...).
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
