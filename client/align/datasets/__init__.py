"""Datasets of human similarity judgments: a registry and loaders of the real file formats.

::

    from align.datasets import load_dataset, list_datasets
    ds = load_dataset("things")            # 20,000 THINGS odd-one-out responses (shipped)
    ds = load_dataset("things48")          # needs the data directory
    ds = load_dataset("wordsim/simlex999") # shipped
    ds = load_dataset("/path/to/my/folder")  # see align.datasets.folder

Data directory: explicit ``data_dir``, else ``$ALIGN_DATA_DIR``, else ``../shared/data``
relative to the working directory. Nothing is downloaded: a dataset whose files are
absent raises DataMissingError saying where we looked and where to get them.

Ids: ``things`` (+ ``things/train``, ``things/validation``, ``things/full`` when the
THINGS-data files sit in ``<data_dir>/things/triplet_dataset``), ``things48``, ``mur92``,
``peterson-animals``, ``peterson-animals/halves``, ``wordsim/<name>`` (men, simlex999,
simverb3500, ws353, ws353-rel, ws353-sim, rw, mturk287, mturk771, rg65, mc30, yp130,
verb143), ``folder:<path>`` or a folder path.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from . import things as _things
from .base import Dataset, DatasetStatus, resolve_data_dir
from .folder import load_folder
from .matrices import load_mur92, load_peterson, load_things48
from .wordsim import WORDSIM, load_wordsim, wordsim_file

__all__ = [
    "Dataset",
    "DatasetStatus",
    "list_datasets",
    "load_dataset",
    "load_spose_embedding",
    "load_vice_concept_labels",
    "load_vice_embedding",
    "resolve_data_dir",
]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class _Spec:
    id: str
    kind: str
    n_stimuli: int
    files: tuple[str, ...]  # relative to the data directory; all needed ("" = shipped)
    where_to_get: str
    description: str
    optional: tuple[str, ...] = ()  # e.g. images: reported as missing, not required


_THINGS_GET = "https://osf.io/f5rn6/ (THINGS-data, data/triplet_dataset/)"
_SPECS: dict[str, _Spec] = {
    "things": _Spec(
        "things",
        "triplets",
        1854,
        (),
        "shipped in align/data/things; images: "
        "THINGS database https://osf.io/jum2f/ (academic terms) -> <data_dir>/things/images",
        "THINGS odd-one-out noise-ceiling set (20,000 responses, 1,000 triplets)",
        optional=("things/images",),
    ),
    **{
        name: _Spec(
            name,
            "triplets",
            1854,
            (f"things/triplet_dataset/{file}",),
            _THINGS_GET,
            f"THINGS-data {file}",
            optional=("things/images",),
        )
        for name, file in _things.THINGS_DATA_FILES.items()
    },
    "things48": _Spec(
        "things48",
        "rdm",
        48,
        ("things48/RDM48_triplet.mat", "things48/rdm48_order.csv"),
        "github.com/marrenj/cvpr_perturbations clip_hba_behavior/Data (THINGS, Hebart 2020)",
        "Human RDM over 48 THINGS objects (fully sampled triplets)",
        optional=("things48/images48_original",),
    ),
    "mur92": _Spec(
        "mur92",
        "rdm",
        92,
        ("mur92/images92/stimuli_92_labels.csv",),
        "github.com/rsagroup/rsatoolbox demos/92imageData",
        "16 people's similarity-judgment RDMs over the 92-image set (Mur et al. 2013)",
        optional=("mur92/behav_rdms_92_16subjects.npy|mur92/92_behavRDMs.mat",),
    ),
    "peterson-animals": _Spec(
        "peterson-animals",
        "rdm",
        120,
        ("peterson_animals/turkResults_CogSci2016.mat",),
        "github.com/jcpeterson/percept2vec (images not distributed)",
        "Pairwise similarity ratings of 120 animal photos (Peterson et al. 2016)",
    ),
    "peterson-animals/halves": _Spec(
        "peterson-animals/halves",
        "rdm",
        120,
        ("peterson_animals/turkResults_CogSci2016.mat",),
        "github.com/jcpeterson/percept2vec (images not distributed)",
        "The two split halves of the Peterson animal ratings as 2 matrices",
    ),
    **{
        f"wordsim/{name}": _Spec(
            f"wordsim/{name}",
            "wordsim",
            0,
            (),
            "shipped in align/data/wordsim",
            citation.split(".")[0],
        )
        for name, (_, citation) in WORDSIM.items()
    },
}


def _known() -> list[str]:
    return list(_SPECS)


def load_dataset(
    name_or_path: PathLike,
    data_dir: PathLike | None = None,
    *,
    images: PathLike | None = None,
    triplets: PathLike | None = None,
    triplet_order: str | None = None,
) -> Dataset:
    """Load a dataset by id (see the module docstring) or from a folder.

    ``images``: a folder of stimulus images (THINGS: ``<uniqueID>_NN[bs].jpg``;
    peterson-animals: ``<id>.<ext>``). ``triplets`` (things only): a THINGS triplet file
    in any supported format instead of the shipped set; ``triplet_order`` ("concepts" or
    "raw") declares its object order when it is not the format's default.
    """
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise InvalidInputError("dataset", f"is a {type(name_or_path).__name__}", "an id or path")
    name = os.fspath(name_or_path)
    root, _ = resolve_data_dir(data_dir)
    if name.startswith("folder:"):
        return load_folder(Path(name[len("folder:") :]))
    if name not in _SPECS and Path(name).expanduser().is_dir():
        return load_folder(Path(name).expanduser())
    if name not in _SPECS:
        hint = None
        if Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
            hint = f"(and {name} is not a dataset folder)"
        raise NotFoundError("dataset", name, _known(), hint=hint)
    is_things = name == "things" or name in _things.THINGS_DATA_FILES
    if (triplets is not None or triplet_order is not None) and not is_things:
        raise InvalidInputError("triplets", f"was given for {name}", "only for things datasets")
    if images is not None and not (is_things or name.startswith("peterson-animals")):
        raise InvalidInputError(
            "images", f"was given for {name}", "only for things and peterson-animals datasets"
        )
    try:
        if is_things:
            return _things.load_things(
                root, name, triplets=triplets, images=images, order=triplet_order
            )
        if name == "things48":
            return load_things48(root)
        if name == "mur92":
            return load_mur92(root)
        if name.startswith("peterson-animals"):
            return load_peterson(root, name.endswith("/halves"), images)
        return load_wordsim(name.split("/", 1)[1], root)
    except DataMissingError as exc:
        raise DataMissingError(f"{name}: {exc} [{_looked(data_dir)}]") from None


def _looked(data_dir: PathLike | None) -> str:
    root, how = resolve_data_dir(data_dir)
    return f"data directory {root} (chosen by: {how}; set ALIGN_DATA_DIR or pass data_dir)"


def _status(spec: _Spec, root: Path, how: str) -> DatasetStatus:
    missing = [f for f in spec.files if not (root / f).exists()]
    for alternative in spec.optional:
        if not any((root / f).exists() for f in alternative.split("|")):
            missing.append(alternative + " (optional)" if "images" in alternative else alternative)
    required_missing = [m for m in missing if not m.endswith("(optional)")]
    n = spec.n_stimuli
    path = str(root / spec.files[0]) if spec.files else "align/data (shipped)"
    if spec.kind == "wordsim":
        try:
            path = str(wordsim_file(spec.id.split("/", 1)[1], root))
            from .wordsim import read_pairs

            pairs, _ = read_pairs(Path(path))
            n = len({w for p in pairs for w in p})
        except DataMissingError:
            required_missing.append(spec.id)
            missing.append(spec.id)
    return DatasetStatus(
        id=spec.id,
        kind=spec.kind,
        n_stimuli=n,
        present=not required_missing,
        path=path,
        searched=how,
        data_dir=str(root),
        missing=tuple(missing),
        where_to_get=spec.where_to_get,
        description=spec.description,
    )


def list_datasets(data_dir: PathLike | None = None) -> list[DatasetStatus]:
    """Every registered dataset with whether its files are here and what is missing."""
    root, how = resolve_data_dir(data_dir)
    return [_status(spec, root, how) for spec in _SPECS.values()]


def load_vice_embedding(data_dir: PathLike | None = None) -> np.ndarray:
    """VICE embedding (1854, 42) in things_concepts order (the file is in RAW order)."""
    return _wrap(_things.load_vice_embedding, data_dir)


def load_spose_embedding(data_dir: PathLike | None = None) -> np.ndarray:
    """SPoSE 66-d embedding (1854, 66) in things_concepts order."""
    return _wrap(_things.load_spose_embedding, data_dir)


def load_vice_concept_labels(data_dir: PathLike | None = None) -> tuple[str, ...]:
    """Names of the 42 VICE dimensions if ``things/vice_labels.txt`` exists, else "0".."41"."""
    root, _ = resolve_data_dir(data_dir)
    return _things.load_vice_concept_labels(root)


def _wrap(loader: Callable[[Path], np.ndarray], data_dir: PathLike | None) -> np.ndarray:
    root, _ = resolve_data_dir(data_dir)
    try:
        return loader(root)
    except DataMissingError as exc:
        raise DataMissingError(f"{exc} [{_looked(data_dir)}]") from None
