"""Decoding stimuli into RGB images and preprocessing them into tensors.

Accepted image stimuli: a path (``str`` / ``Path``), encoded bytes (``bytes``,
``bytearray``, ``memoryview``), a ``PIL.Image.Image`` or a ``numpy`` array (h, w) /
(h, w, 3|4) of uint8 (or floats in [0, 1]).

Mode policy: every image becomes 8-bit RGB. Greyscale (L, I;16, I, F) is replicated to
three channels, CMYK/YCbCr/LAB are converted by PIL, palette images are expanded, and
anything with transparency (RGBA, LA, P with a transparent colour) is composited over a
white background (never silently "alpha dropped", which turns transparent pixels black or
random). A truncated or undecodable file raises :class:`InvalidInputError` naming the
index and the source: we never embed half an image.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import InvalidInputError
from .spec import Preprocessing

_INTERP = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}


def describe(stimulus: Any) -> str:
    """A short human-readable name of a stimulus, for error messages."""
    if isinstance(stimulus, (str, Path)):
        return str(stimulus)
    if isinstance(stimulus, (bytes, bytearray, memoryview)):
        return f"<{len(stimulus)} encoded bytes>"
    if isinstance(stimulus, Image.Image):
        return f"<PIL image {stimulus.mode} {stimulus.size[0]}x{stimulus.size[1]}>"
    if isinstance(stimulus, np.ndarray):
        return f"<array {stimulus.dtype} {stimulus.shape}>"
    return f"<{type(stimulus).__name__}>"


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (see module docstring for the policy)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(image, dtype=np.float64)
        hi = 65535.0 if mode.startswith("I;16") else max(float(a.max()), 1.0)
        if mode == "F" and a.max() <= 1.0:
            hi = 1.0
        a8 = np.clip(np.round(a / hi * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(a8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _from_array(a: np.ndarray, where: str) -> Image.Image:
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))):
        raise InvalidInputError(where, f"is an array of shape {a.shape}", "(h, w), (h, w, 3|4)")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating) or not np.isfinite(a).all():
            raise InvalidInputError(where, f"is an array of {a.dtype}", "uint8 or finite floats")
        if a.min() < 0 or a.max() > 1:
            raise InvalidInputError(where, "has float values outside [0, 1]", "uint8 or [0, 1]")
        a = np.round(a * 255.0).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(a))


def load_image(stimulus: Any, index: int = 0) -> Image.Image:
    """Decode one stimulus into an RGB PIL image; :class:`InvalidInputError` naming
    ``stimuli[index]`` and the source when it is missing, corrupt or of a wrong type."""
    where = f"stimuli[{index}]"
    if isinstance(stimulus, Image.Image):
        try:
            stimulus.load()
            return to_rgb(stimulus)
        except (OSError, ValueError) as e:
            raise InvalidInputError(where, f"PIL image cannot be read: {e}", "an image") from e
    if isinstance(stimulus, np.ndarray):
        return to_rgb(_from_array(stimulus, where))
    if isinstance(stimulus, (bytes, bytearray, memoryview)):
        if len(stimulus) == 0:
            raise InvalidInputError(where, "is empty (0 bytes)", "an encoded image")
        source: Any = io.BytesIO(bytes(stimulus))
    elif isinstance(stimulus, (str, Path)):
        path = Path(stimulus)
        if not path.is_file():
            problem = "is a directory" if path.is_dir() else "does not exist"
            raise InvalidInputError(f"{where} ({path})", f"file {problem}", "an image file")
        source = path
    else:
        raise InvalidInputError(
            where,
            f"is a {type(stimulus).__name__}",
            "an image path, encoded bytes, a PIL image or an array",
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as im:
                im.load()  # full decode now: a truncated file fails here, not later
                return to_rgb(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidInputError(
            f"{where} ({describe(stimulus)})",
            f"cannot be decoded: {e}",
            "a complete image file (JPEG, PNG, ...)",
        ) from e
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InvalidInputError(
            f"{where} ({describe(stimulus)})", f"is too large: {e}", "a normal-sized image"
        ) from e


def preprocess(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """Resize, centre-crop, scale and normalise one RGB image -> (3, h, w) float32.

    Matches timm's eval transform (``Resize(shorter side) -> CenterCrop -> ToTensor ->
    Normalize``) and open_clip's (``resize_mode="shortest"``) bit for bit on PIL input.
    A :class:`~align.models.spec.PixelPreprocessing` adds its JPEG round trip (after the
    resize) and its channel swap (last).
    """
    th, tw = pre.input_size
    w, h = image.size
    interp = _INTERP[pre.interpolation]
    if pre.crop_mode == "squash":
        new_w, new_h = pre.resize_size, pre.resize_size
    elif w <= h:  # torchvision Resize(int): shorter side -> size, the other int(size * long/short)
        new_w, new_h = pre.resize_size, int(pre.resize_size * h / w)
    else:
        new_w, new_h = int(pre.resize_size * w / h), pre.resize_size
    if (new_w, new_h) != (w, h):
        image = image.resize((new_w, new_h), interp)
    quality = int(getattr(pre, "jpeg_quality", 0) or 0)
    if quality:  # the JPEG round trip some networks were trained through (open_nsfw)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as decoded:
            image = decoded.convert("RGB")
    if new_w < tw or new_h < th:  # torchvision CenterCrop pads with zeros when too small
        padded = Image.new("RGB", (max(new_w, tw), max(new_h, th)), (0, 0, 0))
        padded.paste(image, ((max(new_w, tw) - new_w) // 2, (max(new_h, th) - new_h) // 2))
        image = padded
        new_w, new_h = image.size
    top = round((new_h - th) / 2.0)
    left = round((new_w - tw) / 2.0)
    image = image.crop((left, top, left + tw, top + th))
    a: np.ndarray = np.asarray(image, dtype=np.float32) / np.float32(255.0)
    a = (a - np.asarray(pre.mean, np.float32)) / np.asarray(pre.std, np.float32)
    if getattr(pre, "channel_order", "rgb") == "bgr":
        a = a[:, :, ::-1]
    return np.ascontiguousarray(a.transpose(2, 0, 1))


def load_and_preprocess(stimulus: Any, index: int, pre: Preprocessing) -> np.ndarray:
    return preprocess(load_image(stimulus, index), pre)


def check_sequence(stimuli: Any, field: str = "stimuli") -> Sequence[Any]:
    if isinstance(stimuli, (str, bytes, Path)) or not hasattr(stimuli, "__len__"):
        raise InvalidInputError(field, f"is a {type(stimuli).__name__}", "a list of stimuli")
    return stimuli  # type: ignore[no-any-return,unused-ignore]
