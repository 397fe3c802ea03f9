"""THINGS odd-one-out (Hebart et al. 2020, 2023): triplets, images, words, VICE/SPoSE.

Canonical object order
    The 1,854 rows of ``things_concepts.tsv`` ("concept order"). Raw MTurk files
    (``test_triplets.csv``, the VICE embedding) use the RAW order: the sorted image file
    names ``<uniqueID>_NN.jpg`` (so "ice-cream_cone" comes before "ice", unlike a plain
    sort of the uniqueIDs). It differs for 21 homonym-block rows (camera/chicken/crystal/
    hot-/ice/pepper). ``sortindex`` says ``concept_row i = raw_row sortindex[i]``, so a raw
    index ``r`` maps to the concept index ``argsort(sortindex)[r]`` and a raw embedding
    maps by ``E_concept = E_raw[sortindex]``.

Stored convention
    ``triplets[:, 2]`` is the odd one out; ``(triplets[:, 0], triplets[:, 1])`` the pair
    the person judged most similar (in the order they were shown).

Triplet files this module reads (``read_things_triplets``; the format is detected):
    * raw VICE/MTurk file, e.g. ``test_triplets.csv``: tab separated ``i j k choice
      subject``, no header, 1-based, RAW order, ``choice`` = position 1..3 of the odd one.
      (This file, the noise-ceiling set, ships inside ``align/data/things``.)
    * derived file with header ``obj1,obj2,obj3,odd_one_out_position_1to3,subject_id``:
      0-based, concept order.
    * THINGS-data (Hebart et al. 2023, OSF f5rn6) ``triplet_dataset/
      triplets_large_final_correctednc_correctedorder.csv``: tab separated with a header
      whose first columns are ``image1 image2 image3 choice`` (then RT, noise_ceiling,
      subject_id, HIT_nr, ...); 1-based, concept order ("correctedorder"), ``choice`` =
      position 1..3 of the odd one out; ``subject_id`` becomes ``subjects`` when present.
    * THINGS-data ``trainset.txt`` / ``validationset.txt``: whitespace separated, three
      0-based indices per row in concept order, the last column the odd one out.
    * ``.npy`` arrays (m, 3) as in the VICE/thingsvision repos: 0-based, concept order,
      column 2 the odd one out.
    ``order="raw"`` declares that a file's indices are in RAW order (they are mapped).

Folder convention: ``<data_dir>/things/triplet_dataset/`` holding the THINGS-data files
registers the ids ``things/train`` (trainset.txt), ``things/validation``
(validationset.txt) and ``things/full`` (the 4.7 M-row CSV). Any file also loads with
``load_dataset("things", triplets=PATH)``.

Images: ``<data_dir>/things/images`` (or ``images=FOLDER``), files named
``<uniqueID>_<NN><b|s>.jpg`` (flat, or one subfolder per uniqueID); the lowest-numbered
match is the concept's image. A concept without an image gets ``None`` and a warning
counts the triplets that touch it (metrics drop those triplets from all-NaN rows).
"""

from __future__ import annotations

import os
import re
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np

from ..errors import DataMissingError, InvalidInputError
from .base import PACKAGE_DATA, Dataset
from .io import (
    check_columns,
    check_range,
    data_rows,
    parse_int,
    read_int_rows,
    read_lines,
    read_matrix_file,
    require_file,
    where,
)

N_THINGS = 1854

THINGS_CITATION = (
    "Hebart, M. N., Zheng, C. Y., Pereira, F., & Baker, C. I. (2020). Revealing the "
    "multidimensional mental representations of natural objects underlying human "
    "similarity judgements. Nature Human Behaviour, 4, 1173-1185. https://osf.io/z2784/"
)
THINGS_DATA_CITATION = (
    "Hebart, M. N., Contier, O., Teichmann, L., et al. (2023). THINGS-data, a "
    "multimodal collection of large-scale datasets for investigating object "
    "representations in human brain and behavior. eLife, 12, e82580. https://osf.io/f5rn6/"
)
VICE_CITATION = (
    "Muttenthaler, L., Zheng, C. Y., McClure, P., Vandermeulen, R. A., Hebart, M. N., & "
    "Pereira, F. (2022). VICE: Variational Interpretable Concept Embeddings. NeurIPS. "
    "https://github.com/LukasMut/VICE"
)
THINGS_LICENCE = "CC-BY 4.0 (behavioural data); images: THINGS database terms, academic use"
THINGS_DATA_FILES = {
    "things/train": "trainset.txt",
    "things/validation": "validationset.txt",
    "things/full": "triplets_large_final_correctednc_correctedorder.csv",
}
_SHIPPED = PACKAGE_DATA / "things"
_IMAGE = re.compile(r"^(?P<uid>.+)_(?P<num>[0-9]{2})[bs]\.jpg$")


