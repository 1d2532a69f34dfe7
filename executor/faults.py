"""Who is to blame when a run fails: every rank notes in the launch's key-value store (the one
``init_process_group`` rendezvoused through) its process, the phase it has reached and, when it
gives up, why; a rank whose wait fails reads the others' notes to name the culprit.

Without them a failed wait says only what gloo says ("Connection closed by peer
[127.0.0.1]:3500", "Timed out waiting 5000ms"), and a hung rank, whose healthy peer gave up on
it and closed its connections, blamed that peer. With them:

- a peer that wrote why it gave up is quoted, so the rank it waited for reads that it is the
  one that hung (the peer is never blamed for leaving);
- a peer that is behind (never reached the phase) is named, and on the same host its process is
  checked: gone means it died, alive means it hung or is too slow.

Every store access is best effort: notes exist to improve an error line, and a failed one (the
store's host died) must not change how the run ends.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field

import torch.distributed as dist

_PREFIX = "ditsim/"


@dataclass
class _State:
    rank: int = -1
    world: int = 1
    store: object | None = None
    phases: int = 0  # phases this rank entered (every rank enters the same ones, in order)
    names: dict[int, str] = field(default_factory=dict)  # phase number -> its name


_STATE = _State()


def start(rank: int, world: int) -> None:
    """Note this rank's host and process (after the default process group exists)."""
    _STATE.rank, _STATE.world = rank, world
    try:
        _STATE.store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 - no store, no notes: the errors stay gloo's own
        _STATE.store = None
    _set(f"proc/{rank}", f"{socket.gethostname()}:{os.getpid()}")


def phase(name: str) -> None:
    """Note that this rank has reached phase ``name`` (start-up, a run's barrier, ...)."""
    _STATE.phases += 1
    _STATE.names[_STATE.phases] = name
    _set(f"phase/{_STATE.rank}", str(_STATE.phases))


def gave_up(message: str) -> None:
    """Note why this rank is ending the run (before it exits), for the peers' error lines."""
    if _STATE.rank >= 0:
        _set(f"failed/{_STATE.rank}", message)


def peer_note(peer: int) -> str | None:
    """What ``peer`` noted when it gave up, if it did."""
    return _get(f"failed/{peer}")


def blame(peers: tuple[int, ...] | list[int], timed_out: bool) -> str:
    """Why a wait on ``peers`` failed, in words naming the culprit: a peer that gave up (and
    why), else the peers behind this rank's phase, dead or alive; ``timed_out``: nothing
    arrived in time (otherwise a connection closed). Falls back to the old wording when no
    note says more."""
    peers = [p for p in peers if p != _STATE.rank]
    if _get(f"phase/{_STATE.rank}") is None:  # no store, or it is gone: the notes say nothing
        return _unknown(peers)
    for p in peers:
        note = peer_note(p)
        if note:
            mine = f"rank {_STATE.rank}"
            if _waited_for(note, _STATE.rank):
                return (f"rank {p} gave up waiting for this rank ({note}), so {mine} is the "
                        f"one that hung or was too slow")
            return f"rank {p} failed first ({note})"
    culprits = []
    for p in peers:
        reached = _get(f"phase/{p}")
        behind = reached is None or int(reached) < _STATE.phases
        last = _STATE.names.get(int(reached)) if reached else None
        where = f" (its last phase: {last})" if last else " (before its start-up)"
        state = _alive(p)
        if state is False:
            culprits.append(f"rank {p} died" + (where if behind else ""))
        elif behind:
            culprits.append(f"rank {p} " + ("is alive but hung or too slow" if state else
                                             "died or hung" if timed_out else "died") + where)
        elif state and timed_out:
            culprits.append(f"rank {p} is alive but sent nothing in time (hung or too slow)")
    return "; ".join(culprits) if culprits else _unknown(peers)


def _unknown(peers: list[int]) -> str:
    """The words when no note says more."""
    if len(peers) == 1:
        return f"rank {peers[0]} died, hung or timed out"
    return "a peer died, hung or timed out"


def _waited_for(note: str, rank: int) -> bool:
    """Whether a peer's note says it was waiting for ``rank``."""
    return (f"from rank {rank} " in note or f"to rank {rank} " in note
            or f"rank {rank} did not" in note or f"rank {rank} is alive" in note
            or f"rank {rank} died or hung" in note)


def current_phase() -> str:
    """The name of the phase this rank is in."""
    return _STATE.names.get(_STATE.phases, "start-up")


def _alive(peer: int) -> bool | None:
    """Whether ``peer``'s process exists (same host only; None when unknown)."""
    where = _get(f"proc/{peer}")
    if not where:
        return None
    host, _, pid = where.rpartition(":")
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return None
    try:  # a process that has exited but not been reaped by its parent yet is dead too
        with open(f"/proc/{int(pid)}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] not in ("Z", "X")
    except OSError:
        return True


def _set(key: str, value: str) -> None:
    if _STATE.store is None:
        return
    try:
        _STATE.store.set(_PREFIX + key, value)
    except Exception:  # noqa: BLE001 - best effort (the store's host may be gone)
        pass


def _get(key: str) -> str | None:
    if _STATE.store is None:
        return None
    try:
        if not _STATE.store.check([_PREFIX + key]):
            return None
        return _STATE.store.get(_PREFIX + key).decode()
    except Exception:  # noqa: BLE001 - best effort
        return None
