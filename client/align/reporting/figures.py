"""Figures of a report (matplotlib, Agg backend: no display needed).

Every function takes the JSON results of :mod:`align.reporting.experiments` (a list of
per-source dicts), writes one PNG into ``out_dir`` and returns its path. Each PNG
carries its provenance (sources with weights digests, dataset digests, options, library
version) in its ``Description`` metadata; the report prints the same text as a caption.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CHANCE = 1.0 / 3.0
DPI = 100
COLORS = {
    "zero": "#4c72b0",
    "zero_held": "#8da0cb",
    "human": "#dd8452",
    "simulated": "#55a868",
    "glocal": "#c44e52",
    "ceiling": "#444444",
    "chance": "#999999",
}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "figure.dpi": DPI})
    return plt


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "x"


def _save(fig: Any, path: Path, provenance: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"Description": json.dumps(provenance, sort_keys=True), "Software": "align"}
    fig.savefig(path, dpi=DPI, metadata=meta, bbox_inches="tight")
    _plt().close(fig)
    return path


def _ceiling(results: Sequence[dict[str, Any]]) -> float | None:
    for r in results:
        c = r["things"]["zero_shot"].get("ceiling")
        if c is not None:
            return float(c)
    return None


def _lines(ax: Any, ceiling: float | None, vertical: bool = True, chance: float = CHANCE) -> None:
    draw = ax.axvline if vertical else ax.axhline
    draw(chance, color=COLORS["chance"], ls="--", lw=1, label=f"chance ({chance:.3f})")
    if ceiling is not None:
        draw(ceiling, color=COLORS["ceiling"], ls="-", lw=1, label=f"human ceiling ({ceiling:.3f})")


def _err(ci: Any, value: float) -> tuple[float, float]:
    if not ci or ci[0] is None:
        return (0.0, 0.0)
    return (max(0.0, value - float(ci[0])), max(0.0, float(ci[1]) - value))


def things_accuracy(results: Sequence[dict[str, Any]], out_dir: Path, prov: dict) -> Path:
    """Zero-shot and probed THINGS accuracy per source, 95% CIs, chance and ceiling."""
    plt = _plt()
    series = [
        ("zero-shot, all responses", "zero", lambda r: r["things"]["zero_shot"]),
        (
            "transform off (W = I), held-out responses",
            "zero_held",
            lambda r: _probe_zero(r),
        ),
        ("low-rank probe: human triplets", "human", lambda r: _probe(r, "human")),
        ("low-rank probe: simulated supervision", "simulated", lambda r: _probe(r, "simulated")),
        ("low-rank gLocal: simulated supervision", "glocal", lambda r: _probe(r, "glocal")),
    ]
    n = len(results)
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.75 * n))
    height = 0.8 / len(series)
    for j, (name, color, get) in enumerate(series):
        ys, xs, errs = [], [], []
        for i, r in enumerate(results):
            d = get(r)
            if not d or d.get("accuracy") is None:
                continue
            ys.append(i + (j - (len(series) - 1) / 2) * height)
            xs.append(float(d["accuracy"]))
            errs.append(_err(d.get("ci"), float(d["accuracy"])))
        if xs:
            e = np.array(errs).T
            ax.barh(ys, xs, height=height, color=COLORS[color], label=name, xerr=e, capsize=2)
    _lines(ax, _ceiling(results))
    ax.set_yticks(range(n), [r["source"]["label"] for r in results])
    ax.invert_yaxis()
    ax.set_xlabel("odd-one-out accuracy on THINGS (95% CI)")
    ax.set_xlim(0.2, 0.8)
    ax.set_title("THINGS odd-one-out: zero-shot and probed")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    return _save(fig, out_dir / "things_accuracy.png", prov)


def _probe(r: dict[str, Any], key: str) -> dict[str, Any] | None:
    d = r["things"].get("probes", {}).get(key)
    return None if not d or "unavailable" in d else d


def _probe_zero(r: dict[str, Any]) -> dict[str, Any] | None:
    d = _probe(r, "human") or _probe(r, "simulated")
    if d is None:
        return None
    base = d.get("baseline")
    if base:  # the lift's reference: the same pipeline with the transform switched off
        return {"accuracy": base["accuracy"], "ci": base.get("ci")}
    return {"accuracy": d["zero_shot_same_responses"], "ci": d["zero_shot_same_responses_ci"]}


def layer_sweep(results: Sequence[dict[str, Any]], out_dir: Path, prov: dict) -> Path | None:
    """Zero-shot accuracy per layer (early -> late) for sources with several layers."""
    rows = [r for r in results if len(r["things"]["layers"]) > 1]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        names = list(r["things"]["layers"])
        acc = [r["things"]["layers"][k]["accuracy"] for k in names]
        lo = [
            (r["things"]["layers"][k]["ci"] or [a, a])[0] for k, a in zip(names, acc, strict=False)
        ]
        hi = [
            (r["things"]["layers"][k]["ci"] or [a, a])[1] for k, a in zip(names, acc, strict=False)
        ]
        style = ":" if r["source"]["control"] else "-"
        (line,) = ax.plot(range(len(names)), acc, style, marker="o", label=r["source"]["label"])
        ax.fill_between(range(len(names)), lo, hi, color=line.get_color(), alpha=0.15)
    names = list(rows[0]["things"]["layers"])
    ax.set_xticks(range(len(names)), names)
    _lines(ax, _ceiling(results), vertical=False)
    ax.set_ylim(0.25, 0.75)
    ax.set_xlabel("layer (early -> late)")
    ax.set_ylabel("zero-shot odd-one-out accuracy")
    ax.set_title("Layer sweep on THINGS (dotted: random-init controls)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out_dir / "layers.png", prov)


def penultimate_vs_logits(
    results: Sequence[dict[str, Any]], out_dir: Path, prov: dict
) -> Path | None:
    """Penultimate vs logits zero-shot accuracy per network (points), diagonal = equal."""
    rows = [r for r in results if {"penultimate", "logits"} <= set(r["things"]["layers"])]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    for r in rows:
        lay = r["things"]["layers"]
        x, y = lay["penultimate"]["accuracy"], lay["logits"]["accuracy"]
        xerr = np.array([_err(lay["penultimate"]["ci"], x)]).T
        yerr = np.array([_err(lay["logits"]["ci"], y)]).T
        marker = "s" if r["source"]["control"] else "o"
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, capsize=2, label=r["source"]["label"])
    lim = (0.25, 0.7)
    ax.plot(lim, lim, color="#bbbbbb", lw=1)
    ceiling = _ceiling(results)
    for draw in (ax.axvline, ax.axhline):
        draw(CHANCE, color=COLORS["chance"], ls="--", lw=1)
        if ceiling is not None:
            draw(ceiling, color=COLORS["ceiling"], lw=1)
    ax.set_xlim(*lim)
    ax.set_ylim(*lim)
    ax.set_xlabel("penultimate layer accuracy")
    ax.set_ylabel("logits accuracy")
    ax.set_title("Penultimate vs logits (dashed: chance, solid: ceiling)")
    ax.legend(fontsize=7, loc="upper left")
    return _save(fig, out_dir / "penultimate_vs_logits.png", prov)


def concepts(result: dict[str, Any], out_dir: Path, prov: dict, ceiling: float | None) -> Path:
    """Per-VICE-dimension zero-shot accuracy of one source, sorted, with triplet counts."""
    plt = _plt()
    rows = [c for c in result["things"]["concepts"] if c.get("accuracy") is not None]
    rows.sort(key=lambda c: (-c["accuracy"], c["dimension"]))
    fig, ax = plt.subplots(figsize=(8, 1.0 + 0.2 * len(rows)))
    ys = np.arange(len(rows))
    acc = [c["accuracy"] for c in rows]
    ax.barh(ys, acc, color=COLORS["zero"], height=0.7)
    for y, c in zip(ys, rows, strict=False):
        ax.text(c["accuracy"] + 0.01, y, f"n={c['n_triplets']}", va="center", fontsize=6)
    labels = [c["label"] if len(c["label"]) < 48 else c["label"][:46] + "…" for c in rows]
    ax.set_yticks(ys, labels, fontsize=7)
    ax.invert_yaxis()
    _lines(ax, ceiling)
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("zero-shot accuracy on the triplets of the dimension (n = responses)")
    ax.set_title(f"VICE concepts: {result['source']['label']}")
    ax.legend(fontsize=7, loc="lower right")
    name = f"concepts_{slug(result['source']['id'])}.png"
    return _save(fig, out_dir / name, prov)


def transfer(results: Sequence[dict[str, Any]], out_dir: Path, prov: dict) -> Path | None:
    """RSA (Spearman) before and after the THINGS probes, per RDM dataset and source."""
    cols = [
        ("raw features", None, "zero"),
        ("human probe", "human", "human"),
        ("simulated probe", "simulated", "simulated"),
        ("gLocal", "glocal", "glocal"),
    ]
    panels = []
    for name in ("things48", "mur92", "peterson-animals"):
        rows = [r for r in results if "rsa" in r["rsa"].get(name, {})]
        if rows:
            panels.append((name, rows))
    if not panels:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2), squeeze=False)
    for ax, (name, rows) in zip(axes[0], panels, strict=False):
        width = 0.8 / len(cols)
        for j, (label, key, color) in enumerate(cols):
            xs, vals = [], []
            for i, r in enumerate(rows):
                entry = r["rsa"][name]
                if key is None:
                    v = entry["rsa"]["score"]
                else:
                    t = entry["transfer"].get(key)
                    if t is None:
                        continue
                    v = t["after"]
                xs.append(i + (j - (len(cols) - 1) / 2) * width)
                vals.append(v)
            if vals:
                ax.bar(xs, vals, width=width, color=COLORS[color], label=label)
        nc = rows[0]["rsa"][name]["rsa"].get("noise_ceiling")
        if nc and nc.get("lower") is not None:
            ax.axhspan(nc["lower"], nc["upper"], color="#dddddd", label="noise ceiling")
        ax.axhline(0, color=COLORS["chance"], lw=1, ls="--", label="chance (0)")
        ax.set_xticks(range(len(rows)), [r["source"]["label"] for r in rows], rotation=35)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        ax.set_ylabel("Spearman (mean over subjects where several)")
        ax.set_title(f"Transfer of THINGS probes to {name}")
        ax.set_ylim(min(-0.1, ax.get_ylim()[0]), 1.0)
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return _save(fig, out_dir / "transfer.png", prov)


def rdm_pair(
    model_rdm: np.ndarray,
    human_rdm: np.ndarray,
    title: str,
    path: Path,
    prov: dict,
) -> Path:
    """Model and human RDMs side by side, rows ordered by clustering the human RDM, both
    shown as percentiles of their own upper triangle (comparable colour scales)."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    plt = _plt()
    H = np.array(human_rdm, dtype=np.float64)
    M = np.array(model_rdm, dtype=np.float64)
    keep = ~np.isnan(M).all(axis=1)
    H, M = H[np.ix_(keep, keep)], M[np.ix_(keep, keep)]
    Hs = (H + H.T) / 2
    np.fill_diagonal(Hs, 0)
    order = leaves_list(linkage(squareform(np.maximum(Hs, 0), checks=False), "average"))

    def pct(A: np.ndarray) -> np.ndarray:
        iu = np.triu_indices(A.shape[0], 1)
        ranks = np.argsort(np.argsort(A[iu], kind="stable"), kind="stable")
        P = np.zeros_like(A)
        P[iu] = ranks / max(1, ranks.size - 1)
        return P + P.T

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    for ax, A, name in ((axes[0], M, "model"), (axes[1], H, "human")):
        im = ax.imshow(
            pct(A)[np.ix_(order, order)],
            cmap="viridis",
            vmin=0,
            vmax=1,
            interpolation="nearest",
        )
        ax.set_title(f"{name} RDM")
        ax.set_xlabel("stimulus (clustered by human RDM)")
        ax.set_ylabel("stimulus")
    fig.colorbar(im, ax=axes, shrink=0.8, label="dissimilarity percentile")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, prov)
