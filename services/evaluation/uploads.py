"""Datasets that clients upload (``UploadDataset``), stored by content.

A lab member's own folder (triplets or an RDM plus images) travels as files; the server
never reads a path a client names. The folder is stored under ``<uploads_dir>/<digest>``
where ``digest`` is sha256 over the sorted lines ``"<name> <sha256 of data>\\n"``
(recomputed here), so the same content uploaded twice is stored once and a client that
asks first (no files) sends nothing the second time. Only known file names are
accepted, images must be JPEG or PNG within the byte and pixel caps (their header is
read, nothing is decoded), and the folder must load as a dataset before it is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from align.errors import InvalidInputError, NotFoundError, ResourceLimitError

_FILES = {"dataset.json", "triplets.csv", "rdm.npy", "rdm.csv", "rsm.npy", "rsm.csv"}
_IMAGE = re.compile(r"^images/([A-Za-z0-9][A-Za-z0-9_.+\-]{0,127})\.(jpg|jpeg|png)$")
_MANIFEST_KEYS = {
    "kind", "convention", "refer_by", "matrix_kind", "citation", "licence", "description",
}  # fmt: skip
_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG"}
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class UploadLimits:
    max_total_bytes: int = 64 << 20
    max_files: int = 10_001
    max_image_bytes: int = 8 << 20
    max_image_pixels: int = 4096 * 4096
    max_table_bytes: int = 16 << 20


def upload_digest(files: Sequence[tuple[str, bytes]]) -> str:
    """The content address of a set of files (the client computes the same)."""
    lines = sorted(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def uploads_root(configured: str | None) -> Path:
    global _TEMP_ROOT
    if configured:
        root = Path(configured).expanduser()
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return root
    if _TEMP_ROOT is None:
        _TEMP_ROOT = Path(tempfile.mkdtemp(prefix="align-uploads-"))
    return _TEMP_ROOT


_TEMP_ROOT: Path | None = None


def _check_image(name: str, data: bytes, ext: str, limits: UploadLimits) -> None:
    from PIL import Image

    if len(data) > limits.max_image_bytes:
        raise ResourceLimitError(
            f"files[{name}]: {len(data)} bytes is over this server's limit of "
            f"{limits.max_image_bytes} bytes per image"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[_FORMATS[ext]]) as img:
                width, height = img.size  # the header only: nothing is decoded here
                fmt = img.format
    except Image.DecompressionBombError:
        raise ResourceLimitError(
            f"files[{name}]: declares more pixels than this server's limit of "
            f"{limits.max_image_pixels} pixels per image (a decompression bomb)"
        ) from None
    except Exception:
        raise InvalidInputError(
            f"files[{name}]", "is not a readable image of its type", f"a {_FORMATS[ext]} file"
        ) from None
    if fmt != _FORMATS[ext]:
        raise InvalidInputError(f"files[{name}]", f"is {fmt}", f"a {_FORMATS[ext]} file")
    if width * height > limits.max_image_pixels:
        raise ResourceLimitError(
            f"files[{name}]: {width}x{height} pixels is over this server's limit of "
            f"{limits.max_image_pixels} pixels per image"
        )


def check_files(files: Sequence[tuple[str, bytes]], limits: UploadLimits) -> None:
    """Names, sizes and formats of an upload (before anything is written)."""
    total = sum(len(d) for _, d in files)
    if total > limits.max_total_bytes:
        raise ResourceLimitError(
            f"files: {total} bytes is over this server's upload limit of "
            f"{limits.max_total_bytes} bytes"
        )
    if len(files) > limits.max_files:
        raise ResourceLimitError(
            f"files: {len(files)} files is over this server's limit of {limits.max_files}"
        )
    seen: set[str] = set()
    stems: set[str] = set()
    for name, data in files:
        if name in seen:
            raise InvalidInputError("files", f"name {name!r:.80} twice", "distinct names")
        seen.add(name)
        image = _IMAGE.match(name)
        if image:
            if image.group(1).lower() in stems:
                raise InvalidInputError("files", f"two images named {image.group(1)!r}", "one")
            stems.add(image.group(1).lower())
            _check_image(name, data, image.group(2), limits)
            continue
        if name not in _FILES:
            raise InvalidInputError(
                "files",
                f"has a file named {name!r:.80}",
                f"one of {sorted(_FILES)} or images/<stem>.jpg|jpeg|png",
            )
        if len(data) > limits.max_table_bytes:
            raise ResourceLimitError(
                f"files[{name}]: {len(data)} bytes is over this server's limit of "
                f"{limits.max_table_bytes} bytes"
            )
        if name == "dataset.json":
            try:
                manifest = json.loads(data.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                raise InvalidInputError("files[dataset.json]", "is not JSON", "an object") from None
            if not isinstance(manifest, dict):
                raise InvalidInputError("files[dataset.json]", "is not an object", "an object")
            extra = sorted(set(manifest) - _MANIFEST_KEYS)
            if extra:
                raise InvalidInputError(
                    "files[dataset.json]",
                    f"has keys {extra} (file locations are fixed in an upload)",
                    f"keys in {sorted(_MANIFEST_KEYS)}",
                )
    if not stems:
        raise InvalidInputError("files", "hold no images", "images/<stem>.jpg|jpeg|png")


def store(
    configured: str | None,
    digest: str,
    files: Sequence[tuple[str, bytes]],
    limits: UploadLimits,
) -> bool:
    """Check and store an upload; True when it was stored now (False: already held)."""
    if not _DIGEST.match(digest):
        raise InvalidInputError("digest", f"is {digest!r:.80}", "64 lowercase hex digits")
    root = uploads_root(configured)
    target = root / digest
    if target.is_dir():
        return False
    check_files(files, limits)
    actual = upload_digest(files)
    if actual != digest:
        raise InvalidInputError("digest", "does not match the files sent", f"{actual}")
    staging = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=root))
    try:
        (staging / "images").mkdir()
        for name, data in files:
            path = staging / name  # names were checked: no separators beyond images/
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        from align.datasets.folder import load_folder

        load_folder(staging)  # it must load (errors name the file, not a server path)
        try:
            staging.rename(target)
        except OSError:  # a concurrent identical upload won
            shutil.rmtree(staging, ignore_errors=True)
            return False
    except BaseException as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, InvalidInputError):
            raise InvalidInputError(
                _strip(exc.field, staging), _strip(exc.problem, staging), exc.expected
            ) from None
        raise
    return True


def _strip(text: str, folder: Path) -> str:
    return str(text).replace(str(folder.resolve()) + "/", "").replace(str(folder) + "/", "")


def has_upload(configured: str | None, digest: str) -> bool:
    return bool(_DIGEST.match(digest)) and (uploads_root(configured) / digest).is_dir()


def load_upload(configured: str | None, name: str) -> Any:
    """The dataset ``upload:<digest>`` (NotFoundError when this server does not hold it)."""
    from align.datasets.folder import load_folder

    digest = name.partition(":")[2]
    if not has_upload(configured, digest):
        raise NotFoundError(
            "dataset",
            name,
            [],
            hint="(not uploaded to this server: UploadDataset sends it first)",
        )
    ds = load_folder(uploads_root(configured) / digest)
    return dataclasses.replace(
        ds, id=name, source=name, description=public_description(ds, name), digest=""
    )


def public_description(ds: Any, name: str) -> str:
    """The dataset's description, without the server folder the loader names in it."""
    text = str(ds.description)
    return f"dataset {name}" if text.startswith("user dataset in ") else text
