"""Speed of the simulator: ``sim.predict`` in-process and ``sim.plan`` as a whole command.

Targets: predict for PixArt, 8 GPUs, M=16, 20 steps under 100 ms in-process (issue 2);
``python -m sim.plan --model pixart --gpus 8 --link pcie`` with the full hybrid search under
5 s for the whole command (issue 3; issue 2 asked 3 s for PipeFusion alone); the Flux 16-GPU
two-node plan must work. Run: ``python benchmarks/bench_sim.py``.
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


def bench_command(argv: list[str], repeats: int = 3) -> tuple[float, str]:
    times = []
    out = ""
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", *argv], check=True, capture_output=True,
                             text=True).stdout
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    print(f"sim.predict pixart 8 GPUs M=16 20 steps, in-process: {bench_predict() * 1e3:.1f} ms")
    for argv, reps in ((["sim.plan", "--model", "pixart", "--gpus", "8", "--link", "pcie"], 3),
                       (["sim.plan", "--model", "flux-dev", "--gpus", "16", "--nodes", "2",
                         "--link", "pcie"], 1),
                       (["sim.compare", "--model", "pixart", "--gpu", "l40", "--gpus", "8",
                         "--link", "pcie", "--resolutions", "1024,2048,4096"], 1)):
        secs, out = bench_command(argv, reps)
        summary = [ln for ln in out.splitlines() if "searched" in ln or ln.startswith("recomm")]
        print(f"python -m {' '.join(argv)}: {secs:.2f} s (whole command)")
        for ln in summary:
            print("   ", ln)


if __name__ == "__main__":
    main()
