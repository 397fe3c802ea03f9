"""The scoring plan: what one Score computes, written once for every backend.

The embedded backend (`align.api`), the evaluation server
(``align_services.evaluation.server``) and the reports (`align.reporting`) all go through
these functions, so their cache keys and provenance are equal by construction:

    source = resolve_model(model, layer, store)     # what a model argument is (no weights)
    plan = make_plan(source, dataset, metrics, options, layer=layer)
    plan.features_key, plan.report_key               # every cache key of the request
    report = assemble_report(plan, features_shape=..., ...)   # a computed report
    report = report_from_cache(stored, plan, ...)    # a cache hit, rebuilt for this request

A cached report keeps its numbers and content digests, but the identity fields (model id,
features path, dataset id and source, wall time, backend) always describe the CURRENT
request, and ``provenance["cache"]`` says ``"hit"`` or ``"miss"``.

Nothing here imports torch: a model id resolves through a small disk memo of its spec
(:func:`model_facts`), so a cached re-score in a fresh process never loads torch or timm.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import digest
from ._version import METRIC_CODE_VERSION, __version__
from .cache import DiskCache, embedding_key, report_key, stimuli_fingerprint
from .errors import AlignError, InvalidInputError
from .report import Report
from .results import to_jsonable

FEATURE_SUFFIXES = (".npy", ".npz")
# Options that say HOW to embed (engine settings); they never change a number, so they
# never enter a key. Configuration of the Client; a call may override them for itself.
ENGINE_OPTIONS = ("progress", "batch_size", "device")
# Options evaluate() reads that are about where files are, not what is computed.
LOCATION_OPTIONS = ("data_dir",)
DEFAULT_LAYER = "penultimate"
# What the dataset loaders' warning about absent image files says (things, matrices).
_IMAGES_MISSING = "images missing in"

CacheArg = bool | str | Path | DiskCache | None


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


def npz_key(layer: str | None) -> str | None:
    """The npz array a ``layer`` argument names (the default layer names none)."""
    return layer if layer and layer != DEFAULT_LAYER else None


# -- what a model argument turns into ------------------------------------------------------


@dataclasses.dataclass
class ModelSource:
    """A model argument, resolved (without computing features yet): what every backend
    keys caches and provenance on. Build one with :func:`resolve_model`, or directly for a
    model resolved elsewhere (the server, from its embedder's ModelRef)."""

    model_id: str
    family: str
    weights_digest: str
    preprocessing: Any = None
    features: np.ndarray | None = None  # given features
    spec: Any = None  # ModelSpec, when align.models resolved it in this process
    model: Any = None  # a loaded EmbeddingModel (loaded lazily)
    layer: str | None = None
    layers: tuple[str, ...] = ()  # the model's named layers (for layers="all")
    modality: str = "image"

    @property
    def is_features(self) -> bool:
        return self.features is not None

    @property
    def uses_images(self) -> bool:
        return not self.is_features and self.modality == "image"


def is_embedding_model(model: Any) -> bool:
    return hasattr(model, "spec") and callable(getattr(model, "embed", None))


def is_dataset(value: Any) -> bool:
    return hasattr(value, "kind") and hasattr(value, "stimulus_ids")


def features_source(
    X: np.ndarray, label: str | None = None, layer: str | None = None
) -> ModelSource:
    """The source of given features: keyed by their content (``weights_digest``), named
    by the request (``label``: ``features:<path>``; else ``array:<digest prefix>``)."""
    d = digest.digest_array(X)
    return ModelSource(label or f"array:{d[:12]}", "features", d, features=X, layer=layer)


def resolve_model(model: Any, layer: str, store: DiskCache | None = None) -> ModelSource:
    """Resolve a model argument (id, .npy/.npz features path, ndarray or EmbeddingModel)
    for ``layer``; InvalidInputError for anything else. Loads no weights and, for an id
    whose spec is memoised in ``store``, imports no torch."""
    if isinstance(model, np.ndarray):
        return features_source(model)
    if is_features_path(model):
        path = features_path(model)
        X, key = load_features(path, key=npz_key(layer))
        return features_source(X, f"features:{path}", key)
    if is_embedding_model(model):
        spec = model.spec
        return ModelSource(
            str(spec.id),
            str(getattr(spec, "family", "torch")),
            str(spec.digest),
            to_jsonable(getattr(spec, "preprocessing", None)),
            spec=spec,
            model=model,
            layer=layer,
            layers=tuple(getattr(spec, "layers", ())),
            modality=str(getattr(spec, "modality", "image")),
        )
    if isinstance(model, str) and model:
        facts, spec = model_facts(model, store)
        return ModelSource(
            facts["model_id"],
            facts["family"],
            facts["weights_digest"],
            facts["preprocessing"],
            spec=spec,
            layer=layer,
            layers=tuple(facts["layers"]),
            modality=str(facts.get("modality", "image")),
        )
    raise InvalidInputError(
        "model",
        f"is {type(model).__name__} {model!r:.60}",
        "a model id (see `align models`), a .npy/.npz features path, an array or an EmbeddingModel",
    )


def _spec_facts(spec: Any) -> dict[str, Any]:
    return {
        "model_id": str(spec.id),
        "family": str(spec.family),
        "weights_digest": str(spec.digest),
        "preprocessing": to_jsonable(spec.preprocessing),
        "layers": [str(x) for x in spec.layers],
        "modality": str(getattr(spec, "modality", "image")),
    }


def _stat(path: Path) -> list[Any] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [str(path), st.st_mtime_ns, st.st_size]


def _weight_files(spec: Any) -> list[list[Any] | None]:
    """(path, mtime, size) of every file the spec's weights digest was computed from."""
    weights = getattr(spec, "weights", None)
    if weights is None or weights.source not in ("package", "file"):
        return []
    loc = Path(
        str(weights.location).rpartition("@")[2] if "@" in weights.location else weights.location
    )
    if loc.is_dir():
        return [_stat(f) for f in sorted(q for q in loc.rglob("*") if q.is_file())]
    return [_stat(loc)]


def _spec_memo_key(model_id: str) -> str:
    """Everything a spec can depend on besides its weights files: the id, align's version
    and model code, the installed packages (the mtime of each import folder changes when
    a package is added, removed or upgraded) and the hub switch."""
    code = Path(__file__).parent / "models"
    code_stats = [_stat(f) for f in sorted(code.glob("*.py"))]
    paths = []
    for entry in sys.path:  # install folders only (not the working directory)
        if entry.endswith(("site-packages", "dist-packages")) and os.path.isdir(entry):
            paths.append(_stat(Path(entry)))
    return digest.digest_json(
        {
            "kind": "spec",
            "id": model_id,
            "version": __version__,
            "code": code_stats,
            "paths": paths,
            "hub_offline": os.environ.get("HF_HUB_OFFLINE", ""),
        }
    )


def model_facts(model_id: str, store: DiskCache | None = None) -> tuple[dict[str, Any], Any]:
    """(facts, spec or None) of a model id: its id, family, spec digest, preprocessing and
    layers. From the disk memo in ``store`` when it is still valid (no torch imported;
    the weights files are checked by path, mtime and size), else from
    ``align.models.get_spec`` (then memoised). Ids registered in this process
    (``register_model``) always go to the registry."""
    key = None
    if store is not None and "align.models" not in sys.modules:
        key = _spec_memo_key(model_id)
        entry = store.get_meta(key)
        if entry is not None:
            files = entry.get("files")
            facts = entry.get("facts")
            if isinstance(files, list) and isinstance(facts, dict):
                if all(f is not None and _stat(Path(f[0])) == f for f in files):
                    return facts, None
    from .models import get_spec

    spec = get_spec(model_id)
    facts = _spec_facts(spec)
    if key is not None and store is not None:
        files = _weight_files(spec)
        if all(f is not None for f in files):
            cache_put(store.put_meta, key, {"facts": facts, "files": files})
    return facts, spec


def model_layers(
    model: Any, layers: str | Sequence[str], store: DiskCache | None = None
) -> list[str]:
    """The layers a ``layers`` argument means for ``model`` ("all": its named layers)."""
    if isinstance(layers, str):
        if layers != "all":
            return [layers]
        if isinstance(model, np.ndarray) or is_features_path(model):
            return [DEFAULT_LAYER]
        if is_embedding_model(model):
            return [str(x) for x in model.spec.layers]
        return list(model_facts(str(model), store)[0]["layers"])
    out = [str(x) for x in layers]
    if not out:
        raise InvalidInputError("layers", "is empty", "a layer name, a list of them, or 'all'")
    return out


def resolve_dataset(dataset: Any, data_dir: str | Path | None, *, uses_images: bool = True) -> Any:
    """A Dataset for a dataset argument (id, folder or Dataset). With ``uses_images=False``
    (features or a text model) the loader's warning about missing images is dropped:
    it does not concern this request."""
    if is_dataset(dataset):
        return dataset
    if isinstance(dataset, (str, Path)) and str(dataset):
        from .datasets import load_dataset

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = load_dataset(str(dataset), data_dir=data_dir)
        for w in caught:
            if uses_images or _IMAGES_MISSING not in str(w.message):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return loaded
    raise InvalidInputError(
        "dataset", f"is {type(dataset).__name__} {dataset!r:.60}", "a dataset id or Dataset"
    )


# -- the cache argument --------------------------------------------------------------------


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


def cache_put(action: Callable[..., Any], *args: Any) -> None:
    """Write a cache entry; a read-only or full disk warns instead of losing the result."""
    try:
        action(*args)
    except OSError as exc:
        warnings.warn(f"align cache: could not write an entry ({exc})", stacklevel=3)


def split_engine_options(
    options: Mapping[str, Any] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metric options, engine options) of a call's options; None values dropped."""
    metric: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for k, v in dict(options or {}).items():
        if v is None:
            continue
        (engine if k in ENGINE_OPTIONS else metric)[k] = v
    return metric, engine


# -- the plan ------------------------------------------------------------------------------


@dataclasses.dataclass
class Plan:
    """One (model source, dataset, layer) request, checked, with every cache key."""

    source: ModelSource
    dataset: Any
    layer: str | None  # the layer embedded (None for given features)
    names: list[str]  # resolved metric names
    options: dict[str, Any]  # what evaluate() gets
    key_options: dict[str, Any]  # what enters the report key and the provenance
    features_key: str  # embedding key, or the digest of the given features
    report_key: str

    @property
    def provenance_layer(self) -> str | None:
        return self.source.layer if self.source.is_features else self.layer


def check_request(
    dataset: Any,
    metrics: Sequence[str] | None,
    options: Mapping[str, Any],
    data_dir: str | Path | None = None,
) -> tuple[list[str], dict[str, Any]]:
    """(metric names, evaluate() options) for a dataset; raises for an unknown metric or an
    option no chosen metric takes. Cheap: call it before anything slow."""
    from .evaluation import check_options, resolve_metrics

    names = resolve_metrics(dataset, list(metrics) if metrics else None)
    opts = {k: v for k, v in dict(options).items() if v is not None}
    if "concepts" in names and data_dir is not None:
        opts.setdefault("data_dir", str(data_dir))
    check_options(names, opts)
    return names, opts


def dataset_embedding_key(
    source: ModelSource, layer: str, dataset: Any, store: DiskCache | None = None
) -> str:
    """The embedding key of a model's ``layer`` on ``dataset``: model digest,
    preprocessing, layer, dataset digest and the CONTENT of its stimulus files."""
    return embedding_key(
        model_digest=source.weights_digest,
        preprocessing=source.preprocessing,
        layer=layer,
        dataset_digest=str(dataset.digest),
        stimuli=stimuli_fingerprint(dataset, store),
    )


def make_plan(
    source: ModelSource,
    dataset: Any,
    metrics: Sequence[str] | None,
    options: Mapping[str, Any],
    *,
    layer: str | None = DEFAULT_LAYER,
    data_dir: str | Path | None = None,
    checked: tuple[list[str], dict[str, Any]] | None = None,
    store: DiskCache | None = None,
) -> Plan:
    """The plan of one request. ``checked``: the result of :func:`check_request` when the
    caller already has it (sweeps check every dataset once, up front). ``store``: a disk
    cache whose memo spares re-reading the stimulus files (the key is the same without)."""
    names, opts = (
        checked if checked is not None else check_request(dataset, metrics, options, data_dir)
    )
    key_options = {k: v for k, v in opts.items() if k not in LOCATION_OPTIONS}
    if source.is_features:
        n = len(dataset.stimulus_ids)
        assert source.features is not None
        if source.features.ndim != 2 or source.features.shape[0] != n:
            raise InvalidInputError(
                "features",
                f"has shape {tuple(source.features.shape)}",
                f"{n} rows, one per stimulus of {dataset.id}",
            )
        fkey = source.weights_digest
        used_layer = None
    else:
        used_layer = layer or DEFAULT_LAYER
        fkey = dataset_embedding_key(source, used_layer, dataset, store)
    rkey = report_key(
        features_key=fkey,
        dataset_digest=str(dataset.digest),
        metrics=names,
        options=key_options,
    )
    return Plan(source, dataset, used_layer, names, opts, key_options, fkey, rkey)


# -- reports -------------------------------------------------------------------------------


def provenance(
    plan: Plan,
    *,
    features_shape: Sequence[int],
    n_missing: int,
    wall_time: float,
    embedding_cache: str,
    backend: str,
    cache: str,
) -> dict[str, Any]:
    """The provenance of a report: the request (model, layer, dataset, metrics, options),
    the content digests, versions and timing. One builder for every backend."""
    source, dataset = plan.source, plan.dataset
    return {
        "model_id": source.model_id,
        "model_family": source.family,
        "weights_digest": source.weights_digest,
        "layer": plan.provenance_layer,
        "preprocessing": source.preprocessing,
        "features_shape": [int(x) for x in features_shape],
        "n_missing_stimuli": int(n_missing),
        "dataset_id": str(dataset.id),
        "dataset_digest": str(dataset.digest),
        "dataset_kind": str(dataset.kind),
        "dataset_source": str(getattr(dataset, "source", "")),
        "metrics": list(plan.names),
        "options": to_jsonable(dict(plan.key_options)),
        "library_version": __version__,
        "metric_code_version": METRIC_CODE_VERSION,
        "wall_time_s": round(float(wall_time), 4),
        "embedding_cache": embedding_cache,
        "backend": backend,
        "cache": cache,
        "report_key": plan.report_key,
    }


def assemble_report(
    plan: Plan,
    results: Mapping[str, Any],
    X: np.ndarray,
    *,
    wall_time: float,
    embedding_cache: str,
    backend: str,
) -> Report:
    """The report of a computed plan (``cache: "miss"``)."""
    missing = int(np.isnan(X).all(axis=1).sum()) if X.size else 0
    prov = provenance(
        plan,
        features_shape=X.shape,
        n_missing=missing,
        wall_time=wall_time,
        embedding_cache=embedding_cache,
        backend=backend,
        cache="miss",
    )
    return Report(plan.source.model_id, str(plan.dataset.id), dict(results), prov)


def stored_form(report: Report) -> dict[str, Any]:
    """What a cache stores: the report without the per-request fields."""
    data = report.to_dict()
    data["provenance"] = {
        k: v for k, v in data["provenance"].items() if k not in ("cache", "backend")
    }
    return data


def report_from_cache(
    stored: Mapping[str, Any],
    plan: Plan,
    *,
    wall_time: float | None,
    backend: str,
    cache: str = "hit",
) -> Report | None:
    """A cached report rebuilt around the current request: its numbers and content
    digests, this request's model id, paths, dataset id, time (``wall_time``; None keeps
    the stored one) and backend, and ``cache`` ("hit"; the server also rebuilds a report
    it just computed for each request that waited on it, with "miss"). None for an entry
    that cannot be read (the caller recomputes)."""
    try:
        old = Report.from_dict(stored)
    except AlignError:
        return None
    prov = old.provenance
    shape = prov.get("features_shape")
    if not isinstance(shape, list):
        return None
    if wall_time is None:
        wall_time = float(prov.get("wall_time_s") or 0.0)
    fresh = provenance(
        plan,
        features_shape=shape,
        n_missing=int(prov.get("n_missing_stimuli") or 0),
        wall_time=wall_time,
        embedding_cache=str(prov.get("embedding_cache", "miss")),
        backend=backend,
        cache=cache,
    )
    return Report(plan.source.model_id, str(plan.dataset.id), old.metrics, fresh)


__all__ = [
    "DEFAULT_LAYER",
    "ENGINE_OPTIONS",
    "FEATURE_SUFFIXES",
    "CacheArg",
    "ModelSource",
    "Plan",
    "assemble_report",
    "cache_put",
    "check_request",
    "dataset_embedding_key",
    "features_path",
    "features_source",
    "is_features_path",
    "load_features",
    "make_plan",
    "model_facts",
    "model_layers",
    "open_cache",
    "provenance",
    "report_from_cache",
    "resolve_dataset",
    "resolve_model",
    "split_engine_options",
    "stored_form",
]
