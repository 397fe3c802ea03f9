"""A self-contained HTML report: one ``index.html`` with figures (PNG) beside it.

Layout of ``OUT``::

    index.html              the report (no external resources: no CDN, no fonts)
    results.json            every number, with provenance
    figures/*.png           the figures (provenance in each PNG's metadata)
    thumbs/*.jpg            small example images generated from the user's data dir
    transforms/<model>/<layer>/<probe>/transform.npz   thingsvision layout

A small script sets ``document.title`` to ``"ok N/M"`` once the page has loaded, N of M
images having decoded, so a headless browser can check that every image loads.
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .._version import METRIC_CODE_VERSION, __version__
from . import figures as F
from .experiments import PROBES, RDM_DATASETS, Context, ReportConfig

CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}
th{background:#f3f3f3} td.l,th.l{text-align:left}
figure{margin:1.5em 0} figcaption{font-size:12px;color:#555;max-width:1000px}
img.fig{max-width:100%} img.thumb{height:48px;margin:1px;vertical-align:middle}
code,pre{font-size:12px} pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:300px}
.note{background:#fff8e0;border-left:4px solid #e0b000;padding:.4em .8em;font-size:13px}
"""

ONLOAD_JS = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) {
    if (imgs[i].complete && imgs[i].naturalWidth > 0) { ok++; }
  }
  document.title = 'ok ' + ok + '/' + imgs.length;
});
"""


def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(d: dict[str, Any] | None, key: str = "accuracy", ci: str = "ci") -> str:
    if not d or d.get(key) is None:
        return "–"
    c = d.get(ci)
    text = fmt(d[key])
    if c and c[0] is not None:
        text += f" [{fmt(c[0])}, {fmt(c[1])}]"
    return text


def provenance_text(results: Sequence[dict[str, Any]], ctx: Context, cfg: ReportConfig) -> str:
    """One line naming every source (with weights digest), dataset digest and option."""
    srcs = "; ".join(
        f"{r['source']['id']} (weights {str(r['source']['weights_digest'])[:12]})" for r in results
    )
    dss = "; ".join(f"{k} ({v[:12]})" for k, v in ctx.digests.items() if "/" not in k)
    opts = (
        f"n_bootstrap={cfg.n_bootstrap}, seed={cfg.seed}, rank={cfg.rank}, "
        f"folds={cfg.folds}, n_simulated={cfg.n_simulated}, "
        f"glocal_alpha={cfg.glocal_alpha}, tau={cfg.glocal_temperature}"
    )
    return (
        f"Sources: {srcs}. Datasets: {dss}. Options: {opts}. "
        f"align {__version__}, metric code {METRIC_CODE_VERSION}."
    )


def provenance_dict(
    results: Sequence[dict[str, Any]], ctx: Context, cfg: ReportConfig
) -> dict[str, Any]:
    return {
        "sources": {r["source"]["id"]: r["source"]["weights_digest"] for r in results},
        "datasets": dict(ctx.digests),
        "options": cfg.to_dict(),
        "library_version": __version__,
        "metric_code_version": METRIC_CODE_VERSION,
    }


def make_figures(
    results: Sequence[dict[str, Any]],
    arrays: Sequence[dict[str, Any]],
    ctx: Context,
    cfg: ReportConfig,
    fig_dir: Path,
    concept_sources: Sequence[str] | None = None,
) -> list[tuple[str, Path, str]]:
    """Write every figure; returns (section, path, caption) triples."""
    prov = provenance_dict(results, ctx, cfg)
    ptxt = provenance_text(results, ctx, cfg)
    out: list[tuple[str, Path, str]] = []
    p = F.things_accuracy(results, fig_dir, prov)
    out.append(
        (
            "things",
            p,
            "THINGS odd-one-out accuracy. Zero-shot on all 20,000 responses; low-rank "
            "probes on the real responses over held-out objects (object-disjoint 3-fold), "
            "next to the same pipeline with the transform switched off (W = I) on the same "
            "held-out responses (the lift's reference). 'Simulated supervision' probes "
            "were trained on triplets simulated from SPoSE, never on the human responses "
            "they are scored on. Bars: 95% bootstrap CIs over distinct triplets. " + ptxt,
        )
    )
    p2 = F.layer_sweep(results, fig_dir, prov)
    if p2 is not None:
        out.append(("layers", p2, "Zero-shot accuracy per layer, 95% CI bands. " + ptxt))
    p3 = F.penultimate_vs_logits(results, fig_dir, prov)
    if p3 is not None:
        out.append(("layers", p3, "Penultimate vs logits accuracy (squares: controls). " + ptxt))
    ceiling = F._ceiling(results)
    for r in results:
        if "concepts" not in r["things"]:
            continue
        if concept_sources is not None and r["source"]["id"] not in concept_sources:
            continue
        pc = F.concepts(r, fig_dir, {**prov, "source": r["source"]["id"]}, ceiling)
        out.append(
            (
                "concepts",
                pc,
                f"Per-VICE-dimension zero-shot accuracy of {r['source']['id']} (weights "
                f"{r['source']['weights_digest'][:12]}), sorted; n = human responses whose "
                "chosen pair loads most on the dimension. Dimensions are named by their "
                "best-matching labelled SPoSE dimension (r), then their top objects; "
                "intervals and distinct-triplet counts are in the Concepts table. " + ptxt,
            )
        )
    pt = F.transfer(results, fig_dir, prov)
    if pt is not None:
        out.append(
            (
                "transfer",
                pt,
                "RSA of model RDMs (1 - cosine) with human RDMs before and after applying "
                "THINGS probes (THINGS mean/std, then W; 'L2' normalises rows after). "
                "Grey band: human noise ceiling (multi-subject data only). " + ptxt,
            )
        )
    for r, arr in zip(results, arrays, strict=False):
        for name, (model_rdm, human_rdm) in arr.get("rdms", {}).items():
            path = fig_dir / f"rdm_{F.slug(r['source']['id'])}_{F.slug(name)}.png"
            spearman = r["rsa"][name]["rsa"]["score"]
            F.rdm_pair(
                model_rdm,
                human_rdm,
                f"{r['source']['label']} vs humans on {name} (Spearman {spearman:.3f})",
                path,
                {**prov, "source": r["source"]["id"], "dataset": name},
            )
            out.append(
                (
                    "rdms",
                    path,
                    f"{r['source']['id']} (weights {r['source']['weights_digest'][:12]}) and "
                    f"human RDM of {name} (digest {ctx.digests.get(name, '')[:12]}), "
                    "percentile-scaled, ordered by clustering the human RDM.",
                )
            )
    return out


def leaderboard_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for r in results:
        t = r["things"]
        probes = t.get("probes", {})

        def acc(key: str, probes: dict[str, Any] = probes) -> Any:
            d = probes.get(key)
            return None if not d or "unavailable" in d else d

        row = {
            "label": r["source"]["label"],
            "id": r["source"]["id"],
            "kind": r["source"]["kind"] + (" (control)" if r["source"]["control"] else ""),
            "zero_shot": t["zero_shot"],
            "human": acc("human"),
            "simulated": acc("simulated"),
            "glocal": acc("glocal"),
            "rsa": {
                name: (r["rsa"][name]["rsa"]["score"] if "rsa" in r["rsa"].get(name, {}) else None)
                for name in RDM_DATASETS
            },
            "wall_time_s": r.get("wall_time_s"),
        }
        rows.append(row)
    rows.sort(key=lambda x: -(x["zero_shot"]["accuracy"] or 0))
    return rows


def _img(path: Path, base: Path, alt: str, cls: str = "fig") -> str:
    rel = path.relative_to(base).as_posix()
    return f'<img class="{cls}" src="{html.escape(rel)}" alt="{html.escape(alt)}">'


def make_thumbnails(ctx: Context, out_dir: Path, dims: int, per_dim: int = 3) -> dict[int, list]:
    """Small JPEG thumbnails (64 px) of each VICE dimension's top objects, made from the
    user's THINGS images into ``out_dir/thumbs`` (never into the repository)."""
    from PIL import Image

    things = ctx.datasets["things"]
    if ctx.vice is None or things.image_paths is None:
        return {}
    import numpy as np

    thumbs: dict[int, list[Path]] = {}
    folder = out_dir / "thumbs"
    for k in range(dims):
        order = np.argsort(-ctx.vice[:, k], kind="stable")
        chosen: list[Path] = []
        for i in order:
            src = things.image_paths[int(i)]
            if src is None:
                continue
            dst = folder / f"{things.stimulus_ids[int(i)]}.jpg"
            if not dst.exists():
                try:
                    with Image.open(src) as raw:
                        im = raw.convert("RGB")
                    im.thumbnail((64, 64))
                    folder.mkdir(parents=True, exist_ok=True)
                    im.save(dst, "JPEG", quality=80)
                except OSError:
                    continue
            chosen.append(dst)
            if len(chosen) == per_dim:
                break
        thumbs[k] = chosen
    return thumbs


