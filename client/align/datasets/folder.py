"""A user's own dataset in a folder: ``load_dataset("/path/to/folder")`` or
``load_dataset("folder:/path/to/folder")``.

Layout::

    myset/
      dataset.json      optional manifest (keys below)
      images/           the stimuli (or image files directly in myset/)
      triplets.csv      triplet judgments, or
      rdm.npy|rdm.csv   a dissimilarity matrix (rsm.npy|rsm.csv: a similarity matrix)

Stimuli: every image file (.jpg .jpeg .png .bmp .gif .webp .tif .tiff) in ``images/``
(or in the folder itself when there is no ``images/``); the stimulus id is the file stem.
Two files with one stem (``a.jpg``, ``a.png``) are an error.

Order (which row of a matrix, which index of ``refer_by: index`` is which image): NATURAL
order of the stems, numbers by value: ``0, 1, 2, ..., 10, 11`` (not ``0, 1, 10, 11, 2``),
``img2`` before ``img10``; text compares case-sensitively as usual. Two stems that differ
only in leading zeros (``01`` and ``1``, ``img01`` and ``img1``) name the same position:
an error. Stems that mix bare numbers with names (``1``, ``2``, ``cat``) are ordered
numbers first, with a warning: name every file one way, or refer to images by stem.

Triplets: one triplet per line, ``a,b,c`` or ``a,b,c,subject`` (comma, tab, semicolon or
whitespace separated), no header row; lines starting with ``#`` are comments. Images are
named by file stem (default) or by 0-based index into the stimulus order
(``refer_by: index``). The convention MUST be declared, either in the manifest or in a
header comment of the CSV::

    # convention: odd-one-out      (c is the odd one out; a, b the most similar pair)
    # convention: anchor           (b is closer to a than c is)
    # refer_by: index              (optional; default stem)

Matrices: ``rdm.npy``/``rsm.npy`` of shape (n, n) or (s, n, n) (one per subject), or
``rdm.csv``/``rsm.csv`` with n rows of n numbers; square, symmetric, finite, n = the
number of images. Rows follow the stimulus order.

Manifest ``dataset.json`` keys (all optional): ``kind`` ("triplets" | "rdm"),
``triplets`` (file), ``convention``, ``refer_by`` ("stem" | "index"), ``matrix`` (file),
``key`` (variable of a .mat matrix), ``matrix_kind`` ("dissimilarity" | "similarity"),
``images`` (folder), ``citation``, ``licence``, ``description``. A manifest value and a
CSV header comment that disagree are an error.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataMissingError, InvalidInputError
from .base import Dataset
from .io import (
    check_columns,
    check_square_matrices,
    data_rows,
    parse_int,
    read_lines,
    read_matrix_file,
    sniff_sep,
    where,
)
from .matrices import IMAGE_SUFFIXES

MANIFEST = "dataset.json"
_KEYS = {
    "kind", "triplets", "convention", "refer_by", "matrix", "key", "matrix_kind", "images",
    "citation", "licence", "description",
}  # fmt: skip
_CONVENTIONS = ("odd-one-out", "anchor")


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise InvalidInputError(
            where(path, exc.lineno), f"is not valid JSON ({exc.msg})", "JSON"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInputError(str(path), f"holds a {type(data).__name__}", "a JSON object")
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise InvalidInputError(
            str(path), f"has unknown keys {unknown}", f"keys in {sorted(_KEYS)}"
        )
    return data


def natural_key(stem: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of the natural order: digit runs compare as numbers, text as text."""
    parts = re.split(r"(\d+)", stem)
    return tuple((0, int(part)) if part.isdigit() else (1, part) for part in parts if part)


