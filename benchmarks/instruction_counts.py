"""Instructions per simulation, counted by valgrind's callgrind: unlike wall-clock time they do
not depend on what else the machine runs, so two revisions compare on a shared machine.

For each in-process prediction row of ``bench_sim.py`` (``sim.predict``'s own
``predict(args)``): a process that makes one warm-up prediction and then ``--calls`` more,
minus a process that makes the warm-up alone, divided by ``--calls``. For the first plan row
(``sim.plan --model pixart --gpus 8 --link pcie``): the whole command, import included, with
``--time-limit 0`` and in one process (no worker processes: callgrind counts a forked
worker's share of its parent again, and under callgrind a time limit would stop the search
at a point that depends on the load), so it may simulate a candidate fewer than two workers.

Run: ``python benchmarks/instruction_counts.py [--baseline REV] [--calls 2] [--rows N ...]``
(needs ``valgrind``; about a minute per row and revision). ``--baseline`` also counts that
revision (``git archive`` into a temporary folder, as ``bench_sim.py`` does). Counts are in
millions; nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from anywhere
from benchmarks.bench_sim import COMMANDS, PREDICTIONS, ROOT, extract  # noqa: E402

_PREDICT_SNIPPET = """
import contextlib, io, sys
from sim.predict import build_parser, predict
for _ in range(1 + int(sys.argv[1])):
    with contextlib.redirect_stdout(io.StringIO()):
        predict(build_parser().parse_args(sys.argv[2:]))
"""


_PLAN_SNIPPET = """
import os, runpy, sys
os.cpu_count = lambda: 1  # sim.search: one worker, run inline
sys.argv = ["sim.plan", *sys.argv[1:], "--time-limit", "0"]
runpy.run_module("sim.plan", run_name="__main__", alter_sys=True)
"""


def instructions(root: Path, argv: list[str]) -> int:
    """Instructions callgrind counts for ``python argv`` run in ``root`` (every process)."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg.%p",
                        sys.executable, *argv], cwd=root, env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        total = 0
        for path in glob.glob(f"{out}/cg.*"):
            with open(path) as f:
                total += next(int(line.split()[1]) for line in f
                              if line.startswith(("summary:", "totals:")))
        return total


def per_prediction(root: Path, flags: list[str], calls: int) -> float:
    """Instructions of one in-process prediction with ``flags`` (after a warm-up one)."""
    many = instructions(root, ["-c", _PREDICT_SNIPPET, str(calls), *flags])
    warmup = instructions(root, ["-c", _PREDICT_SNIPPET, "0", *flags])
    return (many - warmup) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", help="also count this git revision")
    p.add_argument("--calls", type=int, default=2, help="predictions counted after the warm-up")
    p.add_argument("--rows", type=int, nargs="*",
                   help="row numbers to count (default all: the predictions, then the plan)")
    args = p.parse_args()
    if shutil.which("valgrind") is None:
        print("error: valgrind is not installed; install it (apt-get install valgrind)",
              file=sys.stderr)
        sys.exit(2)
    rows = [(name, "predict", flags) for name, flags, _ in PREDICTIONS]
    rows.append((COMMANDS[0][0] + ", one process", "command",
                 ["-c", _PLAN_SNIPPET, *COMMANDS[0][1][1:]]))
    chosen = [rows[i] for i in args.rows] if args.rows else rows
    with tempfile.TemporaryDirectory() as tmp:
        roots = [("now", ROOT)]
        if args.baseline:
            roots.insert(0, (args.baseline, extract(args.baseline, Path(tmp))))
        print("| row | " + " | ".join(label for label, _ in roots) + " |")
        print("|---" * (len(roots) + 1) + "|")
        for name, how, argv in chosen:
            counts = [per_prediction(root, argv, args.calls) if how == "predict"
                      else instructions(root, argv) for _, root in roots]
            print(f"| {name} | " + " | ".join(f"{c / 1e6:.1f} M" for c in counts) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