def write_report(
    results: Sequence[dict[str, Any]],
    arrays: Sequence[dict[str, Any]],
    ctx: Context,
    cfg: ReportConfig,
    out_dir: str | Path,
    *,
    thumbnails: bool = True,
    title: str = "align report: human alignment of neural network representations",
) -> Path:
    """Write ``index.html`` + figures + results.json into ``out_dir``; returns the HTML."""
    from ..interop import write_thingsvision_transform

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figs = make_figures(results, arrays, ctx, cfg, out / "figures")
    transform_files: dict[str, list[Path]] = {}
    for r, arr in zip(results, arrays, strict=False):
        for key, tr in arr.get("transforms", {}).items():
            path = write_thingsvision_transform(
                tr, out / "transforms", r["source"]["id"], f"penultimate/{key}"
            )
            transform_files.setdefault(r["source"]["id"], []).append(path)
    data = {"provenance": provenance_dict(results, ctx, cfg), "results": list(results)}
    (out / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True))
    thumbs: dict[int, list] = {}
    if thumbnails and ctx.vice is not None:
        thumbs = make_thumbnails(ctx, out, ctx.vice.shape[1])

    h: list[str] = []
    e = html.escape
    h.append(f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}")
    h.append(f"</title><style>{CSS}</style><script>{ONLOAD_JS}</script></head><body>")
    h.append(f"<h1>{e(title)}</h1>")
    h.append(
        "<p>Odd-one-out accuracy on the THINGS noise-ceiling set (20,000 human responses, "
        "1,000 distinct triplets; chance 1/3, human ceiling computed from the data), "
        "probes, concept-level accuracy (VICE), transfer to other human similarity data "
        "and model vs human RDMs. Method: Muttenthaler et al., ICLR 2023; specification: "
        "METHODS.md.</p>"
    )
    h.append(
        "<p class='note'>The THINGS file has only 1,000 distinct triplets: a p×p probe "
        "overfits it (METHODS §3). Probes here are low-rank (first "
        f"{cfg.rank} principal components), regularised toward a scaled identity (the "
        "strongest λ keeps the zero-shot geometry) and evaluated on held-out objects; "
        "rows marked "
        "<b>simulated supervision</b> were trained on triplets simulated from the SPoSE "
        "human embedding, not on the responses they are scored on.</p>"
    )
    # leaderboard
    h.append("<h2 id='leaderboard'>Leaderboard</h2><table><tr><th class='l'>source</th>")
    h.append("<th class='l'>kind</th><th>THINGS zero-shot [95% CI]</th><th>normalized</th>")
    h.append("<th>low-rank probe (human)</th><th>low-rank probe (simulated)</th>")
    h.append("<th>low-rank gLocal (simulated)</th>")
    for name in RDM_DATASETS:
        h.append(f"<th>RSA {e(name)}</th>")
    h.append("<th>wall time (s)</th></tr>")
    for row in leaderboard_rows(results):
        h.append(f"<tr><td class='l'>{e(row['label'])}</td><td class='l'>{e(row['kind'])}</td>")
        h.append(f"<td>{fmt_ci(row['zero_shot'])}</td>")
        h.append(f"<td>{fmt(row['zero_shot'].get('normalized'))}</td>")
        for key in ("human", "simulated", "glocal"):
            h.append(f"<td>{fmt_ci(row[key])}</td>")
        for name in RDM_DATASETS:
            h.append(f"<td>{fmt(row['rsa'][name])}</td>")
        h.append(f"<td>{fmt(row['wall_time_s'], 1)}</td></tr>")
    h.append("</table>")
    unavailable: dict[str, list[str]] = {}
    for r in results:
        for name in RDM_DATASETS:
            why = (r["rsa"].get(name) or {}).get("unavailable")
            if why:
                unavailable.setdefault(name, []).append(f"{r['source']['label']}: {why}")
    for name, whys in sorted(unavailable.items()):
        h.append(
            f"<p class='note'>{e(name)}: unavailable for some sources ({e('; '.join(whys))}).</p>"
        )

    sections = [
        ("things", "THINGS accuracy: zero-shot and probed"),
        ("layers", "Layers: sweep and penultimate vs logits"),
        ("concepts", "Concepts (VICE dimensions)"),
        ("transfer", "Transfer of the THINGS probes"),
        ("rdms", "Model and human RDMs"),
    ]
    for key, heading in sections:
        h.append(f"<h2 id='{key}'>{e(heading)}</h2>")
        if key == "things":
            h.append(_probe_table(results))
        if key == "layers":
            h.append(_layer_table(results))
        if key == "concepts":
            h.append(_concept_table(results, thumbs, out))
        if key == "transfer":
            h.append(_transfer_table(results))
        for section, path, caption in figs:
            if section == key:
                h.append(f"<figure>{_img(path, out, path.stem)}")
                h.append(f"<figcaption>{e(caption)}</figcaption></figure>")
    if any("wordsim" in r for r in results):
        h.append("<h2 id='wordsim'>Word similarity (text models)</h2><table>")
        h.append("<tr><th class='l'>source</th><th class='l'>dataset</th><th>Spearman</th>")
        h.append("<th>coverage</th></tr>")
        for r in results:
            for name, w in (r.get("wordsim") or {}).items():
                h.append(
                    f"<tr><td class='l'>{e(r['source']['label'])}</td><td class='l'>{e(name)}"
                    f"</td><td>{fmt(w.get('spearman'))}</td><td>{fmt(w.get('coverage'))}</td></tr>"
                )
        h.append("</table>")
    h.append("<h2 id='provenance'>Provenance</h2><table><tr><th class='l'>source</th>")
    h.append("<th class='l'>weights digest</th><th class='l'>description</th>")
    h.append("<th class='l'>transforms (thingsvision layout)</th></tr>")
    for r in results:
        s = r["source"]
        files = ", ".join(p.relative_to(out).as_posix() for p in transform_files.get(s["id"], []))
        h.append(
            f"<tr><td class='l'>{e(s['id'])}</td><td class='l'><code>{e(s['weights_digest'])}"
            f"</code></td><td class='l'>{e(s['description'])}</td><td class='l'>{e(files)}</td>"
            "</tr>"
        )
    h.append("</table><table><tr><th class='l'>dataset</th><th class='l'>digest</th>")
    h.append("<th class='l'>source</th></tr>")
    for name, ds in ctx.datasets.items():
        if name.startswith("wordsim/") and not any("wordsim" in r for r in results):
            continue
        h.append(
            f"<tr><td class='l'>{e(name)}</td><td class='l'><code>{e(str(ds.digest))}</code>"
            f"</td><td class='l'>{e(str(getattr(ds, 'source', '')))}</td></tr>"
        )
    h.append("</table>")
    h.append(f"<p>Options:</p><pre>{e(json.dumps(cfg.to_dict(), indent=1))}</pre>")
    h.append(
        f"<p>align {e(__version__)}, metric code {e(METRIC_CODE_VERSION)}. All numbers: "
        "<a href='results.json'>results.json</a>.</p></body></html>"
    )
    path = out / "index.html"
    path.write_text("".join(h), encoding="utf-8")
    return path


