"""The paper's claims (METHODS.md section 0), each decided BY CODE from stored intervals.

:func:`decide_claims` reads the numbers ``align reproduce`` stores (``results.json``:
the per-source results and the objective/data contrasts) and returns one row per claim
with a status and the numbers that decided it:

- ``supported``: the intervals resolve the differences the claim predicts, in its
  direction, and none against it;
- ``contradicted``: the intervals resolve differences against the claim, none for it;
- ``inconclusive``: measured, but the intervals do not decide (cover 0, or point both
  ways);
- ``not testable``: the data or models at hand cannot measure it.

A difference counts only when its 95% interval excludes 0 (paired intervals: the
distinct-triplet cluster bootstrap on THINGS, the stimulus bootstrap on RDMs). The rules
are written out in each row (``rule``) so a reader can re-derive the status; the tests
re-derive every status from the stored numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable"
STATUSES = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE)

PAPER_CEILING = 0.673
PAPER_RANGE = (0.35, 0.55)
#: concept names the paper uses -> the labelled SPoSE dimension that names VICE ones
WELL_CAPTURED = {"food": "food-related", "animals": "animal-related"}
POORLY_CAPTURED = {"sports": "sports-/playing-related", "royal": None}
#: a per-dimension accuracy is used only when it rests on this many distinct triplets
MIN_DISTINCT = 5


def excludes_zero(ci: Sequence[float] | None) -> int:
    """+1 when the interval lies above 0, -1 below, 0 when it covers 0 or is missing."""
    if ci is None or len(ci) != 2 or ci[0] is None or ci[1] is None:
        return 0
    if ci[0] > 0:
        return 1
    if ci[1] < 0:
        return -1
    return 0


def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(ci: Any, digits: int = 3) -> str:
    if ci is None or None in ci:
        return "[–]"
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]"


def _trained_networks(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        r
        for r in results
        if r["source"]["kind"] == "network" and not r["source"].get("control", False)
    ]


def _row(claim: str, status: str, evidence: str, rule: str) -> dict[str, Any]:
    assert status in STATUSES
    return {"claim": claim, "status": status, "evidence": evidence, "rule": rule}


# --------------------------------------------------------------------------- claims


def claim_objective_over_architecture(objectives: dict[str, Any] | None) -> dict[str, Any]:
    claim = (
        "Model scale and architecture have essentially no effect on alignment; training "
        "data and objective have a much larger one"
    )
    rule = (
        "contrasts with the architecture held (objective + data differ) vs contrasts with "
        "the objective held (architecture or scale differ), THINGS zero-shot and mur92 "
        "RSA, paired 95% intervals: supported if some objective/data contrast differs and "
        "no architecture/scale one does; contradicted if the reverse; not testable "
        "without both kinds"
    )
    contrasts = (objectives or {}).get("contrasts") or []
    obj: list[tuple[str, int, dict[str, Any]]] = []
    arch: list[tuple[str, int, dict[str, Any]]] = []
    for c in contrasts:
        kind = c.get("kind")
        if kind not in ("objective + data", "architecture", "scale"):
            continue
        for key in ("zero_shot", "rsa_mur92"):
            d = c.get(key)
            if not d or d.get("ci") is None:
                continue
            item = (f"{c['b']} vs {c['a']} ({key})", excludes_zero(d["ci"]), d)
            (obj if kind == "objective + data" else arch).append(item)
    if not obj or not arch:
        return _row(
            claim,
            NOT_TESTABLE,
            f"{len(obj)} objective/data and {len(arch)} architecture/scale comparisons "
            "measured (both kinds are needed)",
            rule,
        )
    obj_k = sum(1 for _, s, _ in obj if s)
    arch_k = sum(1 for _, s, _ in arch if s)
    if obj_k and not arch_k:
        status = SUPPORTED
    elif arch_k and not obj_k:
        status = CONTRADICTED
    else:
        status = INCONCLUSIVE

    def show(items: list[tuple[str, int, dict[str, Any]]]) -> str:
        return "; ".join(f"{n}: Δ {d['delta']:+.3f} {_ci(d['ci'])}" for n, _, d in items)

    evidence = (
        f"objective/data: {obj_k} of {len(obj)} differ ({show(obj)}). "
        f"architecture/scale: {arch_k} of {len(arch)} differ ({show(arch)})"
    )
    return _row(claim, status, evidence, rule)


def claim_clip_best(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    claim = (
        "Models trained on image/text pairs (CLIP-like) and very large ViTs trained on huge "
        "datasets align best"
    )
    rule = (
        "needs an image/text-trained or very large ViT among the sources (matched by id); "
        "supported if its zero-shot interval lies above every other trained network's"
    )
    cands = [
        r
        for r in _trained_networks(results)
        if any(tag in r["source"]["id"].lower() for tag in ("clip", "siglip", "vit_huge", "vitg"))
    ]
    if not cands:
        return _row(
            claim,
            NOT_TESTABLE,
            "no CLIP-like or very large ViT model installs offline here",
            rule,
        )
    others = [r for r in _trained_networks(results) if r not in cands]
    best = max(cands, key=lambda r: r["things"]["zero_shot"]["accuracy"])
    lo = (best["things"]["zero_shot"].get("ci") or [None, None])[0]
    his = [(r["things"]["zero_shot"].get("ci") or [None, None])[1] for r in others]
    if lo is None or not his or None in his:
        return _row(claim, INCONCLUSIVE, "no intervals to compare", rule)
    status = SUPPORTED if lo > max(his) else INCONCLUSIVE
    return _row(
        claim,
        status,
        f"{best['source']['label']} lower bound {_f(lo)} vs others' highest upper {_f(max(his))}",
        rule,
    )


def claim_across_datasets(objectives: dict[str, Any] | None) -> dict[str, Any]:
    claim = (
        "The findings hold across datasets of human similarity judgments collected with two "
        "tasks (odd-one-out triplets; multi-arrangement and ratings)"
    )
    rule = (
        "model contrasts measured on both THINGS (odd-one-out) and mur92 (multi-arrangement): "
        "supported if at least one contrast differs on both and every such contrast has the "
        "same sign on both; contradicted if one differs on both with opposite signs; "
        "inconclusive when no contrast is resolved on both. Peterson ratings have no "
        "images, so image models cannot be scored on them"
    )
    contrasts = (objectives or {}).get("contrasts") or []
    both = [c for c in contrasts if c.get("zero_shot") and c.get("rsa_mur92")]
    if not both:
        return _row(claim, NOT_TESTABLE, "no contrast measured on both datasets", rule)
    resolved = []
    for c in both:
        s1, s2 = excludes_zero(c["zero_shot"]["ci"]), excludes_zero(c["rsa_mur92"]["ci"])
        if s1 and s2:
            resolved.append((c, s1 == s2))
    if any(not agree for _, agree in resolved):
        status = CONTRADICTED
    elif resolved:
        status = SUPPORTED
    else:
        status = INCONCLUSIVE
    detail = "; ".join(
        f"{c['b']} vs {c['a']}: THINGS {c['zero_shot']['delta']:+.3f} "
        f"{_ci(c['zero_shot']['ci'])}, mur92 {c['rsa_mur92']['delta']:+.3f} "
        f"{_ci(c['rsa_mur92']['ci'])}"
        for c, _ in resolved
    )
    evidence = (
        f"{len(resolved)} of {len(both)} contrasts resolved on both datasets"
        + (f" ({detail})" if detail else "")
        + f", {sum(1 for _, a in resolved if a)} with the same sign"
    )
    return _row(claim, status, evidence, rule)


def _majority(signs: list[int]) -> str:
    pos, neg = signs.count(1), signs.count(-1)
    if not signs:
        return NOT_TESTABLE
    if pos * 2 > len(signs) and neg == 0:
        return SUPPORTED
    if neg * 2 > len(signs) and pos == 0:
        return CONTRADICTED
    return INCONCLUSIVE


def claim_transfer(
    results: Sequence[dict[str, Any]], probe: str = "human", label: str = ""
) -> dict[str, Any]:
    claim = (
        "A linear transform learned from THINGS triplets markedly improves alignment on "
        "the other datasets (transfer)" + (f" — {label}" if label else "")
    )
    rule = (
        f"Δ RSA (after − before, cosine RDMs, '{probe}' probe) of every trained network on "
        "every RDM dataset, paired stimulus-bootstrap 95% interval: supported if most Δ are "
        "resolved above 0 and none below; contradicted if most below and none above; "
        "inconclusive otherwise"
    )
    signs, parts = [], []
    for r in _trained_networks(results):
        for name, e in (r.get("rsa") or {}).items():
            t = ((e or {}).get("transfer") or {}).get(probe)
            if not t or "delta" not in t:
                continue
            signs.append(excludes_zero(t.get("delta_ci")))
            parts.append(
                f"{r['source']['label']} {name}: {t['delta']:+.3f} {_ci(t.get('delta_ci'))}"
            )
    status = _majority(signs)
    evidence = (
        f"{signs.count(1)} up, {signs.count(-1)} down, {signs.count(0)} unresolved of "
        f"{len(signs)} ({'; '.join(parts)})"
        if signs
        else "no transfer measured (no probe or no RDM dataset)"
    )
    return _row(claim, status, evidence, rule)


def claim_probe_lift(results: Sequence[dict[str, Any]], probe: str = "human") -> dict[str, Any]:
    claim = (
        "A linear probe on THINGS triplets improves held-out THINGS alignment "
        f"(the paper's main tool; '{probe}' probe)"
    )
    rule = (
        "lift = held-out probe accuracy − the same pipeline with the transform switched "
        "off, on the same held-out responses, paired distinct-triplet 95% interval, every "
        "trained network: supported if most lifts are resolved above 0 and none below; "
        "contradicted if most below and none above; inconclusive otherwise"
    )
    signs, parts = [], []
    for r in _trained_networks(results):
        d = (r["things"].get("probes") or {}).get(probe)
        if not d or "lift" not in d:
            continue
        lift = d["lift"]
        signs.append(excludes_zero(lift.get("ci")))
        parts.append(f"{r['source']['label']}: {lift['value']:+.3f} {_ci(lift.get('ci'))}")
    status = _majority(signs)
    evidence = (
        f"{signs.count(1)} up, {signs.count(-1)} down, {signs.count(0)} unresolved of "
        f"{len(signs)} ({'; '.join(parts)})"
        if signs
        else "no probe was run"
    )
    return _row(claim, status, evidence, rule)


def _concept_row(concepts: list[dict[str, Any]], label: str | None) -> dict[str, Any] | None:
    if label is None:
        return None
    rows = [
        c
        for c in concepts
        if c.get("name") == label
        and c.get("accuracy") is not None
        and c.get("n_distinct", 0) >= MIN_DISTINCT
    ]
    if not rows:
        return None
    return max(rows, key=lambda c: c.get("match_r") or 0.0)


def claim_concepts(best: dict[str, Any] | None) -> dict[str, Any]:
    claim = (
        "Some human concepts (food, animals) are well represented by networks; others "
        "(royal, sports-related) are not"
    )
    rule = (
        "best trained network, VICE dimensions named by their best-matching labelled SPoSE "
        f"dimension (≥ {MIN_DISTINCT} distinct triplets), cluster 95% intervals: supported "
        "if every 'well' interval lies above every 'poorly' interval; contradicted if every "
        "'well' interval lies below; inconclusive otherwise; not testable without the "
        "named dimensions"
    )
    if best is None or not best["things"].get("concepts"):
        return _row(claim, NOT_TESTABLE, "no network with concept accuracies", rule)
    concepts = best["things"]["concepts"]
    well = {k: _concept_row(concepts, v) for k, v in WELL_CAPTURED.items()}
    poor = {k: _concept_row(concepts, v) for k, v in POORLY_CAPTURED.items()}
    missing = [k for k, v in {**well, **poor}.items() if v is None]
    found_well = {k: v for k, v in well.items() if v is not None}
    found_poor = {k: v for k, v in poor.items() if v is not None}

    def show(name: str, c: dict[str, Any]) -> str:
        return (
            f"{name} (dim {c['dimension']}, r={_f(c.get('match_r'), 2)}): {_f(c['accuracy'])} "
            f"{_ci(c.get('ci'))}, {c['n_distinct']} distinct, SPoSE "
            f"{_f(c.get('reference_accuracy'))}"
        )

    evidence = (
        f"{best['source']['label']}: "
        + "; ".join(show(k, v) for k, v in {**found_well, **found_poor}.items())
        + (f"; not found: {', '.join(missing)}" if missing else "")
    )
    if len(found_well) < len(WELL_CAPTURED) or not found_poor:
        return _row(claim, NOT_TESTABLE, evidence, rule)
    well_lo = [v["ci"][0] for v in found_well.values() if v.get("ci")]
    well_hi = [v["ci"][1] for v in found_well.values() if v.get("ci")]
    poor_lo = [v["ci"][0] for v in found_poor.values() if v.get("ci")]
    poor_hi = [v["ci"][1] for v in found_poor.values() if v.get("ci")]
    if not (well_lo and poor_hi):
        return _row(claim, INCONCLUSIVE, evidence, rule)
    if min(well_lo) > max(poor_hi):
        status = SUPPORTED
    elif max(well_hi) < min(poor_lo):
        status = CONTRADICTED
    else:
        status = INCONCLUSIVE
    return _row(claim, status, evidence, rule)


def ceiling_interval(
    triplets: np.ndarray, n_bootstrap: int, seed: int
) -> tuple[float, tuple[float, float] | None, int]:
    """The in-sample THINGS ceiling (mean over repeated distinct triplets of the majority
    share) with a bootstrap interval over those distinct triplets."""
    from ..metrics.bootstrap import cluster_mean

    T = np.asarray(triplets, dtype=np.int64)
    canon = np.sort(T, axis=1)
    keys, inverse = np.unique(canon, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    sizes = np.bincount(inverse)
    pair = inverse * (int(T.max()) + 1) + T[:, 2]
    codes, counts = np.unique(pair, return_counts=True)
    top = np.zeros(keys.shape[0])
    np.maximum.at(top, codes // (int(T.max()) + 1), counts)
    repeated = sizes >= 2
    shares = top[repeated] / sizes[repeated]
    est = cluster_mean(shares, None, n_bootstrap=n_bootstrap, seed=seed, unit="distinct triplet")
    return est.value, est.ci, int(repeated.sum())


def claim_ceiling(ceiling: dict[str, Any] | None) -> dict[str, Any]:
    claim = "The human noise ceiling on THINGS is about 0.67 (paper: 0.673)"
    rule = (
        "in-sample ceiling from the 20,000-response set, bootstrap over distinct triplets: "
        "supported if 0.673 lies in its 95% interval, contradicted otherwise"
    )
    if not ceiling or ceiling.get("ci") is None:
        return _row(claim, NOT_TESTABLE, "no repeated triplets to compute it from", rule)
    lo, hi = ceiling["ci"]
    status = SUPPORTED if lo <= PAPER_CEILING <= hi else CONTRADICTED
    evidence = (
        f"in-sample {_f(ceiling['value'], 4)} {_ci(ceiling['ci'], 4)} over "
        f"{ceiling['n_distinct']} distinct triplets; leave-one-response-out "
        f"{_f(ceiling.get('loo'), 4)} (the bound a model can reach)"
    )
    return _row(claim, status, evidence, rule)


def claim_zero_shot_range(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    claim = "The paper's models span roughly 0.35–0.55 zero-shot (chance 1/3)"
    rule = (
        "every trained network here: supported if each zero-shot 95% interval overlaps "
        "0.35–0.55; contradicted if any lies wholly outside; only a consistency check, our "
        "models are not the paper's"
    )
    nets = _trained_networks(results)
    if not nets:
        return _row(claim, NOT_TESTABLE, "no trained network in the run", rule)
    lo_r, hi_r = PAPER_RANGE
    outside, parts = [], []
    for r in nets:
        zs = r["things"]["zero_shot"]
        ci = zs.get("ci")
        parts.append(f"{r['source']['label']} {_f(zs['accuracy'])} {_ci(ci)}")
        if ci is not None and (ci[1] < lo_r or ci[0] > hi_r):
            outside.append(r["source"]["label"])
    status = CONTRADICTED if outside else SUPPORTED
    evidence = "; ".join(parts) + (f"; outside: {', '.join(outside)}" if outside else "")
    return _row(claim, status, evidence, rule)


def best_network(results: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    nets = _trained_networks(results)
    if not nets:
        return None
    return max(nets, key=lambda r: r["things"]["zero_shot"]["accuracy"])


def decide_claims(
    results: Sequence[dict[str, Any]],
    objectives: dict[str, Any] | None = None,
    ceiling: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """One row per claim of the paper (METHODS.md section 0), in the order stated there."""
    return [
        claim_objective_over_architecture(objectives),
        claim_clip_best(results),
        claim_across_datasets(objectives),
        claim_transfer(results, "human", "human-triplet probe"),
        claim_transfer(
            results, "simulated", "simulated supervision (SPoSE choice model), not the paper's"
        ),
        claim_probe_lift(results, "human"),
        claim_concepts(best_network(results)),
        claim_ceiling(ceiling),
        claim_zero_shot_range(results),
    ]


def claims_markdown(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The claims table (Markdown lines)."""
    L = ["## The paper's claims, decided by the intervals\n"]
    L.append(
        "Each status is computed by `align.reporting.claims` from the stored numbers "
        "(figures/results.json), never typed: a difference counts only when its paired 95% "
        "interval excludes 0. Statuses: supported, contradicted, inconclusive (measured, "
        "the intervals do not decide), not testable (the data or models here cannot "
        "measure it).\n"
    )
    L.append("| # | claim (paper) | status | numbers that decided it | rule |")
    L.append("|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        cells = [str(i), r["claim"], f"**{r['status']}**", r["evidence"], r["rule"]]
        L.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    L.append("")
    return L
