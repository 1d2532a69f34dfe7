"""The profilers' progress bar on stderr: tqdm when it is installed and wanted, else the
commands' own progress lines (``sim.progress``: after 2 s, a line per fifth off a terminal),
so that a missing optional package never makes a long collection silent."""

from __future__ import annotations

import sys
from typing import Protocol

from sim.progress import Progress


class Bar(Protocol):
    """The part of tqdm's interface the profilers use."""

    def set_postfix_str(self, s: str) -> None: ...

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


class NoBar:
    """A bar that shows nothing."""

    def set_postfix_str(self, s: str) -> None: ...

    def update(self, n: int) -> None: ...

    def close(self) -> None: ...


class LineBar:
    """tqdm's interface over ``sim.progress.Progress`` (``total`` steps of ``unit``)."""

    def __init__(self, total: int, desc: str, unit: str) -> None:
        self.total, self.what, self.done = total, f"{desc}: {unit}s timed", 0
        self.progress = Progress()

    def set_postfix_str(self, s: str) -> None: ...

    def update(self, n: int) -> None:
        self.done += n
        self.progress(self.what, self.done, self.total)

    def close(self) -> None:
        self.progress.end()


def progress_bar(total: int, desc: str, enabled: bool, unit: str) -> Bar:
    """A bar of ``total`` steps of ``unit`` on stderr (tqdm's, else ``LineBar``), or
    ``NoBar`` when not ``enabled``."""
    if not enabled:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: the plain progress lines instead
        return LineBar(total, desc, unit)
    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=True)