def _probe_table(results: Sequence[dict[str, Any]]) -> str:
    e = html.escape
    h = ["<table><tr><th class='l'>source</th><th class='l'>probe</th><th class='l'>rank</th>"]
    h.append("<th>held-out accuracy [95% CI]</th><th>transform off (W = I) [95% CI]</th>")
    h.append("<th>lift [paired 95% CI]</th><th>zero-shot cosine, same responses</th>")
    h.append("<th>λ</th><th>held-out CE</th><th>kNN overlap</th>")
    h.append("<th>responses / distinct triplets</th></tr>")
    for r in results:
        for key in (*PROBES, "human_fullrank"):
            d = r["things"].get("probes", {}).get(key)
            if not d or "unavailable" in d:
                continue
            zs = fmt_ci(d, "zero_shot_same_responses", "zero_shot_same_responses_ci")
            lift = d.get("lift") or {}
            lift_s = fmt_ci({"a": lift.get("value"), "ci": lift.get("ci")}, "a")
            h.append(
                f"<tr><td class='l'>{e(r['source']['label'])}</td><td class='l'>"
                f"{e(d['label'])}</td><td class='l'>{e(str(d.get('rank_label', '')))}</td>"
                f"<td>{fmt_ci(d)}</td><td>{fmt_ci(d.get('baseline') or {})}</td>"
                f"<td>{lift_s}</td><td>{zs}</td>"
                f"<td>{fmt(d['lambda'], 4)}</td><td>{fmt(d['cross_entropy'])}</td>"
                f"<td>{fmt(d.get('knn_overlap'))}</td>"
                f"<td>{d.get('n_heldout', d.get('n_test'))} / {d.get('n_heldout_distinct', '–')}"
                "</td></tr>"
            )
    h.append("</table>")
    return "".join(h)


