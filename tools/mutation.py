"""Mutation testing of the science core with mutmut (``make mutation``; not part of CI).

mutmut 3 wants the code under ``./``, ``src/`` or ``source/``; ours lives in
``client/align``. So each module is staged as a copy with a ``src/`` layout in
``build/mutation/<module>/`` (``src/align`` from ``client/align``, ``tests/`` and
``pyproject.toml``) and mutmut runs there, one module at a time, each with only the
test files that cover it (mutmut then runs, per mutant, only the tests of that
selection that executed the mutated function, fastest first, stopping at the first
failure).

Runs are incremental: a module's stage and its results are kept between runs. Each run
re-stages the library (of ``--rev``) and the tests, and marks the module's sources newer
than their mutated copies, so mutmut regenerates the mutants and keeps the result of every
mutant whose function's source is unchanged (mutmut's per-function hashes): only the
mutants of new or changed functions, and any not yet checked, are run. After a change to a
few functions a run costs minutes, not the hours of a first run. Survivors keep their
status when only the tests changed: ``--recheck`` re-tests them. ``--fresh`` discards a
module's results and starts over.

Usage::

    python tools/mutation.py                        # every module below
    python tools/mutation.py metrics/oddoneout.py   # some of them
    python tools/mutation.py --max-children 2 ...   # parallel mutants (default 1)
    python tools/mutation.py --fresh MODULE         # forget MODULE's results, run all
    python tools/mutation.py --recheck MODULE       # after adding tests: re-test only the
                                                    # mutants not killed, same staged code

Output: ``build/mutation/summary.json`` (per module: mutants generated, killed,
survived, timeouts, no tests; the surviving mutants' names) and a table on stdout.
``mutmut show NAME`` in ``build/mutation/<module>`` prints a mutant's diff
(``<module>`` is the path with ``/`` and ``.`` as ``_``, e.g. ``metrics_rsa_py``).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "mutation"

# the L-BFGS driver, the triangular basis and products, the finite check of issue 14:
# their own known answers in test_speed_paths.py (the rest of that file times paths)
CORE_TESTS: list[str] = [
    *(
        f"test_speed_paths.py::{name}"
        for name in (
            "test_lbfgs_follows_torchs_lbfgs_to_rounding",
            "test_lbfgs_stall_rule_stops_when_the_window_gain_is_below_its_tolerance",
            "test_lbfgs_gradient_rule_stops_at_tol_times_1e_3_and_not_before",
            "test_triangular_basis_spans_the_rows_and_makes_them_lower_trapezoidal",
            "test_lower_products_equal_the_dense_products",
            "test_all_finite_is_isfinite_all",
            "test_reduction_cache_keys_on_content_not_identity",
        )
    ),
    "test_probe_core.py",
    "test_probe_known_answers.py",
    "test_probe_objective.py",
]

# module (relative to client/align) -> test files that state its behaviour. Per mutant,
# mutmut runs only the tests of this selection that executed the mutated function, so a
# module whose functions every metric calls (validation) gets only its own fast tests,
# and slow fits that merely use a module (probe CV for splits, transfer for rsa) are left
# out when a fast known-answer test states the behaviour (ObjectKFold, RSA).
TESTS: dict[str, list[str]] = {
    "metrics/oddoneout.py": [
        "test_oddoneout.py",
        "test_known_answers.py",
        "test_zero_shot_fast.py",
        "test_concepts.py",
    ],
    "metrics/bootstrap.py": [
        "test_oddoneout.py",
        "test_known_answers.py",
        "test_wordsim.py",
        "test_statistics.py",
    ],
    "metrics/wordsim.py": ["test_wordsim.py", "test_known_answers.py"],
    "metrics/concepts.py": ["test_concepts.py", "test_known_answers.py"],
    "metrics/splits.py": ["test_known_answers.py"],
    "metrics/rsa.py": ["test_rsa.py", "test_known_answers.py"],
    "metrics/transfer.py": ["test_transfer.py"],
    "metrics/validation.py": ["test_validation.py"],
    "metrics/glocal.py": ["test_glocal.py", "test_known_answers.py"],
    "metrics/probe/core.py": CORE_TESTS,
    # probe: the fast known answers first (written-out objective, gradient, penalties,
    # CV loop, scheduling and cache on tiny inputs, and core.py's own, above); the fits of
    # test_probe.py on real THINGS data or 5000 planted triplets (1-5 s each, ~25 s
    # together, paid by every surviving mutant) are left out below: each behaviour they
    # state has a tiny counterpart in test_probe_known_answers.py, and they still run in
    # `make test`.
    "metrics/probe": [
        "test_probe_core.py",
        "test_probe_known_answers.py",
        "test_probe_objective.py",
        "test_known_answers.py",
        "test_probe.py",
        "test_glocal.py",
        *(t for t in CORE_TESTS if t.startswith("test_speed_paths.py::")),
    ],
    "datasets/things.py": ["test_datasets.py", "test_datasets_files.py"],
}
DEFAULT_TESTS = ["test_known_answers.py"]

# module -> tests of its selection's files left out (pytest --deselect node ids)
DESELECT: dict[str, list[str]] = {
    "metrics/probe": [
        f"test_probe.py::{name}"
        for name in (
            "test_probe_recovers_planted_transform",
            "test_lbfgs_reaches_adam_held_out_loss",
            "test_simulated_supervision_recovers_spose_on_real_held_out_responses",
            "test_warm_start_reaches_the_cold_start_optimum_on_real_data",
            "test_cross_validation_warm_start_picks_the_cold_start_lambda",
            "test_cross_validate_clones_per_lambda_and_leaves_the_estimator_alone",
            "test_glocal_through_the_generic_cv_equals_a_hand_written_loop",
            "test_reporting_probe_numbers_equal_the_old_lambda_fold_loop",
        )
    ],
}


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


def stage_dir(module: str) -> Path:
    return BUILD / module.replace("/", "_").replace(".", "_")


def export_library(rev: str | None, dest: Path) -> Path:
    """``client/align`` of commit ``rev`` (None: the work tree) under ``dest``."""
    if rev is None:
        return ROOT / "client" / "align"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", rev, "client/align"], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    return dest / "client" / "align"


def stage(module: str, rev: str | None, fresh: bool = False) -> Path:
    """The ``src/`` layout copy for ``module``'s run: the library of commit ``rev`` (the
    work tree when None), the tests of the work tree. The mutated copy and its results are
    kept unless ``fresh``: the module's sources are marked newer than their mutants, so
    mutmut regenerates them and re-runs only the mutants of functions whose source changed
    (it skips a source whose mutated copy is newer, and git archive's files carry the
    commit's time)."""
    where = stage_dir(module)
    if fresh:
        shutil.rmtree(where / "mutants", ignore_errors=True)
    (where / "src").mkdir(parents=True, exist_ok=True)
    library = export_library(rev, BUILD / "export" / where.name)  # runs may overlap
    mirror(library, where / "src" / "align")
    mirror(ROOT / "tests", where / "tests")
    now = time.time()
    target = where / "src" / "align" / module
    for path in [target] if target.is_file() else sorted(target.rglob("*.py")):
        os.utime(path, (now, now))
    return where


def refresh_tests(where: Path) -> None:
    """Today's tests into a kept stage and its mutated copy (``--resume``, ``--recheck``)."""
    for dst in (where / "tests", where / "mutants" / "tests"):
        mirror(ROOT / "tests", dst)


def mirror(src: Path, dst: Path) -> None:
    """``dst`` becomes a copy of the folder ``src`` (rsync --delete, no caches)."""
    subprocess.run(
        ["rsync", "-a", "--delete", "--exclude", "__pycache__", f"{src}/", f"{dst}/"],
        check=True,
    )


def write_config(where: Path, module: str, tests: list[str]) -> None:
    text = (ROOT / "pyproject.toml").read_text()
    text = re.sub(r"(?ms)^\[tool\.mutmut\].*?(?=^\[|\Z)", "", text)
    only = [f"src/align/{module}" + ("" if module.endswith(".py") else "/*")]
    cfg = {
        "source_paths": ["src"],
        "only_mutate": only,
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-m", "not slow and not services"],
        "pytest_add_cli_args_test_selection": [f"tests/{t}" for t in tests]
        + [arg for t in DESELECT.get(module, []) for arg in ("--deselect", f"tests/{t}")],
        "use_git_change_detection": False,
        # A mutant that makes the tests run past 5x (+1 s) their clean CPU time is a
        # timeout (killed). mutmut's default, 15x, lets the slowest ones eat the run.
        "timeout_multiplier": 5.0,
        # Error-message text is not scored: a raise statement (all its lines) is not
        # mutated. That the error is raised, and for which input, is still mutated
        # through the condition that guards it.
        "do_not_mutate_patterns": [r"^\s*raise \w+(Error|Warning)\("],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in cfg.items()]
    (where / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")


def mutant_status(module: str) -> dict[str, str]:
    """name -> status for the mutants of ``module`` (from ``mutmut results --all``)."""
    out = subprocess.run(
        [str(Path(sys.executable).parent / "mutmut"), "results", "--all", "true"],
        cwd=stage_dir(module),
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
    ap.add_argument(
        "--rev",
        default="HEAD",
        help="commit whose client/align is mutated (default HEAD: others' uncommitted edits "
        "in the shared tree are left out); 'worktree' for the work tree",
    )
    ap.add_argument(
        "--recheck",
        action="store_true",
        help="keep each module's last staged library and mutants; copy the current tests "
        "in and re-test only the mutants that were not killed (after adding tests)",
    )
    ap.add_argument(
        "--fresh",
        action="store_true",
        help="discard each module's kept mutants and results and run every mutant",
    )
    ap.add_argument(
        "--resume",
        action="store_true",
        help="keep each module's staged library and the results of the mutants already "
        "checked; copy the current tests in and run the mutants not yet checked (a run "
        "that was stopped goes on where it was)",
    )
    ap.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="PATTERN",
        help="run only the mutants whose names match these fnmatch patterns (repeatable; "
        "e.g. 'align.metrics.probe.core.x_compress*'); the others keep their status or "
        "stay 'not checked'",
    )
    args = ap.parse_args()
    modules = args.modules or modules_present()
    summary_path = BUILD / "summary.json"
    mutmut = str(Path(sys.executable).parent / "mutmut")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    # the staged tests live under build/mutation/<module>/tests, where conftest.py's
    # default data folder (../shared/data of the repo) does not resolve: without this,
    # every test on the real data is SKIPPED in the stage and its mutants look untested
    env.setdefault("ALIGN_DATA_DIR", str(ROOT.parent / "shared" / "data"))
    if args.recheck:
        for module in modules:
            recheck(module, summary_path, mutmut, env, args.max_children)
        print_table(json.loads(summary_path.read_text()))
        return 0
    for module in modules:
        tests = [
            t
            for t in TESTS.get(module, DEFAULT_TESTS)
            if (ROOT / "tests" / t.split("::")[0]).exists()
        ]
        rev = None if args.rev == "worktree" else args.rev
        commit = subprocess.run(
            ["git", "rev-parse", "--short", rev or "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "status",
                "--porcelain",
                "--",
                *(["client/align"] if rev is None else []),
                "tests",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if args.resume:
            where = stage_dir(module)
            previous = (
                json.loads(summary_path.read_text()).get(module, {})
                if summary_path.exists()
                else {}
            )
            commit = previous.get("commit", commit)
            dirty = "\n".join(previous.get("uncommitted", []))
            refresh_tests(where)
        else:
            where = stage(module, rev, fresh=args.fresh)
        write_config(where, module, tests)
        print(f"== {module}: tests {', '.join(tests)}", flush=True)
        started = time.time()
        rc = subprocess.run(
            [mutmut, "run", "--max-children", str(args.max_children), *args.only],
            cwd=where,
            env=env,
        ).returncode
        status = mutant_status(module)
        update_summary(
            summary_path,
            module,
            {
                "exit_code": rc,
                "commit": commit,
                "uncommitted": dirty.splitlines(),
                "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "wall_s": round(time.time() - started),
                "tests": tests,
                "generated": len(status),
                "counts": count(status),
                "survived": sorted(n for n, s in status.items() if s == "survived"),
                "not_killed": {n: s for n, s in sorted(status.items()) if s != "killed"},
            },
        )
    summary = json.loads(summary_path.read_text())
    print_table(summary)
    return 0


def count(status: dict[str, str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in status.values():
        counts[s] = counts.get(s, 0) + 1
    return counts


def recheck(module: str, summary_path: Path, mutmut: str, env: dict[str, str], jobs: int) -> None:
    """Re-test ``module``'s not-killed mutants (same staged library) with today's tests."""
    where = stage_dir(module)
    summary = json.loads(summary_path.read_text())
    row = summary[module]
    names = sorted(row["not_killed"])
    refresh_tests(where)
    print(f"== {module}: re-testing {len(names)} mutants", flush=True)
    started = time.time()
    if names:
        subprocess.run(
            [mutmut, "run", "--max-children", str(jobs), *names], cwd=where, env=env, check=False
        )
    status = mutant_status(module)
    tests_commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    update_summary(
        summary_path,
        module,
        dict(
            row,
            rechecked=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            recheck_tests_commit=tests_commit,
            recheck_wall_s=round(time.time() - started),
            generated=len(status),
            counts=count(status),
            survived=sorted(n for n, s in status.items() if s == "survived"),
            not_killed={n: s for n, s in sorted(status.items()) if s != "killed"},
        ),
    )


def update_summary(path: Path, module: str, row: dict[str, object]) -> None:
    """Replace ``module``'s row of the summary (runs of other modules may write beside)."""
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        summary = json.loads(path.read_text()) if path.exists() else {}
        summary[module] = row
        path.write_text(json.dumps(summary, indent=1))


def print_table(summary: dict[str, dict]) -> None:
    print(f"{'module':28} {'mutants':>8} {'killed':>7} {'survived':>9} other")
    for module, row in summary.items():
        c = row["counts"]
        other = {k: v for k, v in c.items() if k not in ("killed", "survived")}
        print(
            f"{module:28} {row['generated']:8d} {c.get('killed', 0):7d} "
            f"{c.get('survived', 0):9d} {other or ''}"
        )


if __name__ == "__main__":
    raise SystemExit(main())
