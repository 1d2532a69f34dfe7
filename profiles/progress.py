"""The profilers' progress bar on stderr: tqdm when it is installed and wanted, else a bar
that shows nothing (tqdm is optional)."""

from __future__ import annotations

import sys
from typing import Protocol


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


def progress_bar(total: int, desc: str, enabled: bool, unit: str) -> Bar:
    """A bar of ``total`` steps of ``unit`` on stderr, or ``NoBar`` when not ``enabled`` or
    tqdm is missing."""
    if not enabled:
        return NoBar()
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: no bar rather than a failure
        return NoBar()
    return tqdm(total=total, desc=desc, file=sys.stderr, unit=unit, leave=True)