@lru_cache(maxsize=1)
def concept_table() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(words, uniqueIDs) of the 1,854 THINGS concepts in concept order (shipped)."""
    path = _SHIPPED / "things_concepts.tsv"
    lines = read_lines(path)
    header = lines[0].split("\t")
    if header[:2] != ["Word", "uniqueID"]:
        raise InvalidInputError(where(path, 1), f"header is {header}", "Word<TAB>uniqueID")
    words, uids = [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0] or not fields[1]:
            raise InvalidInputError(where(path, number), f"is {line!r}", "Word<TAB>uniqueID")
        words.append(fields[0])
        uids.append(fields[1])
    if len(uids) != N_THINGS or len(set(uids)) != N_THINGS:
        raise InvalidInputError(str(path), f"has {len(uids)} rows", f"{N_THINGS} unique ids")
    return tuple(words), tuple(uids)


@lru_cache(maxsize=1)
def sortindex() -> np.ndarray:
    """``concept_row i = raw_row sortindex[i]`` (a permutation of 0..1853)."""
    path = _SHIPPED / "sortindex"
    values, _ = read_int_rows(path, 1, ("sortindex",))
    s = values[:, 0]
    if not np.array_equal(np.sort(s), np.arange(N_THINGS)):
        raise InvalidInputError(str(path), "is not a permutation", f"0..{N_THINGS - 1}")
    s.setflags(write=False)
    return s


def raw_to_concept() -> np.ndarray:
    """Concept index of each raw index: ``argsort(sortindex)``."""
    return np.argsort(sortindex())


def _odd_last(objects: np.ndarray, choice: np.ndarray) -> np.ndarray:
    """(m, 3) objects + 0-based odd position -> stored convention (odd one in column 2)."""
    m = len(objects)
    others = np.array([[1, 2], [0, 2], [0, 1]])[choice]
    rows = np.arange(m)[:, None]
    return np.column_stack([objects[rows, others], objects[np.arange(m), choice]]).astype(np.int64)


def _from_raw(triplets: np.ndarray, order: str) -> np.ndarray:
    return raw_to_concept()[triplets] if order == "raw" else triplets


def _read_raw_vice(path: Path, order: str) -> tuple[np.ndarray, np.ndarray]:
    table, lines = read_int_rows(path, 5, ("obj_i", "obj_j", "obj_k", "choice", "subject"))
    check_range(table[:, :3], 1, N_THINGS, path, lines, "object index")
    check_range(table[:, 3], 1, 3, path, lines, "choice (odd-one-out position)")
    objects = _from_raw(table[:, :3] - 1, order)
    return _odd_last(objects, table[:, 3] - 1), table[:, 4].copy()


def _read_derived(path: Path, order: str) -> tuple[np.ndarray, np.ndarray]:
    # header obj1,obj2,obj3,odd_one_out_position_1to3,subject_id; 0-based
    names = ("obj1", "obj2", "obj3", "odd_one_out_position_1to3", "subject_id")
    rows = list(data_rows(path, read_lines(path), ","))
    table, numbers = [], []
    for number, fields in rows[1:]:  # rows[0] is the header
        check_columns(fields, 5, path, number)
        table.append([parse_int(v, path, number, names[c]) for c, v in enumerate(fields)])
        numbers.append(number)
    if not table:
        raise InvalidInputError(str(path), "has a header but no data rows", "triplet rows")
    t = np.asarray(table, dtype=np.int64)
    num = np.asarray(numbers)
    check_range(t[:, :3], 0, N_THINGS - 1, path, num, "object index")
    check_range(t[:, 3], 1, 3, path, num, "odd_one_out_position_1to3")
    return _odd_last(_from_raw(t[:, :3], order), t[:, 3] - 1), t[:, 4].copy()


def _read_things_data_csv(path: Path, order: str) -> tuple[np.ndarray, np.ndarray | None]:
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep="\t", header=0, skip_blank_lines=False, low_memory=False)
    except pd.errors.EmptyDataError:
        raise InvalidInputError(str(path), "is empty", "a header and triplet rows") from None
    except pd.errors.ParserError as exc:
        raise InvalidInputError(str(path), f"cannot be parsed ({exc})", "tab-separated") from None
    need = ["image1", "image2", "image3", "choice"]
    missing = [c for c in need if c not in frame.columns]
    if missing:
        raise InvalidInputError(
            where(path, 1), f"header lacks {missing}", "columns image1 image2 image3 choice"
        )
    if frame.empty:
        raise InvalidInputError(str(path), "has a header but no data rows", "triplet rows")
    lines = np.arange(len(frame)) + 2  # line 1 is the header
    cols = frame[need]
    numeric = cols.apply(pd.to_numeric, errors="coerce")
    bad = numeric.isna().to_numpy() | (numeric.to_numpy() % 1 != 0)
    if bad.any():
        row, col = (int(x) for x in np.argwhere(bad)[0])
        raise InvalidInputError(
            where(path, int(lines[row])),
            f"{need[col]} is {cols.iat[row, col]!r}, not an integer",
            "an integer",
        )
    table = numeric.to_numpy().astype(np.int64)
    check_range(table[:, :3], 1, N_THINGS, path, lines, "object index")
    check_range(table[:, 3], 1, 3, path, lines, "choice (odd-one-out position)")
    subjects = None
    if "subject_id" in frame.columns:
        codes, _ = pd.factorize(frame["subject_id"], sort=True)
        subjects = codes.astype(np.int64)
    return _odd_last(_from_raw(table[:, :3] - 1, order), table[:, 3] - 1), subjects


def _read_zero_based(path: Path, order: str) -> np.ndarray:
    if path.suffix.lower() == ".npy":
        try:
            t = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise InvalidInputError(
                str(path), f"is not a readable .npy ({exc})", "(m, 3) ints"
            ) from None
        if t.ndim != 2 or t.shape[1] != 3 or t.shape[0] == 0:
            raise InvalidInputError(str(path), f"has shape {t.shape}", "(m, 3), m >= 1")
        if t.dtype.kind == "f":
            if not np.isfinite(t).all() or (t % 1 != 0).any():
                row = int(np.argmax((~np.isfinite(t) | (t % 1 != 0)).any(axis=1)))
                raise InvalidInputError(
                    f"{path}, row {row}", f"has {t[row].tolist()}", "integer indices"
                )
        elif t.dtype.kind not in "iu":
            raise InvalidInputError(str(path), f"holds {t.dtype}", "integer indices")
        t = t.astype(np.int64)
        bad = (t < 0) | (t >= N_THINGS)
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            raise InvalidInputError(
                f"{path}, row {row} (0-based)",
                f"object index out of range in {t[row].tolist()}",
                f"0..{N_THINGS - 1}",
            )
        return _from_raw(t, order)
    import pandas as pd

    try:
        frame = pd.read_csv(path, sep=r"\s+", header=None, comment="#", dtype=np.float64)
        t = frame.to_numpy()
        ok = t.ndim == 2 and t.shape[1] == 3 and np.isfinite(t).all() and (t % 1 == 0).all()
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError):
        ok = False
    if not ok:  # slow path: find the offending line
        table, lines = read_int_rows(path, 3, ("obj_1", "obj_2", "odd_one_out"))
        t = table
    else:
        t = t.astype(np.int64)
        lines = np.arange(len(t)) + 1
    if (t < 0).any() or (t >= N_THINGS).any():
        # line numbers from the slow reader (comments/blank lines counted)
        _, lines = read_int_rows(path, 3, ("obj_1", "obj_2", "odd_one_out"))
        check_range(t, 0, N_THINGS - 1, path, lines, "object index")
    return _from_raw(t.astype(np.int64), order)


def read_things_triplets(
    path: str | Path, order: str | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Triplets (m, 3) int64 in concept order, odd one out in column 2, and subjects.

    The format is detected (see the module docstring). ``order`` ("concepts" or "raw")
    declares the file's object order; the default is the format's own (raw for the
    5-column MTurk file, concept order for the others).
    """
    path = Path(path)
    if not path.is_file():
        raise DataMissingError(f"THINGS triplet file {path} not found")
    if order not in (None, "concepts", "raw"):
        raise InvalidInputError("order", f"is {order!r}", "'concepts' or 'raw'")
    if path.suffix.lower() == ".npy":
        return _read_zero_based(path, order or "concepts"), None
    first = next(
        (line for line in read_lines(path) if line.strip() and not line.startswith("#")), ""
    )
    if "image1" in first:
        return _read_things_data_csv(path, order or "concepts")
    if first.startswith("obj1"):
        return _read_derived(path, order or "concepts")
    width = len(first.split())
    if width == 5:
        return _read_raw_vice(path, order or "raw")
    if width == 3:
        return _read_zero_based(path, order or "concepts"), None
    raise InvalidInputError(
        where(path, 1),
        f"has {width} columns",
        "5 (i j k choice subject, 1-based raw), 3 (0-based, odd last), or a THINGS-data "
        "CSV header image1 image2 image3 choice",
    )


