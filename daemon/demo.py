"""A built-in performance for `make demo`: talking, blinking, nodding, looking around —
motion the generator animates the avatar with, no camera needed."""

from __future__ import annotations

import math

from engines.motion.estimator import Motion

DEMO_SECONDS = 8.0
BLINKS_S = (0.9, 2.6, 4.1, 5.9, 7.3)
BLINK_LENGTH_S = 0.2


def _bump(t: float, start: float, end: float) -> float:
    """0 outside [start, end], rising smoothly to 1 in the middle."""
    if not start < t < end:
        return 0.0
    return math.sin(math.pi * (t - start) / (end - start)) ** 2


def scripted_motion(t: float) -> Motion:
    """The demo's motion at time t (seconds): talk throughout, nod at 1.5–3.5 s, look
    around at 3.5–7.5 s, blink now and then."""
    syllables = max(0.0, math.sin(2 * math.pi * 3.3 * t)) * (0.6 + 0.4 * math.sin(1.7 * t))
    phrase = _bump(t % 2.8, 0.1, 2.5)
    nod = _bump(t, 1.5, 3.5) * 9.0 * math.sin(2 * math.pi * 1.0 * (t - 1.5))
    look = _bump(t, 3.5, 7.5) * math.sin(2 * math.pi * 0.25 * (t - 3.5))
    closed = max((_bump(t, b, b + BLINK_LENGTH_S) for b in BLINKS_S), default=0.0)
    return Motion(
        state="tracked",
        yaw=22.0 * look,
        pitch=nod + 2.0 * math.sin(2 * math.pi * 0.2 * t),
        roll=4.0 * look,
        eye_open=(1.0 - 0.85 * closed, 1.0 - 0.85 * closed),
        gaze=(0.12 * look, 0.0),
        mouth_open=0.16 * syllables * phrase,
    )
