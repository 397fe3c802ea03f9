"""Content digests: the keys of every cache. Anything that changes the bytes of a result
must change its digest, so a stale cache entry can never be served."""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .results import to_jsonable

_CHUNK = 1 << 20


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


_file_digests: dict[tuple[str, int, int], str] = {}
_file_digests_lock = threading.Lock()


def digest_file_cached(path: str | Path) -> str:
    """:func:`digest_file`, computed once per (real path, mtime, size) in this process:
    weights files and stimulus images are hashed by content, but only when they change."""
    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_mtime_ns, st.st_size)
    with _file_digests_lock:
        hit = _file_digests.get(key)
    if hit is None:
        hit = digest_file(real)
        with _file_digests_lock:
            _file_digests[key] = hit
    return hit


def digest_array(array: np.ndarray) -> str:
    """Digest of dtype, shape and C-order bytes (so a reshape or cast changes it)."""
    a = np.ascontiguousarray(array)
    h = hashlib.sha256()
    h.update(f"{a.dtype.str}|{a.shape}|".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    """Digest of a JSON-able object with sorted keys (dict order never matters)."""
    text = json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))
    return digest_bytes(text.encode())


def combine(parts: Iterable[str]) -> str:
    """One digest from several, order-sensitive."""
    return digest_bytes("\n".join(parts).encode())
