"""``open_clip/<arch>[@random|@<checkpoint file>|@<pretrained tag>]``.

The image tower embeds images, the text tower embeds words (word datasets, or
``embed(words, modality="text")``). No CLIP weights install offline: without a
checkpoint (or with ``@random``) the model is a seeded random init (for tests and
controls); a local checkpoint file (weights_only load) gives real use; an open_clip
pretrained tag (``open_clip/ViT-B-32@openai``) downloads only when online.

Named layers: ``penultimate`` = the tower's output embedding (``encode_image`` /
``encode_text``, before L2 normalisation; CLIP has no classifier, so its embedding is
the last layer the paper uses), plus any module name (e.g.
``visual.transformer.resblocks.11``). Preprocessing is the model's own
``preprocess_cfg``.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .checkpoints import load_strict, read_state_dict, seeded
from .engine import (
    DEFAULT_LAYER,
    ImageModel,
    Layers,
    _batch_size,
    _progress,
    _text_words,
)
from .spec import (
    ModelSpec,
    Preprocessing,
    WeightsSpec,
    checkpoint_weights,
    hub_online,
)

_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors")


def _oc() -> Any:
    import open_clip

    return open_clip


@functools.lru_cache(maxsize=64)
def _preprocessing(arch: str, tag: str | None) -> Preprocessing:
    oc = _oc()
    cfg = oc.get_model_config(arch)
    vision = dict(cfg.get("vision_cfg", {}))
    pp: dict[str, Any] = {}
    if tag:
        pp.update(oc.get_pretrained_cfg(arch, tag) or {})
    merged_dict = oc.transform.merge_preprocess_dict(
        oc.transform.PreprocessCfg(size=vision.get("image_size", 224)),
        {
            k: v
            for k, v in {**vision.get("preprocess_cfg", {}), **pp}.items()
            if k in ("mean", "std", "interpolation", "resize_mode", "size")
        },
    )
    merged = oc.transform.PreprocessCfg(**merged_dict)
    mode = {"shortest": "center", "squash": "squash"}.get(merged.resize_mode)
    if mode is None:
        raise InvalidInputError(
            "preprocessing",
            f"open_clip/{arch} uses resize_mode {merged.resize_mode!r}",
            "shortest or squash",
        )
    return Preprocessing.from_config(
        merged.size, 1.0, merged.interpolation, merged.mean, merged.std, mode
    )


def make_spec(model_id: str, arch: str, weights: str | None) -> ModelSpec:
    oc = _oc()
    known = oc.list_models()
    if arch not in known:
        raise NotFoundError(
            "model",
            model_id,
            [f"open_clip/{a}" for a in known],
            hint="(open_clip/<arch> takes a name from open_clip.list_models())",
        )
    tag: str | None = None
    if weights is None or weights == "random":
        wspec = WeightsSpec("random", "seed=0", None)
        desc = f"open_clip {arch}, random init (seed 0): no CLIP weights are installed"
    elif weights.endswith(_SUFFIXES) or "/" in weights or Path(weights).expanduser().exists():
        wspec, path = checkpoint_weights(model_id, weights)
        desc = f"open_clip {arch}, weights from {path}"
    else:
        tags = oc.list_pretrained_tags_by_model(arch)
        if weights not in tags:
            raise NotFoundError(
                "open_clip checkpoint",
                f"{arch}@{weights}",
                [f"{arch}@{t}" for t in tags],
                hint="(give a pretrained tag, 'random' or a local checkpoint file)",
            )
        tag = weights
        wspec = WeightsSpec("hub", f"{arch}:{tag}", None)
        desc = f"open_clip {arch}, pretrained {tag} from the hub"
    return ModelSpec(
        id=model_id,
        family="open_clip",
        architecture=arch,
        modality="image",
        weights=wspec,
        preprocessing=_preprocessing(arch, tag),
        layers=(DEFAULT_LAYER,),
        description=desc,
    )


def build_module(spec: ModelSpec) -> torch.nn.Module:
    oc = _oc()
    arch, w = spec.architecture, spec.weights
    if w.source == "hub":
        if not hub_online():
            raise DataMissingError(
                f"{spec.id}: CLIP weights are not on this machine and downloads are off "
                "(HF_HUB_OFFLINE). Save a checkpoint and use open_clip/"
                f"{arch}@/path/to/checkpoint.pt, or unset HF_HUB_OFFLINE."
            )
        _, tag = w.location.split(":", 1)
        hub_model: torch.nn.Module = oc.create_model(arch, pretrained=tag)
        return hub_model
    with seeded(int(w.location.split("=")[1]) if w.source == "random" else 0):
        model: torch.nn.Module = oc.create_model(arch, pretrained=None)
    if w.source == "file":
        sd = read_state_dict(w.location, field=f"weights of {spec.id}")
        load_strict(model, sd, f"weights of {spec.id} ({w.location})")
    return model


class OpenClipModel(ImageModel):
    """Image tower through the engine; text tower for words."""

    modalities: tuple[str, ...] = ("image", "text")

    def __init__(self, spec: ModelSpec, module: torch.nn.Module, device: Any = None) -> None:
        clip: Any = module

        def forward(x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
            return {"penultimate": clip.encode_image(x)}

        super().__init__(spec, module, forward, {"penultimate": lambda c: c["penultimate"]}, device)
        self.tokenizer = _oc().get_tokenizer(spec.architecture)
        self._clip: Any = self.module

    def embed(
        self,
        stimuli: Sequence[Any],
        layers: Layers = (DEFAULT_LAYER,),
        batch_size: int | None = None,
        progress: bool = False,
        **options: Any,
    ) -> dict[str, np.ndarray]:
        """Images by default; ``modality="text"`` embeds strings with the text tower."""
        if options.get("modality") != "text":
            return super().embed(stimuli, layers, batch_size, progress, **options)
        words = _text_words(stimuli, layers, options, "the text tower")
        bs = _batch_size(batch_size, 256)
        chunks = []
        with _progress(len(words), progress, "word") as bar, torch.inference_mode():
            for start in range(0, len(words), bs):
                tokens = self.tokenizer(words[start : start + bs]).to(self.device)
                chunks.append(self._clip.encode_text(tokens).float().cpu().numpy())
                bar.update(len(tokens))
        if not chunks:
            chunks.append(self._clip.encode_text(self.tokenizer([""]).to(self.device))[:0])
        out = np.concatenate([np.asarray(c, np.float32) for c in chunks])
        return {DEFAULT_LAYER: out.astype(np.float32, copy=False)}


def load(spec: ModelSpec, device: torch.device | str | None = None) -> OpenClipModel:
    return OpenClipModel(spec, build_module(spec), device)
