"""A folder dataset as the files an align server accepts (``UploadDataset``).

The server never reads a client's path: ``client.score(model, "/my/folder")`` loads the
folder here (so errors name your files), then sends its judgments and images, addressed
by content (:func:`upload_digest`): a second upload of the same content sends nothing.
No gRPC here (align.remote does the call).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import InvalidInputError

UPLOAD_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_MANIFEST_KEYS = ("kind", "convention", "refer_by", "matrix_kind", "citation", "licence",
                  "description")  # fmt: skip


def upload_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """sha256 over the sorted lines ``"<name> <sha256 of data>\\n"`` (the server checks it)."""
    lines = sorted(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def is_local_folder(dataset: Any) -> Path | None:
    """The folder of a folder dataset (a Dataset loaded from one, ``folder:PATH`` or a
    path to a directory), else None."""
    ident = str(getattr(dataset, "id", dataset)) if dataset is not None else ""
    if ident.startswith("folder:"):
        return Path(ident[len("folder:") :])
    if isinstance(dataset, Path) and dataset.is_dir():
        return dataset
    if isinstance(dataset, str) and dataset.startswith(("/", ".", "~")):
        path = Path(dataset).expanduser()
        return path if path.is_dir() else None
    return None


def folder_files(folder: Path) -> list[tuple[str, bytes]]:
    """(name, bytes) of the files that make ``folder`` on the server."""
    from .datasets.folder import MANIFEST, load_folder

    folder = folder.expanduser()
    ds = load_folder(folder)
    files: list[tuple[str, bytes]] = []
    manifest: dict[str, Any] = {}
    if (folder / MANIFEST).is_file():
        raw = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        manifest = {k: raw[k] for k in _MANIFEST_KEYS if k in raw}
    manifest["kind"] = ds.kind
    if ds.kind == "triplets":
        manifest["convention"] = ds.triplet_convention
        files.append(("triplets.csv", Path(ds.source).read_bytes()))
    else:
        source = Path(ds.source)
        if source.suffix.lower() not in (".npy", ".csv"):
            raise InvalidInputError(
                str(source), "is not a .npy or .csv matrix", "rdm.npy or rdm.csv to upload"
            )
        manifest["matrix_kind"] = ds.matrix_kind
        files.append((f"rdm{source.suffix.lower()}", source.read_bytes()))
    files.append(("dataset.json", json.dumps(manifest, sort_keys=True).encode()))
    for stem, path in zip(ds.stimulus_ids, ds.image_paths or (), strict=True):
        if path is None:
            continue
        suffix = Path(path).suffix.lower()
        if suffix not in UPLOAD_IMAGE_SUFFIXES:
            raise InvalidInputError(
                str(path), f"is a {suffix} image", f"one of {UPLOAD_IMAGE_SUFFIXES} to upload"
            )
        files.append((f"images/{stem}{suffix}", Path(path).read_bytes()))
    return files


__all__ = ["folder_files", "is_local_folder", "upload_digest"]
