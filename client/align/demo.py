"""`align demo` / `make demo`: real models scored on real human similarity judgments.

- all-MiniLM-L6-v2 (text) on the THINGS concept names against the 20,000 human THINGS
  odd-one-out responses, zero-shot and with a cross-validated linear probe (which
  overfits on 1,000 distinct triplets: shown as it is, see METHODS section 3), and on
  every word-similarity set that is present;
- EfficientNet-Lite0 (ImageNet weights) on the 1,853 THINGS images (minutes on a CPU,
  with a progress bar; cached afterwards), on things48 and on mur92 when found;
- the SPoSE 66-d human embedding as a reference row: what a near-ceiling
  representation scores through the same pipeline.

Every row shows chance and the human noise ceiling beside the score.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import AlignError

TEXT_MODEL = "text/all-MiniLM-L6-v2"
IMAGE_MODEL = "timm/tf_efficientnet_lite0"
# The probe's λ grid and iteration cap in the demo: three λ of the paper's grid, so that
# the demo's probe (10 fits of a 384 x 384 transform) takes minutes, not an hour, on a CPU.
# `align score ... --probe` uses the full grid.
DEMO_PROBE = {"lambdas": [1.0, 0.1, 0.01], "max_iter": 100}
PROBE_NOTE = (
    "λ from {1, 0.1, 0.01}, ≤100 L-BFGS iterations; on 1,000 distinct triplets a "
    "384 x 384 probe overfits and does not beat zero-shot (METHODS §3)"
)


@dataclass
class Row:
    model: str
    dataset: str
    metric: str
    score: float | None = None
    ci: tuple[float, float] | None = None
    chance: float | None = None
    ceiling: str = "-"
    normalized: float | None = None
    n: str = ""
    note: str = ""
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def summarise(report: Any, metric: str) -> Row:
    """One table row from a Report's metric dict (score, CI, chance, ceiling, ...)."""
    d: dict[str, Any] = report.metrics[metric]
    row = Row(report.model, report.dataset, metric)
    row.seconds = float(report.provenance.get("wall_time_s") or 0.0)
    ci = d.get("ci")
    if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
        row.ci = (float(ci[0]), float(ci[1]))
    if metric in ("odd_one_out", "anchor_accuracy", "probe"):
        row.score = d.get("accuracy")
        row.chance = d.get("chance", 1 / 3 if metric != "anchor_accuracy" else 1 / 2)
        if d.get("ceiling") is not None:
            row.ceiling = f"{d['ceiling']:.3f}"
        row.normalized = d.get("normalized")
        row.n = f"{d.get('n_triplets', '')} resp." if d.get("n_triplets") else ""
        if metric == "probe":
            folds = d.get("folds") or []
            held_out = sum(int(f.get("n_test", 0)) for f in folds if isinstance(f, dict))
            row.n = f"{held_out} held-out" if held_out else row.n
            zero_shot = report.metrics.get("odd_one_out") or {}
            if zero_shot.get("ceiling") is not None:
                row.ceiling = f"{zero_shot['ceiling']:.3f}"
            row.note = f"λ={d.get('lambda')}, CE={_num(d.get('cross_entropy'))}; " + PROBE_NOTE
    elif metric == "rsa":
        row.score = d.get("spearman", d.get("score"))
        row.chance = 0.0
        nc = d.get("noise_ceiling")
        if isinstance(nc, dict) and nc.get("upper") is not None:
            row.ceiling = f"{_num(nc.get('lower'))}-{_num(nc.get('upper'))}"
            if row.score is not None and nc.get("upper"):
                row.normalized = float(row.score) / float(nc["upper"])
        else:
            row.ceiling = "- (group RDM)"
        n = d.get("n_stimuli") or report.provenance.get("features_shape", [None])[0]
        row.n = f"{n} stimuli" if n else ""
    elif metric == "wordsim":
        row.score = d.get("spearman", d.get("score"))
        row.chance = 0.0
        pairs = d.get("n_pairs") or d.get("n_covered")
        coverage = d.get("coverage")
        row.n = f"{pairs} pairs" if pairs else ""
        if coverage is not None:
            row.n += f", {100 * float(coverage):.0f}% cov."
    return row


def _num(value: Any) -> str:
    if value is None:
        return "-"
    try:
        return f"{float(value):.3f}"
    except (TypeError, ValueError):
        return str(value)


