"""daemon.memory: the heap figures the soak reports and the trim the service runs."""

from pathlib import Path

import pytest

from daemon.memory import heap_status, trim_heap

CHUNK = 64 * 1024  # below glibc's mmap threshold: from the heap, where fragmentation happens


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
def fragmented_heap():
    """~60 MiB of freed 64 KiB holes between live chunks: malloc keeps them, RSS too."""
    if heap_status() is None:
        pytest.skip("needs glibc 2.33+ (mallinfo2)")
    chunks = [bytearray(CHUNK) for _ in range(2000)]  # bytearray(n) writes n zeros: resident
    del chunks[::2]
    yield chunks


def test_heap_status_tells_held_free_memory_from_memory_in_use(fragmented_heap):
    status = heap_status()
    assert status is not None
    live = len(fragmented_heap) * CHUNK / 2**20
    assert status.in_use_mib >= live * 0.95, status
    assert status.held_free_mib >= live * 0.9, status  # the holes: freed but held


def test_trim_gives_the_freed_holes_back_to_the_kernel(fragmented_heap):
    before = rss_mib()
    assert trim_heap()
    released = before - rss_mib()
    assert released >= 40, f"RSS went from {before:.0f} MiB down by only {released:.1f} MiB"
    assert len(fragmented_heap) == 1000  # the live chunks stay
