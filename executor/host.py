"""Host-side settings shared by every process that times CPU ops: the executor's ranks and the
profiler. Both must run under the same allocator policy, or the profile and the run disagree
about page-fault costs that depend only on allocation history."""

from __future__ import annotations

import ctypes
import ctypes.util

# glibc mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # bytes; glibc's ceiling on 64-bit hosts
_KEEP = 2**31 - 1  # bytes: never give the top of the heap back on free


def _libc():
    """glibc, or None where the C library cannot be loaded or is not glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None
    return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc), so that the weights of the stages a rank
    dropped do not stay in its resident set and inflate the measured peak. Elsewhere nothing
    is trimmed and the peak just includes the slack."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


def steady_heap() -> bool:
    """Keep freed memory in the process (glibc): tensors up to 32 MiB come from the heap, not
    from fresh ``mmap`` regions, and a free never returns the heap's top to the OS. Without
    this, glibc's dynamic thresholds make a call's page-fault cost depend on which sizes were
    freed before it: the same block timed 10.6 ms in a profile and 11.8-12.7 ms per layer in a
    run on the 2-core EPYC VM. Returns False where the C library is not glibc (nothing set).
    An explicit ``malloc_trim`` still hands memory back."""
    libc = _libc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, _KEEP) == 1
    ok &= mallopt(_M_TOP_PAD, 64 * 1024 * 1024) == 1
    return bool(ok)
