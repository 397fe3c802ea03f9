"""Report: the numbers of one (model, dataset) evaluation plus everything that produced them.

A report is what `align.score()` returns, what the CLI prints with ``--json`` and what the
evaluation service sends over the wire (``Report.to_dict()`` is the wire form and
``Report.from_dict()`` reads it back). Metric values are plain JSON dicts (each metric's
``Result.to_dict()``), so a report survives a JSON round trip unchanged.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .errors import InvalidInputError
from .results import Result, to_jsonable

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

# Columns of Report.to_frame(), in order.
FRAME_COLUMNS = ("model", "dataset", "layer", "metric", "value_name", "value")

# Keys of a metric dict that hold a (low, high) pair: flattened to <key>_low / <key>_high.
_PAIR_KEYS = ("ci",)
# Keys of a metric dict that are settings, not measured values: left out of to_frame().
_SETTING_KEYS = frozenset(
    {"n_bootstrap", "confidence", "seed", "k", "options", "transform", "clip_normalized"}
)


@dataclasses.dataclass(repr=False)
class Report(Result):
    """Scores of one model on one dataset, with provenance.

    ``metrics`` maps a metric name ("odd_one_out", "rsa", "wordsim", "probe", ...) to that
    metric's result as a JSON-able dict. ``provenance`` holds the model id, weights digest,
    layer, preprocessing, dataset id and digest, every option, the library version,
    METRIC_CODE_VERSION and the wall time.
    """

    model: str
    dataset: str
    metrics: dict[str, dict[str, Any]]
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model:
            raise InvalidInputError("model", f"is {self.model!r}", "a non-empty model id")
        if not isinstance(self.dataset, str) or not self.dataset:
            raise InvalidInputError("dataset", f"is {self.dataset!r}", "a non-empty dataset id")
        if not isinstance(self.metrics, Mapping):
            raise InvalidInputError(
                "metrics", f"is a {type(self.metrics).__name__}", "a dict name -> result"
            )
        metrics: dict[str, dict[str, Any]] = {}
        for name, value in self.metrics.items():
            if isinstance(value, Result):
                value = value.to_dict()
            elif dataclasses.is_dataclass(value) and not isinstance(value, type):
                value = to_jsonable(value)
            if not isinstance(value, Mapping):
                raise InvalidInputError(
                    f"metrics[{name!r}]", f"is a {type(value).__name__}", "a result dict"
                )
            metrics[str(name)] = to_jsonable(dict(value))
        self.metrics = metrics
        if not isinstance(self.provenance, Mapping):
            raise InvalidInputError(
                "provenance", f"is a {type(self.provenance).__name__}", "a dict"
            )
        self.provenance = to_jsonable(dict(self.provenance))

    @property
    def layer(self) -> str | None:
        layer = self.provenance.get("layer")
        return None if layer is None else str(layer)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Read the wire form (``to_dict()``) back. Names the missing or bad key."""
        if not isinstance(data, Mapping):
            raise InvalidInputError("report", f"is a {type(data).__name__}", "a JSON object")
        for key in ("model", "dataset", "metrics"):
            if key not in data:
                raise InvalidInputError(
                    "report", f"has no key {key!r}", "keys model, dataset, metrics, provenance"
                )
        return cls(
            model=data["model"],
            dataset=data["dataset"],
            metrics=dict(data["metrics"]),
            provenance=dict(data.get("provenance") or {}),
        )

    @classmethod
    def from_json(cls, text: str) -> Report:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(
                "report", f"is not JSON ({exc.msg} at line {exc.lineno})", "a JSON object"
            ) from None
        return cls.from_dict(data)

    def rows(self) -> list[dict[str, Any]]:
        """One dict per numeric metric value (the rows of ``to_frame()``)."""
        out: list[dict[str, Any]] = []
        for metric, values in self.metrics.items():
            for name, value in _flatten_numbers(values):
                out.append(
                    {
                        "model": self.model,
                        "dataset": self.dataset,
                        "layer": self.layer,
                        "metric": metric,
                        "value_name": name,
                        "value": value,
                    }
                )
        return out

    def to_frame(self) -> pd.DataFrame:
        """A long pandas DataFrame: one row per metric value (columns FRAME_COLUMNS)."""
        import pandas as pd

        return pd.DataFrame(self.rows(), columns=list(FRAME_COLUMNS))

    def value(self, metric: str, name: str) -> Any:
        """``report.value("odd_one_out", "accuracy")``; dotted names reach nested values."""
        if metric not in self.metrics:
            raise InvalidInputError(
                "metric", f"{metric!r} is not in this report", f"one of {sorted(self.metrics)}"
            )
        node: Any = self.metrics[metric]
        for part in name.split("."):
            if not isinstance(node, Mapping) or part not in node:
                raise InvalidInputError(
                    "name", f"{name!r} is not a value of metric {metric!r}", "a key of its result"
                )
            node = node[part]
        return node

    # -- how a report shows itself: the CLI table, a notebook's repr and HTML ----------
    def title(self) -> str:
        """ "<model> on <dataset>" (with the layer when there is one)."""
        text = f"{self.model} on {self.dataset}"
        return f"{text} (layer {self.layer})" if self.layer else text

    def table(self) -> list[tuple[str, str, str]]:
        """(metric, value name, formatted number): the rows `align score` prints."""
        return [(r["metric"], r["value_name"], format_number(r["value"])) for r in self.rows()]

    def footer(self) -> str:
        """Digests, versions, time, backend and cache: the line under the table."""
        p = self.provenance
        return (
            f"dataset digest {str(p.get('dataset_digest', ''))[:12]}, weights digest "
            f"{str(p.get('weights_digest', ''))[:12]}, align {p.get('library_version')}, "
            f"metric code {p.get('metric_code_version')}, {p.get('wall_time_s', 0) or 0:.2f} s, "
            f"backend {p.get('backend', '-')}, cache {p.get('cache', '-')}"
        )

    def headline(self, metric: str) -> str:
        """One metric in a few words: its main number with the interval, chance and
        ceiling when it has them (e.g. ``odd_one_out 0.5431 [0.5302, 0.5560], chance
        0.3333, ceiling 0.6735``)."""
        d = self.metrics[metric]
        name = next((k for k in _HEADLINE_KEYS if isinstance(d.get(k), (int, float))), None)
        if name is None:
            return f"{metric} -"
        text = f"{metric} {name} {format_number(d[name])}"
        ci = d.get("ci")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci:
            text += f" [{format_number(ci[0])}, {format_number(ci[1])}]"
        if isinstance(d.get("chance"), (int, float)):
            text += f", chance {format_number(d['chance'])}"
        ceiling = d.get("ceiling", d.get("noise_ceiling"))
        if isinstance(ceiling, Mapping):
            lo, hi = ceiling.get("lower"), ceiling.get("upper")
            if isinstance(lo, (int, float)) and isinstance(hi, (int, float)):
                text += f", ceiling [{format_number(lo)}, {format_number(hi)}]"
        elif isinstance(ceiling, (int, float)) and not isinstance(ceiling, bool):
            text += f", ceiling {format_number(ceiling)}"
        return text

    def __repr__(self) -> str:
        heads = "; ".join(self.headline(m) for m in self.metrics) or "no metrics"
        return f"<Report {self.title()}: {heads}>"

    def _repr_html_(self) -> str:
        """The table `align score` prints, as HTML (Jupyter shows this)."""
        cells = "".join(
            f"<tr><td>{_esc(m)}</td><td>{_esc(v)}</td><td style='text-align:right'>"
            f"{_esc(n)}</td></tr>"
            for m, v, n in self.table()
        )
        return (
            f"<table><caption>{_esc(self.title())}</caption>"
            "<thead><tr><th>metric</th><th>value</th><th>number</th></tr></thead>"
            f"<tbody>{cells}</tbody></table>"
            f"<p style='opacity:0.6'>{_esc(self.footer())}</p>"
        )


