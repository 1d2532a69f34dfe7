"""Who the executor blames when a run fails (``executor.faults``), without launching ranks:
the notes ranks leave in the launch's store, read back through a stand-in store."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

pytest.importorskip("torch.distributed")

from executor import faults  # noqa: E402


class _Store:
    """The two calls ``faults`` makes of a c10d store, on a dict."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    def set(self, key: str, value: str) -> None:
        self.data[key] = value.encode()

    def check(self, keys: list[str]) -> bool:
        return all(k in self.data for k in keys)

    def get(self, key: str) -> bytes:
        return self.data[key]


@pytest.fixture()
def store(monkeypatch) -> _Store:
    st = _Store()
    monkeypatch.setattr(faults, "_STATE", faults._State(rank=0, world=2, store=st))
    return st


def _as_rank(store: _Store, rank: int, phases: int, pid: int | None = None) -> None:
    store.set(f"ditsim/phase/{rank}", str(phases))
    if pid is not None:
        store.set(f"ditsim/proc/{rank}", f"{socket.gethostname()}:{pid}")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def test_hung_rank_does_not_blame_the_peer_that_gave_up_on_it(store) -> None:
    """Rank 0 hung; rank 1 timed out waiting for it, noted why and exited, closing its
    connections. Rank 0's line blamed rank 1 ("died, hung or timed out"); now it says rank 1
    gave up on it."""
    faults.phase("start-up")
    faults.phase("run 1")
    note = ("rank 1: receive from rank 0 of hidden (step 2, patch 0) failed: rank 0 is alive "
            "but sent nothing in time (hung or too slow) (nothing arrived within --timeout 3 s)")
    store.set("ditsim/failed/1", note)
    _as_rank(store, 1, 2, os.getpid())
    text = faults.blame([1], timed_out=False)
    assert text.startswith("rank 1 gave up waiting for this rank (rank 1: receive from rank 0")
    assert text.endswith("so rank 0 is the one that hung or was too slow")


def test_peer_that_failed_for_another_reason_is_quoted(store) -> None:
    faults.phase("start-up")
    store.set("ditsim/failed/1", "rank 1: RuntimeError: CUDA out of memory")
    assert faults.blame([0, 1], timed_out=True) == (
        "rank 1 failed first (rank 1: RuntimeError: CUDA out of memory)")


def test_peer_behind_and_gone_died(store) -> None:
    faults.phase("start-up")
    faults.phase("the barrier before run 1")
    _as_rank(store, 1, 1, _dead_pid())
    assert faults.blame([0, 1], timed_out=False) == "rank 1 died (its last phase: start-up)"


def test_peer_behind_and_alive_hung(store) -> None:
    faults.phase("start-up")
    faults.phase("the barrier before run 1")
    _as_rank(store, 1, 1, os.getpid())
    assert faults.blame([1], timed_out=True) == (
        "rank 1 is alive but hung or too slow (its last phase: start-up)")


def test_peer_that_never_started(store) -> None:
    faults.phase("start-up")
    assert faults.blame([1], timed_out=True) == "rank 1 died or hung (before its start-up)"


def test_no_notes_keep_the_old_words(monkeypatch) -> None:
    monkeypatch.setattr(faults, "_STATE", faults._State(rank=0, world=3, store=None))
    assert faults.blame([1], timed_out=True) == "rank 1 died, hung or timed out"
    assert faults.blame([0, 1, 2], timed_out=True) == "a peer died, hung or timed out"


def test_store_failures_are_ignored(monkeypatch) -> None:
    class Broken:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise RuntimeError("Connection refused")
            return fail

    monkeypatch.setattr(faults, "_STATE", faults._State(rank=0, world=2, store=Broken()))
    faults.phase("start-up")
    faults.gave_up("rank 0: x")
    assert faults.blame([1], timed_out=False) == "rank 1 died, hung or timed out"
