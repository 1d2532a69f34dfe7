"""Speed of ``python -m sim.serve``'s split search, as whole commands.

Targets (issue 13): 8 GPUs and 3 request classes, full search, under 10 s; 64 GPUs under 60 s.
Each command runs ``repeats`` times; the wall and CPU seconds (this process's children: the
command and its planner workers) of each run are printed, with the command's own count of
pool runs and per-request simulations. Run: ``python benchmarks/bench_serve.py [repeats]``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

BASE = ["sim.serve", "--model", "pixart", "--gpu", "l40", "--link", "pcie", "--slo", "1.5x",
        "--json"]
CASES = [
    ("8 GPUs, 2 classes", ["--gpus", "8", "--mix", "1024:0.7,2048:0.3"], "-"),
    ("8 GPUs, 3 classes", ["--gpus", "8", "--mix", "512:0.3,1024:0.5,2048:0.2"], "< 10 s"),
    ("64 GPUs (8 nodes), 2 classes", ["--gpus", "64", "--nodes", "8", "--mix",
                                      "1024:0.7,2048:0.3"], "< 60 s"),
]


def run(argv: list[str]) -> tuple[float, float, dict]:
    """Wall seconds, CPU seconds of the children, and the JSON result of one command."""
    before = os.times()
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", *argv], check=True, capture_output=True,
                         text=True).stdout
    wall = time.perf_counter() - t0
    after = os.times()
    cpu = (after.children_user - before.children_user) + \
        (after.children_system - before.children_system)
    return wall, cpu, json.loads(out)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    print(f"{'case':<32}{'target':>8}  wall s (cpu s), pool runs, request simulations")
    for name, extra, target in CASES:
        cells = []
        for _ in range(repeats):
            wall, cpu, res = run(BASE + extra)
            cells.append(f"{wall:.1f} ({cpu:.1f}), {res['pool_runs']}, "
                         f"{res['request_simulations']}")
        print(f"{name:<32}{target:>8}  " + "; ".join(cells))


if __name__ == "__main__":
    main()
