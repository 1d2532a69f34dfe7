"""The registry's collectives against public measurements of real GPU servers (issue 10).

``profiles/data/public-collectives.csv`` lists collective timings that public sources
measured (nccl-tests bus bandwidths, small-message latencies), one row per (platform,
collective, message size, GPU count), each with its source. For each row this command runs
the same collective through the simulator's engine on the registry's topology for that GPU
and link (every rank issuing one call at once, so the flows share the links as they do in a
plan) and prints what the model says beside what was measured, and the ratio model /
measured. Nothing here feeds the model: it shows where the defaults agree with the sources
and where they do not.

Measures: ``busbw_GBps`` (nccl-tests bus bandwidth at ``nbytes`` per rank: algorithm
bandwidth x 2(n-1)/n for all-reduce, x (n-1)/n for all-gather and all-to-all),
``avg_busbw_GBps`` (nccl-tests' "Avg bus bandwidth": the mean over its default size sweep,
8 B to 512 MB doubling; ``nbytes`` is ``sweep``) and ``time_us`` (one call, microseconds).
A row whose source gives a range has ``low`` < ``high``; the model agrees with it when it
falls inside, and the ratio is taken to the nearer end.

Run: ``python benchmarks/public_collectives.py [--json]`` (about a second).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
from pathlib import Path

from sim.engine import simulate
from sim.hardware import get_gpu
from sim.schedule import Collective, OpKind, Schedule, Tag
from sim.topology import build_topology

DATA = Path(__file__).resolve().parents[1] / "profiles" / "data" / "public-collectives.csv"
SWEEP = [8 * 2**i for i in range(27)]  # nccl-tests' default sweep: 8 B .. 512 MB
BUS_FACTOR = {OpKind.ALL_REDUCE: lambda n: 2 * (n - 1) / n,
              OpKind.ALL_GATHER: lambda n: (n - 1) / n,
              OpKind.ALL_TO_ALL: lambda n: (n - 1) / n}


class _NoCompute:
    def compute_time(self, op: object) -> float:
        return 0.0

    def source(self, op: object) -> str:
        return "none"


def collective_seconds(gpu: str, link: str, n: int, kind: str, nbytes: int) -> float:
    """Seconds the engine gives one call of collective ``kind`` over ``n`` GPUs of kind
    ``gpu`` on ``link``, with ``nbytes`` per rank, every rank calling at once."""
    topo = build_topology(get_gpu(gpu), n, link)
    group = tuple(range(n))
    op = Collective(kind, group, nbytes, Tag("bench", 0, 0, 0))
    sched = Schedule("bench", "bench", 8, 8, 1, 0, 1, 1, 2, [(0, 0)] * n, [1], 1,
                     ranks=[[op] for _ in range(n)])
    return max(r.end_s for r in simulate(sched, topo, _NoCompute()).rows)


def busbw(gpu: str, link: str, n: int, kind: str, nbytes: int) -> float:
    """nccl-tests bus bandwidth, GB/s, of the engine's time for one call."""
    t = collective_seconds(gpu, link, n, kind, nbytes)
    return nbytes / t * BUS_FACTOR[kind](n) / 1e9


def model_value(row: dict) -> float:
    """What the model says for ``row``'s measure."""
    gpu, link, n, kind = row["gpu"], row["link"], int(row["gpus"]), row["collective"]
    if row["measure"] == "avg_busbw_GBps":
        return statistics.fmean(busbw(gpu, link, n, kind, s) for s in SWEEP)
    nbytes = int(row["nbytes"])
    if row["measure"] == "busbw_GBps":
        return busbw(gpu, link, n, kind, nbytes)
    if row["measure"] == "time_us":
        return collective_seconds(gpu, link, n, kind, nbytes) * 1e6
    raise ValueError(f"unknown measure {row['measure']!r}")


def compare(path: Path = DATA) -> list[dict]:
    """Every public row with the model's value and the ratio model / measured (to the nearer
    end of a range; 1.0 inside it)."""
    out = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            lo, hi = float(row["low"]), float(row["high"])
            m = model_value(row)
            ratio = 1.0 if lo <= m <= hi else (m / lo if m < lo else m / hi)
            out.append({**row, "model": m, "ratio": ratio})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = ap.parse_args(argv)
    rows = compare()
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'platform':<44} {'collective':<10} {'n':>2} {'bytes':>10} {'measure':<15} "
          f"{'measured':>11} {'model':>8} {'ratio':>6}")
    for r in rows:
        meas = r["low"] if r["low"] == r["high"] else f"{r['low']}-{r['high']}"
        print(f"{r['platform'][:44]:<44} {r['collective']:<10} {r['gpus']:>2} "
              f"{r['nbytes']:>10} {r['measure']:<15} {meas:>11} {r['model']:>8.1f} "
              f"{r['ratio']:>5.2f}x")
    logs = [abs(math.log(r["ratio"])) for r in rows]
    within = sum(x <= math.log(1.5) for x in logs)
    print(f"{len(rows)} public measurements: model within 1.5x of {within}, geometric-mean "
          f"factor off {math.exp(statistics.fmean(logs)):.2f}x, worst "
          f"{math.exp(max(logs)):.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
