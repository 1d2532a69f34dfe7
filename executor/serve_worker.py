"""One rank of one serving replica (``executor.serve``): a process that loads its stage of the
transformer once (``executor.runtime.LoadedRank``) and then performs the requests the
dispatcher sends it, one at a time, reporting when each started and finished.

Messages (``multiprocessing`` queues; times are ``time.monotonic()`` seconds, one clock for
every process of the host on Linux, CLOCK_MONOTONIC):

- inbox, from the dispatcher: ``(request_id, class_index)`` to perform that class's schedule,
  ``None`` to stop;
- outbox, to the dispatcher: ``("loaded", replica, rank, load_s)`` once ready,
  ``("done", replica, rank, request_id, start, finish, loop_s)`` after each request,
  ``("error", replica, rank, text)`` when the process fails (it then exits).

Every rank of a multi-process replica receives every request of its replica and runs the
same schedule; the ranks meet at the run's barrier (``LoadedRank.run``).
"""

from __future__ import annotations

import os
import time
from multiprocessing.queues import Queue


def serve_rank(replica: int, rank: int, world: int, port: int, argvs: list[list[str]],
               inbox: Queue, outbox: Queue) -> None:
    """Serve requests as rank ``rank`` of ``world`` processes of replica ``replica``;
    ``argvs[c]`` are the ``executor.run`` flags of request class ``c`` on this replica (same
    parallel configuration for every class); ``port`` is the replica's rendezvous port on
    127.0.0.1 (unused with one process)."""
    try:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK="0")
        t0 = time.monotonic()
        # Imported here: the dispatcher's process never loads a model.
        from executor.request import plan_run
        from executor.run import build_parser
        from executor.runtime import LoadedRank

        plans = []
        for argv in argvs:
            args = build_parser().parse_args(argv)
            plans.append((args, plan_run(args, world)))
        loaded = LoadedRank(plans[0][1], plans[0][0], rank, world, 0)
        outbox.put(("loaded", replica, rank, time.monotonic() - t0))
        while True:
            msg = inbox.get()
            if msg is None:
                break
            request_id, cls = msg
            start, cpu = time.monotonic(), time.process_time()
            result = loaded.run(plans[cls][1].schedule)
            finish = time.monotonic()
            outbox.put(("done", replica, rank, request_id, start, finish,
                        time.process_time() - cpu, result.loop_s))
        loaded.close()
    except BaseException as e:  # noqa: BLE001 - reported to the dispatcher as one line
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        outbox.put(("error", replica, rank, f"{type(e).__name__}: {text}"))
