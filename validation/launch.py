"""How validation drives the torch commands: launches under torchrun, and the progress lines it
prints on stderr while they run."""

from __future__ import annotations

import os
import subprocess
import sys

from sim.errors import UserError


def say(text: str, progress: bool) -> None:
    """Print a progress line on stderr when ``progress`` is on."""
    if progress:
        print(text, file=sys.stderr)


def torchrun(nproc: int, argv: list[str], timeout: float = 1800) -> None:
    """Run ``python -m torch.distributed.run --standalone`` with ``nproc`` processes of
    ``argv`` (one torch thread each), waiting at most ``timeout`` seconds; a failed launch
    raises ``UserError`` with its last line of output."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if res.returncode != 0:
        lines = [ln for ln in (res.stderr + res.stdout).splitlines() if ln.strip()]
        raise UserError(f"{' '.join(argv[:2])} under torchrun failed: "
                        f"{lines[-1] if lines else 'no output'}")
