"""What a model id resolves to: a small, frozen, hashable description.

A :class:`ModelSpec` says which code builds the network (family + architecture), where its
weights come from (and their sha256), how images must be preprocessed (taken from the
model's own config, never guessed) and which named layers it offers. Its ``digest`` is
part of every cache key, so a change of weights or preprocessing can never reuse stale
embeddings.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..digest import digest_file_cached, digest_json
from ..errors import InvalidInputError

Family = Literal["timm", "open_clip", "text", "features", "torch", "onnx", "hed", "dlib", "glove"]
Modality = Literal["image", "text"]
WeightsSource = Literal["package", "file", "hub", "random", "memory"]

#: The layer every model offers; the default of every entry point.
DEFAULT_LAYER = "penultimate"


@dataclass(frozen=True)
class Preprocessing:
    """Image preprocessing of a model, from its own config (timm ``pretrained_cfg`` /
    open_clip ``preprocess_cfg``).

    Resize the shorter side to ``resize_size`` (``crop_mode="center"``) or the whole image
    to ``resize_size`` x ``resize_size`` (``"squash"``), centre-crop ``input_size`` (h, w),
    scale to [0, 1], subtract ``mean`` and divide by ``std`` per channel.
    ``resize_size = floor(max(input_size) / crop_pct)`` as in timm.
    """

    input_size: tuple[int, int]
    resize_size: int
    crop_pct: float
    interpolation: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_mode: str = "center"

    def __post_init__(self) -> None:
        if self.crop_mode not in ("center", "squash"):
            raise InvalidInputError(
                "preprocessing.crop_mode", f"is {self.crop_mode!r}", "'center' or 'squash'"
            )
        if self.interpolation not in ("bilinear", "bicubic", "nearest", "lanczos"):
            raise InvalidInputError(
                "preprocessing.interpolation",
                f"is {self.interpolation!r}",
                "bilinear, bicubic, nearest or lanczos",
            )
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise InvalidInputError(
                "preprocessing.mean/std", f"are {self.mean}/{self.std}", "3 values, std > 0"
            )

    @classmethod
    def from_config(
        cls,
        input_size: int | tuple[int, ...],
        crop_pct: float,
        interpolation: str,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        crop_mode: str = "center",
    ) -> Preprocessing:
        """Build from timm-style values: ``input_size`` an int, (h, w) or (c, h, w)."""
        if isinstance(input_size, int):
            hw = (input_size, input_size)
        else:
            size = tuple(int(s) for s in input_size)
            hw = (size[-2], size[-1])
        resize = int(max(hw) / crop_pct) if crop_pct != 1.0 else max(hw)
        return cls(
            input_size=hw,
            resize_size=resize,
            crop_pct=float(crop_pct),
            interpolation=str(interpolation),
            mean=(float(mean[0]), float(mean[1]), float(mean[2])),
            std=(float(std[0]), float(std[1]), float(std[2])),
            crop_mode=crop_mode,
        )


@dataclass(frozen=True)
class PixelPreprocessing(Preprocessing):
    """A :class:`Preprocessing` with the extra steps of networks trained outside the
    torchvision convention (Caffe-era and packaged ONNX graphs), applied in this order:

    resize (as the base class) -> ``jpeg_quality`` > 0: a JPEG encode/decode round trip at
    that quality (PIL, 4:2:0) -> centre crop -> scale and normalise -> ``channel_order``
    ``"bgr"``: swap the channels. ``mean`` and ``std`` are given in RGB order in [0, 1]
    units, so Caffe's "BGR minus [104, 117, 123] on 0-255 pixels" is
    ``mean=(123/255, 117/255, 104/255), std=(1/255,)*3, channel_order="bgr"`` and raw 0-255
    pixels are ``mean=(0,)*3, std=(1/255,)*3``. Every field is recorded in provenance and
    in the cache keys (the base class's fields are unchanged, so the cache keys of the
    other families are too).
    """

    channel_order: str = "rgb"
    jpeg_quality: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.channel_order not in ("rgb", "bgr"):
            raise InvalidInputError(
                "preprocessing.channel_order", f"is {self.channel_order!r}", "'rgb' or 'bgr'"
            )
        if not 0 <= int(self.jpeg_quality) <= 100:
            raise InvalidInputError(
                "preprocessing.jpeg_quality", f"is {self.jpeg_quality!r}", "0 (none) to 100"
            )


@dataclass(frozen=True)
class WeightsSpec:
    """Where the weights come from: an installed ``package`` file, a local ``file``, the
    ``hub`` (only when online), ``random`` init (``location`` = the seed) or ``memory``
    (a torch module handed over from Python; ``sha256`` = digest of its state dict)."""

    source: WeightsSource
    location: str
    sha256: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A resolved model id. See :func:`align.models.get_spec`."""

    id: str
    family: Family
    architecture: str
    modality: Modality
    weights: WeightsSpec
    preprocessing: Preprocessing | None
    layers: tuple[str, ...] = (DEFAULT_LAYER,)
    description: str = ""
    extra: tuple[tuple[str, str], ...] = field(default=())

    @property
    def digest(self) -> str:
        """sha256 over everything that changes the numbers (not the description)."""
        d = asdict(self)
        d.pop("description")
        return digest_json(d)

    def option(self, key: str, default: str | None = None) -> str | None:
        return dict(self.extra).get(key, default)


# ----------------------------------------------------------------------------------------
# Weights digests: by content, each file hashed once per (path, mtime, size).


def weights_digest(path: str | Path) -> str:
    """sha256 of a weights file (or of every file of a weights folder, in name order)."""
    p = Path(path)
    try:
        if p.is_dir():
            parts = [
                f"{f.relative_to(p).as_posix()}:{digest_file_cached(f)}"
                for f in sorted(q for q in p.rglob("*") if q.is_file())
            ]
            return digest_json(parts)
        return digest_file_cached(p)
    except OSError as e:
        raise InvalidInputError("weights", f"cannot read {p}: {e.strerror}", "a file") from e


def hub_online() -> bool:
    """True when downloads from the Hugging Face hub are allowed (HF_HUB_OFFLINE unset)."""
    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return flag in ("", "0", "false", "no", "off")


def checkpoint_weights(model_id: str, weights: str) -> tuple[WeightsSpec, Path]:
    """The WeightsSpec of a user-given checkpoint file; InvalidInputError when it is absent."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise InvalidInputError(
            f"model ({model_id})", f"checkpoint {path} does not exist", "a weights file"
        )
    return WeightsSpec("file", str(path.resolve()), weights_digest(path)), path


def installed_package_file(module: str, pattern: str) -> Path | None:
    """The first file matching ``pattern`` (a glob) inside installed package ``module``,
    or None when the package or the file is absent."""
    import importlib.util

    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        files = sorted(p for p in Path(root).glob(pattern) if p.is_file())
        if files:
            return files[0]
    return None
