"""Models: a registry of model ids (timm, open_clip, sentence-transformers, precomputed
features, any torch module) and the engine that embeds stimuli with them.

    >>> from align.models import load_model, embed_dataset
    >>> model = load_model("timm/tf_efficientnet_lite0")
    >>> out = model.embed(["cat.jpg", "dog.jpg"], layers=("penultimate", "logits"))
    >>> out["penultimate"].shape
    (2, 1280)

See docs/DESIGN.md ("models") for the contract.
"""

from __future__ import annotations

from .engine import EmbeddingModel, ImageModel, StimulusWarning, embed_dataset
from .features import FeaturesModel, from_torch
from .images import load_image, preprocess
from .registry import ENTRIES, get_spec, list_models, load_model, register_model
from .spec import DEFAULT_LAYER, ModelSpec, Preprocessing, WeightsSpec, weights_digest

__all__ = [
    "DEFAULT_LAYER",
    "ENTRIES",
    "EmbeddingModel",
    "FeaturesModel",
    "ImageModel",
    "ModelSpec",
    "Preprocessing",
    "StimulusWarning",
    "WeightsSpec",
    "embed_dataset",
    "from_torch",
    "get_spec",
    "list_models",
    "load_image",
    "load_model",
    "preprocess",
    "register_model",
    "weights_digest",
]
