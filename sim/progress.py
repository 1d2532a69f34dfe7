"""Progress of long commands on stderr, shown only once a command has run for 2 s.

Every command that can take longer (``sim.plan``, ``sim.compare``, ``sim.predict``,
``sim.serve``, the reports, the profilers, ``python -m validation``) reports through one
``Progress``: counted work (``progress("simulating", 12, 40)``) is one updating line on a
terminal and a line per fifth of the work otherwise; a stage that is one blocking call
(``with progress.stage("simulating pixart on 8 GPUs"): ...``) gets one line if it is still
running after the delay, written by a timer thread while the main thread works. Nothing is
written before the command has run for ``DELAY_S`` (quick commands stay quiet), nothing goes
to stdout (``--json`` stays clean), and ``--quiet`` silences it all.

``announce_written`` is the one place a command says which files it wrote. Stdlib only.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TextIO


class Progress:
    """Progress lines on ``stream`` (default stderr) once ``DELAY_S`` seconds have passed
    since ``t0`` (default: now); ``quiet`` silences them. ``clock`` returns seconds (tests
    inject one)."""

    DELAY_S = 2.0

    def __init__(self, quiet: bool = False, t0: float | None = None,
                 stream: TextIO | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.clock = clock
        self.t0 = clock() if t0 is None else t0
        self.quiet = quiet
        self.stream = stream
        self.tty = self._out().isatty()
        self.shown = False  # a line is on screen that end() should clear (terminal)
        self.last_fifth = -1
        self.last_what = ""
        self._lock = threading.Lock()

    def _out(self) -> TextIO:
        # Looked up on each write, not bound once: tests redirect sys.stderr after import.
        return self.stream if self.stream is not None else sys.stderr

    def _due(self) -> bool:
        return not self.quiet and self.clock() - self.t0 >= self.DELAY_S

    def __call__(self, what: str, done: int, total: int) -> None:
        """``done`` of ``total`` units of ``what`` are finished."""
        if not self._due() or total <= 0:
            return
        with self._lock:
            out = self._out()
            if self.tty:
                out.write(f"\r{what} {done}/{total}    ")
                self.shown = True
            elif (what != self.last_what or done * 5 // total != self.last_fifth
                  or done == total):
                self.last_fifth = done * 5 // total
                self.last_what = what
                out.write(f"{what} {done}/{total}\n")
            out.flush()

    def line(self, text: str) -> None:
        """One line (a stage starting), if the delay has passed."""
        if not self._due():
            return
        self._write_line(text)

    def _write_line(self, text: str) -> None:
        with self._lock:
            self._emit(text)

    def _emit(self, text: str) -> None:  # the caller holds the lock
        out = self._out()
        if self.shown:  # replace the counted line on a terminal
            out.write("\r" + " " * 70 + "\r")
            self.shown = False
        out.write(text + "\n")
        out.flush()

    @contextlib.contextmanager
    def stage(self, what: str) -> Iterator[None]:
        """Say ``what...`` once the command has run ``DELAY_S`` seconds if the body is still
        running then (at once when that time has passed already)."""
        if self.quiet:
            yield
            return
        wait = self.DELAY_S - (self.clock() - self.t0)
        if wait <= 0:
            self._write_line(f"{what}...")
            yield
            return
        token = _TIMER.add(wait, lambda: self._write_line(f"{what}..."))
        try:
            yield
        finally:
            _TIMER.cancel(token)  # after its line, if that is being written

    def end(self) -> None:
        """Clear the updating line on a terminal."""
        with self._lock:
            if self.shown and self.tty:
                out = self._out()
                out.write("\r" + " " * 70 + "\r")
                out.flush()
            self.shown = False


class _Timer:
    """One daemon thread that says the stages still running at their time, for every
    ``Progress`` of the process. A thread per stage cost each ``sim.predict`` its start and
    join, each waiting for the OS to schedule the other thread (ms on a busy host); this one
    is started once, and woken only for a stage due before the one it waits for (the stages
    of one command share their time, ``t0 + DELAY_S``)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._due: dict[int, tuple[float, Callable[[], None]]] = {}  # token -> (when, say)
        self._tokens = 0
        self._until = math.inf  # when the thread wakes next (monotonic seconds)
        self._thread: threading.Thread | None = None

    def add(self, wait_s: float, say: Callable[[], None]) -> int:
        """Call ``say`` in ``wait_s`` seconds unless cancelled; returns the token."""
        with self._cond:
            self._tokens += 1
            at = time.monotonic() + wait_s
            self._due[self._tokens] = (at, say)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True)
                self._thread.start()
            elif at < self._until:
                self._cond.notify()
            return self._tokens

    def cancel(self, token: int) -> None:
        """Forget ``token``: its ``say`` has run, or never will."""
        with self._cond:
            self._due.pop(token, None)

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for token, (at, say) in list(self._due.items()):
                    if at <= now:
                        del self._due[token]
                        with contextlib.suppress(OSError, ValueError):  # a closed stream
                            say()
                self._until = min((at for at, _ in self._due.values()), default=math.inf)
                self._cond.wait(None if self._until == math.inf else self._until - now)


_TIMER = _Timer()
# A forked child has no timer thread (and maybe a lock held by one): it starts its own.
os.register_at_fork(after_in_child=_TIMER.__init__)

QUIET = Progress(quiet=True)  # for library callers (the Python API) that want no output


def announce_written(paths: list[tuple[str, str]], stream: TextIO | None = None) -> None:
    """One line per file a command wrote, ``wrote PATH (FLAG)``, on stderr."""
    out = stream if stream is not None else sys.stderr
    for flag, path in paths:
        out.write(f"wrote {path} ({flag})\n")
    out.flush()
