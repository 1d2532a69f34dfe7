"""Several executor runs in one launch, paying process start-up, imports and the process-group
rendezvous once: ``torchrun --nproc_per_node N -m executor.batch OUTDIR 'ARGS' ['ARGS' ...]``.

Each ``ARGS`` is one quoted ``executor.run`` argument string; rank 0 writes the JSON object of
run ``i`` to ``OUTDIR/run-i.json``. Every run is checked (``plan_run``) before the process group
starts, so a bad one fails the whole batch with exit status 2 and the simulator's message.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from executor.launch import abort_rank, env_int
from executor.request import plan_run
from executor.run import build_parser
from executor.runtime import execute, naming_the_culprit, process_groups
from sim.cli import run_main
from sim.errors import UserError
from sim.outputs import check_folder, write_output

USAGE = "usage: executor.batch OUTDIR 'ARGS' ['ARGS' ...]"


def main(argv: list[str] | None = None) -> int:
    """Run every request of ``argv`` (default: the command line) in this launch; returns 0, or
    2 on bad input (one ``error:`` line from rank 0); a failed run exits the process with
    status 1 and a line naming the rank."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if len(argv) < 2:
        raise UserError(f"give an output folder and at least one quoted executor.run argument "
                        f"string ({USAGE})")
    out = Path(argv[0])
    rank = world = local_rank = 0
    try:
        rank = env_int("RANK", 0)
        world = env_int("WORLD_SIZE", 1)
        local_rank = env_int("LOCAL_RANK", 0)
        check_folder(out, "OUTDIR")  # before the runs, not after them
        runs = []
        for text in argv[1:]:
            args = build_parser().parse_args(shlex.split(text))
            if args.check is not None:
                raise UserError("--check applies to executor.run; executor.batch runs every "
                                "request it is given")
            runs.append((args, plan_run(args, world)))
    except UserError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        if world > 1:
            device = torch.device("cuda", local_rank) if runs[0][1].device == "cuda" \
                else torch.device("cpu")
            with naming_the_culprit(rank, world, "start-up (connecting the ranks)"):
                process_groups(rank, world, device, max(a.timeout for a, _ in runs))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        for i, (args, plan) in enumerate(runs):
            summary = execute(plan, args, rank, world, local_rank)
            if summary is not None:
                write_output(out / f"run-{i}.json",
                             lambda p, s=summary: p.write_text(json.dumps(s)), "OUTDIR")
        if world > 1:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - one line naming the rank, then a hard exit
        abort_rank(rank, e)
    return 0


if __name__ == "__main__":
    run_main(main)
