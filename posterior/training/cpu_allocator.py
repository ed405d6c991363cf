"""Keep freed CPU tensor memory in the process heap instead of handing it back to the OS.

A training iteration on the CPU allocates and frees the same large buffers every time (the
(N, B, d) trajectory, the (N * B, hidden) activations and their gradients: megabytes each).
With glibc's defaults, buffers above its mmap threshold (adaptive, at most 32 MiB) are mapped
afresh on every allocation and unmapped on free, and a heap top larger than the trim threshold
is returned to the OS, so each iteration touches its big buffers as new pages: one page fault
per 4 KiB. On the 2-core project machine that cost 11% of a TB iteration on Manywell-32 (medians
0.0487 -> 0.0431 s; BENCHMARKS.md, "Speed"). :func:`retain_freed_memory` raises both thresholds with
``mallopt`` so the heap keeps and reuses that memory: resident memory stays at the run's peak
(plus at most ``trim_threshold`` of free heap top) instead of shrinking between iterations.

It changes a process-wide setting of the C allocator, so it is opt-in: the recipes and
:func:`posterior.fit` call it on the CPU; a program using :class:`posterior.Trainer` directly
calls it once itself. It does nothing (and returns False) where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems (4 MiB * sizeof(long))
INT_MAX = 2**31 - 1


def retain_freed_memory(trim_threshold: int = 1 << 30) -> bool:
    """Serve allocations up to 32 MiB from the heap and keep up to ``trim_threshold`` bytes of
    freed heap top (glibc ``mallopt``). Larger allocations are still mapped separately.

    Args:
        trim_threshold: bytes of free memory at the top of the heap that are kept rather than
            returned to the OS, in [0, 2**31 - 1] (default 1 GiB).
    Returns:
        True if both settings took effect; False on a C library other than glibc.
    """
    if isinstance(trim_threshold, bool) or not isinstance(trim_threshold, int) or not 0 <= trim_threshold <= INT_MAX:
        raise ValueError(f"trim_threshold must be an int in [0, {INT_MAX}] (bytes), got {trim_threshold!r}")
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mmap_ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    trim_ok = libc.mallopt(M_TRIM_THRESHOLD, trim_threshold) == 1
    return mmap_ok and trim_ok
