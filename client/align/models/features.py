"""Models that are not built from a registry architecture.

``features:<path.npy|.npz>``: precomputed features, one row per stimulus in the dataset's
order. An ``.npz`` may hold several arrays (each is a layer; ``penultimate`` is the array
named ``features``/``penultimate`` or the only one) and optionally ``stimulus_ids``, in
which case rows are matched to the dataset by id (ids absent from the file give all-NaN
rows, with a warning). Loaded with ``allow_pickle=False``.

:func:`from_torch` wraps any torch module plus a preprocessing (a :class:`Preprocessing`
or a function PIL RGB image -> (3, h, w) array/tensor) into an :class:`EmbeddingModel`
running on the same engine: ``penultimate`` is the module's output, any submodule name is
hooked.
"""

from __future__ import annotations

import warnings
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..digest import combine, digest_array
from ..errors import InvalidInputError, NotFoundError
from .engine import (
    DEFAULT_LAYER,
    EmbeddingModel,
    ImageModel,
    Layers,
    StimulusWarning,
    _check_options,
    _normalize_layers,
)
from .spec import ModelSpec, Preprocessing, WeightsSpec, weights_digest

_ID_KEYS = ("stimulus_ids", "ids")
_MAIN_KEYS = ("features", DEFAULT_LAYER)


def _read(path: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None]:
    where = f"features ({path})"
    if not path.is_file():
        raise InvalidInputError(where, "file does not exist", "a .npy or .npz feature file")
    if path.suffix not in (".npy", ".npz"):
        raise InvalidInputError(where, f"has suffix {path.suffix!r}", ".npy or .npz")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.ndarray):
            arrays = {DEFAULT_LAYER: loaded}
        else:
            with loaded:
                arrays = {k: loaded[k] for k in loaded.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise InvalidInputError(where, f"cannot be read: {e}", "a numpy .npy/.npz file") from e
    ids = None
    for key in _ID_KEYS:
        if key in arrays:
            ids = tuple(str(s) for s in arrays.pop(key).tolist())
    if not arrays:
        raise InvalidInputError(where, "holds no feature array", "an (n, p) array")
    if DEFAULT_LAYER not in arrays:
        main = next((k for k in _MAIN_KEYS if k in arrays), None)
        if main is None and len(arrays) == 1:
            main = next(iter(arrays))
        if main is not None:
            arrays[DEFAULT_LAYER] = arrays[main]
    for key, a in arrays.items():
        if a.ndim != 2 or not (
            np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)
        ):
            raise InvalidInputError(
                f"{where}[{key}]", f"is a {a.dtype} array of shape {a.shape}", "(n, p) numbers"
            )
        if ids is not None and len(ids) != a.shape[0]:
            raise InvalidInputError(
                f"{where}[{key}]",
                f"has {a.shape[0]} rows but {len(ids)} stimulus_ids",
                "one id per row",
            )
    return arrays, ids


def make_spec(model_id: str, location: str) -> ModelSpec:
    path = Path(location).expanduser()
    arrays, _ = _read(path)
    return ModelSpec(
        id=model_id,
        family="features",
        architecture="precomputed",
        modality="image",
        weights=WeightsSpec("file", str(path.resolve()), weights_digest(path)),
        preprocessing=None,
        layers=tuple(sorted(arrays, key=lambda k: (k != DEFAULT_LAYER, k))),
        description=f"precomputed features from {path}",
    )


