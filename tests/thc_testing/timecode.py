"""Remote-mode time codes for the round-trip benchmark (tests/bench_webrtc.py): a 24-bit code
drawn as black/white blocks in the bottom strip of a camera frame, copied by the daemon's test
support into the avatar frame made from it."""

from __future__ import annotations

import numpy as np

# With the test support on (thc_testing.plugin) a remote session copies a 24-bit time code from the
# bottom strip of each camera frame (black/white blocks drawn by the benchmark page) into
# the bottom strip of the avatar frame made from it, so the page can measure the round trip
# camera frame → avatar frame. Never on in normal use.
TIMECODE_BITS = 24
TIMECODE_STRIP = 1 / 12  # share of the frame height at the bottom


def read_timecode(image: np.ndarray) -> int:
    height, width = image.shape[:2]
    row = height - max(1, round(height * TIMECODE_STRIP)) // 2 - 1
    block = width / TIMECODE_BITS
    gray = image[row].mean(axis=-1)
    code = 0
    for bit in range(TIMECODE_BITS):
        if gray[int(bit * block + block / 2)] >= 128:
            code |= 1 << bit
    return code


def stamp_timecode(image: np.ndarray, code: int) -> None:
    height, width = image.shape[:2]
    top = height - max(1, round(height * TIMECODE_STRIP))
    block = width / TIMECODE_BITS
    for bit in range(TIMECODE_BITS):
        value = 255 if code >> bit & 1 else 0
        image[top:, round(bit * block) : round((bit + 1) * block)] = value
