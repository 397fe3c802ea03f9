"""Low-level readers shared by the loaders. Every problem names the file, the line (1-based,
as an editor shows it) and what was expected; no valid row is dropped silently."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataMissingError, InvalidInputError

# MATLAB v7.3 files are HDF5 with a 512-byte text header in front.
_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def where(path: Path | str, line: int | None = None) -> str:
    return f"{path}, line {line}" if line is not None else str(path)


def require_file(path: Path, what: str, get: str) -> Path:
    if not path.is_file():
        raise DataMissingError(f"{what}: {path} not found. Where to get it: {get}")
    return path


def read_lines(path: Path) -> list[str]:
    """The file's lines (universal newlines); an empty file is an error."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            str(path), f"is not UTF-8 text ({exc.reason})", "a text file"
        ) from None
    lines = text.splitlines()
    if not any(line.strip() and not line.lstrip().startswith("#") for line in lines):
        raise InvalidInputError(str(path), "is empty (no data rows)", "at least one data row")
    return lines


def data_rows(
    path: Path, lines: list[str], sep: str | None, comment: str = "#"
) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for every non-blank, non-comment line."""
    for number, line in enumerate(lines, start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith(comment):
            continue
        fields = [f.strip() for f in (stripped.split(sep) if sep else stripped.split())]
        yield number, fields


def sniff_sep(line: str) -> str | None:
    """Tab, comma or semicolon if the line contains one, else any whitespace (None)."""
    for sep in ("\t", ",", ";"):
        if sep in line:
            return sep
    return None


_INT64 = np.iinfo(np.int64)


def parse_int(value: str, path: Path, line: int, column: str) -> int:
    """``value`` as an int64 (``"12.0"`` from np.savetxt accepted); anything else,
    including infinities and integers beyond int64, is refused naming file, line and
    column."""
    try:
        out = int(value)
    except ValueError:
        try:
            as_float = float(value)
        except ValueError:
            as_float = float("nan")
        if not (math.isfinite(as_float) and as_float == int(as_float)):
            raise InvalidInputError(
                where(path, line), f"{column} is {value!r}, not an integer", "an integer"
            ) from None
        out = int(as_float)
    if not _INT64.min <= out <= _INT64.max:
        raise InvalidInputError(
            where(path, line),
            f"{column} is {value!r}, beyond 64-bit integers",
            "an integer of at most 64 bits",
        )
    return out


def parse_float(value: str, path: Path, line: int, column: str) -> float:
    try:
        out = float(value)
    except ValueError:
        raise InvalidInputError(
            where(path, line), f"{column} is {value!r}, not a number", "a number"
        ) from None
    if not np.isfinite(out):
        raise InvalidInputError(where(path, line), f"{column} is {value!r}", "a finite number")
    return out


def check_columns(fields: list[str], n: int | tuple[int, ...], path: Path, line: int) -> None:
    allowed = (n,) if isinstance(n, int) else n
    if len(fields) not in allowed:
        expected = " or ".join(str(a) for a in allowed)
        raise InvalidInputError(
            where(path, line), f"has {len(fields)} columns", f"{expected} columns"
        )


def read_int_rows(
    path: Path, ncols: int | tuple[int, ...], names: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Integer table (m, max ncols) and the 1-based line number of every row.

    Rows with fewer columns (when several counts are allowed) are padded with -1.
    """
    lines = read_lines(path)
    width = max((ncols,) if isinstance(ncols, int) else ncols)
    rows: list[list[int]] = []
    numbers: list[int] = []
    sep: str | None = None
    for number, fields in data_rows(path, lines, None):
        if not numbers:
            sep = sniff_sep(lines[number - 1])
        if sep is not None:
            fields = [f.strip() for f in lines[number - 1].strip().split(sep)]
        check_columns(fields, ncols, path, number)
        values = [parse_int(v, path, number, names[c]) for c, v in enumerate(fields)]
        rows.append(values + [-1] * (width - len(values)))
        numbers.append(number)
    return np.asarray(rows, dtype=np.int64).reshape(-1, width), np.asarray(numbers)


def check_range(
    values: np.ndarray, lo: int, hi: int, path: Path, lines: np.ndarray, column: str
) -> None:
    """Every value in [lo, hi]; else name the first offending line."""
    bad = (values < lo) | (values > hi)
    if bad.any():
        row = int(np.argmax(bad.any(axis=1) if bad.ndim == 2 else bad))
        value = values[row][np.argmax(bad[row])] if bad.ndim == 2 else values[row]
        raise InvalidInputError(
            where(path, int(lines[row])), f"{column} {int(value)} is out of range", f"{lo}..{hi}"
        )


