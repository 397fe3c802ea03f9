"""What a report row is made from: a network, a text model, a human reference embedding
or a saved features file, and how each turns a dataset into feature matrices.

Source ids accepted by ``align report`` / ``align reproduce``:

- any model id (``timm/tf_efficientnet_lite0``, ``timm/tf_efficientnet_lite0@random``,
  ``text/all-MiniLM-L6-v2``, ...): embedded with the library's engine and disk cache
  (the same cache keys as ``align.score``), several layers in one pass;
- ``reference/spose`` and ``reference/vice``: the human SPoSE (66-d) and VICE (42-d)
  embeddings of the 1,854 THINGS objects (rows for any dataset whose stimuli are THINGS
  objects: things, things48);
- ``features:<file.npy>``: precomputed features with one row per THINGS object.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..digest import digest_array
from ..errors import DataMissingError, InvalidInputError

REFERENCES = {
    "reference/spose": ("SPoSE 66-d (human)", "load_spose_embedding"),
    "reference/vice": ("VICE 42-d (human)", "load_vice_embedding"),
}
#: Layers swept for EfficientNet-style timm models (early -> late).
EFFICIENTNET_SWEEP = ("blocks.3", "blocks.5", "penultimate", "logits")
#: Layers swept for the models of other objectives (their ``layers="all"`` lists every
#: graph tensor; the report sweeps the trunk and the objective's own output head).
OBJECTIVE_SWEEPS: dict[str, tuple[str, ...]] = {
    "onnx/sscd-resnet50": ("penultimate", "output"),
    "onnx/sscd-mobilenetv4": ("penultimate", "output"),
    "onnx/open-nsfw-resnet50": ("penultimate",),
    "hed/vgg16": ("stage3", "stage4", "penultimate"),
    "hed/vgg16@random": ("penultimate",),
}


@dataclass
class Source:
    """One row of a report. ``features(dataset, layers)`` -> {layer: (n, p)} or raises
    :class:`DataMissingError` saying why the dataset does not apply."""

    id: str
    label: str
    kind: str  # "network" | "text" | "reference" | "features"
    control: bool = False
    weights_digest: str = ""
    description: str = ""
    preprocessing: Any = None
    sweep: tuple[str, ...] = ("penultimate",)
    data_dir: str | Path | None = None
    cache: Any = True
    timings: dict[str, float] = field(default_factory=dict)
    cache_hits: dict[str, bool] = field(default_factory=dict)
    _things_rows: np.ndarray | None = field(default=None, repr=False)
    things_ids: tuple[str, ...] | None = field(default=None, repr=False)
    _backend: Any = field(default=None, repr=False)

    def provenance(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "kind": self.kind,
            "control": self.control,
            "weights_digest": self.weights_digest,
            "description": self.description,
            "preprocessing": self.preprocessing,
        }

    def features(self, dataset: Any, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        try:
            return self._features(dataset, layers)
        finally:
            key = str(dataset.id)
            self.timings[key] = self.timings.get(key, 0.0) + time.perf_counter() - t0

    def _features(self, dataset: Any, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        if self.kind in ("reference", "features"):
            rows = self._things_rows
            assert rows is not None
            if self.things_ids is None:
                from ..datasets import load_dataset

                self.things_ids = tuple(load_dataset("things", self.data_dir).stimulus_ids)
            idx = _things_index(dataset, self.things_ids)
            self.cache_hits[str(dataset.id)] = True
            return {"penultimate": rows[idx]}
        if self.kind == "network" and dataset.image_paths is None:
            raise DataMissingError(
                f"{dataset.id} has no images (pass an image folder to use image models)"
            )
        if self.kind == "text" and not dataset.words:
            raise DataMissingError(f"{dataset.id} has no words for a text model")
        from ..api import EmbeddedBackend
        from ..scoring import open_cache, resolve_model

        if self._backend is None:
            self._backend = EmbeddedBackend(progress=False)
        store = open_cache(self.cache)
        src = resolve_model(self.id, layers[0], store)  # the same keys as align.score
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # missing images are reported as n_dropped
            out = self._backend.features(src, dataset, list(layers), store)
        self.cache_hits[str(dataset.id)] = all(v[2] for v in out.values())
        return {layer: np.asarray(v[0]) for layer, v in out.items()}

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()
            self._backend = None


def _things_index(dataset: Any, things_ids: tuple[str, ...]) -> np.ndarray:
    """Rows of the 1,854 THINGS objects for the stimuli of ``dataset`` (THINGS objects)."""
    pos = {sid: i for i, sid in enumerate(things_ids)}
    missing = [s for s in dataset.stimulus_ids if s not in pos]
    if missing:
        raise DataMissingError(
            f"{dataset.id}: stimuli {missing[:3]} are not THINGS objects; a THINGS-only "
            "embedding has no rows for them"
        )
    return np.array([pos[s] for s in dataset.stimulus_ids], dtype=np.int64)


def resolve_source(
    source_id: str,
    data_dir: str | Path | None = None,
    cache: Any = True,
    layers: tuple[str, ...] | None = None,
    label: str | None = None,
) -> Source:
    """A :class:`Source` for an id (module docstring); errors name the id."""
    if not isinstance(source_id, str) or not source_id.strip():
        raise InvalidInputError("model", f"is {source_id!r}", "a model id or reference/spose")
    sid = source_id.strip()
    if sid in REFERENCES:
        from .. import datasets

        name, loader = REFERENCES[sid]
        rows = np.asarray(getattr(datasets, loader)(data_dir), dtype=np.float64)
        return Source(
            sid,
            label or name,
            "reference",
            weights_digest=digest_array(rows),
            description=f"{name}: human similarity embedding (reference row)",
            data_dir=data_dir,
            _things_rows=rows,
        )
    if sid.startswith("features:") or sid.lower().endswith(".npy"):
        from ..scoring import load_features

        path = Path(sid.removeprefix("features:")).expanduser()
        X, _ = load_features(path)
        if X.ndim != 2 or X.shape[0] != 1854:
            raise InvalidInputError(
                str(path), f"has shape {X.shape}", "(1854, p): one row per THINGS object"
            )
        return Source(
            f"features:{path}",
            label or path.stem,
            "features",
            weights_digest=digest_array(X),
            description=f"precomputed THINGS features from {path}",
            data_dir=data_dir,
            _things_rows=np.asarray(X, dtype=np.float64),
        )
    from ..models import get_spec

    spec = get_spec(sid)
    kind = "text" if spec.modality == "text" else "network"
    if layers is None:
        arch = str(spec.architecture)
        if spec.family == "timm" and "efficientnet" in arch:
            layers = EFFICIENTNET_SWEEP
        elif sid in OBJECTIVE_SWEEPS:
            layers = OBJECTIVE_SWEEPS[sid]
        elif spec.family == "onnx":
            layers = ("penultimate",)
        else:
            layers = tuple(spec.layers)
    if "penultimate" not in layers:
        layers = ("penultimate", *layers)
    short = sid.split("/", 1)[-1]
    return Source(
        sid,
        label or short,
        kind,
        control=spec.weights.source == "random",
        weights_digest=str(spec.digest),
        description=str(getattr(spec, "description", "")),
        preprocessing=_jsonable(getattr(spec, "preprocessing", None)),
        sweep=tuple(layers),
        data_dir=data_dir,
        cache=cache,
    )


def _jsonable(value: Any) -> Any:
    from ..results import to_jsonable

    return to_jsonable(value)