def find_things_images(folder: Path, unique_ids: tuple[str, ...]) -> tuple[Path | None, ...]:
    """Per concept the lowest-numbered ``<uniqueID>_NN[bs].jpg`` in ``folder`` (flat or
    one subfolder per concept), ``None`` where there is none."""
    best: dict[str, tuple[str, Path]] = {}
    for path in list(folder.glob("*.jpg")) + list(folder.glob("*/*.jpg")):
        m = _IMAGE.match(path.name)
        if m is None:
            continue
        uid = m.group("uid")
        key = path.name
        if uid not in best or key < best[uid][0]:
            best[uid] = (key, path)
    return tuple(best[u][1] if u in best else None for u in unique_ids)


def load_things(
    data_dir: Path,
    dataset_id: str = "things",
    triplets: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    order: str | None = None,
) -> Dataset:
    words, uids = concept_table()
    if triplets is None:
        if dataset_id in THINGS_DATA_FILES:
            file = data_dir / "things" / "triplet_dataset" / THINGS_DATA_FILES[dataset_id]
            require_file(file, dataset_id, "https://osf.io/f5rn6/ (data/triplet_dataset/)")
            path = file
            citation, description = THINGS_DATA_CITATION, f"THINGS-data {file.name}"
        else:
            path = _SHIPPED / "test_triplets.csv"
            citation = THINGS_CITATION
            description = (
                "THINGS odd-one-out noise-ceiling set: 20,000 responses of 325 people on "
                "1,000 distinct triplets over 1,854 objects"
            )
    else:
        path = Path(triplets)
        citation, description = THINGS_DATA_CITATION, f"THINGS triplets from {path.name}"
    t, subjects = read_things_triplets(path, order)
    image_folder = Path(images) if images is not None else data_dir / "things" / "images"
    image_paths: tuple[Path | None, ...] | None = None
    if image_folder.is_dir():
        image_paths = find_things_images(image_folder, uids)
    elif images is not None:
        raise DataMissingError(f"images: folder {image_folder} not found")
    ds = Dataset(
        id=dataset_id,
        kind="triplets",
        stimulus_ids=uids,
        words=words,
        image_paths=image_paths,
        triplets=t,
        triplet_convention="odd-one-out",
        subjects=subjects,
        citation=citation,
        licence=THINGS_LICENCE,
        description=description,
        source=str(path),
    )
    missing = ds.missing_images
    if missing:
        names = ", ".join(uids[i] for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.warn(
            f"{dataset_id}: {len(missing)} of {N_THINGS} images missing in {image_folder} "
            f"({names}); {ds.triplets_touching(missing)} of {len(t)} triplets touch them and "
            "are dropped by image metrics",
            stacklevel=3,
        )
    return ds


def _embedding_file(data_dir: Path, relative: str, what: str, get: str) -> Path:
    return require_file(data_dir / relative, what, get)


def load_vice_embedding(data_dir: Path) -> np.ndarray:
    """VICE embedding (1854, 42) float32 mapped from RAW order to concept order."""
    path = _embedding_file(
        data_dir,
        "things/vice_things_final_embedding.npy",
        "VICE embedding",
        "https://github.com/LukasMut/VICE (vice_things_final_embedding.npy)",
    )
    e = np.load(path, allow_pickle=False)
    if e.ndim != 2 or e.shape[0] != N_THINGS or not np.isfinite(e).all():
        raise InvalidInputError(str(path), f"has shape {e.shape}", f"({N_THINGS}, d) finite")
    return np.ascontiguousarray(e[sortindex()])


def load_vice_concept_labels(data_dir: Path, n_dims: int = 42) -> tuple[str, ...]:
    """Names of the VICE dimensions from ``things/vice_labels.txt`` (one per line) when
    that file exists, else the dimension indices as strings ("0", "1", ...)."""
    path = data_dir / "things" / "vice_labels.txt"
    if path.is_file():
        labels = tuple(line.strip() for line in read_lines(path) if line.strip())
        if len(labels) != n_dims:
            raise InvalidInputError(str(path), f"has {len(labels)} labels", f"{n_dims}")
        return labels
    return tuple(str(i) for i in range(n_dims))


def load_spose_embedding(data_dir: Path) -> np.ndarray:
    """SPoSE 66-d embedding (1854, 66), rows already in concept order."""
    path = _embedding_file(
        data_dir,
        "things_spose66d/spose_embedding_66d.txt",
        "SPoSE 66-d embedding",
        "https://osf.io/f5rn6/ (spose_embedding_66d_sorted.txt) or github.com/florianmahner/pysrf",
    )
    e = read_matrix_file(path)
    if e.shape != (N_THINGS, 66):
        raise InvalidInputError(str(path), f"has shape {e.shape}", f"({N_THINGS}, 66)")
    return e


def load_spose_labels(data_dir: Path) -> tuple[str, ...]:
    path = data_dir / "things_spose66d" / "labels_spose_66d_short.txt"
    if not path.is_file():
        return tuple(str(i) for i in range(66))
    return tuple(line.strip() for line in read_lines(path) if line.strip())
