"""align.evaluation: evaluate(), the ONE place that maps a dataset's kind to the metrics
that apply to it. The package exports the function as ``align.evaluate`` (this module is
named ``evaluation`` so that the function and the module never share a name).

Used by the CLI, the embedded `align.score()`, the evaluation service and reports::

    results = evaluate(features, dataset)                    # the defaults for its kind
    results = evaluate(features, dataset, ["odd_one_out", "probe"], similarity="dot")

Defaults by kind: triplets -> odd_one_out (anchor_accuracy for anchor-convention
triplets), rdm -> rsa, wordsim -> wordsim. Optional: probe, concepts (THINGS + VICE).
Options are forwarded to each metric that takes them; an option that no chosen metric
takes is an error that lists the valid ones.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .errors import InvalidInputError
from .metrics import validation
from .results import Result

DEFAULT_METRICS: dict[str, tuple[str, ...]] = {
    "triplets": ("odd_one_out",),
    "rdm": ("rsa",),
    "wordsim": ("wordsim",),
}
# Other spellings accepted in `metrics`.
ALIASES = {
    "word_similarity": "wordsim",
    "oddoneout": "odd_one_out",
    "odd-one-out": "odd_one_out",
    "anchor": "anchor_accuracy",
}
# Options that evaluate() itself reads (not forwarded as such).
EVALUATE_OPTIONS = ("data_dir", "vice")

Features = Any  # array-like (n, p)


@dataclasses.dataclass(frozen=True)
class MetricInfo:
    """How evaluate() runs one metric."""

    name: str
    kinds: tuple[str, ...]  # dataset kinds it applies to
    module: str  # where the function lives (imported on first use)
    function: str
    supplied: tuple[str, ...]  # parameters evaluate() fills in itself
    extra_options: tuple[str, ...] = ()  # accepted beyond the function's own keywords
    description: str = ""
    convention: str | None = None  # triplet convention it needs, if any

    def load(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(self.module), self.function)


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "odd_one_out",
            ("triplets",),
            "align.metrics.oddoneout",
            "odd_one_out",
            ("X", "triplets"),
            description="zero-shot odd-one-out accuracy, chance 1/3, human noise ceiling",
            convention="odd-one-out",
        ),
        MetricInfo(
            "anchor_accuracy",
            ("triplets",),
            "align.metrics.oddoneout",
            "anchor_accuracy",
            ("X", "triplets"),
            description="anchor-triplet accuracy (b closer to a than c), chance 1/2",
            convention="anchor",
        ),
        MetricInfo(
            "probe",
            ("triplets",),
            "align.metrics.probe",
            "cross_validate_probe",
            ("X", "triplets"),
            description="linear probe, cross-validated over objects (held-out accuracy)",
            convention="odd-one-out",
        ),
        MetricInfo(
            "concepts",
            ("triplets",),
            "align.metrics.concepts",
            "per_concept_accuracy",
            ("X", "triplets", "vice", "embedding", "features", "concepts"),
            extra_options=EVALUATE_OPTIONS,
            description="per-VICE-dimension accuracy on THINGS triplets",
            convention="odd-one-out",
        ),
        MetricInfo(
            "rsa",
            ("rdm",),
            "align.metrics.rsa",
            "rsa",
            ("X", "matrices", "matrix_kind"),
            extra_options=("similarity",),
            description="Spearman of model and human RDMs, with noise ceiling",
        ),
        MetricInfo(
            "wordsim",
            ("wordsim",),
            "align.metrics.wordsim",
            "word_similarity",
            ("embeddings", "words", "pairs", "scores"),
            description="Spearman of cosine similarity and human word-pair scores",
        ),
    )
}


def metric_names() -> list[str]:
    return list(METRICS)


def default_metrics(dataset: Any) -> list[str]:
    kind = dataset.kind
    if kind == "triplets" and getattr(dataset, "triplet_convention", "odd-one-out") == "anchor":
        return ["anchor_accuracy"]
    return list(DEFAULT_METRICS.get(kind, ()))


def resolve_metrics(dataset: Any, metrics: str | Iterable[str] | None) -> list[str]:
    """The metric names evaluate() will run, checked against the dataset's kind."""
    if metrics is None:
        return default_metrics(dataset)
    if isinstance(metrics, str):
        metrics = [m for m in metrics.replace(",", " ").split() if m]
    names: list[str] = []
    for raw in metrics:
        if not isinstance(raw, str):
            raise InvalidInputError("metrics", f"contains {raw!r}", "metric names (str)")
        name = ALIASES.get(raw, raw)
        if name not in METRICS:
            raise InvalidInputError(
                "metrics", f"unknown metric {raw!r}", f"one of {', '.join(METRICS)}"
            )
        info = METRICS[name]
        if dataset.kind not in info.kinds:
            applicable = [m.name for m in METRICS.values() if dataset.kind in m.kinds]
            raise InvalidInputError(
                "metrics",
                f"{name!r} does not apply to {dataset.kind} dataset {dataset.id!r}",
                f"one of {', '.join(applicable)}",
            )
        convention = getattr(dataset, "triplet_convention", "odd-one-out")
        if info.convention is not None and info.convention != convention:
            raise InvalidInputError(
                "metrics",
                f"{name!r} needs {info.convention} triplets but {dataset.id!r} stores "
                f"{convention} triplets",
                "anchor_accuracy for anchor triplets" if convention == "anchor" else "odd_one_out",
            )
        if name not in names:
            names.append(name)
    if not names:
        raise InvalidInputError("metrics", "is empty", f"one of {', '.join(METRICS)} or None")
    return names


