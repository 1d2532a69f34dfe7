"""Point-to-point messages of a schedule over torch.distributed, with arrival times.

Sends are ``isend`` and never block the sender; receives are posted ahead with ``irecv`` into
buffers whose shape the schedule gives (no run-time shape handshake). Two watcher threads per
rank, one for sends and one for receives, wait on the outstanding works in the order they were
issued and stamp the time each completes, so a trace row can say when data really arrived
instead of when the compute thread happened to look.

Hidden states and latents travel on two separate process groups. Under NCCL each group has its
own communicator and stream per peer pair, so a receive posted ahead on one of them cannot hold
back a send queued on the other (the deadlock that posting receives ahead causes when both
directions share a stream).
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from executor import faults
from sim.schedule import OpKind, Tag

SWITCH_INTERVAL_S = 2e-4  # seconds; bounds how late a watcher's completion stamp can be
_WHAT = {"hidden": 0, "text": 1, "skip": 2, "latent": 3}


_ABORT = threading.Lock()


def abort(message: str, status: int = 1) -> None:
    """Print ``error: message`` once per process and exit at once with ``status``. Used by
    the compute thread and by the watcher threads alike: a rank whose compute thread is stuck
    still exits as soon as one of its outstanding messages fails (no orphans)."""
    with _ABORT:
        faults.gave_up(message)  # for the peers' lines: they must not blame this rank
        print(f"error: {message}", file=sys.stderr, flush=True)
        os._exit(status)


class CommError(RuntimeError):
    """A message could not be completed: the peer died, hung past the timeout, or the
    transport failed. The message names this rank, the peer and the tag."""


def tag_number(tag: Tag, patches: int, blocks: int) -> int:
    """A unique non-negative integer for ``tag`` (gloo matches messages on it; NCCL ignores
    it and matches in issue order, which the schedule keeps identical on both ends)."""
    n = ((tag.step + 1) * (patches + 2) + (tag.patch + 1)) * len(_WHAT) + _WHAT[tag.what]
    return (n * (blocks + 2) + tag.layer + 1) % (2**31 - 1)


@dataclass
class Pending:
    """One outstanding message. Times are seconds on the rank's clock (``time.perf_counter``
    minus the run's origin)."""

    kind: str  # OpKind.SEND or OpKind.RECV
    peer: int
    tag: Tag
    nbytes: int
    tensor: torch.Tensor | None
    work: object | None
    start_s: float
    end_s: float = -1.0
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)
    group: tuple[int, ...] = ()  # members of an asynchronous collective (peer is -1)
    keep: object = None  # buffers an asynchronous collective reads or writes


# How long a watcher lets gloo wait: practically forever. The user's timeout is enforced by the
# compute thread from the moment it needs a message, so a receive posted ahead while this rank
# is busy computing never times out early, and a rank that hangs is not the one that blames
# its healthy peer. Without an explicit value gloo would apply the process group's timeout.
_WATCH_LIMIT = timedelta(days=7)


class _Watcher(threading.Thread):
    """Waits on works in issue order and stamps their completion time. A failed work (the
    peer's connection closed) ends the process at once, even if the compute thread is stuck."""

    def __init__(self, name: str, clock, poll: bool, describe) -> None:
        super().__init__(name=name, daemon=True)
        self.q: queue.Queue[Pending | None] = queue.Queue()
        self.clock = clock
        self.poll = poll
        self.describe = describe

    def run(self) -> None:
        while True:
            p = self.q.get()
            if p is None:
                return
            try:
                if self.poll:
                    # NCCL: wait() would only order a CUDA stream; poll the work's event, not
                    # so often that the poll competes with the compute thread for the GIL.
                    while not p.work.is_completed():
                        time.sleep(SWITCH_INTERVAL_S)
                else:
                    # gloo: wait() releases the GIL and raises when the peer's connection
                    # closes.
                    p.work.wait(_WATCH_LIMIT)
            except BaseException as e:  # noqa: BLE001 - the run is lost: say why and exit
                p.error = e
                p.end_s = self.clock()
                p.done.set()
                abort(self.describe(p))
            p.end_s = self.clock()
            if p.kind == OpKind.SEND:
                # Sent: let the tensor go now, not at the end of the run (a stage sends a full
                # activation per step).
                p.tensor = p.work = None
            p.done.set()