# Which number of a metric's result is its headline, in order of preference.
_HEADLINE_KEYS = ("accuracy", "score", "spearman", "correlation", "value")


def format_number(value: Any) -> str:
    """A number as the CLI and the notebook show it: "-" for None/NaN, integers >= 10
    without decimals, else 4 decimals."""
    if value is None or isinstance(value, bool):
        return "-" if value is None else str(value)
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if value.is_integer() and abs(value) >= 10:
            return f"{int(value)}"
        return f"{value:.4f}"
    return str(value)


def _esc(text: str) -> str:
    return html.escape(str(text), quote=True)


def _flatten_numbers(values: Mapping[str, Any], prefix: str = "") -> list[tuple[str, float]]:
    """Numeric leaves of a result dict: nested dicts become dotted names, a ``ci`` pair
    becomes ``ci_low``/``ci_high``; strings, lists and booleans (options, per-item data)
    are left out."""
    out: list[tuple[str, float]] = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, bool) or key in _SETTING_KEYS:
            continue
        if isinstance(value, (int, float)):
            out.append((name, float(value)))
        elif isinstance(value, Mapping):
            out.extend(_flatten_numbers(value, prefix=f"{name}."))
        elif (
            key in _PAIR_KEYS
            and isinstance(value, (list, tuple))
            and len(value) == 2
            and all(isinstance(v, (int, float)) or v is None for v in value)
        ):
            lo, hi = value
            out.append((f"{name}_low", math.nan if lo is None else float(lo)))
            out.append((f"{name}_high", math.nan if hi is None else float(hi)))
    return out
