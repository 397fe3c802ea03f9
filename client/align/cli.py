"""The command line: ``align ...`` or ``python -m align ...``.

    align score MODEL_OR_FEATURES.npy DATASET [--json]   score a model or saved features
    align datasets                                       which datasets are here
    align models [PATTERN]                               the registered models
    align probe MODEL DATASET -o transform.npz           fit and save a linear probe
    align report MODEL... --out DIR                      HTML report for one or many models
    align reproduce [--out docs]                         the paper's experiment set
    align demo                                           real models on real human data
    align serve [--port P ...]                           the service stack (align_services)

``score`` and ``datasets`` run on an evaluation server when ``--server HOST:PORT`` or
``ALIGN_SERVER`` is given (token: ``--token`` or ``ALIGN_TOKEN``), else embedded; they say
on stderr which backend ran (and ``score --json`` in ``provenance.backend``:
"remote" | "embedded"). ``models``, ``probe`` and ``report`` always run here (they need
the weights or the features), and say so when a server is configured.

Tables for people, ``--json`` for programs. Errors print one line to stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._version import __version__
from .errors import AlignError, InvalidInputError

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # one line, exit 2 (argparse's own code)
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"align: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="align",
        description="How well do a network's representations agree with human similarity "
        "judgments? (Muttenthaler et al., ICLR 2023)",
    )
    parser.add_argument("--version", action="version", version=f"align {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def data_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--data-dir",
            default=None,
            help="folder of the human data (default: $ALIGN_DATA_DIR, else ../shared/data)",
        )

    def server_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--server",
            default=None,
            metavar="HOST:PORT",
            help="run on this evaluation server (default: $ALIGN_SERVER; unset: embedded)",
        )
        p.add_argument(
            "--token", default=None, help="the server's access token (default: $ALIGN_TOKEN)"
        )
        p.add_argument(
            "--embedded",
            action="store_true",
            help="run here even when ALIGN_SERVER is set",
        )

    p = sub.add_parser("score", help="score a model or a saved features file on a dataset")
    p.add_argument(
        "model",
        metavar="MODEL_OR_FEATURES",
        help="a model id (see `align models`) or a .npy/.npz file of features, one row per "
        "stimulus in the dataset's order (all-NaN row = missing stimulus)",
    )
    p.add_argument("dataset", metavar="DATASET", help="a dataset id (see `align datasets`)")
    data_dir_arg(p)
    p.add_argument("--layer", default="penultimate", help="layer to read out (or npz key)")
    p.add_argument(
        "--similarity", choices=("cosine", "dot", "euclidean"), help="similarity (triplets)"
    )
    p.add_argument("--probe", action="store_true", help="also fit a cross-validated probe")
    p.add_argument(
        "--metrics", nargs="+", default=None, help="metrics to run (default: by dataset kind)"
    )
    p.add_argument("--n-bootstrap", type=int, default=None, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "-O",
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any metric option, VALUE as JSON (e.g. -O lambdas=[0.01,0.1] -O variant=majority)",
    )
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    server_args(p)

    p = sub.add_parser("datasets", help="which datasets are present and where we looked")
    data_dir_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    server_args(p)

    p = sub.add_parser("models", help="list the registered models")
    p.add_argument("pattern", nargs="?", default="*", help="glob over model ids")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("probe", help="fit a linear probe on a triplet dataset and save it")
    p.add_argument("model", metavar="MODEL_OR_FEATURES")
    p.add_argument("dataset", metavar="DATASET")
    p.add_argument("-o", "--output", required=True, help="where to write transform.npz")
    data_dir_arg(p)
    p.add_argument("--layer", default="penultimate")
    p.add_argument("--lambdas", type=float, nargs="+", default=None, help="λ grid")
    p.add_argument("--folds", type=int, default=None, help="object folds (k)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--json", action="store_true")

    _add_report_parsers(sub, data_dir_arg)

    p = sub.add_parser(
        "serve",
        help="run the service stack here (Redis, Ray Serve, evaluation); needs align[serve]",
        add_help=False,
    )
    p.add_argument("serve_args", nargs=argparse.REMAINDER, help="see `align serve --help`")

    p = sub.add_parser("demo", help="score real models on real human data")
    data_dir_arg(p)
    p.add_argument("--quick", action="store_true", help="skip the image models (text models only)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # everything after `serve` belongs to the stack's own parser
        args = argparse.Namespace(command="serve", serve_args=argv[1:], debug=False)
    else:
        args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        handler = _COMMANDS[args.command]
        with warnings.catch_warnings():
            if not args.debug:
                warnings.showwarning = _show_warning
            return handler(args)
    except AlignError as exc:
        if args.debug:
            raise
        print(f"align: error: {_one_line(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("align: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    # a warning is one line for a person, not a source location
    print(f"align: warning: {_one_line(str(message))}", file=sys.stderr)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _server_of(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """(server, token) the command should use: --server/--token, else ALIGN_SERVER /
    ALIGN_TOKEN; (None, None) with --embedded or neither."""
    if getattr(args, "embedded", False):
        return None, None
    server = getattr(args, "server", None) or os.environ.get("ALIGN_SERVER") or None
    token = getattr(args, "token", None) or os.environ.get("ALIGN_TOKEN") or None
    return server, token


def _say(message: str) -> None:
    print(f"align: {message}", file=sys.stderr)


def _note_local(command: str) -> None:
    if os.environ.get("ALIGN_SERVER"):
        _say(f"{command} runs embedded, here (ALIGN_SERVER is not used by this command)")


def _cmd_score(args: argparse.Namespace) -> int:
    from .api import Client, EmbeddedBackend
    from .evaluation import DEFAULT_METRICS
    from .scoring import is_features_path

    server, token = _server_of(args)
    metrics = list(args.metrics) if args.metrics else None
    if args.probe:
        if metrics is None:
            metrics = list(DEFAULT_METRICS[_dataset_kind(args.dataset, args.data_dir, server)])
        if "probe" not in metrics:
            metrics.append("probe")
    options: dict[str, Any] = {
        "similarity": args.similarity,
        "n_bootstrap": args.n_bootstrap,
        "seed": args.seed,
    }
    options.update(_parse_options(args.option))
    model: Any = args.model
    if is_features_path(model):
        model = Path(str(model).removeprefix("features:"))
    progress = not args.json or sys.stderr.isatty()
    if server:
        client = Client(server=server, token=token, data_dir=args.data_dir)
    else:
        backend = EmbeddedBackend(progress=progress)
        client = Client(backend=backend, data_dir=args.data_dir)
    with client:
        report = client.score(
            model,
            args.dataset,
            metrics,
            args.layer,
            cache=not args.no_cache,
            **{k: v for k, v in options.items() if v is not None},
        )
    prov = report.provenance
    where = f"on the server at {server}" if server else "embedded, in this process"
    _say(f"scored {where} (backend {prov.get('backend')}, cache {prov.get('cache', '-')})")
    if args.json:
        _print_json(report.to_dict())
    else:
        _print_report(report)
    return 0


def _dataset_kind(dataset: str, data_dir: str | None, server: str | None) -> str:
    """The kind of a dataset id, for --probe's default metrics (without loading it when
    a server will)."""
    if server is None:
        from .scoring import resolve_dataset

        return str(resolve_dataset(dataset, data_dir, uses_images=False).kind)
    from .datasets import list_datasets

    for status in list_datasets(data_dir=data_dir):
        if status.id == dataset:
            return str(status.kind)
    raise InvalidInputError("--probe", f"cannot tell the kind of {dataset!r}", "--metrics")


def _parse_options(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise InvalidInputError("--option", f"is {item!r}", "KEY=VALUE, VALUE as JSON")
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word: a string
        out[key.strip().replace("-", "_")] = value
    return out


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=report.title())  # the same rows as Report._repr_html_
    table.add_column("metric")
    table.add_column("value")
    table.add_column("number", justify="right")
    for row in report.table():
        table.add_row(*row)
    console.print(table)
    console.print(report.footer(), style="dim")


def _fmt(value: Any) -> str:
    from .report import format_number

    return format_number(value)


def _cmd_datasets(args: argparse.Namespace) -> int:
    server, token = _server_of(args)
    if server:
        from .api import Client

        with Client(server=server, token=token) as client:
            lister = getattr(client.backend, "list_datasets", None)
            if lister is None:  # pragma: no cover - RemoteBackend has it
                raise AlignError(f"the backend for {server} cannot list datasets")
            rows = [dict(r, data_dir=f"the server at {server}") for r in lister()]
        _say(f"datasets of the server at {server} (backend remote)")
    else:
        from .datasets import list_datasets

        rows = [_status_dict(s) for s in list_datasets(data_dir=args.data_dir)]
        _say("datasets here (backend embedded)")
    if args.json:
        _print_json(rows)
        return 0
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title="datasets")
    for col in ("id", "kind", "stimuli", "present", "path / what is missing"):
        table.add_column(col)
    for row in rows:
        present = bool(row.get("present"))
        where = str(row.get("path") or "-")
        if not present:
            missing = ", ".join(_as_list(row.get("missing"))) or "files"
            where = f"missing {missing}"
            if row.get("where_to_get"):
                where += f"; get it from {row['where_to_get']}"
        table.add_row(
            str(row.get("id")),
            str(row.get("kind")),
            str(row.get("n_stimuli", "")),
            "yes" if present else "[red]no[/red]",
            where,
        )
    console.print(table)
    if rows and server:
        console.print(f"as seen by the server at {server}", style="dim")
    elif rows:
        console.print(
            f"looked in {rows[0].get('data_dir')} (chosen by: {rows[0].get('searched')}; "
            "set ALIGN_DATA_DIR or --data-dir)",
            style="dim",
        )
    return 0


def _as_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, (str, Path)):
        return [str(value)]
    return [str(v) for v in value]


def _status_dict(status: Any) -> dict[str, Any]:
    from .results import to_jsonable

    if isinstance(status, dict):
        return to_jsonable(status)
    data = to_jsonable(status)
    if isinstance(data, dict):
        return data
    return {k: to_jsonable(getattr(status, k, None)) for k in ("id", "kind", "present", "path")}


def _layer_summary(layers: Any, shown: int = 6) -> str:
    """The first ``shown`` layer names (ONNX graphs list hundreds; --json has them all)."""
    names = [str(x) for x in layers]
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f", … (+{more}; --json lists all)" if more > 0 else "")


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import list_models

    _note_local("models (the registry of this install)")
    from .results import to_jsonable

    specs = list_models(args.pattern)
    if not specs:
        from .errors import NotFoundError

        known = [s.id for s in list_models("*")]
        raise NotFoundError("model pattern", args.pattern, known, hint=f"known: {known}")
    if args.json:
        _print_json([{**to_jsonable(s), "digest": s.digest} for s in specs])
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="models")
    for col in ("id", "family", "modality", "weights", "layers"):
        table.add_column(col)
    for s in specs:
        weights = getattr(s, "weights", None)
        table.add_row(
            str(s.id),
            str(getattr(s, "family", "")),
            str(getattr(s, "modality", "")),
            str(getattr(weights, "source", "")),
            _layer_summary(getattr(s, "layers", ())),
        )
    Console().print(table)
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from .api import features, resolve_dataset
    from .evaluation import evaluate
    from .scoring import is_features_path

    _note_local("probe (it saves the fitted transform here)")

    out = Path(args.output)
    if out.suffix != ".npz":
        raise InvalidInputError("--output", f"is {str(out)!r}", "a path ending in .npz")
    if not out.parent.exists():
        raise InvalidInputError("--output", f"folder {str(out.parent)!r} does not exist", None)
    model: Any = args.model
    ds = resolve_dataset(args.dataset, args.data_dir, uses_images=not is_features_path(model))
    X = features(
        model,
        ds,
        layer=args.layer,
        data_dir=args.data_dir,
        cache=not args.no_cache,
        progress=not args.json,
    )
    options: dict[str, Any] = {"lambdas": args.lambdas, "k": args.folds, "seed": args.seed}
    result = evaluate(X, ds, ["probe"], **{k: v for k, v in options.items() if v is not None})[
        "probe"
    ]
    probe = getattr(result, "probe", None)
    if probe is None:
        raise AlignError("the probe result has no refit probe to save")
    probe.save(out)
    data = {"model": str(args.model), "dataset": ds.id, "output": str(out), **result.to_dict()}
    if args.json:
        _print_json(data)
    else:
        from rich.console import Console

        d = result.to_dict()
        Console().print(
            f"probe on {ds.id}: held-out accuracy {_fmt(d.get('accuracy'))}, cross-entropy "
            f"{_fmt(d.get('cross_entropy'))}, λ = {d.get('lambda')}; saved to {out}"
        )
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    try:
        from align_services.stack import main as serve_main
    except ModuleNotFoundError as exc:
        raise AlignError(
            f"`align serve` needs the services package and its dependencies ({exc.name} is "
            "missing): install with pip install -e '.[serve]' from the repository"
        ) from None
    return int(serve_main(list(args.serve_args)))


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(data_dir=args.data_dir, quick=args.quick, as_json=args.json)


def _add_report_parsers(sub: Any, data_dir_arg: Any) -> None:
    """`align report` and `align reproduce` (align.reporting)."""

    def common(p: argparse.ArgumentParser) -> None:
        data_dir_arg(p)
        p.add_argument("--n-bootstrap", type=int, default=1000, help="bootstrap resamples")
        p.add_argument("--seed", type=int, default=0, help="random seed")
        p.add_argument("--no-probe", action="store_true", help="zero-shot, RSA, concepts only")
        p.add_argument("--rank", type=int, default=32, help="rank of the low-rank probes")
        p.add_argument(
            "--peterson-images", default=None, help="folder of the Peterson animal images"
        )
        p.add_argument("--no-cache", action="store_true", help="neither read nor write the cache")

    p = sub.add_parser("report", help="write an HTML report for one or many models")
    p.add_argument(
        "models",
        nargs="+",
        metavar="MODEL",
        help="model ids, reference/spose, reference/vice or features:<things.npy>",
    )
    p.add_argument("--out", required=True, help="output folder (index.html and figures)")
    p.add_argument("--layers", nargs="+", default=None, help="layers to sweep")
    p.add_argument("--no-thumbnails", action="store_true", help="no example images")
    common(p)

    p = sub.add_parser("reproduce", help="run the paper's experiment set; write results.md")
    p.add_argument("--out", default="docs", help="folder for results.md and figures/")
    p.add_argument("--models", nargs="+", default=None, help="sources (default: the paper set)")
    common(p)


def _report_config(args: argparse.Namespace) -> Any:
    from .reporting.experiments import ReportConfig

    return ReportConfig(
        n_bootstrap=args.n_bootstrap,
        seed=args.seed,
        probes=not args.no_probe,
        rank=args.rank,
        layers=tuple(args.layers) if getattr(args, "layers", None) else None,
        peterson_images=args.peterson_images,
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from .reporting.reproduce import build_report

    _note_local("report (it needs every dataset's features)")

    path = build_report(
        args.models,
        args.out,
        args.data_dir,
        _report_config(args),
        thumbnails=not args.no_thumbnails,
        cache=not args.no_cache,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(path)
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .reporting.reproduce import DEFAULT_MODELS, reproduce

    reproduce(
        args.out,
        args.data_dir,
        args.models or DEFAULT_MODELS,
        _report_config(args),
        cache=not args.no_cache,
        log=lambda m: print(m, file=sys.stderr),
    )
    print(Path(args.out) / "results.md")
    return 0


_COMMANDS = {
    "report": _cmd_report,
    "reproduce": _cmd_reproduce,
    "score": _cmd_score,
    "datasets": _cmd_datasets,
    "models": _cmd_models,
    "probe": _cmd_probe,
    "demo": _cmd_demo,
    "serve": _cmd_serve,
}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
