"""The Dataset record, its status row, data-directory resolution and the content digest."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..digest import combine, digest_array, digest_json
from ..errors import InvalidInputError
from ..results import Result

Kind = Literal["triplets", "rdm", "wordsim"]
Convention = Literal["odd-one-out", "anchor"]
MatrixKind = Literal["dissimilarity", "similarity"]

#: Where the shipped behavioural files live (inside the installed package).
PACKAGE_DATA = Path(__file__).resolve().parent.parent / "data"

ENV_VAR = "ALIGN_DATA_DIR"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None = None) -> tuple[Path, str]:
    """The data directory and how it was chosen.

    Explicit ``data_dir`` ("explicit"), else ``$ALIGN_DATA_DIR`` ("ALIGN_DATA_DIR"), else
    ``../shared/data`` relative to the working directory ("default"). The folder need not
    exist: loaders say what is missing.
    """
    if data_dir is not None:
        return Path(data_dir).expanduser(), "explicit"
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser(), ENV_VAR
    return (Path.cwd() / ".." / "shared" / "data").resolve(), "default"


@dataclass(frozen=True, eq=False)
class Dataset:
    """Human similarity judgments over a fixed, ordered set of stimuli.

    ``kind`` says which judgments are filled in: ``triplets`` (+ ``subjects``) for
    odd-one-out/anchor triplets, ``matrices`` for RDMs/RSMs (one per subject, ``s = 1``
    for a group matrix), ``pairs`` + ``pair_scores`` for word similarity. Row ``i`` of a
    feature matrix belongs to ``stimulus_ids[i]``.
    """

    id: str
    kind: Kind
    stimulus_ids: tuple[str, ...]
    words: tuple[str, ...] | None = None
    image_paths: tuple[Path | None, ...] | None = None
    triplets: np.ndarray | None = None
    triplet_convention: Convention = "odd-one-out"
    subjects: np.ndarray | None = None
    matrices: np.ndarray | None = None
    matrix_kind: MatrixKind = "dissimilarity"
    pairs: tuple[tuple[str, str], ...] | None = None
    pair_scores: np.ndarray | None = None
    citation: str = ""
    licence: str = ""
    description: str = ""
    source: str = ""
    digest: str = field(default="")

    def __post_init__(self) -> None:
        n = len(self.stimulus_ids)
        if self.words is not None and len(self.words) != n:
            raise InvalidInputError("words", f"has {len(self.words)} entries", f"{n}")
        if self.image_paths is not None and len(self.image_paths) != n:
            raise InvalidInputError(
                "image_paths", f"has {len(self.image_paths)} entries", f"{n}, one per stimulus"
            )
        if self.triplets is not None:
            t = self.triplets
            if t.ndim != 2 or t.shape[1] != 3 or t.dtype != np.int64:
                raise InvalidInputError(
                    "triplets", f"is {t.dtype} of shape {t.shape}", "(m, 3) int64"
                )
            if t.size and (t.min() < 0 or t.max() >= n):
                raise InvalidInputError(
                    "triplets", f"has indices in [{t.min()}, {t.max()}]", f"0..{n - 1}"
                )
            if self.subjects is not None and self.subjects.shape != (len(t),):
                raise InvalidInputError(
                    "subjects", f"has shape {self.subjects.shape}", f"({len(t)},)"
                )
        if self.matrices is not None and (
            self.matrices.ndim != 3 or self.matrices.shape[1:] != (n, n)
        ):
            raise InvalidInputError(
                "matrices", f"has shape {self.matrices.shape}", f"(s, {n}, {n})"
            )
        if not self.digest:
            object.__setattr__(self, "digest", content_digest(self))

    @property
    def n_stimuli(self) -> int:
        return len(self.stimulus_ids)

    @property
    def missing_images(self) -> tuple[int, ...]:
        """Indices of stimuli whose image is missing (empty when no images at all)."""
        if self.image_paths is None:
            return ()
        return tuple(i for i, p in enumerate(self.image_paths) if p is None)

    def triplets_touching(self, indices: tuple[int, ...] | list[int]) -> int:
        """How many triplets involve any of the given stimulus indices."""
        if self.triplets is None or not len(indices):
            return 0
        return int(np.isin(self.triplets, np.asarray(indices)).any(axis=1).sum())

    def without_missing_images(self) -> Dataset:
        """A copy whose triplets avoid stimuli without an image (stimulus order is kept).

        Metrics already drop those triplets from all-NaN feature rows; this is for
        callers that want the filtered judgments themselves.
        """
        missing = self.missing_images
        if self.triplets is None or not missing:
            return self
        keep = ~np.isin(self.triplets, np.asarray(missing)).any(axis=1)
        return dataclasses.replace(
            self,
            triplets=self.triplets[keep],
            subjects=None if self.subjects is None else self.subjects[keep],
            digest="",
        )


def content_digest(ds: Dataset) -> str:
    """sha256 over the stimulus ids and the judgments (not over paths or the source)."""
    parts = [
        digest_json({"kind": ds.kind, "stimulus_ids": list(ds.stimulus_ids)}),
        digest_json({"words": None if ds.words is None else list(ds.words)}),
    ]
    if ds.triplets is not None:
        parts += [ds.triplet_convention, digest_array(ds.triplets)]
        if ds.subjects is not None:
            parts.append(digest_array(ds.subjects))
    if ds.matrices is not None:
        parts += [ds.matrix_kind, digest_array(ds.matrices)]
    if ds.pairs is not None and ds.pair_scores is not None:
        parts += [digest_json([list(p) for p in ds.pairs]), digest_array(ds.pair_scores)]
    return combine(parts)


@dataclass(frozen=True)
class DatasetStatus(Result):
    """One row of :func:`list_datasets`: is the dataset usable here, and if not, why."""

    id: str
    kind: str
    n_stimuli: int
    present: bool
    path: str
    searched: str  # how the data directory was chosen: explicit / ALIGN_DATA_DIR / default
    data_dir: str
    missing: tuple[str, ...] = ()
    where_to_get: str = ""
    description: str = ""