def accepted_options(name: str) -> set[str]:
    """The option names metric ``name`` takes (its keyword parameters, minus the ones
    evaluate() fills in itself)."""
    info = METRICS[name]
    func = info.load()
    accepted = set(info.extra_options)
    accepted |= _keyword_params(func, skip=info.supplied)
    if name == "probe":
        # cross_validate_probe forwards probe settings (reg_kind, normalize, ...) to TripletProbe
        probe_cls = getattr(importlib.import_module(info.module), "TripletProbe", None)
        if probe_cls is not None and _has_var_keyword(func):
            # reg is the lambda grid's job (option "lambdas")
            accepted |= _keyword_params(probe_cls.__init__, skip=("self", "reg"))
    return accepted


def _keyword_params(func: Callable[..., Any], skip: Sequence[str]) -> set[str]:
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return set()
    names: list[str] = []
    for i, p in enumerate(params):
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in skip:
            continue
        if i == 0 and p.default is p.empty:  # the data argument, whatever it is called
            continue
        if p.default is p.empty and p.kind is not p.KEYWORD_ONLY:
            continue  # a required positional: evaluate supplies it
        names.append(p.name)
    return set(names)


def _has_var_keyword(func: Callable[..., Any]) -> bool:
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values())
    except (TypeError, ValueError):  # pragma: no cover
        return False


def check_features(features: Features, dataset: Any) -> np.ndarray:
    """An (n, p) real matrix with one row per stimulus of ``dataset``, checked by the one
    feature rule (:func:`align.metrics.validation.check_features`: all-NaN rows mark
    missing stimuli, any other non-finite value raises NumericalError naming the row and
    its stimulus id). Float features keep their dtype; integers become float64."""
    n = len(dataset.stimulus_ids)
    X, _ = validation.check_features(
        features,
        "features",
        n_rows=n,
        rows_expected=f"{n} rows, one per stimulus of {dataset.id!r} in its stimulus order",
        row_names=dataset.stimulus_ids,
        as_float64=False,
    )
    return X


def check_options(names: Sequence[str], options: Mapping[str, Any]) -> dict[str, set[str]]:
    """Check that every option is taken by at least one of the metrics ``names``; returns
    {metric: the options it takes}. Raises InvalidInputError listing the valid ones."""
    accepted = {name: accepted_options(name) for name in names}
    valid: set[str] = set().union(*accepted.values()) if accepted else set()
    unknown = sorted(set(options) - valid)
    if unknown:
        raise InvalidInputError(
            "options",
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
            f"for metrics {', '.join(names)}",
            f"some of {', '.join(sorted(valid))}" if valid else "no options",
        )
    return accepted