def _layer_table(results: Sequence[dict[str, Any]]) -> str:
    e = html.escape
    h = ["<table><tr><th class='l'>source</th><th class='l'>layer</th><th>dim</th>"]
    h.append("<th>zero-shot [95% CI]</th><th>normalized</th></tr>")
    for r in results:
        for layer, d in r["things"]["layers"].items():
            h.append(
                f"<tr><td class='l'>{e(r['source']['label'])}</td><td class='l'>{e(layer)}</td>"
                f"<td>{d['dim']}</td><td>{fmt_ci(d)}</td><td>{fmt(d.get('normalized'))}</td></tr>"
            )
    h.append("</table>")
    return "".join(h)


def _concept_table(results: Sequence[dict[str, Any]], thumbs: dict[int, list], out: Path) -> str:
    e = html.escape
    rows = [r for r in results if "concepts" in r["things"]]
    if not rows:
        return "<p>No VICE embedding in the data directory: concept analysis unavailable.</p>"
    first = rows[0]["things"]["concepts"]
    h = ["<table><tr><th class='l'>VICE dimension (top objects)</th><th>responses</th>"]
    for r in rows:
        h.append(f"<th>{e(r['source']['label'])}</th>")
    if thumbs:
        h.append("<th class='l'>examples</th>")
    h.append("</tr>")
    order = sorted(range(len(first)), key=lambda k: -first[k]["n_triplets"])
    for k in order:
        c = first[k]
        h.append(f"<tr><td class='l'>{e(c['label'])}</td><td>{c['n_triplets']}</td>")
        for r in rows:
            h.append(f"<td>{fmt(r['things']['concepts'][k]['accuracy'])}</td>")
        if thumbs:
            imgs = "".join(_img(p, out, p.stem, "thumb") for p in thumbs.get(k, []))
            h.append(f"<td class='l'>{imgs}</td>")
        h.append("</tr>")
    h.append("</table>")
    return "".join(h)


def _transfer_table(results: Sequence[dict[str, Any]]) -> str:
    e = html.escape
    h = ["<table><tr><th class='l'>source</th><th class='l'>dataset</th>"]
    h.append("<th class='l'>transform</th><th>RSA before</th><th>RSA after [95% CI]</th>")
    h.append("<th>Δ [paired 95% CI]</th><th>target objects left out of the fit</th></tr>")
    for r in results:
        for name in RDM_DATASETS:
            entry = r["rsa"].get(name) or {}
            for key, t in (entry.get("transfer") or {}).items():
                after = fmt_ci({"a": t["after"], "ci": t["after_ci"]}, "a")
                delta = fmt_ci({"a": t["delta"], "ci": t.get("delta_ci")}, "a")
                h.append(
                    f"<tr><td class='l'>{e(r['source']['label'])}</td><td class='l'>{e(name)}"
                    f"</td><td class='l'>{e(key)}</td><td>{fmt(t['before'])}</td>"
                    f"<td>{after}</td><td>{delta}</td><td>{t.get('excluded_objects', 0)}</td></tr>"
                )
    h.append("</table>")
    return "".join(h)