def run_demo(data_dir: str | Path | None = None, quick: bool = False, as_json: bool = False) -> int:
    """Run the demo, print a rich table (or JSON) and return the exit code."""
    from rich.console import Console

    from . import api
    from .datasets import list_datasets

    # piped output (a log, CI) gets a wide table instead of rich's 80-column default
    console = Console(stderr=as_json, width=None if sys.stdout.isatty() else 150)
    client = api.Client(backend=api.EmbeddedBackend(progress=True))
    rows: list[Row] = []
    skipped: list[str] = []

    try:
        statuses = {s.id: s for s in list_datasets(data_dir=data_dir)}
    except AlignError as exc:
        console.print(f"[red]cannot list datasets: {exc}[/red]")
        statuses = {}

    def present(dataset_id: str) -> bool:
        status = statuses.get(dataset_id)
        return bool(status is not None and getattr(status, "present", False))

    def attempt(label: str, model: Any, dataset: str, metrics: list[str], **opts: Any) -> None:
        console.print(f"[bold]scoring[/bold] {label} on {dataset} ({', '.join(metrics)}) ...")
        t0 = time.perf_counter()
        try:
            report = client.score(model, dataset, metrics, data_dir=data_dir, **opts)
        except AlignError as exc:
            skipped.append(f"{label} on {dataset}: {' '.join(str(exc).split())}")
            console.print(f"  [yellow]skipped[/yellow]: {exc}")
            return
        for metric in metrics:
            row = summarise(report, metric)
            row.model = label
            row.seconds = time.perf_counter() - t0
            rows.append(row)

    # 1. reference: the human-derived SPoSE embedding through the same pipeline
    try:
        from .datasets import load_spose_embedding

        spose = load_spose_embedding(data_dir)
        attempt("SPoSE 66-d (human ref.)", spose, "things", ["odd_one_out"], similarity="dot")
    except AlignError as exc:
        skipped.append(f"SPoSE reference: {exc}")
    except ImportError:  # pragma: no cover - datasets without the SPoSE loader
        skipped.append("SPoSE reference: align.datasets.load_spose_embedding is missing")

    # 2. text model: THINGS concept names, zero-shot and probed; word-similarity sets
    attempt("all-MiniLM-L6-v2", TEXT_MODEL, "things", ["odd_one_out", "probe"], **DEMO_PROBE)
    wordsets = [i for i, s in statuses.items() if getattr(s, "kind", "") == "wordsim"]
    for dataset_id in sorted(wordsets):
        if present(dataset_id):
            attempt("all-MiniLM-L6-v2", TEXT_MODEL, dataset_id, ["wordsim"])

    # 3. image model: THINGS images, things48, mur92
    if quick:
        skipped.append(f"{IMAGE_MODEL}: --quick given")
    else:
        for dataset_id in ("things", "things48", "mur92"):
            if dataset_id == "things" or present(dataset_id):
                metric = "odd_one_out" if dataset_id == "things" else "rsa"
                attempt("EfficientNet-Lite0", IMAGE_MODEL, dataset_id, [metric])
            else:
                skipped.append(f"{IMAGE_MODEL} on {dataset_id}: its folder was not found")

    if as_json:
        json.dump({"rows": [_row_dict(r) for r in rows], "skipped": skipped}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        _print_table(console, rows, skipped)
    return 0 if rows else 1


def _row_dict(row: Row) -> dict[str, Any]:
    from dataclasses import asdict

    from .results import to_jsonable

    return to_jsonable(asdict(row))


def _print_table(console: Any, rows: list[Row], skipped: list[str]) -> None:
    from rich import box
    from rich.table import Table

    table = Table(
        title="Human alignment (higher is better; chance and human ceiling beside)",
        box=box.SIMPLE_HEAD,
    )
    for col, justify in (
        ("model", "left"),
        ("dataset", "left"),
        ("metric", "left"),
        ("score", "right"),
        ("95% CI", "right"),
        ("chance", "right"),
        ("human ceiling", "right"),
        ("normalized", "right"),
        ("n", "right"),
        ("time", "right"),
    ):
        table.add_column(col, justify=justify, no_wrap=col in ("score", "95% CI", "chance"))  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r.model,
            r.dataset,
            r.metric,
            _num(r.score),
            f"{r.ci[0]:.3f}-{r.ci[1]:.3f}" if r.ci else "-",
            _num(r.chance),
            r.ceiling,
            _num(r.normalized),
            r.n,
            f"{r.seconds:.0f} s",
        )
    console.print(table)
    for r in rows:
        if r.note:
            console.print(f"note ({r.model}, {r.dataset}, {r.metric}): {r.note}", style="dim")
    console.print(
        "odd_one_out: share of human odd-one-out choices the model predicts (chance 1/3); "
        "normalized = (acc - 1/3) / (ceiling - 1/3). rsa / wordsim: Spearman correlation; "
        "for rsa, normalized = score / upper noise ceiling.",
        style="dim",
    )
    for s in skipped:
        console.print(f"[yellow]skipped[/yellow] {s}")
