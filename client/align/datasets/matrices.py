"""Matrix datasets: things48 (RDM from fully sampled triplets), mur92 (16 subjects'
similarity-judgment RDMs), peterson-animals (pairwise similarity ratings, 0-10).

Images
    things48: ``<data_dir>/things48/images48_original/<image_file>`` (named in
    rdm48_order.csv). mur92: ``<data_dir>/mur92/images92/NN.png``. peterson-animals: the
    images are not distributed; pass ``images=FOLDER`` holding one file per animal whose
    stem is the animal's image id (``7.jpg``; zero padding such as ``007.jpg`` also
    matches). Without a folder, ``image_paths`` is None.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from ..errors import DataMissingError, InvalidInputError
from .base import Dataset
from .io import check_square_matrices, data_rows, load_mat, read_lines, require_file, where
from .things import THINGS_CITATION, THINGS_LICENCE, concept_table

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

MUR92_CITATION = (
    "Mur, M., Meys, M., Bodurka, J., Goebel, R., Bandettini, P. A., & Kriegeskorte, N. "
    "(2013). Human object-similarity judgments reflect and transcend the primate-IT object "
    "representation. Frontiers in Psychology, 4, 128. Stimuli: Kriegeskorte et al. (2008), "
    "Neuron 60(6). Files: github.com/rsagroup/rsatoolbox demos/92imageData"
)
PETERSON_CITATION = (
    "Peterson, J. C., Abbott, J. T., & Griffiths, T. L. (2016/2018). Evaluating (and "
    "improving) the correspondence between deep neural networks and human representations. "
    "CogSci 2016; Cognitive Science 42(8). github.com/jcpeterson/percept2vec"
)


def _csv_rows(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    rows = list(data_rows(path, read_lines(path), ","))
    return rows[0][1], rows[1:]


def load_things48(data_dir: Path) -> Dataset:
    folder = data_dir / "things48"
    get = "github.com/marrenj/cvpr_perturbations clip_hba_behavior/Data (Hebart et al. 2020)"
    mat = require_file(folder / "RDM48_triplet.mat", "things48 RDM", get)
    order = require_file(folder / "rdm48_order.csv", "things48 order table", get)
    header, rows = _csv_rows(order)
    need = ["rdm_index", "word", "uniqueID", "things_concepts_index0", "image_file"]
    if header[: len(need)] != need:
        raise InvalidInputError(where(order, 1), f"header is {header}", ",".join(need))
    if len(rows) != 48:
        raise InvalidInputError(str(order), f"has {len(rows)} data rows", "48")
    _, uids_all = concept_table()
    ids, words, files = [], [], []
    for k, (number, fields) in enumerate(rows):
        if len(fields) < 5 or fields[0] != str(k):
            raise InvalidInputError(where(order, number), f"is {fields}", f"rdm_index {k} first")
        uid, index = fields[2], int(fields[3])
        if uids_all[index] != uid:  # the table must agree with the concept order
            raise InvalidInputError(
                where(order, number),
                f"uniqueID {uid!r} is not concept {index} ({uids_all[index]!r})",
                "things_concepts_index0 pointing at the same uniqueID",
            )
        ids.append(uid)
        words.append(fields[1])
        files.append(fields[4])
    rdm = check_square_matrices(load_mat(mat, "RDM48_triplet"), f"{mat} RDM48_triplet", n=48)
    image_folder = folder / "images48_original"
    image_paths = None
    if image_folder.is_dir():
        image_paths = tuple(p if p.is_file() else None for p in (image_folder / f for f in files))
        _warn_missing("things48", image_paths, image_folder)
    return Dataset(
        id="things48",
        kind="rdm",
        stimulus_ids=tuple(ids),
        words=tuple(words),
        image_paths=image_paths,
        matrices=rdm,
        matrix_kind="dissimilarity",
        citation=THINGS_CITATION,
        licence=THINGS_LICENCE,
        description="Human RDM over 48 THINGS objects from fully sampled odd-one-out triplets",
        source=str(mat),
    )


def load_mur92(data_dir: Path) -> Dataset:
    folder = data_dir / "mur92"
    get = "github.com/rsagroup/rsatoolbox demos/92imageData (92_behavRDMs.mat)"
    npy, mat = folder / "behav_rdms_92_16subjects.npy", folder / "92_behavRDMs.mat"
    if npy.is_file():
        raw, source = np.load(npy, allow_pickle=False), str(npy)
    elif mat.is_file():
        raw, source = read_mur92_mat(mat), str(mat)
    else:
        raise DataMissingError(f"mur92 RDMs: neither {npy} nor {mat} found. Get them: {get}")
    matrices = check_square_matrices(raw, source, n=92)
    labels = require_file(folder / "images92" / "stimuli_92_labels.csv", "mur92 labels", get)
    header, rows = _csv_rows(labels)
    if header[:3] != ["index", "filename", "category"] or len(rows) != 92:
        raise InvalidInputError(
            str(labels), f"header {header[:3]}, {len(rows)} rows", "index,filename,category + 92"
        )
    files = [fields[1] for _, fields in rows]
    image_paths = tuple(p if p.is_file() else None for p in (labels.parent / f for f in files))
    _warn_missing("mur92", image_paths, labels.parent)
    return Dataset(
        id="mur92",
        kind="rdm",
        stimulus_ids=tuple(Path(f).stem for f in files),
        words=None,
        image_paths=image_paths,
        matrices=matrices,
        matrix_kind="dissimilarity",
        citation=MUR92_CITATION,
        licence="rsatoolbox demo data (MIT repository); images: Kriegeskorte et al. 2008",
        description="Similarity-judgment RDMs of 16 people over the 92-image set",
        source=source,
    )


def read_mur92_mat(path: Path) -> np.ndarray:
    """(16, 92, 92) from the struct array rdms_behav_92 (field RDM)."""
    struct = load_mat(path, "rdms_behav_92")
    try:
        return np.stack(
            [np.asarray(struct[0, s]["RDM"], dtype=np.float64) for s in range(struct.shape[1])]
        )
    except (IndexError, ValueError, KeyError) as exc:
        raise InvalidInputError(
            f"{path} rdms_behav_92", f"cannot be read as RDMs ({exc})", "a 1xS struct with RDM"
        ) from None


def load_peterson(data_dir: Path, halves: bool, images: str | os.PathLike[str] | None) -> Dataset:
    path = require_file(
        data_dir / "peterson_animals" / "turkResults_CogSci2016.mat",
        "peterson-animals ratings",
        "github.com/jcpeterson/percept2vec (turkResults_CogSci2016.mat)",
    )
    names = np.asarray(load_mat(path, "animals_big_names")).ravel()
    ids = tuple(str(n).strip() for n in names)
    if len(set(ids)) != len(ids):
        raise InvalidInputError(f"{path} animals_big_names", "has duplicate ids", "unique ids")
    if halves:
        stack = [load_mat(path, k) for k in ("simMatrixFirstBatch", "simMatrixSecondBatch")]
        matrices = check_square_matrices(np.stack(stack), f"{path} split halves", n=len(ids))
    else:
        matrices = check_square_matrices(
            load_mat(path, "simMatrix"), f"{path} simMatrix", n=len(ids)
        )
    image_paths = None
    if images is not None:
        image_paths = match_images_by_stem(Path(images), ids)
        _warn_missing("peterson-animals", image_paths, Path(images))
    return Dataset(
        id="peterson-animals/halves" if halves else "peterson-animals",
        kind="rdm",
        stimulus_ids=ids,
        words=None,
        image_paths=image_paths,
        matrices=matrices,
        matrix_kind="similarity",
        citation=PETERSON_CITATION,
        licence="research use; images not distributed (scraped, not owned by the authors)",
        description=(
            "Pairwise similarity ratings (0-10) of 120 animal photos"
            + (": the two split halves as 2 matrices" if halves else "")
        ),
        source=str(path),
    )


def match_images_by_stem(folder: Path, ids: tuple[str, ...]) -> tuple[Path | None, ...]:
    if not folder.is_dir():
        raise DataMissingError(f"images: folder {folder} not found")
    by_stem: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in IMAGE_SUFFIXES:
            key = p.stem.lstrip("0") or "0" if p.stem.isdigit() else p.stem
            by_stem.setdefault(key, p)
    return tuple(by_stem.get(i.lstrip("0") or "0" if i.isdigit() else i) for i in ids)


def _warn_missing(name: str, paths: tuple[Path | None, ...], folder: Path) -> None:
    n = sum(p is None for p in paths)
    if n:
        warnings.warn(
            f"{name}: {n} of {len(paths)} images missing in {folder}; the RDM entries of "
            "those stimuli are dropped by image metrics",
            stacklevel=4,
        )
