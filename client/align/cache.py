"""The embedded mode's cache on local disk: embeddings (.npy) and reports (.json).

Where: ``$ALIGN_CACHE_DIR``, else ``~/.cache/align``. Keys are `align.digest` digests of
everything that changes the bytes of the entry (model weights digest, preprocessing,
layer, dataset digest, options, METRIC_CODE_VERSION, library version), so a stale entry is
never served: change any of them and the key changes.

Writes are atomic (a temporary file in the same folder, then ``os.replace``), so a reader
never sees half an entry. An entry that cannot be read back (truncated, corrupt, wrong
type) is deleted and counts as a miss: the caller recomputes it.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import digest
from ._version import METRIC_CODE_VERSION, __version__
from .errors import InvalidInputError
from .results import to_jsonable

ENV_VAR = "ALIGN_CACHE_DIR"
# Bump when the layout of cache entries changes.
CACHE_FORMAT = "1"


def default_cache_dir() -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "align"


def embedding_key(
    *,
    model_digest: str,
    preprocessing: Any,
    layer: str,
    dataset_digest: str,
    stimuli: str = "",
    options: Mapping[str, Any] | None = None,
) -> str:
    """Key of a feature matrix: the model (weights digest), how stimuli were preprocessed,
    the layer read out, the dataset (its digest covers ids and judgments) and the stimulus
    files (``stimuli_fingerprint``). ``options`` holds anything else that changes the
    bytes."""
    return digest.digest_json(
        {
            "kind": "embedding",
            "format": CACHE_FORMAT,
            "model": model_digest,
            "preprocessing": preprocessing,
            "layer": layer,
            "dataset": dataset_digest,
            "stimuli": stimuli,
            "options": dict(options or {}),
        }
    )


def stimuli_fingerprint(dataset: Any, store: DiskCache | None = None) -> str:
    """Digest of the CONTENT of the dataset's image files, in stimulus order: the dataset
    digest covers ids and judgments but not the images, and replaced images must not
    reuse features embedded from the old ones. Paths do not enter it, so the same images
    in another folder (a lab server's, a colleague's) give the same key. Each file is
    hashed once per (path, mtime, size) in a process; with ``store`` the whole
    fingerprint is also memoised on disk under the (path, mtime, size) of every file, so
    a fresh process stats the files instead of reading them. "" when the dataset has no
    images."""
    paths = getattr(dataset, "image_paths", None)
    if paths is None:
        return ""
    memo_key = None
    if store is not None:
        stats: list[Any] = []
        for p in paths:
            try:
                st = os.stat(p) if p is not None else None
            except OSError:
                st = None
            stats.append(None if st is None else [os.fspath(p), st.st_mtime_ns, st.st_size])
        memo_key = digest.digest_json({"kind": "stimuli", "format": CACHE_FORMAT, "files": stats})
        memo = store.get_meta(memo_key)
        if memo is not None and isinstance(memo.get("fingerprint"), str):
            return str(memo["fingerprint"])
    entries: list[str | None] = []
    for p in paths:
        if p is None:
            entries.append(None)
            continue
        try:
            entries.append(digest.digest_file_cached(p))
        except OSError:
            entries.append("unreadable")
    fingerprint = digest.digest_json(entries)
    if memo_key is not None and store is not None and "unreadable" not in entries:
        try:
            store.put_meta(memo_key, {"fingerprint": fingerprint})
        except OSError:
            pass  # only a memo
    return fingerprint


def report_key(
    *,
    features_key: str,
    dataset_digest: str,
    metrics: Any,
    options: Mapping[str, Any] | None = None,
) -> str:
    """Key of a report: the features (an embedding key or a features digest), the dataset,
    the metrics asked for, every option, METRIC_CODE_VERSION and the library version."""
    return digest.digest_json(
        {
            "kind": "report",
            "format": CACHE_FORMAT,
            "features": features_key,
            "dataset": dataset_digest,
            "metrics": metrics,
            "options": dict(options or {}),
            "metric_code_version": METRIC_CODE_VERSION,
            "version": __version__,
        }
    )


def _check_key(key: str) -> str:
    if not isinstance(key, str) or not key or not all(c in "0123456789abcdef" for c in key):
        raise InvalidInputError("key", f"is {key!r}", "a hex digest from align.cache.*_key")
    return key


class DiskCache:
    """A folder of cache entries. ``hits`` and ``misses`` count lookups (for tests and logs)."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"DiskCache({str(self.root)!r})"

    # -- paths -----------------------------------------------------------------------
    def _path(self, kind: str, key: str, suffix: str) -> Path:
        key = _check_key(key)
        return self.root / kind / key[:2] / f"{key}{suffix}"

    def embedding_path(self, key: str) -> Path:
        return self._path("embeddings", key, ".npy")

    def report_path(self, key: str) -> Path:
        return self._path("reports", key, ".json")

    # -- embeddings ------------------------------------------------------------------
    def get_array(self, key: str) -> np.ndarray | None:
        path = self.embedding_path(key)
        try:
            array = np.load(path, allow_pickle=False)
            if not isinstance(array, np.ndarray) or array.ndim != 2:
                raise ValueError("not a 2-d array")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, EOFError):
            _discard(path)
            self.misses += 1
            return None
        self.hits += 1
        return array

    def put_array(self, key: str, array: np.ndarray) -> Path:
        path = self.embedding_path(key)
        array = np.asarray(array)

        def write(f: Any) -> None:
            np.save(f, array, allow_pickle=False)

        _atomic_write(path, write)
        return path

    # -- reports ---------------------------------------------------------------------
    def get_json(self, key: str) -> dict[str, Any] | None:
        return self._read_json(self.report_path(key))

    def put_json(self, key: str, data: Mapping[str, Any]) -> Path:
        return self._write_json(self.report_path(key), data)

    # -- small memos (model specs, stimulus fingerprints): what makes a re-score cheap --
    def meta_path(self, key: str) -> Path:
        return self._path("meta", key, ".json")

    def get_meta(self, key: str) -> dict[str, Any] | None:
        return self._read_json(self.meta_path(key))

    def put_meta(self, key: str, data: Mapping[str, Any]) -> Path:
        return self._write_json(self.meta_path(key), data)

    def _read_json(self, path: Path) -> dict[str, Any] | None:
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            self.misses += 1
            return None
        except (OSError, ValueError, UnicodeDecodeError):
            _discard(path)
            self.misses += 1
            return None
        self.hits += 1
        return data

    def _write_json(self, path: Path, data: Mapping[str, Any]) -> Path:
        text = json.dumps(to_jsonable(dict(data)), sort_keys=True).encode("utf-8")

        def write(f: Any) -> None:
            f.write(text)

        _atomic_write(path, write)
        return path

    def clear(self) -> int:
        """Delete every entry; returns how many files were removed."""
        removed = 0
        for kind in ("embeddings", "reports", "meta"):
            for path in (self.root / kind).glob("*/*"):
                if path.is_file():
                    _discard(path)
                    removed += 1
        return removed


def _atomic_write(path: Path, write: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        _discard(Path(tmp))
        raise


def _discard(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
