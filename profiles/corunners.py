"""Processes that compute beside the measured one (``profiles.collect --co-run N``), as the
other ranks of a multi-process run keep their cores, the shared caches and the memory
bandwidth busy."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

from executor.op_runner import OpRunner
from profiles.settings import Settings


def start_co_runners(s: Settings, runner: OpRunner) -> Callable[[], None]:
    """Fork ``s.co_run`` processes that run the model's largest full-image block in a loop;
    returns the function that stops them."""
    res = max(s.resolutions)
    kv = s.model.image_tokens(res)
    work = runner.block(res, kv, kv)
    pids = []
    for _ in range(s.co_run):
        pid = os.fork()
        if pid == 0:  # child: compute until killed, never return into the collector
            try:
                while True:
                    work()
            finally:
                os._exit(0)
        pids.append(pid)

    def stop() -> None:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)

    return stop
