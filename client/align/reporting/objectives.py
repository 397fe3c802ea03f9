"""Objective and training data vs architecture: the paper's central claim, put to the test
with the models that install offline (docs/results.md, "Objective and data vs
architecture").

:data:`MODELS` says, for each model id, its architecture, objective and training data
(from the model cards of the packages). :func:`objective_comparison` takes the
``reproduce`` results, re-reads every model's THINGS and mur92 features (disk cache hits:
the run just computed them) and computes, for each pair in :data:`CONTRASTS`, the PAIRED
difference of zero-shot THINGS accuracy (cluster bootstrap over distinct triplets, both
models on the same responses) and of mur92 RSA (stimulus bootstrap, both RDMs from the
same resampled images). A difference is called one only when its paired 95% interval
excludes 0. :func:`objectives_markdown` writes the section.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import AlignError
from .html import fmt


@dataclass(frozen=True)
class ModelCard:
    architecture: str  # family, for grouping
    params_m: float | None  # millions of weights in the file (None: not countable here)
    objective: str
    data: str


#: What each model is (the grouping of the table). Weight counts: elements of the
#: weight tensors in the shipped file (the int8/fp16 graphs counted in elements).
MODELS: dict[str, ModelCard] = {
    "timm/tf_efficientnet_lite0": ModelCard(
        "EfficientNet-Lite", 4.65, "supervised classification", "ImageNet-1k"
    ),
    "timm/tf_efficientnet_lite1": ModelCard(
        "EfficientNet-Lite", 5.42, "supervised classification", "ImageNet-1k"
    ),
    "timm/tf_efficientnet_lite2": ModelCard(
        "EfficientNet-Lite", 6.09, "supervised classification", "ImageNet-1k"
    ),
    "onnx/sscd-resnet50": ModelCard(
        "ResNet-50", 24.5, "self-supervised contrastive (copy detection)", "DISC2021, ~1M images"
    ),
    "onnx/sscd-mobilenetv4": ModelCard(
        "MobileNetV4-S",
        1.74,
        "distilled from SSCD (copy detection)",
        "CC3M images (ImageNet-initialised)",
    ),
    "onnx/open-nsfw-resnet50": ModelCard(
        "ResNet-50 (thin)",
        5.93,
        "supervised NSFW/SFW classification",
        "ImageNet start + NSFW photos",
    ),
    "hed/vgg16": ModelCard(
        "VGG16", 14.7, "edge detection (deep supervision)", "BSDS500 (ImageNet start)"
    ),
    "dlib/face-resnet": ModelCard(
        "ResNet (dlib, small)", None, "metric learning on faces", "~3M face images"
    ),
    "text/all-MiniLM-L6-v2": ModelCard(
        "MiniLM-L6 (transformer)", 22.7, "contrastive sentence embedding", "1B sentence pairs"
    ),
    "glove/6b-50d": ModelCard("GloVe 50-d", 20.0, "word co-occurrence", "Wikipedia + Gigaword"),
    "timm/tf_efficientnet_lite0@random": ModelCard(
        "EfficientNet-Lite", 4.65, "none (random init)", "none"
    ),
    "timm/resnet50@random": ModelCard("ResNet-50", 25.6, "none (random init)", "none"),
    "timm/mobilenetv4_conv_small@random": ModelCard(
        "MobileNetV4-S", 3.77, "none (random init)", "none"
    ),
    "hed/vgg16@random": ModelCard("VGG16", 14.7, "none (random init)", "none"),
}

#: Paired contrasts: (a, b, what differs, what is held). Read as "b minus a".
CONTRASTS: tuple[tuple[str, str, str, str], ...] = (
    # objective / data differ, architecture (roughly) held
    (
        "onnx/open-nsfw-resnet50",
        "onnx/sscd-resnet50",
        "objective + data",
        "ResNet-50 family (NSFW: thin variant)",
    ),
    ("timm/resnet50@random", "onnx/sscd-resnet50", "training (SSCD vs none)", "ResNet-50"),
    ("hed/vgg16@random", "hed/vgg16", "training (edges vs none)", "VGG16"),
    (
        "timm/tf_efficientnet_lite0@random",
        "timm/tf_efficientnet_lite0",
        "training (ImageNet vs none)",
        "EfficientNet-Lite0",
    ),
    (
        "timm/mobilenetv4_conv_small@random",
        "onnx/sscd-mobilenetv4",
        "training (SSCD distillation vs none)",
        "MobileNetV4-S",
    ),
    # architecture / scale differ, objective (roughly) held
    (
        "onnx/sscd-mobilenetv4",
        "onnx/sscd-resnet50",
        "architecture + scale (and data)",
        "SSCD descriptor objective",
    ),
    (
        "timm/tf_efficientnet_lite0",
        "timm/tf_efficientnet_lite2",
        "scale (1.3x)",
        "EfficientNet-Lite, ImageNet",
    ),
    # objective + data + architecture all differ (the best ImageNet model vs the others)
    ("onnx/sscd-resnet50", "timm/tf_efficientnet_lite1", "everything", "—"),
    ("hed/vgg16", "timm/tf_efficientnet_lite1", "everything", "—"),
    ("dlib/face-resnet", "timm/tf_efficientnet_lite1", "everything", "—"),
    ("onnx/open-nsfw-resnet50", "timm/tf_efficientnet_lite1", "everything", "—"),
    ("glove/6b-50d", "text/all-MiniLM-L6-v2", "everything (text models)", "—"),
)

_KINDS = ("objective + data", "training", "architecture", "scale", "everything")


#: Row groups of the models table, in order (by objective and data).
GROUPS = (
    ("ImageNet classification", ("supervised classification",)),
    ("other supervised tasks", ("supervised NSFW", "edge detection")),
    ("self-supervised / distilled", ("self-supervised", "distilled")),
    ("metric learning", ("metric learning",)),
    ("text", ("contrastive sentence", "word co-occurrence")),
    ("random init (controls)", ("none",)),
)


def group_of(objective: str) -> tuple[int, str]:
    """(order, name) of the row group of an objective."""
    for k, (name, prefixes) in enumerate(GROUPS):
        if objective.startswith(prefixes):
            return k, name
    return len(GROUPS), "other"


def _kind(differs: str) -> str:
    for k in _KINDS:
        if differs.startswith(k):
            return k
    return "other"


def _features(
    ids: set[str], datasets: dict[str, Any], data_dir: Any, cache: Any
) -> dict[tuple[str, str], np.ndarray]:
    """Penultimate features of each model on each dataset (from the embedding cache)."""
    from .sources import resolve_source

    out: dict[tuple[str, str], np.ndarray] = {}
    for sid in sorted(ids):
        try:
            src = resolve_source(sid, data_dir, cache, ("penultimate",))
        except AlignError:
            continue
        try:
            for name, ds in datasets.items():
                try:
                    out[(sid, name)] = np.asarray(
                        src.features(ds, ("penultimate",))["penultimate"], dtype=np.float64
                    )
                except AlignError:
                    continue
        finally:
            src.close()
    return out


def _zero_shot_correct(X: np.ndarray, T: np.ndarray) -> np.ndarray:
    """Per response: 1 when cosine similarity picks the human's odd one out (column 2),
    NaN when a row of the triplet is missing."""
    from ..metrics.oddoneout import predict_odd_one_out

    ok = ~np.isnan(X).all(axis=1)[T].any(axis=1)
    out = np.full(T.shape[0], np.nan)
    out[ok] = (np.asarray(predict_odd_one_out(X, T[ok], "cosine")) == 2).astype(float)
    return out


def _ci(ci: Any) -> list[float] | None:
    return None if ci is None else [float(ci[0]), float(ci[1])]


def objective_comparison(
    results: list[dict[str, Any]],
    ctx: Any,
    cfg: Any,
    data_dir: str | Path | None = None,
    cache: Any = True,
) -> dict[str, Any]:
    """Per-model rows and paired contrasts (JSON-able); models not in the run are left out
    (their contrasts say so)."""
    from ..metrics.bootstrap import distinct_triplet_groups, paired_cluster_difference
    from ..metrics.rsa import paired_rsa_delta

    ran = {r["source"]["id"]: r for r in results}
    rows = []
    for sid, card in MODELS.items():
        r = ran.get(sid)
        if r is None:
            continue
        zs = r["things"]["zero_shot"]
        rsa = (r.get("rsa", {}).get("mur92") or {}).get("rsa") or {}
        ceiling = rsa.get("noise_ceiling") or {}
        rows.append(
            {
                "id": sid,
                "label": r["source"]["label"],
                "architecture": card.architecture,
                "params_m": card.params_m,
                "objective": card.objective,
                "data": card.data,
                "zero_shot": zs.get("accuracy"),
                "zero_shot_ci": zs.get("ci"),
                "n_dropped": zs.get("n_dropped"),
                "rsa_mur92": rsa.get("score"),
                "rsa_mur92_ci": rsa.get("ci"),
                "rsa_mur92_ceiling": [ceiling.get("lower"), ceiling.get("upper")]
                if ceiling
                else None,
            }
        )
    things = ctx.datasets["things"]
    datasets = {"things": things}
    if "mur92" in ctx.datasets:
        datasets["mur92"] = ctx.datasets["mur92"]
    wanted = {m for a, b, _, _ in CONTRASTS for m in (a, b) if m in ran}
    feats = _features(wanted, datasets, data_dir, cache)
    T = np.asarray(things.triplets, dtype=np.int64)
    groups = distinct_triplet_groups(T)
    boot = {"n_bootstrap": cfg.n_bootstrap, "seed": cfg.seed}
    contrasts = []
    for a, b, differs, held in CONTRASTS:
        entry: dict[str, Any] = {
            "a": a,
            "b": b,
            "differs": differs,
            "kind": _kind(differs),
            "held": held,
        }
        if (a, "things") not in feats or (b, "things") not in feats:
            entry["unavailable"] = "not in this run"
            contrasts.append(entry)
            continue
        ca = _zero_shot_correct(feats[(a, "things")], T)
        cb = _zero_shot_correct(feats[(b, "things")], T)
        both = ~np.isnan(ca) & ~np.isnan(cb)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pe = paired_cluster_difference(cb[both], ca[both], groups[both], **boot)
        entry["zero_shot"] = {
            "a": pe.b,
            "b": pe.a,
            "delta": pe.difference,
            "ci": _ci(pe.ci_difference),
            "n_responses": int(both.sum()),
            "n_triplets": pe.n_units,
        }
        if (a, "mur92") in feats and (b, "mur92") in feats:
            ds = datasets["mur92"]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pr = paired_rsa_delta(
                    feats[(a, "mur92")], feats[(b, "mur92")], ds.matrices, ds.matrix_kind, **boot
                )
            entry["rsa_mur92"] = {
                "a": pr.a,
                "b": pr.b,
                "delta": pr.delta,
                "ci": _ci(pr.ci_delta),
                "scale": pr.scale,
            }
        contrasts.append(entry)
    return {"models": rows, "contrasts": contrasts}


def _differs(d: dict[str, Any] | None) -> bool | None:
    if not d or d.get("ci") is None:
        return None
    lo, hi = d["ci"]
    return bool(lo > 0 or hi < 0)


def _fmt_ci(value: Any, ci: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if not ci:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(ci[0], digits)}, {fmt(ci[1], digits)}]"


def _verdict(d: dict[str, Any] | None) -> str:
    v = _differs(d)
    if v is None:
        return "–"
    if not v:
        return "no difference shown"
    return "b higher" if d is not None and d["delta"] > 0 else "a higher"


def objectives_markdown(table: dict[str, Any]) -> list[str]:
    """The docs/results.md section (numbers from ``table``; the conclusions are computed
    from the paired intervals)."""
    L = ["## Objective and data vs architecture\n"]
    L.append(
        "The paper's central claim: the training objective and data drive alignment, "
        "architecture and scale barely matter. The models below differ in those factors "
        "(weights from installed packages; see README, Models). Rows are grouped by "
        "objective; RSA is mur92's mean over subjects of the per-subject Spearman "
        "correlation, with its leave-one-subject-out / upper noise ceiling.\n"
    )
    L.append(
        "| group | model | architecture | weights (M) | objective | training data | "
        "THINGS zero-shot [95% CI] | RSA mur92 [95% CI] | mur92 ceiling |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    rows = sorted(table["models"], key=lambda r: (group_of(r["objective"]), r["id"]))
    for r in rows:
        ceil = r.get("rsa_mur92_ceiling")
        ceil_s = f"{fmt(ceil[0])}–{fmt(ceil[1])}" if ceil and ceil[0] is not None else "–"
        params = "–" if r["params_m"] is None else f"{r['params_m']:.1f}"
        L.append(
            f"| {group_of(r['objective'])[1]} | `{r['id']}` | {r['architecture']} | {params} "
            f"| {r['objective']} | {r['data']} "
            f"| {_fmt_ci(r['zero_shot'], r['zero_shot_ci'])} "
            f"| {_fmt_ci(r['rsa_mur92'], r['rsa_mur92_ci'])} | {ceil_s} |"
        )
    L.append("")
    L.append(
        "Paired contrasts (b − a). THINGS: both models on the same responses, interval "
        "from resampling distinct triplets; mur92: both RDMs from the same resampled "
        "images. A difference is claimed only when its paired 95% interval excludes 0.\n"
    )
    L.append(
        "| a | b | what differs | held fixed | Δ THINGS zero-shot [95% CI] | verdict | "
        "Δ RSA mur92 [95% CI] | verdict |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for c in table["contrasts"]:
        if "unavailable" in c:
            L.append(
                f"| `{c['a']}` | `{c['b']}` | {c['differs']} | {c['held']} | "
                f"{c['unavailable']} | – | – | – |"
            )
            continue
        z, r = c.get("zero_shot"), c.get("rsa_mur92")
        L.append(
            f"| `{c['a']}` | `{c['b']}` | {c['differs']} | {c['held']} | "
            f"{_fmt_ci(z['delta'] if z else None, z['ci'] if z else None)} | {_verdict(z)} | "
            f"{_fmt_ci(r['delta'] if r else None, r['ci'] if r else None)} | {_verdict(r)} |"
        )
    L.append("")
    L.extend(_conclusions(table))
    return L


def _count(contrasts: list[dict[str, Any]], kind: str, key: str) -> tuple[int, int, list[str]]:
    done = [c for c in contrasts if c["kind"] == kind and key in c]
    shown = [c for c in done if _differs(c[key])]
    return len(shown), len(done), [f"{c['b']} vs {c['a']}" for c in shown]


def _conclusions(table: dict[str, Any]) -> list[str]:
    cs = table["contrasts"]
    L = ["What this can and cannot conclude:\n"]
    for kind, what in (
        ("objective + data", "objective and data changed, ResNet-50 family held"),
        ("training", "trained vs random init, architecture held"),
        ("architecture", "architecture and scale changed, SSCD objective held"),
        ("scale", "scale changed within EfficientNet-Lite, ImageNet objective held"),
        ("everything", "everything changed (vs the best ImageNet model, or text vs text)"),
    ):
        for key, name in (("zero_shot", "THINGS zero-shot"), ("rsa_mur92", "mur92 RSA")):
            k, n, which = _count(cs, kind, key)
            if n:
                detail = f" ({'; '.join(which)})" if which else ""
                L.append(f"- {what}: {name} differs in {k} of {n} contrasts{detail}.")
    obj_k = sum(_count(cs, "objective + data", key)[0] for key in ("zero_shot", "rsa_mur92"))
    arch_k = sum(_count(cs, kind, key)[0] for kind in ("architecture", "scale")
                 for key in ("zero_shot", "rsa_mur92"))  # fmt: skip
    arch_ci = [
        c[key]["ci"]
        for c in cs
        if c["kind"] in ("architecture", "scale")
        for key in ("zero_shot",)
        if key in c and c[key].get("ci")
    ]
    bound = max((max(abs(lo), abs(hi)) for lo, hi in arch_ci), default=None)
    L.append(
        "- Reading: "
        + (
            "objective/data contrasts show differences where architecture/scale contrasts "
            "do not, in the direction of the paper's claim"
            + (
                f" (the architecture/scale intervals on THINGS exclude differences larger "
                f"than {bound:.3f}; no difference shown is not no difference)"
                if bound is not None
                else ""
            )
            if obj_k > 0 and arch_k == 0
            else "architecture/scale contrasts show differences too, so these data do not "
            "single out objective and data"
            if arch_k > 0
            else "no contrast with the architecture held shows a difference, so these data "
            "cannot separate the factors"
        )
        + ". Limits: one pair per factor at best, and the factors are confounded (the SSCD "
        "student also changes data; open_nsfw's ResNet-50 is a thin variant; HED and dlib "
        "see whole object images far from their training domain, at preprocessing sizes "
        "chosen for batching); no model here was trained on image-text pairs or at the "
        "data scale the paper found to matter, so its strongest comparison (CLIP-like vs "
        "ImageNet models) is not testable offline. With ~1,000 distinct THINGS triplets "
        "and 92 mur92 images, differences under a few points are not resolved.\n"
    )
    return L
