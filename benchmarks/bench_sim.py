"""Speed of the simulator: ``sim.predict`` in-process and ``sim.plan`` as a whole command.

Targets (issue 2): predict for PixArt, 8 GPUs, M=16, 20 steps under 100 ms in-process;
``python -m sim.plan --model pixart --gpus 8 --link pcie`` under 3 s for the whole command.
Run: ``python benchmarks/bench_sim.py``.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time

from sim.config import ParallelConfig, Workload
from sim.evaluate import evaluate
from sim.hardware import get_gpu
from sim.models import get_model
from sim.topology import build_topology


def bench_predict(repeats: int = 15) -> float:
    gpu = get_gpu("l40")
    wl = Workload(get_model("pixart"), 1024, 1024, 20)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        topo = build_topology(gpu, 8, "pcie")
        evaluate(wl, ParallelConfig(8, 8, 16, 1), gpu, topo)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_command(argv: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", *argv], check=True, capture_output=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    print(f"sim.predict pixart 8 GPUs M=16 20 steps, in-process: {bench_predict() * 1e3:.1f} ms")
    plan = ["sim.plan", "--model", "pixart", "--gpus", "8", "--link", "pcie"]
    print(f"python -m {' '.join(plan)}: {bench_command(plan):.2f} s (whole command)")


if __name__ == "__main__":
    main()
