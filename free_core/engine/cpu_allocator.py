"""Keep freed CPU memory for reuse, in processes that are sampling engines (the `python -m free_core` CLI).

PyTorch's CPU tensors come from the C library's malloc. With glibc's defaults, freeing the activations of a
forward that is larger than the last one returns the top of the heap to the OS (its trim threshold follows the
largest block freed), so the next such forward faults its pages in again, zero-filled by the kernel. A speculative
round verifies K + 1 states in one forward and drafts in between, so its activations are several times a plain
step's and are given back every round: on the embedded DiT (250 steps, batch 1, K = 2, one thread, this project's
2-core CPU) that was about 900 page faults a round and 31 ms -> 37 ms a round, while the plain sampler's step
faulted none. Fixed trim and mmap thresholds keep the memory in the process; its resident size stays at its peak.

Process-wide, so only the CLI's entry point calls it: a host application (ComfyUI) keeps its own allocator
settings (on Linux the same effect comes from the environment: MALLOC_TRIM_THRESHOLD_=1073741824
MALLOC_MMAP_THRESHOLD_=33554432 before the process starts, or a caching malloc such as jemalloc).
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 1 << 30  # free memory kept at the top of the heap before any is given back
MMAP_THRESHOLD = 32 << 20  # blocks below this come from the heap (reused), not from mmap (new pages each time); glibc's maximum


_kept = False


def keep_freed_memory() -> bool:
    """Set glibc's malloc to keep freed memory for reuse; False (and nothing changed) with another C library."""
    global _kept
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc (musl's mallopt does nothing)
        return False
    _kept = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    return _kept


def keeps_freed_memory() -> bool:
    """Whether this process called `keep_freed_memory` with success (benchmarks say so next to their machine)."""
    return _kept
