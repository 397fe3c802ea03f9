"""Model ids -> specs -> loaded models (timm's registry is the model we imitate).

Id grammar::

    timm/<arch>[@random|@<checkpoint>]        any timm architecture
    open_clip/<arch>[@random|@<checkpoint>|@<pretrained tag>]
    text/<name>[@<sentence-transformers folder>]
    onnx/<packaged graph>                     ONNX graphs (onnxruntime): sscd-resnet50, ...
    hed/vgg16[@random]                        HED's VGG16 trunk (torch)
    dlib/face-resnet                          dlib's face-recognition ResNet
    glove/6b-50d                              GloVe word vectors
    features:<path.npy|.npz>                  precomputed features
    <any id registered with register_model>

Adding a model = one line in :data:`ENTRIES` (listed by :func:`list_models`); any other
timm / open_clip architecture resolves without an entry.
"""

from __future__ import annotations

import fnmatch
import threading
from typing import Any

import torch

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .engine import EmbeddingModel
from .spec import ModelSpec

#: Listed models: id -> (family, architecture / name, weights argument or None).
ENTRIES: dict[str, tuple[str, str, str | None]] = {
    "timm/tf_efficientnet_lite0": ("timm", "tf_efficientnet_lite0", None),
    "timm/tf_efficientnet_lite1": ("timm", "tf_efficientnet_lite1", None),
    "timm/tf_efficientnet_lite2": ("timm", "tf_efficientnet_lite2", None),
    "timm/tf_efficientnet_lite0@random": ("timm", "tf_efficientnet_lite0", "random"),
    "text/all-MiniLM-L6-v2": ("text", "all-MiniLM-L6-v2", None),
    # other objectives and training data (the `objectives` extra; see docs/DESIGN.md)
    "onnx/sscd-resnet50": ("onnx", "sscd-resnet50", None),
    "onnx/sscd-mobilenetv4": ("onnx", "sscd-mobilenetv4", None),
    "onnx/open-nsfw-resnet50": ("onnx", "open-nsfw-resnet50", None),
    "hed/vgg16": ("hed", "vgg16", None),
    "dlib/face-resnet": ("dlib", "face-resnet", None),
    "glove/6b-50d": ("glove", "6b-50d", None),
    # random-init controls of those architectures
    "hed/vgg16@random": ("hed", "vgg16", "random"),
    "timm/resnet50@random": ("timm", "resnet50", "random"),
    "timm/mobilenetv4_conv_small@random": ("timm", "mobilenetv4_conv_small", "random"),
}

_FAMILIES = ("timm/", "open_clip/", "text/", "onnx/", "hed/", "dlib/", "glove/", "features:")
_lock = threading.Lock()
_registered: dict[str, str | EmbeddingModel] = {}


def register_model(model_id: str, target: str | EmbeddingModel) -> None:
    """Make ``model_id`` resolve to another id (e.g. ``"timm/resnet50@/ckpt/r50.pth"``) or
    to a model object (e.g. :func:`align.models.from_torch`). Process-local."""
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInputError("model_id", f"is {model_id!r}", "a non-empty string")
    if not isinstance(target, (str, EmbeddingModel)):
        raise InvalidInputError(
            "target", f"is a {type(target).__name__}", "a model id or an EmbeddingModel"
        )
    with _lock:
        _registered[model_id] = target


def _known_ids() -> list[str]:
    with _lock:
        return sorted({*ENTRIES, *_registered})


def _split(rest: str) -> tuple[str, str | None]:
    name, sep, weights = rest.partition("@")
    return name, (weights if sep else None)


