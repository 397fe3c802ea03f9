"""What a remote client may ask of the evaluation service: the request policy.

The server never opens a path that a request names (docs: ARCHITECTURE "Trust
boundaries"). A Score names

- its dataset as a registered id (``things``, ``mur92``, ...), the name of a folder under
  one of the operator's ``--datasets-dir`` roots, or ``upload:<sha256>`` (a folder the
  client uploaded, see :mod:`.uploads`); paths, ``folder:`` forms, ``..`` and ``~`` are
  INVALID_ARGUMENT;
- its model as a registered id, a ``timm/<arch>`` / ``open_clip/<arch>`` / ``text/<name>``
  id without a checkpoint path (``@random`` and open_clip pretrained tags are fine), or an
  id the operator configured (``--model ID=TARGET``); ``features:<path>`` and ``@<path>``
  are INVALID_ARGUMENT (embedded use keeps them; remote clients upload features);
- its options within caps: every number finite, bootstraps, lambda grids, folds,
  iterations and batch sizes bounded (RESOURCE_EXHAUSTED names the cap), and the engine
  or server-side options ``data_dir``, ``vice``, ``n_threads``, ``device`` refused.

Folders under a root are confined too: the manifest's ``images``/``triplets``/``matrix``
entries and every image file must resolve (symlinks followed) inside the dataset folder.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.errors import InvalidInputError, NotFoundError, ResourceLimitError

#: Options a remote client may not send: they name server files or change the process.
REFUSED_OPTIONS = {
    "data_dir": "the server uses its own data folder",
    "vice": "the server uses its own VICE embedding",
    "n_threads": "the server sets its own thread counts",
    "device": "the server picks its own device",
    "dtype": "the server computes in float64",
}

#: A dataset/model name a client may send: no path separators beyond single '/', no
#: leading '.', '~' or '/', no '..' segment.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*(/[A-Za-z0-9][A-Za-z0-9_.+\-]*)*$")
_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_UPLOAD = re.compile(r"^upload:[0-9a-f]{64}$")


@dataclass(frozen=True)
class Limits:
    """Caps on what one request may ask for (RESOURCE_EXHAUSTED beyond them)."""

    max_n_bootstrap: int = 10_000
    max_lambdas: int = 32
    max_folds: int = 10
    max_iter: int = 10_000
    max_batch_size: int = 65_536
    max_options_bytes: int = 16_384
    max_option_items: int = 256  # elements of one list-valued option
    max_string: int = 128
    job_timeout_s: float = 3600.0  # wall-clock budget of one computation
    max_queued_per_token: int = 8  # Score calls of one token at once (running + waiting)
    default_deadline_s: float = 7200.0  # when the client sets none


@dataclass(frozen=True)
class Policy:
    """What this server offers remote clients."""

    limits: Limits = field(default_factory=Limits)
    datasets_dirs: tuple[Path, ...] = ()
    models: Mapping[str, str] = field(default_factory=dict)  # operator ids -> targets


def parse_options_json(text: str, limits: Limits) -> dict[str, Any]:
    """A JSON object of options; NaN/Infinity and over-long texts refused."""
    if len(text.encode()) > limits.max_options_bytes:
        raise ResourceLimitError(
            f"options_json: {len(text.encode())} bytes is over this server's limit of "
            f"{limits.max_options_bytes} bytes"
        )
    if not text.strip():
        return {}

    def constant(name: str) -> Any:
        raise InvalidInputError("options_json", f"holds {name}", "finite numbers")

    try:
        value = json.loads(text, parse_constant=constant)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            "options_json", f"is not JSON ({exc.msg} at column {exc.colno})", "a JSON object"
        ) from None
    except RecursionError:
        raise InvalidInputError("options_json", "is nested too deeply", "a flat object") from None
    if not isinstance(value, dict):
        raise InvalidInputError("options_json", f"is a JSON {type(value).__name__}", "an object")
    return value


def _int(name: str, value: Any, low: int, cap: int | None, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"options.{name}", f"is {value!r:.40}", f"an integer ({what})")
    if value < low:
        raise InvalidInputError(f"options.{name}", f"is {value}", f"at least {low}")
    if cap is not None and value > cap:
        raise ResourceLimitError(
            f"options.{name}: {value} is over this server's limit of {cap} ({what})"
        )
    return value


def check_options(options: Mapping[str, Any], limits: Limits) -> dict[str, Any]:
    """The options of a remote Score, checked against the caps; returns them unchanged."""
    for name, value in options.items():
        if not isinstance(name, str) or len(name) > limits.max_string:
            raise InvalidInputError("options", f"has a key {name!r:.40}", "option names")
        if name in REFUSED_OPTIONS:
            raise InvalidInputError(
                f"options.{name}",
                f"is not accepted from remote clients ({REFUSED_OPTIONS[name]})",
                "leave it out",
            )
        _check_value(name, value, limits)
    if "n_bootstrap" in options:
        _int("n_bootstrap", options["n_bootstrap"], 0, limits.max_n_bootstrap, "bootstraps")
    if "k" in options:
        _int("k", options["k"], 2, limits.max_folds, "cross-validation folds")
    if "max_iter" in options and options["max_iter"] is not None:
        _int("max_iter", options["max_iter"], 1, limits.max_iter, "optimizer iterations")
    if "patience" in options:
        _int("patience", options["patience"], 1, limits.max_iter, "early-stopping patience")
    if "batch_size" in options:
        _int("batch_size", options["batch_size"], 1, limits.max_batch_size, "batch size")
    if "seed" in options:
        _int("seed", options["seed"], 0, 2**32 - 1, "random seed")
    if "lambdas" in options:
        grid = options["lambdas"]
        if not isinstance(grid, list) or not grid:
            raise InvalidInputError("options.lambdas", f"is {grid!r:.40}", "a list of numbers")
        if len(grid) > limits.max_lambdas:
            raise ResourceLimitError(
                f"options.lambdas: {len(grid)} values is over this server's limit of "
                f"{limits.max_lambdas}"
            )
        for v in grid:
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise InvalidInputError("options.lambdas", f"holds {v!r:.40}", "numbers >= 0")
    if "confidence" in options:
        c = options["confidence"]
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1:
            raise InvalidInputError("options.confidence", f"is {c!r:.40}", "a number in (0, 1)")
    if "labels" in options and not isinstance(options["labels"], list):
        raise InvalidInputError(
            "options.labels", "is not a list", "a list of dimension names (not a file)"
        )
    return dict(options)


def _check_value(name: str, value: Any, limits: Limits, depth: int = 0) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidInputError(f"options.{name}", f"is {value}", "a finite number")
        if isinstance(value, int) and abs(value) > 2**63:
            raise InvalidInputError(f"options.{name}", "is a huge integer", "a 64-bit integer")
        return
    if isinstance(value, str):
        if len(value) > limits.max_string:
            raise InvalidInputError(
                f"options.{name}", f"is {len(value)} characters", f"at most {limits.max_string}"
            )
        return
    if isinstance(value, list) and depth == 0:
        if len(value) > limits.max_option_items:
            raise ResourceLimitError(
                f"options.{name}: {len(value)} items is over this server's limit of "
                f"{limits.max_option_items}"
            )
        for item in value:
            _check_value(name, item, limits, depth + 1)
        return
    raise InvalidInputError(
        f"options.{name}", f"is a JSON {type(value).__name__}", "a number, string or flat list"
    )


# -- names: models and datasets -------------------------------------------------------------


def looks_like_path(name: str) -> bool:
    return (
        name.startswith(("/", ".", "~", "\\", "folder:", "file:"))
        or ".." in name.split("/")
        or "\\" in name
        or (len(name) > 1 and name[1] == ":")  # C:\...
    )


def check_model_id(model: str, policy: Policy, known: Iterable[str]) -> None:
    """Refuse model ids that would make the server open a path (see module docstring)."""
    if model in policy.models or model in set(known):
        return
    refuse = f"names a file on the server ({model!r:.80}); this server reads no paths from clients"
    expected = (
        "a model id (list_models), or upload features: score(array or .npy path, ...) "
        "sends the matrix"
    )
    if model.startswith("features:") or looks_like_path(model):
        raise InvalidInputError("model", refuse, expected)
    family, sep, rest = model.partition("/")
    name, at, weights = rest.partition("@")
    if not sep or not _NAME.match(name) or "/" in name:
        raise InvalidInputError("model", f"is {model!r:.80}", "a model id like timm/<arch>")
    if at:
        allowed = (family == "timm" and weights == "random") or (
            family == "open_clip" and (weights == "random" or _TAG.match(weights) is not None)
        )
        if not allowed:
            raise InvalidInputError("model", refuse, "@random, an open_clip pretrained tag, or "
                                    "a checkpoint the operator configured")  # fmt: skip


def _within(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
    except (ValueError, OSError, RuntimeError):
        return False
    return True


def check_dataset_name(name: str, registered: Iterable[str]) -> None:
    """INVALID_ARGUMENT for names that are paths (before anything is looked up)."""
    if name in set(registered) or _UPLOAD.match(name):
        return
    if looks_like_path(name) or not _NAME.match(name):
        raise InvalidInputError(
            "dataset",
            f"is a path or not a dataset name ({name!r:.80}); this server reads no paths "
            "from clients",
            "a registered id, a dataset folder this server offers (list_datasets), or your "
            "own folder uploaded by the client (score(..., dataset=Path(folder)))",
        )


def folder_datasets(roots: Iterable[Path]) -> dict[str, Path]:
    """{name: folder} of the dataset folders under the operator's roots (first root wins;
    a sub-folder that is a symlink out of its root is left out)."""
    out: dict[str, Path] = {}
    for root in roots:
        if not root.is_dir():
            continue
        for child in sorted(root.iterdir()):
            if child.is_dir() and _NAME.match(child.name) and _within(child, root):
                out.setdefault(child.name, child)
    return out


def confine_folder(folder: Path, name: str) -> None:
    """Check that loading ``folder`` reads nothing outside it: manifest entries and every
    file the loader may open resolve inside ``folder`` (symlinks followed)."""
    from align.datasets.folder import MANIFEST

    manifest_path = folder / MANIFEST
    entries: list[tuple[str, Path]] = []
    if manifest_path.exists():
        if not _within(manifest_path, folder):
            raise InvalidInputError(f"dataset {name}", f"{MANIFEST} points outside", "a file")
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            manifest = None  # the loader reports it (a file of the operator's own)
        if isinstance(manifest, dict):
            for key in ("images", "triplets", "matrix"):
                if key in manifest:
                    value = str(manifest[key])
                    if Path(value).is_absolute() or value.startswith("~"):
                        raise InvalidInputError(
                            f"dataset {name}: {MANIFEST} {key}",
                            "is an absolute path",
                            "a path inside the dataset folder",
                        )
                    entries.append((f"{MANIFEST} {key}", folder / value))
    for default in ("images", "triplets.csv", "rdm.npy", "rdm.csv", "rsm.npy", "rsm.csv"):
        entries.append((default, folder / default))
    for what, path in entries:
        if (path.exists() or path.is_symlink()) and not _within(path, folder):
            raise InvalidInputError(
                f"dataset {name}: {what}", "points outside the dataset folder", "a path inside"
            )
    for sub in {folder, *(p for _, p in entries if p.is_dir() and _within(p, folder))}:
        for child in sub.iterdir():
            if not _within(child, folder):
                raise InvalidInputError(
                    f"dataset {name}: {child.name}",
                    "is a link to a file outside the dataset folder",
                    "files inside the dataset folder",
                )


def unknown_dataset(name: str, known: Iterable[str]) -> NotFoundError:
    return NotFoundError("dataset", name, sorted(set(known)))
