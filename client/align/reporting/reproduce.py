"""``align report`` and ``align reproduce``: the paper's experiment set on what is here.

:func:`build_report` scores any sources (model ids, ``reference/spose``,
``reference/vice``, ``features:<file.npy>``) and writes an HTML report.
:func:`reproduce` runs the default set (EfficientNet-Lite0/1/2 with ImageNet weights,
all-MiniLM-L6-v2 on the concept names, SPoSE and VICE as human reference rows, and
random-init EfficientNets as controls) over every dataset present and regenerates
``docs/results.md`` and ``docs/figures/`` from the run. Seeded: two runs give the same
numbers (wall times aside).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .._version import METRIC_CODE_VERSION, __version__
from ..errors import AlignError, InvalidInputError
from .claims import ceiling_interval, claims_markdown, decide_claims
from .experiments import PROBES, RDM_DATASETS, Context, ReportConfig, load_context, run_source
from .html import fmt, fmt_ci
from .objectives import objective_comparison, objectives_markdown
from .sources import Source, resolve_source

DEFAULT_MODELS: tuple[str, ...] = (
    "timm/tf_efficientnet_lite0",
    "timm/tf_efficientnet_lite1",
    "timm/tf_efficientnet_lite2",
    "text/all-MiniLM-L6-v2",
    "reference/spose",
    "reference/vice",
    "timm/tf_efficientnet_lite0@random",
    # other objectives and training data (the `objectives` extra; skipped with a note
    # when not installed)
    "onnx/sscd-resnet50",
    "onnx/sscd-mobilenetv4",
    "onnx/open-nsfw-resnet50",
    "hed/vgg16",
    "dlib/face-resnet",
    "glove/6b-50d",
    "timm/resnet50@random",
    "timm/mobilenetv4_conv_small@random",
    "hed/vgg16@random",
)
#: Also runnable (``--models``); left out of the default for CPU time: one more THINGS
#: embedding each, and the lite0 control already answers "does random init sit near chance".
EXTRA_CONTROLS = ("timm/tf_efficientnet_lite1@random", "timm/tf_efficientnet_lite2@random")
PAPER: dict[str, Any] = {
    "ceiling": 0.673,
    "zero_shot_range": (0.35, 0.55),
    "claim_concepts": "food and animals captured; royal and sports-related poorly",
}
#: The paper's named concepts, located among the (unlabelled) VICE dimensions by one of
#: their top objects; the accuracies reported for them are computed, not typed in.
CLAIM_PROBES = {"food": "croissant", "animals": "chihuahua", "royal": "crown", "sports": "football"}

Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    return None


def run_sources(
    sources: Sequence[str],
    cfg: ReportConfig,
    data_dir: str | Path | None = None,
    cache: Any = True,
    log: Log = _quiet,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], Context, list[str]]:
    """Run every source; a source that cannot run (weights missing, ...) is skipped and
    named in the returned notes (the run goes on)."""
    cfg.check()
    if not sources:
        raise InvalidInputError("models", "is empty", "at least one model id or reference/spose")
    ctx = load_context(cfg, data_dir)
    resolved: list[Source] = []
    notes: list[str] = []
    for sid in sources:
        try:
            resolved.append(resolve_source(sid, data_dir, cache, cfg.layers))
        except AlignError as exc:
            notes.append(f"{sid}: skipped ({exc})")
            log(f"skipping {sid}: {exc}")
    results, arrays = [], []
    for src in resolved:
        log(f"running {src.id} ...")
        t0 = time.perf_counter()
        try:
            res, arr = run_source(src, ctx, cfg)
        except AlignError as exc:
            notes.append(f"{src.id}: failed ({exc})")
            log(f"  {src.id} failed: {exc}")
            continue
        finally:
            src.close()
        results.append(res)
        arrays.append(arr)
        log(f"  done in {time.perf_counter() - t0:.1f} s")
    if not results:
        raise AlignError("no source could be run: " + "; ".join(notes))
    return results, arrays, ctx, notes


def build_report(
    models: Sequence[str],
    out_dir: str | Path,
    data_dir: str | Path | None = None,
    config: ReportConfig | None = None,
    *,
    thumbnails: bool = True,
    cache: Any = True,
    log: Log = _quiet,
) -> Path:
    """Score ``models`` and write ``out_dir/index.html`` (figures beside it)."""
    from .html import write_report

    cfg = config or ReportConfig()
    results, arrays, ctx, notes = run_sources(models, cfg, data_dir, cache, log)
    path = write_report(results, arrays, ctx, cfg, out_dir, thumbnails=thumbnails)
    if notes:
        log("notes: " + "; ".join(notes))
    return path


# ----------------------------------------------------------------------------- reproduce


def reproduce(
    out_dir: str | Path = "docs",
    data_dir: str | Path | None = None,
    models: Sequence[str] = DEFAULT_MODELS,
    config: ReportConfig | None = None,
    *,
    cache: Any = True,
    log: Log = _quiet,
) -> dict[str, Any]:
    """Run the experiment set; write ``out_dir/results.md`` and ``out_dir/figures/``
    (figures and ``results.json``). Returns the JSON-able numbers."""
    from .html import make_figures, provenance_dict

    cfg = config or ReportConfig()
    t0 = time.perf_counter()
    results, arrays, ctx, notes = run_sources(models, cfg, data_dir, cache, log)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    best = _best_network(results)
    concept_ids = [best["source"]["id"]] if best is not None else None
    figs = make_figures(results, arrays, ctx, cfg, fig_dir, concept_sources=concept_ids)
    data = {"provenance": provenance_dict(results, ctx, cfg), "results": results}
    # objective/data vs architecture (reporting/objectives.py): paired contrasts
    objectives = objective_comparison(results, ctx, cfg, data_dir, cache)
    data["objectives"] = objectives
    # the paper's claims, each decided by code from the stored intervals
    value, ci, n_distinct = ceiling_interval(
        ctx.datasets["things"].triplets, cfg.n_bootstrap, cfg.seed
    )
    ceiling: dict[str, Any] = {
        "value": value,
        "ci": ci,
        "n_distinct": n_distinct,
        "loo": results[0]["things"]["zero_shot"].get("ceiling_loo"),
    }
    claims = decide_claims(results, objectives, ceiling)
    data["ceiling"] = ceiling
    data["claims"] = claims
    (fig_dir / "results.json").write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    total = time.perf_counter() - t0
    text = results_markdown(results, ctx, cfg, figs, out, notes, total)
    text = _insert_section(text, objectives_markdown(objectives), before="## Figures\n")
    text = _insert_section(text, claims_markdown(claims), before="## Leaderboard\n")
    (out / "results.md").write_text(text, encoding="utf-8")
    return data


def _insert_section(text: str, lines: Sequence[str], before: str) -> str:
    """``text`` with a Markdown section inserted before the heading ``before`` (appended
    when that heading is absent)."""
    section = "\n".join(lines) + "\n"
    head, sep, tail = text.partition(before)
    return head + section + sep + tail if sep else text + "\n" + section


def numbers_only(data: dict[str, Any]) -> Any:
    """``data`` without wall times and cache flags (what must repeat across runs)."""
    drop = {"wall_time_s", "embedding_time_s", "embedding_cache_hit"}
    if isinstance(data, dict):
        return {k: numbers_only(v) for k, v in data.items() if k not in drop}
    if isinstance(data, list):
        return [numbers_only(v) for v in data]
    return data


def _best_network(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    nets = [r for r in results if r["source"]["kind"] == "network" and not r["source"]["control"]]
    if not nets:
        nets = [r for r in results if r["source"]["kind"] != "reference"]
    if not nets:
        return None
    return max(nets, key=lambda r: r["things"]["zero_shot"]["accuracy"])


def _probe(r: dict[str, Any], key: str) -> dict[str, Any] | None:
    d = r["things"].get("probes", {}).get(key)
    return None if not d or "unavailable" in d else d


def results_markdown(
    results: Sequence[dict[str, Any]],
    ctx: Context,
    cfg: ReportConfig,
    figs: Sequence[tuple[str, Path, str]],
    out: Path,
    notes: Sequence[str],
    total_s: float,
) -> str:
    """docs/results.md: tables, figures and what they show, generated from the run."""
    L: list[str] = []
    ceiling = results[0]["things"]["zero_shot"].get("ceiling")
    ceiling_loo = results[0]["things"]["zero_shot"].get("ceiling_loo")
    L.append("# Results: human alignment on the data at hand\n")
    L.append(
        "_Generated by `align reproduce` (do not edit by hand). align "
        f"{__version__}, metric code {METRIC_CODE_VERSION}; options: n_bootstrap="
        f"{cfg.n_bootstrap}, seed={cfg.seed}, probe rank={cfg.rank}, folds={cfg.folds}, "
        f"simulated triplets per fold={cfg.n_simulated}, gLocal α={cfg.glocal_alpha}, "
        f"τ={cfg.glocal_temperature}. Total wall time {total_s / 60:.1f} min. All numbers "
        "with provenance: [figures/results.json](figures/results.json)._\n"
    )
    L.append(
        "Data: THINGS odd-one-out noise-ceiling set (20,000 responses of 325 people on "
        "1,000 distinct triplets over the 1,854 THINGS objects; Hebart et al. 2020), the "
        "things48 human RDM, the Mur et al. 2013 92-image RDMs (16 people) and the "
        "Peterson et al. animal ratings (no images: image models cannot be scored). "
        f"Chance is 1/3. Two human ceilings, both computed from the data: in-sample "
        f"{fmt(ceiling, 4)} (the paper's definition; paper: {PAPER['ceiling']}) and "
        f"leave-one-response-out {fmt(ceiling_loo, 4)} (each response against the majority "
        "of the OTHER responses: the bound a model can actually reach). Every THINGS "
        "interval resamples the ~1,000 DISTINCT triplets (all responses of one travel "
        "together); every comparison of two numbers on the same responses or stimuli has "
        "a paired interval. RSA on multi-subject data (mur92) is the mean over subjects of "
        "the per-subject correlation (rsatoolbox eval_fixed), the scale of its noise "
        "ceiling; the correlation with the subject-mean RDM is reported apart as the "
        "group score.\n"
    )
    # leaderboard
    L.append("## Leaderboard\n")
    L.append(
        "| source | kind | THINGS zero-shot [95% CI] | normalized (in-sample / LOO ceiling) | "
        "low-rank probe, human triplets: lift [paired CI] | "
        "low-rank probe, simulated supervision: lift [paired CI] | "
        + " | ".join(f"RSA {n}" for n in RDM_DATASETS)
        + " | wall time (s) | embeddings |"
    )
    L.append("|" + "---|" * (8 + len(RDM_DATASETS)))
    rows = sorted(results, key=lambda r: -r["things"]["zero_shot"]["accuracy"])
    for r in rows:
        s = r["source"]
        kind = s["kind"] + (" (random init)" if s["control"] else "")
        rsa = []
        for n in RDM_DATASETS:
            e = r["rsa"].get(n) or {}
            rsa.append(fmt(e["rsa"]["score"]) if "rsa" in e else "n/a")
        hits = r.get("embedding_cache_hit") or {}
        emb = "cached" if hits and all(hits.values()) else "computed"
        if s["kind"] in ("reference", "features"):
            emb = "—"
        zs = r["things"]["zero_shot"]
        L.append(
            f"| {s['label']} | {kind} | {fmt_ci(zs)} | "
            f"{fmt(zs.get('normalized'))} / {fmt(zs.get('normalized_loo'))} | "
            f"{_lift(_probe(r, 'human'))} | {_lift(_probe(r, 'simulated'))} | "
            + " | ".join(rsa)
            + f" | {fmt(r['wall_time_s'], 1)} "
            f"| {emb} |"
        )
    L.append("")
    L.append(
        f"Probes here are LOW-RANK (the first {cfg.rank} principal components of the "
        "features, regularised toward a scaled identity); the paper's FULL-RANK p × p probe "
        "is what `align score FEATURES things --probe` fits (same baseline and lift "
        "fields), left out of this run for CPU time (`ReportConfig.full_rank`). A lift is "
        "the held-out accuracy minus the SAME pipeline with the transform switched off "
        "(W = I on the same components, same standardisation), on the same held-out "
        f"responses (object-disjoint {cfg.folds}-fold), with a paired interval over their "
        "distinct triplets. RSA columns: mean over subjects for mur92, the group matrix "
        'for things48. Wall time: this run, per source, including embedding ("cached": '
        "the embeddings came from the disk cache of an earlier run).\n"
    )
    L.extend(_findings(results, ctx, cfg))
    # probes
    L.append("## Probes\n")
    L.append(
        "| source | probe | rank | held-out accuracy [95% CI] | transform off (W = I) "
        "[95% CI] | lift [paired 95% CI] | zero-shot cosine, raw features, same responses "
        "| held-out responses / distinct triplets | λ | held-out cross-entropy | kNN overlap "
        "(k=" + str(cfg.knn_k) + ") |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        for key in (*PROBES, "human_fullrank"):
            d = _probe(r, key)
            if d is None:
                continue
            base = d.get("baseline") or {}
            zs_same = fmt_ci(d, "zero_shot_same_responses", "zero_shot_same_responses_ci")
            counts = f"{d.get('n_heldout', '–')} / {d.get('n_heldout_distinct', '–')}"
            L.append(
                f"| {r['source']['label']} | {d['label']} | {d.get('rank_label', '–')} | "
                f"{fmt_ci(d)} | {fmt_ci(base)} | {_lift(d)} | {zs_same} | {counts} | "
                f"{fmt(d['lambda'], 4)} | {fmt(d['cross_entropy'])} | "
                f"{fmt(d.get('knn_overlap'))} |"
            )
    L.append("")
    # rsa scales
    L.append("## RSA: per-subject and group scales\n")
    L.append(
        "| source | dataset | score [95% CI] | scale | ceiling (lower–upper) | normalized "
        "(score / lower) | group: vs subject-mean RDM [95% CI] |"
    )
    L.append("|---|---|---|---|---|---|---|")
    for r in results:
        for n in RDM_DATASETS:
            e = (r["rsa"].get(n) or {}).get("rsa")
            if not e:
                continue
            nc = e.get("noise_ceiling") or {}
            ceil = f"{fmt(nc.get('lower'))}–{fmt(nc.get('upper'))}" if nc else "none"
            g = e.get("group") or {}
            group = fmt_ci({"a": g.get("spearman"), "ci": g.get("ci")}, "a") if g else "–"
            L.append(
                f"| {r['source']['label']} | {n} | {fmt_ci(e, 'score')} | "
                f"{e.get('scale', '–')} | {ceil} | {fmt(e.get('normalized'))} | {group} |"
            )
    L.append(
        "\nIntervals resample stimuli; subjects are held fixed (the interval is over "
        "stimuli only). things48 is one group matrix: no noise ceiling (no split halves "
        "are distributed).\n"
    )
    # layers
    L.append("## Layers\n")
    L.append("| source | layer | dim | zero-shot [95% CI] |")
    L.append("|---|---|---|---|")
    for r in results:
        if len(r["things"]["layers"]) < 2:
            continue
        for layer, d in r["things"]["layers"].items():
            L.append(f"| {r['source']['label']} | {layer} | {d['dim']} | {fmt_ci(d)} |")
    L.append("")
    # transfer
    L.append("## Transfer of the THINGS probes\n")
    L.append(
        "| source | dataset | transform | rows before | RSA before [95% CI] | RSA after "
        "[95% CI] | Δ [paired 95% CI] | target objects left out of the fit |"
    )
    L.append("|---|---|---|---|---|---|---|---|")
    for r in results:
        for n in RDM_DATASETS:
            e = r["rsa"].get(n) or {}
            for key, t in (e.get("transfer") or {}).items():
                before = fmt_ci({"a": t["before"], "ci": t.get("before_ci")}, "a")
                after = fmt_ci({"a": t["after"], "ci": t["after_ci"]}, "a")
                delta = fmt_ci({"a": t["delta"], "ci": t.get("delta_ci")}, "a")
                L.append(
                    f"| {r['source']['label']} | {n} | {key} | {t.get('before_rows', 'raw')} "
                    f"| {before} | {after} | {delta} | {t.get('excluded_objects', 0)} |"
                )
    L.append(
        "\nthings48's 48 objects are THINGS objects: for it every transform is refitted "
        "without them (their feature rows, their triplets, and, for simulated supervision, "
        "their SPoSE rows are never seen by the fit). With L2-normalised rows, 'before' is "
        "L2-normalised too, so both sides have the same normalisation.\n"
    )
    # concepts
    best = _best_network(results)
    if best is not None and best["things"].get("concepts"):
        L.append(f"## Concepts ({best['source']['label']})\n")
        L.append(
            "VICE dimensions named from data: the labelled SPoSE dimension whose loadings "
            "over the 1,854 objects correlate most with the VICE dimension (r), then its "
            "top objects. n: responses / distinct triplets (the intervals resample the "
            "distinct triplets). SPoSE: the human-derived embedding's accuracy on the same "
            "responses (how hard the dimension is).\n"
        )
        L.append("| dimension | zero-shot [95% CI] | SPoSE, same responses [95% CI] | n |")
        L.append("|---|---|---|---|")
        rows_c = [c for c in best["things"]["concepts"] if c.get("accuracy") is not None]
        rows_c.sort(key=lambda c: -c["n_triplets"])
        for c in rows_c:
            L.append(
                f"| {c['label']} | {fmt_ci(c)} | "
                f"{fmt_ci(c, 'reference_accuracy', 'reference_ci')} | "
                f"{c['n_triplets']} / {c.get('n_distinct', '–')} |"
            )
        L.append("")
    if any("wordsim" in r for r in results):
        L.append("## Word similarity (text model)\n")
        L.append("| source | dataset | Spearman | coverage |")
        L.append("|---|---|---|---|")
        for r in results:
            for n, w in (r.get("wordsim") or {}).items():
                L.append(
                    f"| {r['source']['label']} | {n} | {fmt(w.get('spearman'))} | "
                    f"{fmt(w.get('coverage'))} |"
                )
        L.append("")
    L.append("## Figures\n")
    for _section, path, caption in figs:
        rel = path.relative_to(out).as_posix()
        L.append(f"![{path.stem}]({rel})\n")
        L.append(f"_{caption}_\n")
    L.append("## Provenance\n")
    L.append("| source | kind | weights digest | description |")
    L.append("|---|---|---|---|")
    for r in results:
        s = r["source"]
        L.append(
            f"| `{s['id']}` | {s['kind']} | `{s['weights_digest'][:16]}` | {s['description']} |"
        )
    L.append("")
    L.append("| dataset | digest |")
    L.append("|---|---|")
    for k, v in ctx.digests.items():
        L.append(f"| {k} | `{v[:16]}` |")
    for k, why in ctx.unavailable.items():
        L.append(f"| {k} | unavailable: {why} |")
    L.append("")
    if notes:
        L.append("Notes: " + "; ".join(notes) + "\n")
    return "\n".join(L) + "\n"


def _lift(d: dict[str, Any] | None) -> str:
    if d is None or not d.get("lift"):
        return "n/a"
    return fmt_ci({"a": d["lift"]["value"], "ci": d["lift"].get("ci")}, "a")


def _resolved(ci: Any) -> int:
    from .claims import excludes_zero

    return excludes_zero(ci)


def _findings(results: Sequence[dict[str, Any]], ctx: Context, cfg: ReportConfig) -> list[str]:
    """What the numbers show, stated from the numbers (no hand-written values). A
    difference is stated only when its (paired) 95% interval excludes 0."""
    L = ["## What the results show\n"]
    chance = 1 / 3
    zs = {r["source"]["id"]: r["things"]["zero_shot"] for r in results}
    nets = [r for r in results if r["source"]["kind"] == "network" and not r["source"]["control"]]
    controls = [r for r in results if r["source"]["control"]]
    refs = [r for r in results if r["source"]["kind"] == "reference"]
    lo, hi = PAPER["zero_shot_range"]
    if nets:
        accs = [zs[r["source"]["id"]]["accuracy"] for r in nets]
        inside = all(lo <= a <= hi for a in accs)
        L.append(
            f"- **Zero-shot.** The trained networks reach {min(accs):.3f}–{max(accs):.3f} on "
            f"THINGS ({'inside' if inside else 'not all inside'} the paper's {lo}–{hi} range "
            "for its models). Which of these differences are resolved is decided with paired "
            "intervals in the claims table and the objective/data section, not here."
        )
    for r in controls:
        d = zs[r["source"]["id"]]
        ci = d.get("ci") or [None, None]
        above = ci[0] is not None and ci[0] > chance
        L.append(
            f"- **Random-init control {r['source']['label']}**: {d['accuracy']:.3f} "
            f"(95% CI {fmt(ci[0])}–{fmt(ci[1])}), "
            + (
                "above chance (the interval excludes 1/3): an untrained network already "
                "carries some image similarity (colour, texture, layout) that predicts part "
                "of the human choices."
                if above
                else "not distinguishable from chance (the interval includes 1/3)."
            )
        )
    for r in refs:
        d = zs[r["source"]["id"]]
        L.append(
            f"- **Human reference {r['source']['label']}**: {d['accuracy']:.3f} "
            f"(normalized {fmt(d.get('normalized'))} against the in-sample ceiling, "
            f"{fmt(d.get('normalized_loo'))} against the leave-one-response-out one) — it "
            "also checks the pipeline (object order, triplet convention)."
        )
    # probes: lifts whose paired interval excludes 0
    for key, what in (("human", "human triplets"), ("simulated", "simulated supervision")):
        up: list[str] = []
        down: list[str] = []
        flat: list[str] = []
        for r in results:
            d = _probe(r, key)
            if d is None or not d.get("lift"):
                continue
            item = f"{r['source']['label']} ({_lift(d)})"
            {1: up, -1: down, 0: flat}[_resolved(d["lift"].get("ci"))].append(item)
        if up or down or flat:
            L.append(
                f"- **Low-rank probe, {what}** (lift over the same pipeline with the "
                "transform off, paired interval over distinct held-out triplets): "
                f"raises accuracy for {', '.join(up) or 'none'}; lowers it for "
                f"{', '.join(down) or 'none'}; unresolved (interval includes 0) for "
                f"{', '.join(flat) or 'none'}."
            )
    counts = [
        (d.get("n_heldout"), d.get("n_heldout_distinct"))
        for r in results
        for d in [_probe(r, "human")]
        if d is not None
    ]
    if counts:
        n_resp, n_dist = counts[0]
        L.append(
            f"- **Held-out set size.** {n_resp} held-out responses on only {n_dist} "
            "distinct triplets: the intervals are correspondingly wide (about ±0.05–0.1 "
            "for an accuracy), and differences inside them are not claimed."
        )
    gl: list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]] = []
    for r in results:
        g, s = _probe(r, "glocal"), _probe(r, "simulated")
        if g is not None and s is not None:
            gl.append((r, g, s))
    if gl:
        parts = [
            f"{r['source']['label']}: kNN overlap {s['knn_overlap']:.3f} → {g['knn_overlap']:.3f}"
            for r, g, s in gl
        ]
        L.append(
            f"- **gLocal** (α={cfg.glocal_alpha}) vs the plain probe with the same "
            f"supervision, {cfg.knn_k}-nearest-neighbour overlap with the raw features "
            "(descriptive, no interval): " + "; ".join(parts) + "."
        )
    # transfer: only resolved deltas are stated as changes
    tparts = []
    for r in results:
        for n in RDM_DATASETS:
            e = r["rsa"].get(n) or {}
            t = (e.get("transfer") or {}).get("human")
            if t is None:
                continue
            sign = _resolved(t.get("delta_ci"))
            word = {1: "up", -1: "down", 0: "unresolved"}[sign]
            tparts.append(f"{r['source']['label']} on {n}: Δ {_lift_t(t)} ({word})")
    if tparts:
        L.append(
            "- **Transfer** (human-triplet low-rank probe, THINGS mean/std then W; paired "
            "stimulus-bootstrap interval of Δ): " + "; ".join(tparts) + ". Peterson's "
            "animal photos are not distributed, so image models cannot be scored on them."
        )
    L.append("")
    return L


def _lift_t(t: dict[str, Any]) -> str:
    return fmt_ci({"a": t["delta"], "ci": t.get("delta_ci")}, "a")