class FeaturesModel(EmbeddingModel):
    """Rows of a feature file. ``embed`` takes row indices (or ids when the file has
    ``stimulus_ids``); :func:`embed_dataset` matches rows to the dataset."""

    modalities = ("image", "text")

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        super().__init__(spec, "cpu" if device is None else device)
        arrays, self.ids = _read(Path(spec.weights.location))
        self.arrays = {k: np.asarray(v, dtype=np.float32) for k, v in arrays.items()}

    @property
    def layers(self) -> tuple[str, ...]:
        return self.spec.layers

    def _check(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in self.arrays:
                raise NotFoundError(
                    "layer",
                    name,
                    list(self.arrays),
                    hint=f"(arrays in {self.spec.weights.location})",
                )

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Rows by index (int) or by stimulus id (str, when the file has ids)."""
        _check_options(options, {"modality", "num_workers", "out_dir"})
        names = _normalize_layers(layers)
        self._check(names)
        n = next(iter(self.arrays.values())).shape[0]
        index = {s: i for i, s in enumerate(self.ids)} if self.ids is not None else {}
        rows = []
        for i, s in enumerate(stimuli):
            if isinstance(s, (int, np.integer)) and not isinstance(s, bool) and 0 <= s < n:
                rows.append(int(s))
            elif isinstance(s, str) and s in index:
                rows.append(index[s])
            else:
                raise InvalidInputError(
                    f"stimuli[{i}]",
                    f"is {s!r}",
                    f"a row index 0..{n - 1}" + (" or a stimulus id of the file" if index else ""),
                )
        return {k: self.arrays[k][rows] for k in names}

    def embed_rows(self, dataset: Any, layers: tuple[str, ...]) -> dict[str, np.ndarray]:
        self._check(layers)
        wanted = tuple(str(s) for s in dataset.stimulus_ids)
        n = len(wanted)
        ident = getattr(dataset, "id", "dataset")
        if self.ids is None:
            for k in layers:
                if self.arrays[k].shape[0] != n:
                    raise InvalidInputError(
                        f"features ({self.spec.weights.location})",
                        f"has {self.arrays[k].shape[0]} rows",
                        f"{n} rows, one per stimulus of {ident} in its order (or stimulus_ids)",
                    )
            return {k: self.arrays[k].copy() for k in layers}
        index = {s: i for i, s in enumerate(self.ids)}
        have = [i for i, s in enumerate(wanted) if s in index]
        if not have:
            raise InvalidInputError(
                f"features ({self.spec.weights.location})",
                f"shares no stimulus id with {ident} (file: {self.ids[:3]}...)",
                f"ids like {wanted[:3]}",
            )
        src = [index[wanted[i]] for i in have]
        out = {}
        for k in layers:
            a = np.full((n, self.arrays[k].shape[1]), np.nan, dtype=np.float32)
            a[have] = self.arrays[k][src]
            out[k] = a
        if len(have) < n:
            warnings.warn(
                f"{ident}: {n - len(have)} of {n} stimuli are not in the feature file; "
                "their rows are NaN",
                StimulusWarning,
                stacklevel=3,
            )
        return out


def module_digest(module: nn.Module) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a module's state dict."""
    parts = []
    for k, v in module.state_dict().items():
        parts.append(f"{k}:{digest_array(v.detach().cpu().contiguous().numpy())}")
    return combine(parts)


def _describe_fn(f: Any) -> str:
    text = repr(f)
    if " at 0x" in text:  # addresses change every run: name the function instead
        name = getattr(f, "__qualname__", type(f).__qualname__)
        text = f"{getattr(f, '__module__', '?')}.{name}"
    return text[:500]


def from_torch(
    module: nn.Module,
    preprocess: Preprocessing | Callable[[Any], Any],
    id: str = "torch/custom",
    device: torch.device | str | None = None,
) -> ImageModel:
    """Wrap a torch image network as an :class:`EmbeddingModel` (``family="torch"``).

    ``preprocess``: a :class:`Preprocessing`, or a function from an RGB PIL image to a
    (3, h, w) array/tensor (e.g. a torchvision transform; it must be picklable to use
    ``num_workers > 0``). Its digest is the state dict's; a function's name is recorded.
    """
    if not isinstance(module, nn.Module):
        raise InvalidInputError("module", f"is a {type(module).__name__}", "a torch.nn.Module")
    if not (isinstance(preprocess, Preprocessing) or callable(preprocess)):
        raise InvalidInputError(
            "preprocess",
            f"is a {type(preprocess).__name__}",
            "a Preprocessing or a function image -> tensor",
        )
    pre = preprocess if isinstance(preprocess, Preprocessing) else None
    extra = () if pre is not None else (("preprocess", _describe_fn(preprocess)),)
    spec = ModelSpec(
        id=id,
        family="torch",
        architecture=type(module).__name__,
        modality="image",
        weights=WeightsSpec("memory", f"python:{type(module).__qualname__}", module_digest(module)),
        preprocessing=pre,
        layers=(DEFAULT_LAYER,),
        description=f"torch module {type(module).__qualname__} from Python",
        extra=extra,
    )

    def forward(x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
        return {DEFAULT_LAYER: module(x)}

    named = {DEFAULT_LAYER: lambda c: c[DEFAULT_LAYER]}
    transform = None if isinstance(preprocess, Preprocessing) else preprocess
    return ImageModel(spec, module, forward, named, device, transform=transform)
