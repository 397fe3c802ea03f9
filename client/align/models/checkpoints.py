"""Reading untrusted weight files safely: ``torch.load(weights_only=True)`` or safetensors,
never pickle code execution; a bad file is an InvalidInputError naming it, never a crash."""

from __future__ import annotations

import contextlib
import pickle
import warnings
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "module", "net", "params")


def read_state_dict(path: str | Path, field: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file (.pt/.pth/.bin/.ckpt or .safetensors), unwrapped from
    the usual {"state_dict": ...} containers and "module." prefixes."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{field} ({p})", "file does not exist", "a weights file")
    obj: Any
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(p), device="cpu")
        else:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Detected pickle protocol")
                obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        OSError,
        EOFError,
        ValueError,
        zipfile.BadZipFile,
        KeyError,
        AttributeError,
        TypeError,
        IndexError,
    ) as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InvalidInputError(
            f"{field} ({p})",
            f"cannot be read as weights: {first}",
            "a torch state dict saved with torch.save (tensors only) or a .safetensors file",
        ) from e
    for _ in range(3):
        if isinstance(obj, Mapping) and not _all_tensors(obj):
            inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if inner is None:
                break
            obj = inner
    if not isinstance(obj, Mapping) or not obj or not _all_tensors(obj):
        raise InvalidInputError(
            f"{field} ({p})",
            f"holds a {type(obj).__name__}, not a mapping of names to tensors",
            "a state dict",
        )
    sd = {str(k): v for k, v in obj.items()}
    if all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def _all_tensors(obj: Mapping[Any, Any]) -> bool:
    return all(isinstance(v, torch.Tensor) for v in obj.values())


def load_strict(module: nn.Module, sd: Mapping[str, torch.Tensor], where: str) -> None:
    """load_state_dict(strict=True) with every mismatch reported as InvalidInputError."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    wrong = [
        f"{k}: file {tuple(sd[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {'; '.join(wrong[:3])})")
        raise InvalidInputError(
            where,
            "does not fit the architecture: " + ", ".join(parts),
            "weights saved from the same architecture",
        )
    module.load_state_dict(dict(sd), strict=True)


def map_by_order(
    module: nn.Module, sd: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """Rename a state dict onto a module's keys by position, verifying EVERY shape."""
    own = module.state_dict()
    if len(own) != len(sd):
        raise InvalidInputError(
            where, f"has {len(sd)} tensors but the model has {len(own)}", "the same layout"
        )
    out = {}
    for pos, ((src, tensor), (dst, target)) in enumerate(zip(sd.items(), own.items(), strict=True)):
        if tuple(tensor.shape) != tuple(target.shape):
            raise InvalidInputError(
                where,
                f"tensor #{pos} {src!r} has shape {tuple(tensor.shape)} but the model's "
                f"{dst!r} has {tuple(target.shape)}",
                "the same layout, in the same order",
            )
        out[dst] = tensor
    return out


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for a random init without touching the caller's state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