def load_mat(path: Path, key: str) -> Any:
    """Variable ``key`` of a MATLAB file (v4-v7 via scipy, v7.3/HDF5 via h5py)."""
    with open(path, "rb") as f:
        head = f.read(520)
    if head[512:520] == _HDF5_MAGIC or head.startswith(_HDF5_MAGIC):
        try:
            import h5py
        except ImportError:
            raise InvalidInputError(
                str(path),
                "is a MATLAB v7.3 (HDF5) file and h5py is not installed",
                "`pip install h5py`, or the file saved with MATLAB's -v7 flag",
            ) from None
        with h5py.File(path, "r") as h5:
            if key not in h5:
                known = [k for k in h5 if not k.startswith("#")]
                raise InvalidInputError(str(path), f"has no variable {key!r}", f"one of {known}")
            # MATLAB writes column-major: h5py sees the transpose.
            return np.asarray(h5[key][()]).T
    import scipy.io

    try:
        content = scipy.io.loadmat(path)
    except Exception as exc:  # scipy raises several types for corrupt files
        raise InvalidInputError(
            str(path), f"is not a readable MATLAB file ({exc})", "a .mat"
        ) from None
    if key not in content:
        known = [k for k in content if not k.startswith("__")]
        raise InvalidInputError(str(path), f"has no variable {key!r}", f"one of {known}")
    return content[key]


def check_square_matrices(
    m: np.ndarray, source: str, n: int | None = None, symmetric: bool = True
) -> np.ndarray:
    """(s, n, n) float64 stack: square, finite, symmetric. A 2-D matrix becomes s = 1."""
    a = np.asarray(m)
    if a.dtype.kind not in "iuf":
        raise InvalidInputError(source, f"holds {a.dtype} values", "a numeric matrix")
    a = a.astype(np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] != a.shape[2]:
        raise InvalidInputError(source, f"has shape {a.shape}", "a square (n, n) or (s, n, n)")
    if n is not None and a.shape[1] != n:
        raise InvalidInputError(
            source, f"is {a.shape[1]}x{a.shape[2]}", f"{n}x{n}, one row per stimulus"
        )
    bad = ~np.isfinite(a)
    if bad.any():
        s, i, j = (int(x) for x in np.argwhere(bad)[0])
        raise InvalidInputError(
            source,
            f"has a non-finite entry {a[s, i, j]} at row {i + 1}, column {j + 1}"
            + (f" of matrix {s + 1}" if a.shape[0] > 1 else ""),
            "finite numbers only",
        )
    if symmetric:
        scale = max(1.0, float(np.abs(a).max()))
        asym = np.abs(a - a.transpose(0, 2, 1)) > 1e-8 * scale
        if asym.any():
            s, i, j = (int(x) for x in np.argwhere(asym)[0])
            raise InvalidInputError(
                source,
                f"is not symmetric: entry (row {i + 1}, column {j + 1}) = {a[s, i, j]} but "
                f"(row {j + 1}, column {i + 1}) = {a[s, j, i]}",
                "a symmetric matrix",
            )
    return a


def read_matrix_file(path: Path, key: str | None = None) -> np.ndarray:
    """A numeric matrix (or stack) from .npy, .mat (``key``) or a delimited text file."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            return np.asarray(np.load(path, allow_pickle=False))
        except ValueError as exc:
            raise InvalidInputError(
                str(path), f"is not a readable .npy array ({exc})", ".npy"
            ) from None
    if suffix == ".mat":
        if key is None:
            raise InvalidInputError(str(path), "needs a variable name", "a 'key' in the manifest")
        return np.asarray(load_mat(path, key))
    lines = read_lines(path)
    rows: list[list[float]] = []
    width: int | None = None
    for number, _ in data_rows(path, lines, None):
        raw = lines[number - 1].strip()
        sep = sniff_sep(raw)
        fields = [f.strip() for f in (raw.split(sep) if sep else raw.split())]
        if width is None:
            width = len(fields)
        check_columns(fields, width, path, number)
        rows.append([parse_float(v, path, number, f"column {c + 1}") for c, v in enumerate(fields)])
    return np.asarray(rows, dtype=np.float64)
