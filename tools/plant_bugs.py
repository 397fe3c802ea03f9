"""Plant the wrong implementations of issue 15, one at a time, and see which tests fail.

Each bug is a textual edit of one site of the library. For every bug the script copies
``client/align`` to a private folder under ``/tmp`` (the shared tree is never edited),
applies the edit there (the site must occur as often as stated, or the script stops: a site
that moved must be updated here, not silently skipped), puts that copy first on
``PYTHONPATH`` and runs the known-answer tests against it. A clean copy is run first:
it must pass, and it must be the copy that the tests import.

The library copied is that of a commit (default HEAD), so that uncommitted edits
others are making in the shared tree do not count; the tests are the work tree's.

Usage::

    python tools/plant_bugs.py                 # every bug, tests/test_known_answers.py
    python tools/plant_bugs.py --list          # the bugs and their sites
    python tools/plant_bugs.py -k glocal ...   # bugs whose name contains a word
    python tools/plant_bugs.py --tests tests/test_known_answers.py tests/test_probe.py

Output: a markdown table (bug -> failing tests) on stdout, and ``--json PATH``.
A bug that no test catches is reported as ``NOT CAUGHT`` and the exit status is 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
from mutation import export_library  # noqa: E402  (one git-archive export for both tools)


@dataclasses.dataclass(frozen=True)
class Bug:
    name: str
    path: str  # relative to client/align
    old: str
    new: str
    count: int = 1  # how many times ``old`` occurs (every occurrence is replaced)
    more: tuple[tuple[str, str, int], ...] = ()  # further (old, new, count) in the same file

    def edits(self) -> list[tuple[str, str, int]]:
        return [(self.old, self.new, self.count), *self.more]


BUGS: list[Bug] = [
    Bug(
        "bootstrap resamples responses, not distinct triplets",
        "metrics/oddoneout.py",
        "unit_groups = groups.inverse if repeated else None",
        "unit_groups = None",
    ),
    Bug(
        "lambda chosen by training cross-entropy",
        "metrics/probe/cv.py",
        "ce[j, i] = mean_cross_entropy(S)",
        "ce[j, i] = mean_cross_entropy(est.similarities(Xa, train_trip))",
    ),
    Bug(
        "final probe refit on a third of the triplets",
        "metrics/probe/cv.py",
        ".fit(Xa, all_trip, **fit_kw)",
        ".fit(Xa, all_trip[: max(1, len(all_trip) // 3)], **fit_kw)",
    ),
    Bug(
        "gLocal without (1 - alpha)",
        "metrics/glocal.py",
        "return (1.0 - alpha) * ce + alpha",
        "return ce + alpha",
        count=2,  # the full-batch and the mini-batch branch
    ),
    # the probe has two objective implementations (autograd for Adam, closed-form
    # gradient for L-BFGS): a bug in the objective is planted in both
    Bug(
        "identity regulariser replaced by a squared norm",
        "metrics/probe/core.py",
        "return ((W - torch.diagonal(W).mean() * eye) ** 2).sum()",
        "return (W * W).sum()",
        more=(
            (
                "D = W - torch.diagonal(W).mean() * torch.eye(W.shape[0], dtype=W.dtype, "
                "device=W.device)",
                "D = W",
                1,
            ),
        ),
    ),
    Bug(
        "unsquared Frobenius replaced by a squared norm",
        "metrics/probe/core.py",
        "return torch.linalg.norm(W)",
        "return (W * W).sum()",
        more=(
            (
                "nrm = float(torch.linalg.vector_norm(W))\n"
                "            return nrm, (W / nrm if nrm > 0 else torch.zeros_like(W))",
                "return float((W * W).sum()), 2.0 * W",
                1,
            ),
        ),
    ),
    Bug(
        "normalize=True ignored in training",
        "metrics/probe/core.py",
        "if self.o.normalize:\n            E = E / E.norm(",
        "if False:\n            E = E / E.norm(",
        more=(("if fit.o.normalize:", "if False:", 2),),
    ),
    # the same three in the closed-form (L-BFGS) objective alone
    Bug(
        "identity regulariser replaced by a squared norm, L-BFGS objective only",
        "metrics/probe/core.py",
        "D = W - torch.diagonal(W).mean() * torch.eye(W.shape[0], dtype=W.dtype, device=W.device)",
        "D = W",
    ),
    Bug(
        "unsquared Frobenius replaced by a squared norm, L-BFGS objective only",
        "metrics/probe/core.py",
        "nrm = float(torch.linalg.vector_norm(W))\n"
        "            return nrm, (W / nrm if nrm > 0 else torch.zeros_like(W))",
        "return float((W * W).sum()), 2.0 * W",
    ),
    Bug(
        "normalize=True ignored in training, L-BFGS objective only",
        "metrics/probe/core.py",
        "if fit.o.normalize:",
        "if False:",
        count=2,
    ),
    Bug(
        "Adam early stopping removed (no break)",
        "metrics/probe/core.py",
        "if bad >= o.patience:\n                    break",
        "if bad >= o.patience:\n                    pass",
    ),
    Bug(
        "Adam early stopping: best weights not restored",
        "metrics/probe/core.py",
        "p_.copy_(s_)",
        "pass",
    ),
    Bug(
        "confidence ignored (odd-one-out)",
        "metrics/oddoneout.py",
        "values, unit_groups, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed",
        "values, unit_groups, n_bootstrap=n_bootstrap, confidence=0.95, seed=seed",
    ),
    Bug(
        "confidence ignored (word similarity)",
        "metrics/wordsim.py",
        "ci = percentile_interval(boot, float(confidence))",
        "ci = percentile_interval(boot, 0.95)",
    ),
    Bug(
        "confidence ignored (RSA)",
        "metrics/rsa.py",
        "ci = percentile_interval(boot, float(confidence))",
        "ci = percentile_interval(boot, 0.95)",
    ),
    Bug(
        "word-similarity CI ignores its seed",
        "metrics/wordsim.py",
        "rng = np.random.default_rng(seed)",
        "rng = np.random.default_rng(0)",
    ),
]


def plant(library: Path, bug: Bug | None, dest: Path) -> Path:
    """A copy of ``library`` under ``dest`` with ``bug`` applied; returns the folder to
    put on PYTHONPATH."""
    shutil.copytree(library, dest / "align", ignore=shutil.ignore_patterns("__pycache__"))
    if bug is not None:
        f = dest / "align" / bug.path
        text = f.read_text()
        for old, new, count in bug.edits():
            n = text.count(old)
            if n != count:
                raise SystemExit(
                    f"plant site of {bug.name!r} occurs {n} times in {bug.path} "
                    f"(expected {count}): update tools/plant_bugs.py to the current code"
                    f"\n  {old!r}"
                )
            text = text.replace(old, new)
        f.write_text(text)
    return dest


def run_tests(pythonpath: Path, tests: list[str], extra: list[str]) -> tuple[int, list[str]]:
    """Run ``tests`` with ``pythonpath`` first; (exit code, failing test ids)."""
    xml = pythonpath / "junit.xml"
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}", PYTHONDONTWRITEBYTECODE="1")
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-m",
        "not slow and not services",
        f"--junitxml={xml}",
        *extra,
        *tests,
    ]
    rc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True).returncode
    failed: list[str] = []
    if xml.exists():
        for case in ET.parse(xml).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(case.get("name", "?"))
    return rc, failed


def check_copy_is_imported(pythonpath: Path) -> None:
    env = dict(os.environ, PYTHONPATH=f"{pythonpath}")
    out = subprocess.run(
        [sys.executable, "-c", "import align.metrics as m; print(m.__file__)"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not out.startswith(str(pythonpath)):
        raise SystemExit(f"the tests would import {out}, not the planted copy in {pythonpath}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tests", nargs="+", default=["tests/test_known_answers.py"])
    ap.add_argument("-k", dest="only", default=None, help="bugs whose name contains this")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument(
        "--rev",
        default="HEAD",
        help="commit whose client/align is planted (default HEAD: others' uncommitted "
        "edits in the shared tree are left out); 'worktree' for the work tree",
    )
    args = ap.parse_args()
    bugs = [b for b in BUGS if args.only is None or args.only.lower() in b.name.lower()]
    if args.list:
        for b in bugs:
            print(f"{b.name}: {b.path}")
            for old, new, count in b.edits():
                print(f"  - {old!r} (x{count})\n  + {new!r}")
        return 0
    rows: dict[str, list[str]] = {}
    rev = None if args.rev == "worktree" else args.rev
    with tempfile.TemporaryDirectory(prefix="align-plant-") as tmp:
        library = export_library(rev, Path(tmp) / "export")
        clean = plant(library, None, Path(tmp) / "clean")
        check_copy_is_imported(clean)
        rc, failed = run_tests(clean, args.tests, [])
        if rc != 0:
            raise SystemExit(f"the unplanted copy fails {failed or rc}: fix the tree first")
        for i, bug in enumerate(bugs):
            where = plant(library, bug, Path(tmp) / f"bug{i}")
            _, failed = run_tests(where, args.tests, [])
            rows[bug.name] = failed
            print(f"{bug.name}: {len(failed)} failing", file=sys.stderr, flush=True)
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev or "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip() + ("" if rev else " + work tree")
    print(f"Planted on client/align of {commit}; tests (work tree): {' '.join(args.tests)}\n")
    print("| planted bug | failing tests |\n|---|---|")
    for name, failed in rows.items():
        cell = ", ".join(f"`{t}`" for t in failed) if failed else "**NOT CAUGHT**"
        print(f"| {name} | {cell} |")
    if args.json:
        args.json.write_text(
            json.dumps({"commit": commit, "tests": args.tests, "bugs": rows}, indent=1)
        )
    return 0 if all(rows.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
