"""What a launcher gives each executor process and how a failed one ends: the rank numbers
torchrun puts in the environment, and the one-line, hard exit of a rank whose run failed.
Shared by ``executor.run`` (one run per launch) and ``executor.batch`` (several)."""

from __future__ import annotations

import os

from executor.comm import abort
from sim.errors import UserError


def env_int(name: str, default: int) -> int:
    """The integer environment variable ``name`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``),
    ``default`` when unset; raises ``UserError`` when it is not an integer."""
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise UserError(f"environment variable {name} must be an integer") from None


def abort_rank(rank: int, error: BaseException) -> None:
    """Print ``error: rank R: ...`` (the first line of ``error``, with its type unless it
    already names the rank) and exit the process at once with status 1. A hard exit, because a
    dead peer can leave gloo/NCCL threads that block a normal one."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if not text.startswith(f"rank {rank}:"):
        text = f"rank {rank}: {type(error).__name__}: {text}"
    abort(text)