def list_images(folder: Path) -> tuple[tuple[str, ...], tuple[Path, ...]]:
    """(stems, paths) of the image files in ``folder``, in natural order of the stems
    (module docstring)."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: (natural_key(p.stem), p.name),
    )
    seen: dict[str, Path] = {}
    for p in files:
        if p.stem in seen:
            raise InvalidInputError(
                str(folder),
                f"has duplicate image names {seen[p.stem].name!r} and {p.name!r}",
                "one image per stem (the stem is the stimulus id)",
            )
        seen[p.stem] = p
    if not files:
        raise InvalidInputError(str(folder), "holds no image files", f"images {IMAGE_SUFFIXES}")
    for a, b in itertools.pairwise(files):
        if natural_key(a.stem) == natural_key(b.stem):
            raise InvalidInputError(
                str(folder),
                f"has images {a.name!r} and {b.name!r}, whose names differ only in leading "
                "zeros, so their order is ambiguous",
                "one numbering (all zero-padded to one width, or none)",
            )
    numeric = [p.stem for p in files if p.stem.isdigit()]
    if numeric and len(numeric) < len(files):
        named = next(p.stem for p in files if not p.stem.isdigit())
        warnings.warn(
            f"{folder}: image names mix numbers ({numeric[0]!r}, ...) and names "
            f"({named!r}, ...); they are ordered numbers first, in natural order. Name every "
            "file one way, or refer to images by stem (not refer_by: index)",
            stacklevel=3,
        )
    return tuple(p.stem for p in files), tuple(files)


def _header_options(path: Path, lines: list[str]) -> dict[str, str]:
    options: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        s = line.strip()
        if not s.startswith("#") or ":" not in s:
            continue
        key, _, value = s.lstrip("#").partition(":")
        key, value = key.strip().lower().replace("-", "_"), value.strip()
        if key in ("convention", "refer_by"):
            if key in options and options[key] != value:
                raise InvalidInputError(where(path, number), f"redeclares {key}", "one value")
            options[key] = value
    return options


def read_triplet_csv(
    path: Path, ids: tuple[str, ...], manifest: dict[str, Any]
) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Triplets (m, 3) int64 indices, subjects or None, and the declared convention."""
    lines = read_lines(path)
    header = _header_options(path, lines)
    options: dict[str, str] = {}
    for key in ("convention", "refer_by"):
        a, b = manifest.get(key), header.get(key)
        if a is not None and b is not None and a != b:
            raise InvalidInputError(
                str(path), f"declares {key} {b!r} but {MANIFEST} says {a!r}", "one value"
            )
        if (a or b) is not None:
            options[key] = str(a or b)
    convention = options.get("convention")
    if convention not in _CONVENTIONS:
        raise InvalidInputError(
            str(path),
            "declares no triplet convention"
            if convention is None
            else f"declares convention {convention!r}",
            "'# convention: odd-one-out' or '# convention: anchor' in the file or "
            f'"convention" in {MANIFEST}',
        )
    refer_by = options.get("refer_by", "stem")
    if refer_by not in ("stem", "index"):
        raise InvalidInputError(str(path), f"declares refer_by {refer_by!r}", "'stem' or 'index'")
    position = {s: i for i, s in enumerate(ids)}
    n = len(ids)
    rows: list[list[int]] = []
    subjects: list[int] = []
    width: int | None = None
    sep: str | None = None
    for number, fields in data_rows(path, lines, None):
        if width is None:
            sep = sniff_sep(lines[number - 1])
        if sep is not None:
            fields = [f.strip() for f in lines[number - 1].strip().split(sep)]
        check_columns(fields, (3, 4) if width is None else width, path, number)
        width = len(fields)
        row = []
        for c, value in enumerate(fields[:3]):
            column = f"column {c + 1}"
            if refer_by == "index":
                k = parse_int(value, path, number, column)
                if not 0 <= k < n:
                    raise InvalidInputError(
                        where(path, number),
                        f"{column} index {k} is out of range",
                        f"0..{n - 1} (0-based, {n} images)",
                    )
            else:
                if value not in position:
                    raise InvalidInputError(
                        where(path, number),
                        f"{column} names unknown image {value!r}",
                        "an image file stem in the folder (or declare refer_by: index)",
                    )
                k = position[value]
            row.append(k)
        if len(set(row)) != 3:
            raise InvalidInputError(
                where(path, number), f"repeats a stimulus: {fields[:3]}", "three different stimuli"
            )
        rows.append(row)
        if width == 4:
            subjects.append(parse_int(fields[3], path, number, "subject (column 4)"))
    t = np.asarray(rows, dtype=np.int64).reshape(-1, 3)
    return t, (np.asarray(subjects, dtype=np.int64) if width == 4 else None), convention


