"""The process's heap: what glibc's malloc holds, and giving freed pages back.

Frames are large, short-lived NumPy/OpenCV buffers allocated from several threads; glibc keeps
freed chunks in its arenas, so a long-running daemon's RSS creeps up although nothing leaks
(`make soak` measures both). The service trims the heap now and then and after every reload,
which rebuilds the big objects (generator, landmark graph).
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@dataclass(frozen=True, slots=True)
class HeapStatus:
    """glibc malloc over all arenas, MiB: in use (a leak grows this) and freed but still
    held (fragmentation grows this)."""

    in_use_mib: float
    held_free_mib: float


def _libc() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(None)
    except OSError:
        return None


def heap_status() -> HeapStatus | None:
    """The heap's state, or None without glibc 2.33+ (mallinfo2)."""
    libc = _libc()
    mallinfo2 = getattr(libc, "mallinfo2", None)
    if mallinfo2 is None:
        return None
    mallinfo2.restype = _MallInfo2
    info = mallinfo2()
    return HeapStatus((info.uordblks + info.hblkhd) / 2**20, info.fordblks / 2**20)


def trim_heap() -> bool:
    """Give the heap's free pages back to the kernel (glibc malloc_trim(0), every arena).
    False where there is no glibc; never raises."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    try:
        trim(0)
    except OSError:
        return False
    return True
