"""Mutation testing of the science core with mutmut (``make mutation``; not part of CI).

mutmut 3 wants the code under ``./``, ``src/`` or ``source/``; ours lives in
``client/align``. So each run stages a copy with a ``src/`` layout in
``build/mutation/`` (``src/align`` from ``client/align``, ``tests/`` and
``pyproject.toml``) and runs mutmut there, one module at a time, each with only the
test files that cover it (mutmut then runs, per mutant, only the tests that executed
the mutated function). mutmut keeps its results in ``build/mutation/mutants/`` and
re-tests only functions whose code changed, so a second run is incremental.

Usage::

    python tools/mutation.py                        # every module below
    python tools/mutation.py metrics/oddoneout.py   # some of them
    python tools/mutation.py --max-children 2 ...   # parallel mutants (default 1)

Output: ``build/mutation/summary.json`` (per module: mutants generated, killed,
survived, timeouts, no tests; the surviving mutants' names) and a table on stdout.
``mutmut show NAME`` in ``build/mutation`` prints a mutant's diff.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "build" / "mutation"

# module (relative to client/align) -> test files that state its behaviour
TESTS: dict[str, list[str]] = {
    "metrics/oddoneout.py": ["test_oddoneout.py", "test_known_answers.py", "test_concepts.py"],
    "metrics/bootstrap.py": [
        "test_oddoneout.py",
        "test_known_answers.py",
        "test_wordsim.py",
        "test_statistics.py",
    ],
    "metrics/wordsim.py": ["test_wordsim.py", "test_known_answers.py"],
    "metrics/concepts.py": ["test_concepts.py", "test_known_answers.py"],
    "metrics/splits.py": ["test_probe.py", "test_known_answers.py", "test_splits.py"],
    "metrics/rsa.py": ["test_rsa.py", "test_known_answers.py", "test_transfer.py"],
    "metrics/transfer.py": ["test_transfer.py", "test_known_answers.py"],
    "metrics/validation.py": ["test_oddoneout.py", "test_rsa.py", "test_known_answers.py"],
    "metrics/glocal.py": ["test_glocal.py", "test_known_answers.py"],
    "metrics/probe": ["test_probe.py", "test_known_answers.py", "test_glocal.py"],
    "metrics/probe.py": ["test_probe.py", "test_known_answers.py", "test_glocal.py"],
    "datasets/things.py": ["test_datasets.py", "test_datasets_files.py"],
}
DEFAULT_TESTS = ["test_known_answers.py"]


def modules_present() -> list[str]:
    base = ROOT / "client" / "align"
    found = [
        str(p.relative_to(base))
        for p in sorted((base / "metrics").glob("*.py"))
        if p.name != "__init__.py"
    ]
    if (base / "metrics" / "probe").is_dir():
        found.append("metrics/probe")
    return [*found, "datasets/things.py"]


def stage() -> None:
    # mutmut does not regenerate a mutated copy whose source moved on under it (it keeps
    # files that already exist in mutants/), so every run starts from a fresh copy.
    shutil.rmtree(STAGE / "mutants", ignore_errors=True)
    (STAGE / "src").mkdir(parents=True, exist_ok=True)
    # rsync -a keeps mtimes, so mutmut sees unchanged files as unchanged
    for src, dst in (("client/align/", "src/align/"), ("tests/", "tests/")):
        subprocess.run(
            [
                "rsync",
                "-a",
                "--delete",
                "--exclude",
                "__pycache__",
                f"{ROOT}/{src}",
                f"{STAGE}/{dst}",
            ],
            check=True,
        )


def write_config(modules: list[str], tests: list[str]) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    only = [f"src/align/{m}" + ("" if m.endswith(".py") else "/*") for m in modules]
    cfg = {
        "source_paths": ["src"],
        "only_mutate": only,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow and not services"],
        "pytest_add_cli_args_test_selection": [f"tests/{t}" for t in tests],
        "use_git_change_detection": False,
        # Error-message text is not scored: a raise statement (all its lines) is not
        # mutated. That the error is raised, and for which input, is still mutated
        # through the condition that guards it.
        "do_not_mutate_patterns": [r"^\s*raise \w+(Error|Warning)\("],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    (STAGE / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")


def mutant_status(module: str) -> dict[str, str]:
    """name -> status for the mutants of ``module`` (from ``mutmut results --all``)."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"],
        cwd=STAGE,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    prefix = "align." + module.removesuffix(".py").replace("/", ".") + "."
    status: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s*(\S+): (.+)$", line)
        if m and m.group(1).startswith(prefix):
            status[m.group(1)] = m.group(2).strip()
    return status


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("modules", nargs="*", help="paths under client/align (default: all)")
    ap.add_argument("--max-children", type=int, default=1)
    args = ap.parse_args()
    modules = args.modules or modules_present()
    stage()
    # One mutmut run over all the modules: mutmut records which tests execute each
    # function and runs, per mutant, only those (from the union of the modules' tests).
    tests = sorted(
        {t for m in modules for t in TESTS.get(m, DEFAULT_TESTS) if (ROOT / "tests" / t).exists()}
    )
    write_config(modules, tests)
    print(f"== {', '.join(modules)}: tests {', '.join(tests)}", flush=True)
    mutmut = str(Path(sys.executable).parent / "mutmut")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    rc = subprocess.run(
        [mutmut, "run", "--max-children", str(args.max_children)], cwd=STAGE, env=env
    ).returncode
    summary_path = STAGE / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    for module in modules:
        status = mutant_status(module)
        counts: dict[str, int] = {}
        for s in status.values():
            counts[s] = counts.get(s, 0) + 1
        summary[module] = {
            "exit_code": rc,
            "generated": len(status),
            "counts": counts,
            "survived": sorted(n for n, s in status.items() if s == "survived"),
        }
    summary_path.write_text(json.dumps(summary, indent=1))
    print(f"{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} other")
    for module, row in summary.items():
        c = row["counts"]
        other = {k: v for k, v in c.items() if k not in ("killed", "survived")}
        print(
            f"{module:28} {row['generated']:8d} {c.get('killed', 0):7d} "
            f"{c.get('survived', 0):9d} {other or ''}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