def get_spec(model_id: str) -> ModelSpec:
    """Resolve a model id to its :class:`ModelSpec`; NotFoundError with close matches."""
    if isinstance(model_id, ModelSpec):
        return model_id
    if not isinstance(model_id, str) or not model_id.strip():
        raise InvalidInputError("model", f"is {model_id!r}", "a model id like timm/<arch>")
    model_id = model_id.strip()
    with _lock:
        target = _registered.get(model_id)
    if isinstance(target, EmbeddingModel):
        return target.spec
    if isinstance(target, str):
        return get_spec(target)
    if model_id in ENTRIES:
        family, name, weights = ENTRIES[model_id]
        return _make(model_id, family, name, weights)
    for prefix in _FAMILIES:
        if model_id.startswith(prefix) and len(model_id) > len(prefix):
            name, weights = _split(model_id[len(prefix) :])
            if weights == "":
                raise InvalidInputError(
                    f"model ({model_id})", "has an empty '@' part", "@random or @<checkpoint path>"
                )
            return _make(model_id, prefix.rstrip("/:"), name, weights)
    raise NotFoundError(
        "model",
        model_id,
        _known_ids(),
        hint="(ids: timm/<arch>[@random|@ckpt], open_clip/<arch>[@ckpt], text/<name>, "
        "onnx/<graph>, hed/vgg16, dlib/face-resnet, glove/6b-50d, features:<file.npy>)",
    )


def _make(model_id: str, family: str, name: str, weights: str | None) -> ModelSpec:
    if family == "timm":
        from . import timm_family

        return timm_family.make_spec(model_id, name, weights)
    if family == "open_clip":
        from . import openclip_family

        return openclip_family.make_spec(model_id, name, weights)
    if family == "text":
        from . import text_family

        return text_family.make_spec(model_id, name, weights)
    if family in _OBJECTIVE_FAMILIES:
        return _objective_module(family).make_spec(model_id, name, weights)
    from . import features

    location = model_id.partition(":")[2] if weights is None else f"{name}@{weights}"
    return features.make_spec(model_id, location)


#: Families of the `objectives` extra: family -> module (imported on first use).
_OBJECTIVE_FAMILIES = {
    "onnx": "onnx_family",
    "hed": "hed_family",
    "dlib": "dlib_family",
    "glove": "glove_family",
}


def _objective_module(family: str) -> Any:
    import importlib

    return importlib.import_module(f".{_OBJECTIVE_FAMILIES[family]}", __package__)


def list_models(pattern: str = "*") -> list[ModelSpec]:
    """Specs of the listed and registered models whose id matches the glob ``pattern``
    (models whose weights are not installed are left out). Any other timm or open_clip
    architecture still resolves through :func:`get_spec` / :func:`load_model`."""
    out = []
    for model_id in _known_ids():
        if fnmatch.fnmatchcase(model_id, pattern):
            try:
                out.append(get_spec(model_id))
            except DataMissingError:
                continue
    return out


def load_model(
    model: str | ModelSpec | EmbeddingModel, device: torch.device | str | None = None
) -> EmbeddingModel:
    """Build the model of an id or spec, ready to ``embed`` (eval mode, on ``device``;
    default: CUDA when available, else CPU)."""
    if isinstance(model, EmbeddingModel):
        return model
    if isinstance(model, str):
        with _lock:
            target = _registered.get(model.strip())
        if isinstance(target, EmbeddingModel):
            return target
    spec = get_spec(model) if not isinstance(model, ModelSpec) else model
    if spec.family == "timm":
        from . import timm_family

        return timm_family.load(spec, device)
    if spec.family == "open_clip":
        from . import openclip_family

        return openclip_family.load(spec, device)
    if spec.family == "text":
        from . import text_family

        return text_family.load(spec, device)
    if spec.family in _OBJECTIVE_FAMILIES:
        loaded: EmbeddingModel = _objective_module(spec.family).load(spec, device)
        return loaded
    if spec.family == "features":
        from . import features

        return features.FeaturesModel(spec, device)
    raise InvalidInputError(
        "model",
        f"{spec.id} is a {spec.family!r} spec with no loader",
        "register the model object with register_model(id, model)",
    )
