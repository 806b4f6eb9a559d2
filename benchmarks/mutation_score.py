"""Mutation score of the core's fast unit tests (``make mutation``; not in CI: minutes on 2 cores).

mutmut (configured in ``pyproject.toml``, ``[tool.mutmut]``: which files, which tests) changes one operator,
constant or call at a time in the modules below and runs the tests that reach that function; a mutant the tests
still pass with "survived". This script runs mutmut over :data:`TARGETS`, prints the score per module and every
survivor, and exits 1 below :data:`THRESHOLD`.

    python benchmarks/mutation_score.py            # run, then report
    python benchmarks/mutation_score.py --report   # report the last run (mutants/ folder)
"""

from __future__ import annotations

import fnmatch
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.85
TARGETS = {
    "serving/executor.py": ["arena.serving.executor.*"],
    "serving/batching.py": ["arena.serving.batching.*"],
    "metrics.py": ["arena.metrics.*"],
    "serving/tta.py": ["arena.serving.tta.*"],
    "serving/ensemble.py (combine, fit_weights)": ["arena.serving.ensemble.x_combine__mutmut_*",
                                                   "arena.serving.ensemble.x_fit_weights__mutmut_*"],
    "infer/submission.py": ["arena.infer.submission.*"],
}
"""Module -> mutmut name patterns (``fnmatch``; ``x_<function>__mutmut_<n>`` names one function's mutants)."""
KILLED = {"killed", "timeout"}
"""A mutant that makes a test fail, or hang, is caught."""
NOT_SCORED = {"skipped", "not checked", "check was interrupted by user"}


def mutmut(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    env.setdefault("ARENA_SHARED", str((ROOT.parent / "shared").resolve()))  # mutmut runs the tests in mutants/
    binary = Path(sys.executable).with_name("mutmut")
    return subprocess.run([str(binary), *args], cwd=ROOT, env=env, text=True, capture_output=True)


def statuses() -> dict[str, str]:
    """Every mutant mutmut knows of the last run -> its status."""
    done = mutmut("results", "--all", "true")
    out: dict[str, str] = {}
    for line in done.stdout.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and name.startswith("arena."):
            out[name] = status
    return out


def report(results: dict[str, str]) -> float:
    """Print the score per module and the survivors; returns the overall score."""
    total = Counter()
    survivors: list[str] = []
    print(f"{'module':45} {'mutants':>8} {'killed':>7} {'score':>7}")
    for module, patterns in TARGETS.items():
        mine = {n: s for n, s in results.items() if any(fnmatch.fnmatch(n, p) for p in patterns)
                and s not in NOT_SCORED}
        killed = sum(s in KILLED for s in mine.values())
        total.update(n=len(mine), killed=killed)
        survivors += sorted(f"{n}: {s}" for n, s in mine.items() if s not in KILLED)
        score = killed / len(mine) if mine else float("nan")
        print(f"{module:45} {len(mine):8d} {killed:7d} {score:7.1%}")
    overall = total["killed"] / total["n"] if total["n"] else 0.0
    print(f"{'all':45} {total['n']:8d} {total['killed']:7d} {overall:7.1%}")
    print("\nnot killed (inspect one with: mutmut show NAME):")
    print("\n".join(f"  {s}" for s in survivors) or "  none")
    return overall


def main(argv: list[str]) -> int:
    if "--report" not in argv:
        names = [p for patterns in TARGETS.values() for p in patterns]
        done = mutmut("run", "--max-children", str(os.cpu_count() or 2), *names)
        if done.returncode:
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
            return done.returncode
    overall = report(statuses())
    return 0 if overall >= THRESHOLD else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