def load_folder(folder: Path) -> Dataset:
    folder = folder.expanduser()
    if not folder.is_dir():
        raise DataMissingError(f"dataset folder {folder} not found")
    manifest = _manifest(folder)
    image_dir = folder / str(manifest.get("images", "images"))
    if "images" in manifest and not image_dir.is_dir():
        raise DataMissingError(f"{folder / MANIFEST}: images folder {image_dir} not found")
    if not image_dir.is_dir():
        image_dir = folder
    ids, paths = list_images(image_dir)
    triplet_file = folder / str(manifest.get("triplets", "triplets.csv"))
    if "triplets" in manifest and not triplet_file.is_file():
        raise DataMissingError(f"{folder / MANIFEST}: triplets file {triplet_file} not found")
    matrix_file = _matrix_file(folder, manifest)
    kind = manifest.get("kind")
    if kind is None:
        if triplet_file.is_file() and matrix_file is not None:
            raise InvalidInputError(
                str(folder),
                "holds both triplets and a matrix",
                f'"kind": "triplets" or "rdm" in {MANIFEST}',
            )
        kind = "triplets" if triplet_file.is_file() else "rdm" if matrix_file else None
    common: dict[str, Any] = dict(
        id=f"folder:{folder.resolve()}",
        stimulus_ids=ids,
        words=None,
        image_paths=tuple(paths),
        citation=str(manifest.get("citation", "")),
        licence=str(manifest.get("licence", "")),
        description=str(manifest.get("description", f"user dataset in {folder}")),
    )
    if kind == "triplets":
        if not triplet_file.is_file():
            raise DataMissingError(f"{folder}: triplets file {triplet_file.name} not found")
        t, subjects, convention = read_triplet_csv(triplet_file, ids, manifest)
        return Dataset(
            kind="triplets",
            triplets=t,
            subjects=subjects,
            triplet_convention=convention,  # type: ignore[arg-type]
            source=str(triplet_file),
            **common,
        )
    if kind == "rdm":
        if matrix_file is None:
            raise DataMissingError(f"{folder}: no rdm.npy/rdm.csv/rsm.npy/rsm.csv found")
        matrix_kind = manifest.get(
            "matrix_kind", "similarity" if matrix_file.stem.lower() == "rsm" else "dissimilarity"
        )
        if matrix_kind not in ("dissimilarity", "similarity"):
            raise InvalidInputError(
                f"{folder / MANIFEST} matrix_kind",
                f"is {matrix_kind!r}",
                "'dissimilarity' or 'similarity'",
            )
        raw = read_matrix_file(matrix_file, manifest.get("key"))
        matrices = check_square_matrices(raw, str(matrix_file), n=len(ids))
        return Dataset(
            kind="rdm",
            matrices=matrices,
            matrix_kind=matrix_kind,
            source=str(matrix_file),
            **common,
        )
    if kind is None:
        raise DataMissingError(
            f"{folder}: no judgments found (triplets.csv, rdm.npy, rdm.csv, rsm.npy or rsm.csv)"
        )
    raise InvalidInputError(f"{folder / MANIFEST} kind", f"is {kind!r}", "'triplets' or 'rdm'")


def _matrix_file(folder: Path, manifest: dict[str, Any]) -> Path | None:
    if "matrix" in manifest:
        path = folder / str(manifest["matrix"])
        if not path.is_file():
            raise DataMissingError(f"{folder / MANIFEST}: matrix file {path} not found")
        return path
    for name in ("rdm.npy", "rdm.csv", "rsm.npy", "rsm.csv"):
        if (folder / name).is_file():
            return folder / name
    return None
