"""How steady this machine's compute speed is: the noise floor under every validation figure.

A validation compares a run measured now with a prediction from a profile measured minutes
earlier. If the machine itself runs the same op at different speeds from one second to the
next, or from one process to the next, no model can predict a run closer than that spread.
This script measures it: ``--processes`` fresh processes, one after the other, each time the
same reference op (one transformer block of ``--model`` on ``--tokens`` query tokens, built
as the profiler builds it, one thread) in ``--windows`` consecutive windows of ``--calls``
calls. It reports each window's median and three spreads, each as (max - min) / median:

- ``within_process``: the window medians inside one process (the worst process), i.e. how far
  the speed drifts over seconds in a process that keeps its memory and threads;
- ``across_processes``: the processes' own medians, i.e. what a fresh launch can draw;
- ``all_windows``: every window of every process: the band a measured op time falls in.

Run it on a quiet machine (nothing else running): it measures the machine, not a load.

    python benchmarks/machine_drift.py [--processes 4] [--windows 8] [--calls 10]
                                       [--model pixart-small] [--tokens 1024] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What one child process runs: the reference op, timed on the wall clock in windows; it prints
# one JSON list of window medians (seconds).
_CHILD = """
import json, statistics, sys, time
import torch
from executor.host import steady_heap
from executor.op_runner import ExecutorRunner
from sim.models import get_model
model, res, tokens, windows, calls = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \\
    int(sys.argv[4]), int(sys.argv[5])
steady_heap()  # as the executor and the profiler do
torch.set_num_threads(1)
m = get_model(model)
rows, cols = m.token_grid(res, res)
fn = ExecutorRunner(m, "cpu", "fp32", (res,), 0).block(res, tokens, rows * cols)
out = []
with torch.inference_mode():
    for _ in range(3):
        fn()
    for _ in range(windows):
        ts = []
        for _ in range(calls):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        out.append(statistics.median(ts))
print(json.dumps(out))
"""


def spread(xs: list[float]) -> float:
    """(max - min) / median of ``xs``, a fraction."""
    return (max(xs) - min(xs)) / statistics.median(xs)


def summarise(per_process: list[list[float]]) -> dict:
    """The three spreads of ``per_process`` window medians (seconds), see the module doc."""
    flat = [w for p in per_process for w in p]
    return {
        "window_medians_s": per_process,
        "median_s": statistics.median(flat),
        "within_process": max(spread(p) for p in per_process),
        "across_processes": spread([statistics.median(p) for p in per_process]),
        "all_windows": spread(flat),
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--processes", type=int, default=4, help="fresh processes, one after another")
    p.add_argument("--windows", type=int, default=8, help="timing windows per process")
    p.add_argument("--calls", type=int, default=10, help="calls of the op per window")
    p.add_argument("--model", default="pixart-small", help="model whose block is timed")
    p.add_argument("--resolution", type=int, default=512, help="image size, px")
    p.add_argument("--tokens", type=int, default=1024,
                   help="query tokens of the timed block (at most the image's tokens)")
    p.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("processes", "windows", "calls", "tokens", "resolution"):
        if getattr(args, name) < 1:
            print(f"error: --{name} must be at least 1", file=sys.stderr)
            return 2
    sys.path.insert(0, str(ROOT))
    from sim.errors import UserError
    from sim.models import get_model

    try:
        m = get_model(args.model)
        rows, cols = m.token_grid(args.resolution, args.resolution)
    except (UserError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.tokens > rows * cols:
        print(f"error: --tokens {args.tokens} is more than the {rows * cols} tokens of a "
              f"{args.resolution} px image of {args.model}; give at most {rows * cols}",
              file=sys.stderr)
        return 2
    start = time.time()
    per_process = []
    for k in range(args.processes):
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, args.model, str(args.resolution), str(args.tokens),
             str(args.windows), str(args.calls)],
            cwd=ROOT, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"error: the timing process failed: {done.stderr.strip()[-400:]}",
                  file=sys.stderr)
            return 1
        windows = json.loads(done.stdout.strip().splitlines()[-1])
        per_process.append(windows)
        print(f"process {k + 1}/{args.processes}: window medians "
              + " ".join(f"{w * 1e3:.1f}" for w in windows) + " ms", file=sys.stderr)
    res = summarise(per_process)
    res.update(model=args.model, resolution=args.resolution, tokens=args.tokens,
               calls=args.calls, started_unix_s=start, wall_s=time.time() - start)
    print(f"{args.model} block, {args.tokens} tokens: median {res['median_s'] * 1e3:.1f} ms; "
          f"spread within a process (worst) {res['within_process']:.0%}, across processes "
          f"{res['across_processes']:.0%}, over all windows {res['all_windows']:.0%} "
          f"({args.processes} processes x {args.windows} windows of {args.calls} calls, "
          f"{res['wall_s']:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
