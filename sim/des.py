"""A minimal discrete-event loop with the part of simpy's interface the engine uses
(``Environment.now``, ``timeout``, ``event``, ``process``, ``run``; events with
``callbacks`` and ``succeed``), in the same order: events run by time, then priority (a
process starts before other events of its instant), then creation.

The engine runs every planner candidate and every prediction through it. simpy's loop is
general (conditions, interrupts, failures carried as event values, ``now`` a property); this
one does only what the engine needs, at about half the cost per event. The same schedule
gives the same event order, so the same trace: ``tests/test_des.py`` runs engine and network
on both loops. It also tells a process when it may move the clock itself instead of waiting
for a timeout (``Environment.idle_until``), which simpy cannot. Times in seconds.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from heapq import heappop, heappush
from itertools import count
from typing import Any

_URGENT, _NORMAL = 0, 1  # simpy's priorities: a process starts before its instant's events
_PENDING = object()  # the value of an event not triggered yet


class Event:
    """Something that happens once; ``callbacks`` run, in order, when the loop reaches it
    (``callbacks`` is None from then on)."""

    __slots__ = ("env", "callbacks", "value")

    def __init__(self, env: Environment) -> None:
        self.env = env
        self.callbacks: list[Callable[[Event], None]] | None = []
        self.value: Any = _PENDING

    def succeed(self, value: Any = None) -> Event:
        """Trigger the event now: its callbacks run after the events already due now."""
        if self.value is not _PENDING:
            raise RuntimeError("an event triggered twice")
        self.value = value
        env = self.env
        heappush(env._queue, (env.now, _NORMAL, next(env._eid), self))
        return self


_new_event = object.__new__


class Environment:
    """The clock (``now``, seconds) and the queue of events."""

    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, int, Event]] = []
        self._eid = count()
        # True while the callback running is its event's last one: nothing else runs
        # before the next event in the queue (see ``idle_until``).
        self.alone = False

    def event(self) -> Event:
        """A new event, triggered later by ``succeed``."""
        ev = _new_event(Event)
        ev.env, ev.callbacks, ev.value = self, [], _PENDING
        return ev

    def timeout(self, delay: float, value: Any = None) -> Event:
        """An event ``delay`` seconds from now."""
        if delay < 0:
            raise ValueError(f"negative delay {delay}")
        # ``Event(self)`` without its __init__ call: the engine asks for thousands.
        ev = _new_event(Event)
        ev.env, ev.callbacks, ev.value = self, [], value
        heappush(self._queue, (self.now + delay, _NORMAL, next(self._eid), ev))
        return ev

    def process(self, generator: Generator[Event, Any, Any]) -> None:
        """Run ``generator`` from now on: each event it yields suspends it until that event
        has happened (at once, if it already has), and resumes it with the event's value."""
        start = Event(self)
        start.value = None
        start.callbacks.append(_Process(generator).resume)  # type: ignore[union-attr]
        heappush(self._queue, (self.now, _URGENT, next(self._eid), start))

    def run(self) -> None:
        """Process events until none is left. An exception raised by a callback or a
        process propagates from here."""
        queue = self._queue
        while queue:
            self.now, _, _, event = heappop(queue)
            callbacks, event.callbacks = event.callbacks, None
            if len(callbacks) == 1:  # type: ignore[arg-type]
                self.alone = True
                callbacks[0](event)  # type: ignore[index]
                self.alone = False
            elif callbacks:
                for callback in callbacks[:-1]:  # type: ignore[index]
                    callback(event)
                self.alone = True
                callbacks[-1](event)  # type: ignore[index]
                self.alone = False

    def idle_until(self, when: float) -> bool:
        """Whether nothing can happen before ``when`` but what the running process does: it
        is the last callback of its event, and every queued event due by then has no
        callback. A process may then move the clock to ``when`` itself instead of yielding a
        timeout to it: the loop would run those events (doing nothing: they are taken off
        the queue here, as it would) and resume the process next, at that instant.

        An event without callbacks cannot gain one before its turn: only a process can add
        one, and none runs before it but this one, which is past it once it moves on."""
        if not self.alone:
            return False
        queue = self._queue
        while queue:
            head = queue[0]
            if head[0] > when:
                return True
            if head[3].callbacks:
                return False
            heappop(queue)[3].callbacks = None
        return True


class _Process:
    __slots__ = ("generator", "resume")

    def __init__(self, generator: Generator[Event, Any, Any]) -> None:
        self.generator = generator
        self.resume = self._resume

    def _resume(self, event: Event) -> None:
        send = self.generator.send
        while True:
            try:
                event = send(event.value)
            except StopIteration:
                self.resume = None  # its bound method referred back to it: freed at once
                return
            callbacks = event.callbacks
            if callbacks is not None:  # not happened yet: wait for it
                callbacks.append(self.resume)
                return


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cycle collector paused for the block (restored as it was after it). A
    simulation allocates tens of thousands of ops, events and rows, all alive until it
    ends: each automatic collection walks them again and finds nothing to free (a fifth of
    the run's time, measured on a Flux prediction). The few cycles it leaves (closures,
    generators) are freed by the next collection after it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
