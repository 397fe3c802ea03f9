"""Dispatcher: ``python -m bench NAME [ARGS...]`` runs ``bench/NAME.py``'s ``main()``.

``python -m bench`` runs every benchmark with its defaults (in name order);
``python -m bench --list`` lists them. A benchmark module defines
``main(argv: list[str] | None = None)``; its return value (a JSON-able summary) is
ignored here, it prints its own table.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    """Names of the benchmark modules in this folder."""
    return sorted(
        p.stem for p in HERE.glob("*.py") if not p.stem.startswith("_") and p.stem != "conftest"
    )


def run(name: str, argv: list[str]) -> None:
    names = available()
    if name not in names:
        known = ", ".join(names) or "none"
        raise SystemExit(f"bench: unknown benchmark {name!r} (known: {known})")
    module = importlib.import_module(f"bench.{name}")
    main = getattr(module, "main", None)
    if main is None:
        raise SystemExit(f"bench: bench/{name}.py has no main()")
    if inspect.signature(main).parameters:
        main(argv)
    else:
        if argv:
            raise SystemExit(f"bench: {name} takes no arguments (got {argv})")
        main()


def cli(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "--list":
        print("\n".join(available()))
        return 0
    if args:
        run(args[0], args[1:])
        return 0
    for name in available():
        print(f"\n=== bench {name} ===", flush=True)
        run(name, [])
    return 0


if __name__ == "__main__":
    raise SystemExit(cli())
