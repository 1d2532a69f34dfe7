"""Peak memory of this process: the CUDA allocator's peak on GPU, the resident set on CPU.

On Linux the resident-set high-water mark (``VmHWM``) can be reset by writing ``5`` to
``/proc/self/clear_refs``, so the peak of the denoising loop can be told apart from the peak of
loading the model. Where that file is not writable the lifetime peak (``ru_maxrss``) is used.
"""

from __future__ import annotations

import re
import resource
import sys
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")


def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"^{field}:\s+(\d+)\s+kB", _STATUS.read_text(), re.MULTILINE)
    except OSError:
        return None
    return int(m.group(1)) if m else None


def rss_bytes() -> int:
    """Current resident set of this process, bytes (0 where /proc is missing)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else 0


class PeakMemory:
    """Peak-memory probe for one rank. ``reset()`` starts a new measurement window;
    ``peak_bytes()`` is the peak since then (or since process start where a reset is
    impossible, which ``window_reset`` then says)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.window_reset = False

    @property
    def kind(self) -> str:
        """What is measured: ``cuda_allocator`` or ``rss``."""
        return "cuda_allocator" if self.device.type == "cuda" else "rss"

    def reset(self) -> None:
        """Start the window: the allocator's peak statistics, or the RSS high-water mark."""
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.window_reset = True
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self.window_reset = True
        except OSError:
            self.window_reset = False

    def current_bytes(self) -> int:
        """Memory in use now, bytes."""
        if self.device.type == "cuda":
            return int(torch.cuda.memory_allocated(self.device))
        return rss_bytes()

    def peak_bytes(self) -> int:
        """Peak since the last ``reset()``, bytes."""
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        kib = _status_kib("VmHWM") if self.window_reset else None
        if kib is not None:
            return kib * 1024
        # ru_maxrss is KiB on Linux, bytes on macOS.
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024
