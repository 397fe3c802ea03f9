"""Reports and the paper's experiment set (`align report`, `align reproduce`).

    from align.reporting import build_report, run_reproduce, ReportConfig
    build_report(["timm/tf_efficientnet_lite0", "reference/spose"], "out/")
    run_reproduce("docs")      # regenerates docs/results.md and docs/figures/

Modules: ``sources`` (what a row is made from), ``probing`` (low-rank and
simulated-supervision probes), ``experiments`` (all numbers of one source),
``figures`` (matplotlib, Agg), ``html`` (the HTML writer), ``reproduce``.
Imports matplotlib and torch only when a function runs.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DEFAULT_MODELS", "ReportConfig", "build_report", "run_reproduce"]


def __getattr__(name: str) -> Any:
    if name == "ReportConfig":
        from .experiments import ReportConfig

        return ReportConfig
    if name in ("build_report", "run_reproduce", "DEFAULT_MODELS"):
        from .reproduce import DEFAULT_MODELS, build_report, reproduce

        return {"build_report": build_report, "run_reproduce": reproduce}.get(name, DEFAULT_MODELS)
    raise AttributeError(f"module 'align.reporting' has no attribute {name!r}")