def evaluate(
    features: Features,
    dataset: Any,
    metrics: str | Iterable[str] | None = None,
    **options: Any,
) -> dict[str, Result]:
    """Score ``features`` (n, p; rows in the dataset's stimulus order) on ``dataset``.

    Returns {metric name: Result}. ``metrics=None`` picks the defaults for the dataset's
    kind. Options go to every chosen metric that takes them (similarity, n_bootstrap,
    seed, method, lambdas, ...); an option no chosen metric takes raises
    InvalidInputError listing the valid ones.
    """
    if not hasattr(dataset, "kind") or not hasattr(dataset, "stimulus_ids"):
        raise InvalidInputError(
            "dataset", f"is a {type(dataset).__name__}", "an align.datasets.Dataset"
        )
    names = resolve_metrics(dataset, metrics)
    X = check_features(features, dataset)
    options = {k: v for k, v in options.items() if v is not None}
    accepted = check_options(names, options)

    results: dict[str, Result] = {}
    for name in names:
        opts = {k: v for k, v in options.items() if k in accepted[name]}
        results[name] = _RUNNERS[name](X, dataset, opts)
    return results


# -- one runner per metric ---------------------------------------------------------------


def _triplets(dataset: Any) -> np.ndarray:
    if dataset.triplets is None:
        raise InvalidInputError("dataset", f"{dataset.id!r} has no triplets", "a triplet dataset")
    return np.asarray(dataset.triplets, dtype=np.int64)


def _run_odd_one_out(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    # ceiling=None: the metric computes the human noise ceiling from the (kept) triplets
    # when some triplet was answered more than once (METHODS section 2).
    return METRICS["odd_one_out"].load()(X, _triplets(dataset), **opts)


def _run_anchor(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    return METRICS["anchor_accuracy"].load()(X, _triplets(dataset), **opts)


def _run_probe(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    # missing stimuli (all-NaN rows): the probe drops their triplets and counts them
    return METRICS["probe"].load()(X, _triplets(dataset), **opts)


def _run_concepts(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    if not str(dataset.id).startswith("things") or len(dataset.stimulus_ids) != 1854:
        raise InvalidInputError(
            "metrics",
            f"'concepts' needs the 1,854 THINGS objects; {dataset.id!r} has "
            f"{len(dataset.stimulus_ids)} stimuli",
            "dataset 'things'",
        )
    vice = opts.pop("vice", None)
    data_dir = opts.pop("data_dir", None)
    if vice is None:
        from .datasets import load_vice_concept_labels, load_vice_embedding

        vice = load_vice_embedding(data_dir)
        if "labels" not in opts:
            labels = load_vice_concept_labels(data_dir)
            if len(labels) == np.shape(vice)[1]:
                opts["labels"] = list(labels)
    func = METRICS["concepts"].load()
    return func(X, _triplets(dataset), vice=np.asarray(vice), **opts)


def _run_rsa(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    similarity = opts.pop("similarity", None)
    if similarity is not None and "rdm_metric" not in opts:
        mapping = {"cosine": "cosine", "euclidean": "euclidean"}
        if similarity not in mapping:
            raise InvalidInputError(
                "similarity",
                f"{similarity!r} has no RDM equivalent for rsa",
                "cosine or euclidean (or set rdm_metric)",
            )
        opts["rdm_metric"] = mapping[similarity]
    if dataset.matrices is None:
        raise InvalidInputError("dataset", f"{dataset.id!r} has no matrices", "an RDM dataset")
    matrices = np.asarray(dataset.matrices, dtype=np.float64)
    return METRICS["rsa"].load()(X, matrices, dataset.matrix_kind, **opts)


def _run_wordsim(X: np.ndarray, dataset: Any, opts: dict[str, Any]) -> Result:
    words = dataset.words if dataset.words is not None else dataset.stimulus_ids
    if dataset.pairs is None or dataset.pair_scores is None:
        raise InvalidInputError("dataset", f"{dataset.id!r} has no word pairs", "a wordsim set")
    return METRICS["wordsim"].load()(
        X, list(words), list(dataset.pairs), np.asarray(dataset.pair_scores), **opts
    )


_RUNNERS: Mapping[str, Callable[[np.ndarray, Any, dict[str, Any]], Result]] = {
    "odd_one_out": _run_odd_one_out,
    "anchor_accuracy": _run_anchor,
    "probe": _run_probe,
    "concepts": _run_concepts,
    "rsa": _run_rsa,
    "wordsim": _run_wordsim,
}
