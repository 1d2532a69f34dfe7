"""What one blocking collective costs a rank between stretches of compute, against the
stretch's length (CPU processes, gloo).

    torchrun --nproc_per_node 2 benchmarks/collective_context.py [--reps 1,2,4,8]
        [--ops all_reduce,all_to_all] [--sizes 128KiB,384KiB] [--rounds 10] [--calls 20]
        [--json OUT]

Every rank runs a chain of ``calls`` iterations of (a stretch of DiT-like compute, one
blocking call), and the same stretches without the calls; a call's cost is the chain's time
per iteration less the stretch's: the call itself, the wait for the other rank, and whatever
the compute after it loses (caches, the transport's threads still on the core). A stretch is
``reps`` runs of one pre-norm transformer layer (width 128, 64 tokens, batch 2; about 0.7 ms
on one core of the 2-core EPYC VM). Chains and stretches alone alternate over ``rounds``
rounds; each cell reports the mean over rounds, their smallest and largest, and the stretch's
own length (seconds; the means of both ranks).

Why: ``profiles.links --busy`` times a blocking call after its 6 ms reference op, and the
engine charges that time to every call, while a Ulysses or tensor-parallel block of a tiny
model calls every few hundred microseconds. This measures how much the stretch before a call
matters. Bad input prints one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from profiles.links import dit_layers, parse_size  # noqa: E402
from sim.cli import run_main  # noqa: E402
from sim.errors import UserError  # noqa: E402

OPS = ("all_reduce", "all_to_all", "all_gather")


def _ints(text: str, flag: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise UserError(f"{flag} takes whole numbers separated by commas, got '{text}'") from None
    if not out or min(out) < 1:
        raise UserError(f"{flag} takes whole numbers of at least 1, got '{text}'")
    return out


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The command line, checked (``UserError`` on bad input)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", default="1,2,4,8", help="stretch lengths, in runs of the layer")
    p.add_argument("--ops", default="all_reduce,all_to_all", help=f"some of {','.join(OPS)}")
    p.add_argument("--sizes", default="128KiB,384KiB", help="bytes each rank puts in")
    p.add_argument("--rounds", type=int, default=10, help="alternating rounds per cell")
    p.add_argument("--calls", type=int, default=20, help="iterations per chain")
    p.add_argument("--json", type=Path, default=None, help="also write the cells here")
    a = p.parse_args(argv)
    a.reps = _ints(a.reps, "--reps")
    a.ops = [o.strip() for o in a.ops.split(",") if o.strip()]
    if not a.ops or any(o not in OPS for o in a.ops):
        raise UserError(f"--ops must name some of {', '.join(OPS)}, got '{','.join(a.ops)}'")
    a.sizes = [parse_size(s) for s in a.sizes.split(",") if s.strip()]
    _ints(str(a.rounds), "--rounds")
    _ints(str(a.calls), "--calls")
    if "RANK" not in os.environ:
        raise UserError("run it under torchrun: torchrun --nproc_per_node 2 "
                        "benchmarks/collective_context.py")
    return a


def measure(a: argparse.Namespace) -> list[dict]:
    """Every (op, size, stretch) cell, as the module docstring says."""
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    layer = dit_layers(1, 64)  # profiles.links._short_op: the <op>_short rows' stretch
    for _ in range(10):
        layer()
    cells = []
    for op in a.ops:
        for n in a.sizes:
            x = torch.ones(n // 4)
            out = torch.empty_like(x)
            parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
            call = {"all_reduce": lambda x=x: dist.all_reduce(x),
                    "all_to_all": lambda x=x, out=out: dist.all_to_all_single(out, x),
                    "all_gather": lambda x=x, parts=parts: dist.all_gather(parts, x)}[op]
            for reps in a.reps:
                alone, chain = [], []
                for _ in range(a.rounds):
                    dist.barrier()
                    t0 = time.perf_counter()
                    for _ in range(a.calls * reps):
                        layer()
                    alone.append((time.perf_counter() - t0) / a.calls)
                    dist.barrier()
                    t0 = time.perf_counter()
                    for _ in range(a.calls):
                        for _ in range(reps):
                            layer()
                        call()
                    chain.append((time.perf_counter() - t0) / a.calls)
                costs = [c - s for c, s in zip(chain, alone)]
                t = torch.tensor([statistics.fmean(alone), statistics.fmean(costs), min(costs),
                                  max(costs)], dtype=torch.float64)
                dist.all_reduce(t)
                t /= dist.get_world_size()
                cells.append({"op": op, "nbytes": n, "reps": reps, "stretch_s": float(t[0]),
                              "call_s": float(t[1]), "call_min_s": float(t[2]),
                              "call_max_s": float(t[3])})
    return cells


def main(argv: list[str] | None = None) -> int:
    a = parse(argv)
    import torch.distributed as dist

    dist.init_process_group("gloo")
    try:
        cells = measure(a)
    finally:
        dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) != 0:
        return 0
    print(f"{'op':11s} {'bytes':>8s} {'stretch':>9s} {'per call (mean, min-max over rounds)':>40s}")
    for c in cells:
        print(f"{c['op']:11s} {c['nbytes']:8d} {c['stretch_s'] * 1e3:7.2f}ms "
              f"{c['call_s'] * 1e3:14.3f} ms ({c['call_min_s'] * 1e3:.3f}-"
              f"{c['call_max_s'] * 1e3:.3f})")
    if a.json is not None:
        a.json.write_text(json.dumps(cells, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    run_main(main)