class Comm:
    """The message layer of one rank.

    ``fwd`` carries hidden states (stage to stage), ``back`` carries latents (last stage to
    stage 0). ``timeout_s`` bounds every wait; ``clock()`` gives seconds since the origin.
    """

    def __init__(self, rank: int, patches: int, blocks: int, timeout_s: float, clock,
                 device: torch.device, fwd=None, back=None) -> None:
        self.rank = rank
        self.patches = patches
        self.blocks = blocks
        self.timeout_s = timeout_s
        self.clock = clock
        self.device = device
        self.fwd = fwd
        self.back = back
        poll = device.type == "cuda"
        # A watcher that wakes up must win the GIL from the compute thread to stamp the time;
        # at Python's default 5 ms switch interval its stamps lag by up to 5 ms.
        sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL_S))
        self._send_w = _Watcher(f"send-watch-{rank}", clock, poll, self.describe)
        self._recv_w = _Watcher(f"recv-watch-{rank}", clock, poll, self.describe)
        self._send_w.start()
        self._recv_w.start()
        self._poll = poll
        # Asynchronous collectives (ring rounds, DistriFusion's K,V gathers) get their own
        # watcher, so their stamps do not queue behind the messages'; started on first use,
        # so message-only runs keep two threads.
        self._coll_w: _Watcher | None = None
        self.sends: list[Pending] = []
        self.recvs: dict[Tag, Pending] = {}
        self.finished: list[Pending] = []

    def _group(self, tag: Tag):
        return self.back if tag.what == "latent" else self.fwd

    def isend(self, dst: int, tag: Tag, tensor: torch.Tensor) -> Pending:
        """Issue an asynchronous send of ``tensor`` (kept alive until it completes)."""
        tensor = tensor.contiguous()
        start = self.clock()
        work = dist.isend(tensor, dst, group=self._group(tag),
                          tag=tag_number(tag, self.patches, self.blocks))
        p = Pending(OpKind.SEND, dst, tag, tensor.numel() * tensor.element_size(), tensor, work,
                    start)
        self.sends.append(p)
        self._send_w.q.put(p)
        return p

    def post_recv(self, src: int, tag: Tag, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """Post a receive of ``shape`` from ``src`` into a fresh buffer."""
        buf = torch.empty(shape, dtype=dtype, device=self.device)
        start = self.clock()
        work = dist.irecv(buf, src, group=self._group(tag),
                          tag=tag_number(tag, self.patches, self.blocks))
        p = Pending(OpKind.RECV, src, tag, buf.numel() * buf.element_size(), buf, work, start)
        self.recvs[tag] = p
        self._recv_w.q.put(p)

    def watch(self, p: Pending) -> None:
        """Have the collective watcher stamp the completion of ``p`` (an asynchronous
        collective's work); a failure ends the process with a line naming the op."""
        if self._coll_w is None:
            self._coll_w = _Watcher(f"collective-watch-{self.rank}", self.clock, self._poll,
                                    self.describe)
            self._coll_w.start()
        self._coll_w.q.put(p)

    def is_posted(self, tag: Tag) -> bool:
        """Whether the receive of ``tag`` has been posted and not yet consumed."""
        return tag in self.recvs

    def wait_recv(self, tag: Tag) -> torch.Tensor:
        """Block until the receive of ``tag`` has arrived and return its buffer; raises
        ``CommError`` naming the peer if it failed or did not arrive within the timeout."""
        p = self.recvs.pop(tag)
        if not p.done.wait(self.timeout_s):
            p.error = TimeoutError(f"nothing arrived within --timeout {self.timeout_s:g} s")
        self._check(p)
        if self.device.type == "cuda":
            p.work.wait()  # order the compute stream after the NCCL receive
        data, p.tensor, p.work = p.tensor, None, None  # the trace keeps times, not buffers
        self.finished.append(p)
        return data

    def wait_sends(self) -> None:
        """Block until every send has completed (raises ``CommError`` on a failure)."""
        deadline = time.monotonic() + self.timeout_s
        for p in self.sends:
            if not p.done.wait(max(0.0, deadline - time.monotonic())):
                p.error = TimeoutError(f"not taken within --timeout {self.timeout_s:g} s")
            self._check(p)
            self.finished.append(p)
        self.sends = []

    def _check(self, p: Pending) -> None:
        if p.error is not None:
            raise CommError(self.describe(p)) from p.error

    def describe(self, p: Pending) -> str:
        """One line naming this rank, the peer (or the group) and the message that failed."""
        reason = str(p.error).strip().splitlines()[0] if str(p.error).strip() else \
            type(p.error).__name__
        reason = reason.split(". This is typically")[0]  # gloo appends generic advice
        timed_out = isinstance(p.error, TimeoutError) or "timed out" in reason.lower()
        if p.kind not in (OpKind.SEND, OpKind.RECV):
            t = p.tag
            return (f"rank {self.rank}: {p.kind} of {t.what} (step {t.step}, patch {t.patch}, "
                    f"layer {t.layer}) with ranks {p.group} failed: "
                    f"{faults.blame(p.group, timed_out)} ({reason})")
        verb = "send to" if p.kind == OpKind.SEND else "receive from"
        return (f"rank {self.rank}: {verb} rank {p.peer} of {p.tag.what} (step {p.tag.step}, "
                f"patch {p.tag.patch}) failed: {faults.blame([p.peer], timed_out)} ({reason})")

    def close(self) -> None:
        """Stop the watcher threads (after every message has been waited for)."""
        self._send_w.q.put(None)
        self._recv_w.q.put(None)
        if self._coll_w is not None:
            self._coll_w.q.put(None)
