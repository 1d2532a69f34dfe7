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

from executor.comm import abort
from executor.run import _env_int, build_parser, execute, plan_run, process_groups
from sim.errors import UserError


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2 or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0], file=sys.stderr)
        print("usage: executor.batch OUTDIR 'ARGS' ['ARGS' ...]", file=sys.stderr)
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    out = Path(argv[0])
    rank = world = local_rank = 0
    try:
        rank = _env_int("RANK", 0)
        world = _env_int("WORLD_SIZE", 1)
        local_rank = _env_int("LOCAL_RANK", 0)
        runs = []
        for text in argv[1:]:
            args = build_parser().parse_args(shlex.split(text))
            runs.append((args, plan_run(args, world)))
    except UserError as e:
        if rank == 0:
            print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        import torch
        import torch.distributed as dist

        if world > 1:
            args0, plan0 = runs[0]
            device = torch.device("cuda", local_rank) if plan0.device == "cuda" \
                else torch.device("cpu")
            process_groups(rank, world, device, max(a.timeout for a, _ in runs))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        for i, (args, plan) in enumerate(runs):
            summary = execute(plan, args, rank, world, local_rank)
            if summary is not None:
                (out / f"run-{i}.json").write_text(json.dumps(summary))
        if world > 1:
            dist.destroy_process_group()
    except BaseException as e:  # noqa: BLE001 - one line naming the rank, then a hard exit
        text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not text.startswith(f"rank {rank}:"):
            text = f"rank {rank}: {type(e).__name__}: {text}"
        abort(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
