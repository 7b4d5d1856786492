"""Motion stage: landmarks → what the face is doing, relative to the user's neutral face.

Per frame: head rotation (yaw, pitch, roll) and movement from a rigid fit of stable
landmarks against the neutral; pose-free expression (landmark offsets in the head's own
frame); per-eye openness, gaze and mouth. One-Euro filters keep a still face still without
delaying a blink. A small state machine covers the face being lost: hold, then ease into an
idle animation, then ease back in — the camera frame itself never takes part.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np

from engines.facegeom import (
    RIGID,
    absolute_angles,
    close_mouth,
    eye_distance,
    eye_openness,
    eye_openness_each,
    fit_pose,
    gaze_each,
    gaze_vertical,
    mouth_opening,
    mouth_width,
    rotation_to_angles,
)
from engines.landmarks.interface import Landmarks
from engines.motion.config import CalibrationConfig, MotionConfig, SmoothingConfig

log = logging.getLogger(__name__)

TrackState = Literal["tracked", "lost", "idle"]


# ---------------------------------------------------------------- the motion description


@dataclass(frozen=True, slots=True)
class Motion:
    """What the driver's face does relative to its neutral; all zeros/ones = the neutral.

    Angles in degrees (see facegeom.rotation_to_angles); `shift` and `expression` in units of
    the neutral's eye distance, so they transfer to any avatar by its own eye distance.
    """

    state: TrackState = "idle"
    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # head movement in the image plane (x, y)
    scale: float = 1.0  # head size relative to the neutral (closer > 1)
    expression: np.ndarray | None = None  # (478, 3) offsets in the head's frame; None = none
    eye_open: tuple[float, float] = (1.0, 1.0)  # (right, left): 1 = as open as the neutral
    # what an open eye has lately read, on eye_open's scale: over 1 where the neutral caught
    # the eyes narrowed (a squint, a grin). A blink is read against it, not the neutral.
    eye_open_level: tuple[float, float] = (1.0, 1.0)
    gaze: tuple[float, float] = (0.0, 0.0)  # iris offset from the neutral's, in eye widths
    mouth_open: float = 0.0  # inner-lip gap per eye distance, added to the neutral's
    mouth_width: float = 0.0  # mouth width per eye distance, added to the neutral's
    # How much of the avatar's own resting mouth gap stays (1: the avatar as it is, lips
    # parted if its lips part; 0: the driver's mouth alone, counted from shut). Idle keeps
    # it; a tracked face eases it away, so a face found never snaps the avatar's lips shut.
    mouth_own: float = 1.0

    def blend(self, other: Motion, weight: float) -> Motion:
        """(1 − weight) · self + weight · other, channel by channel; the state is other's."""
        w = float(np.clip(weight, 0.0, 1.0))

        def mix(a, b):
            return tuple(x + w * (y - x) for x, y in zip(a, b, strict=True))

        if self.expression is None and other.expression is None:
            expression = None
        else:
            a = self.expression if self.expression is not None else 0.0
            b = other.expression if other.expression is not None else 0.0
            expression = (a + w * (b - a)).astype(np.float32)
        return Motion(
            state=other.state,
            yaw=self.yaw + w * (other.yaw - self.yaw),
            pitch=self.pitch + w * (other.pitch - self.pitch),
            roll=self.roll + w * (other.roll - self.roll),
            shift=mix(self.shift, other.shift),
            scale=self.scale + w * (other.scale - self.scale),
            expression=expression,
            eye_open=mix(self.eye_open, other.eye_open),
            eye_open_level=mix(self.eye_open_level, other.eye_open_level),
            gaze=mix(self.gaze, other.gaze),
            mouth_open=self.mouth_open + w * (other.mouth_open - self.mouth_open),
            mouth_width=self.mouth_width + w * (other.mouth_width - self.mouth_width),
            mouth_own=self.mouth_own + w * (other.mouth_own - self.mouth_own),
        )


# ---------------------------------------------------------------- smoothing


class OneEuroFilter:
    """The One-Euro filter (Casiez et al. 2012) on arrays: per element, or per point when
    given (N, D) points (one cutoff per point from its speed, so x/y/z move together)."""

    def __init__(self, min_cutoff_hz: float, beta: float, d_cutoff_hz: float):
        self.min_cutoff_hz, self.beta, self.d_cutoff_hz = min_cutoff_hz, beta, d_cutoff_hz
        self._x: np.ndarray | None = None
        self._dx: np.ndarray | None = None
        self._t: float | None = None

    @classmethod
    def from_config(
        cls, config: SmoothingConfig, beta_scale: float = 1.0, d_cutoff_scale: float = 1.0
    ) -> OneEuroFilter:
        return cls(
            config.min_cutoff_hz, config.beta * beta_scale, config.d_cutoff_hz * d_cutoff_scale
        )

    @staticmethod
    def _alpha(cutoff_hz: np.ndarray | float, dt: float) -> np.ndarray | float:
        tau = 1.0 / (2.0 * np.pi * cutoff_hz)
        return 1.0 / (1.0 + tau / dt)

    def reset(self) -> None:
        self._x = self._dx = self._t = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._x is None or self._t is None or t <= self._t:
            if self._x is None or self._t is None:
                self._x, self._dx, self._t = x.copy(), np.zeros_like(x), t
            return self._x.copy()
        dt = t - self._t
        dx = (x - self._x) / dt
        self._dx = self._dx + self._alpha(self.d_cutoff_hz, dt) * (dx - self._dx)
        speed = (
            np.linalg.norm(self._dx, axis=-1, keepdims=True) if x.ndim == 2 else np.abs(self._dx)
        )
        alpha = self._alpha(self.min_cutoff_hz + self.beta * speed, dt)
        self._x = self._x + alpha * (x - self._x)
        self._t = t
        return self._x.copy()


# ---------------------------------------------------------------- the neutral face


@dataclass(frozen=True, slots=True)
class Neutral:
    """The user's neutral face and the signals measured on it."""

    points: np.ndarray  # (478, 3)
    eye_distance: float
    eye_open: tuple[float, float]
    gaze: tuple[float, float]  # (horizontal position, vertical offset)
    mouth_open: float
    mouth_width: float
    camera_angles: tuple[float, float, float]  # rough pose relative to the camera

    @classmethod
    def from_points(cls, points: np.ndarray) -> Neutral:
        """The face as it is is the reference of shape (a neutral caught mid-word keeps its
        lips where they were: an avatar with parted lips, driven by its own face, then stays
        exactly itself), but the mouth signal counts from the mouth shut (relative to a
        mouth caught open, every later opening would read as a negative one)."""
        points = np.asarray(points, np.float64)
        return cls(
            points=points,
            eye_distance=eye_distance(points),
            eye_open=eye_openness_each(points),
            gaze=(float(np.mean(gaze_each(points))), gaze_vertical(points)),
            mouth_open=mouth_opening(close_mouth(points)),
            mouth_width=mouth_width(points),
            camera_angles=absolute_angles(points),
        )


@dataclass
class NeutralSearch:
    """Finds the neutral automatically: a stretch of `stable_frames` frames that is still,
    frontal, eyes open and mouth closed; the best one in the first `window_s` seconds wins,
    later ones refine the resting face shape (never the pose reference)."""

    config: CalibrationConfig
    _recent: deque = field(default_factory=deque)
    _openness: deque = field(default_factory=lambda: deque(maxlen=300))
    _t_first: float | None = None
    best_score: float = math.inf

    # A candidate must be at least this frontal, still and closed-mouthed (a talking person
    # is rarely perfectly still); within that, the score prefers the best.
    MAX_YAW_DEG = 20.0
    MAX_ROLL_DEG = 15.0
    MAX_MOUTH = 0.08
    MAX_MOTION = 0.05  # mean landmark movement per frame, eye distances
    MIN_EYES = 0.75  # of the 90th percentile of the openness seen so far
    MIN_IMPROVEMENT = 0.25  # a new neutral must score this much better (no churn on noise)
    _found: bool = False

    def observe(self, points: np.ndarray, t: float) -> tuple[np.ndarray, bool] | None:
        """Feed one tracked frame; returns (neutral points, is_initial) when it found a
        better neutral (is_initial) or a refinement of the resting shape. The search goes on
        past `window_s` until a first neutral is found."""
        if self._t_first is None:
            self._t_first = t
        self._recent.append(points)
        while len(self._recent) > self.config.stable_frames:
            self._recent.popleft()
        self._openness.append(eye_openness(points))
        if len(self._recent) < self.config.stable_frames:
            return None
        score = self._score(np.stack(self._recent))
        if score is None:
            return None
        candidate = np.mean(np.stack(self._recent), axis=0)
        searching = t - self._t_first <= self.config.window_s or not self._found
        if searching and score < self.best_score - self.MIN_IMPROVEMENT:
            self.best_score, self._found = score, True
            return candidate, True
        if not searching and self.config.refine and score < 1.5 * self.best_score + 0.5:
            return candidate, False
        return None

    def _score(self, window: np.ndarray) -> float | None:
        """Lower is a better neutral; None when the stretch does not qualify at all."""
        unit = eye_distance(window[-1])
        motion = float(np.mean(np.linalg.norm(np.diff(window[:, :, :2], axis=0), axis=-1))) / unit
        yaw, _, roll = absolute_angles(window[-1])
        mouth = max(mouth_opening(p) for p in window)
        eyes = min(eye_openness(p) for p in window) / float(np.percentile(self._openness, 90))
        if (
            motion > self.MAX_MOTION
            or abs(yaw) > self.MAX_YAW_DEG
            or abs(roll) > self.MAX_ROLL_DEG
            or mouth > self.MAX_MOUTH
            or eyes < self.MIN_EYES
        ):
            return None
        return (
            abs(yaw) / 10
            + abs(roll) / 10
            + mouth / 0.05
            + 2.0 * max(0.0, 1.0 - eyes)
            + motion / 0.02
        )


@dataclass
class OpenEyes:
    """How open the driver's eyes have lately been when open: what a blink is read against
    where the neutral caught them narrowed (a squint, a grin, a neutral taken as they
    closed). Against such a neutral an open eye reads wide and a blink as no less open than
    the neutral, so no blink would ever show."""

    WINDOW_S = 3.0
    SHARE = 0.9  # of the window's 90th percentile: an eye this open counts as fully open

    _samples: deque = field(default_factory=deque)

    def observe(self, t: float, openness: tuple[float, float]) -> None:
        self._samples.append((t, openness))
        while self._samples and self._samples[0][0] < t - self.WINDOW_S:
            self._samples.popleft()

    def reference(self, neutral: tuple[float, float]) -> tuple[float, float]:
        """Per eye, the larger of the neutral's openness and the recent open level."""
        if not self._samples:
            return neutral
        recent = np.percentile(np.array([o for _, o in self._samples]), 90, axis=0)
        return tuple(max(n, self.SHARE * float(r)) for n, r in zip(neutral, recent, strict=True))

    def reset(self) -> None:
        self._samples.clear()


# ---------------------------------------------------------------- the estimator


class MotionEstimator:
    """Landmarks (or None: no face) → Motion, with calibration, smoothing and the face-lost
    state machine. Time `t` is the driver frame's capture time in seconds."""

    REFINE_RATE = 0.05  # share of a refining candidate blended into the resting shape
    REFINE_INTERVAL_S = 1.0  # at most this often
    # The head's filter reads its speed over a longer window than the expression's (1 Hz, not
    # 5 Hz): the tracker's frame-to-frame noise then barely opens the filter, and a still head
    # stays still (yaw steps under 0.25°), while a real turn still does, with the full beta.
    # The 0.25 beta before lagged the driver enough that a plain 2D similarity placed the face
    # better on head turns and grins (self-reenactment AKD 0.034 vs 0.033; now 0.032).
    POSE_BETA_SCALE = 1.0
    POSE_D_CUTOFF_SCALE = 0.2

    def __init__(self, config: MotionConfig, seed: int = 0):
        self.config = config
        self.neutral: Neutral | None = None
        self.state: TrackState = "idle"
        self._search = NeutralSearch(config.calibration)
        self._calibrate_requested = False
        self._t_refined = -math.inf
        self._pose_filter = OneEuroFilter.from_config(
            config.smoothing, self.POSE_BETA_SCALE, self.POSE_D_CUTOFF_SCALE
        )
        self._shape_filter = OneEuroFilter.from_config(config.smoothing)
        self._open_eyes = OpenEyes()
        self._last_output = Motion()
        self._last_tracked = Motion()
        self._t_lost = 0.0
        self._t_idle = 0.0
        self._idle_from = Motion()
        self._t_resume: float | None = None
        self._resume_from = Motion()
        self._idle = IdleAnimation(seed) if config.idle_animation else None

    def reconfigure(self, config: MotionConfig) -> None:
        """New gains, limits, smoothing and timings, applied from the next frame; the neutral
        and the tracking state are kept."""
        self.config = config
        self._search.config = config.calibration
        self._pose_filter = OneEuroFilter.from_config(
            config.smoothing, self.POSE_BETA_SCALE, self.POSE_D_CUTOFF_SCALE
        )
        self._shape_filter = OneEuroFilter.from_config(config.smoothing)
        self._idle = self._idle or IdleAnimation() if config.idle_animation else None

    # ------------------------------------------------------------ calibration

    def calibrate(self) -> None:
        """Make the next tracked frame the neutral (the user asked for it)."""
        self._calibrate_requested = True

    def set_neutral(self, points: np.ndarray, explicit: bool = False) -> None:
        """Use `points` as the neutral; an explicit one is never replaced by the automatic
        search (only its resting shape may still be refined)."""
        self.neutral = Neutral.from_points(points)
        if explicit:
            self._search.best_score = -math.inf
        self._pose_filter.reset()
        self._shape_filter.reset()
        self._open_eyes.reset()

    def _update_neutral(self, landmarks: Landmarks) -> None:
        points = landmarks.points.astype(np.float64)
        if self._calibrate_requested:
            self._calibrate_requested = False
            self.set_neutral(points, explicit=True)
            log.info("neutral face calibrated (requested) at frame %d", landmarks.index)
            return
        if self.neutral is None:
            self.set_neutral(points)  # provisional until a good neutral is found
        if not self.config.calibration.auto:
            return
        found = self._search.observe(points, landmarks.t_capture)
        if found is None:
            return
        candidate, initial = found
        if initial:
            self.set_neutral(candidate)
            self._t_resume, self._resume_from = landmarks.t_capture, self._last_output
            log.debug("neutral face found at frame %d", landmarks.index)
        elif landmarks.t_capture - self._t_refined >= self.REFINE_INTERVAL_S:
            self._t_refined = landmarks.t_capture
            self._refine_shape(candidate)

    def _refine_shape(self, candidate: np.ndarray) -> None:
        """Blend a resting-face candidate into the neutral's shape, aligned to the neutral's
        pose first, so the pose reference does not drift."""
        assert self.neutral is not None
        aligned = fit_pose(self.neutral.points, candidate).invert(candidate)
        points = self.neutral.points + self.REFINE_RATE * (aligned - self.neutral.points)
        points[RIGID] = self.neutral.points[RIGID]  # the pose reference stays exactly put
        self.neutral = Neutral.from_points(points)

    # ------------------------------------------------------------ per frame

    def update(self, landmarks: Landmarks | None, t: float) -> Motion:
        motion = self._tracked(landmarks, t) if landmarks is not None else self._untracked(t)
        self._last_output = motion
        return motion

    def _tracked(self, landmarks: Landmarks, t: float) -> Motion:
        self._update_neutral(landmarks)
        if self.state == "idle" or (
            self.state == "lost" and t - self._t_lost >= self.config.lost_grace_s
        ):
            self._t_resume, self._resume_from = t, self._last_output
            self._pose_filter.reset()
            self._shape_filter.reset()
        if self.state != "tracked":
            log.info("face %s", "found" if self.state == "idle" else "back")
        self.state = "tracked"
        motion = self.measure(landmarks, t)
        self._last_tracked = motion
        if self._t_resume is not None:
            weight = _ease((t - self._t_resume) / max(self.config.resume_ease_s, 1e-6))
            if weight >= 1.0:
                self._t_resume = None
            else:  # the lids are the driver's at once: a blink in the ease still shows
                eased = self._resume_from.blend(motion, weight)
                motion = replace(
                    eased, eye_open=motion.eye_open, eye_open_level=motion.eye_open_level
                )
        return motion

    def _untracked(self, t: float) -> Motion:
        if self.state == "tracked":
            self.state, self._t_lost = "lost", t
            log.info("face lost: holding the last pose for %.1f s", self.config.lost_grace_s)
        if self.state == "lost":
            if t - self._t_lost < self.config.lost_grace_s:
                return replace(self._last_tracked, state="lost")
            self.state, self._t_idle, self._idle_from = "idle", t, self._last_output
            log.info("no face: the avatar idles")
            self._t_resume = None
        target = self._idle.motion(t) if self._idle is not None else Motion()
        weight = _ease((t - self._t_idle) / max(self.config.idle_ease_s, 1e-6))
        return self._idle_from.blend(target, weight)

    def measure(self, landmarks: Landmarks, t: float) -> Motion:
        """The smoothed motion of one tracked frame relative to the neutral."""
        neutral = self.neutral
        assert neutral is not None
        points = landmarks.points.astype(np.float64)
        fit = fit_pose(neutral.points, points)
        yaw, pitch, roll = rotation_to_angles(fit.rotation)
        if not self.config.relative:
            cam_yaw, _, cam_roll = neutral.camera_angles
            yaw, roll = yaw + cam_yaw, roll + cam_roll
        center_now = points[RIGID, :2].mean(0)
        center_neutral = neutral.points[RIGID, :2].mean(0)
        shift = (center_now - center_neutral) / neutral.eye_distance
        # filtered in comparable units (radians ≈ eye distances moved), so one beta fits all
        pose = self._pose_filter(np.array([*np.radians([yaw, pitch, roll]), *shift, fit.scale]), t)
        pose[:3] = np.degrees(pose[:3])
        local = fit.invert(points)
        shape = self._shape_filter((local - neutral.points) / neutral.eye_distance, t)
        return self._apply_gains(pose, shape, neutral, t, eye_openness_each(local))

    def _apply_gains(
        self,
        pose: np.ndarray,
        shape: np.ndarray,
        neutral: Neutral,
        t: float,
        openness: tuple[float, float],
    ) -> Motion:
        """`openness`: the eyes' as measured, unsmoothed: the shape's filter reads a lid's
        first frame down as noise (a one-frame blink at 25 fps came through at a tenth of
        its depth, two frames late), and the lids' hysteresis downstream keeps them steady."""
        gains, limits = self.config.gains, self.config.limits
        local = neutral.points + shape * neutral.eye_distance
        self._open_eyes.observe(t, openness)
        reference = self._open_eyes.reference(neutral.eye_open)
        eyes = tuple(o / max(n, 1e-6) for o, n in zip(openness, neutral.eye_open, strict=True))
        levels = tuple(r / max(n, 1e-6) for r, n in zip(reference, neutral.eye_open, strict=True))
        gaze = (
            float(np.mean(gaze_each(local))) - neutral.gaze[0],
            gaze_vertical(local) - neutral.gaze[1],
        )
        yaw, pitch, roll, shift_x, shift_y, scale = pose
        return Motion(
            state="tracked",
            yaw=float(np.clip(yaw * gains.pose, -limits.yaw_deg, limits.yaw_deg)),
            pitch=float(np.clip(pitch * gains.pose, -limits.pitch_deg, limits.pitch_deg)),
            roll=float(np.clip(roll * gains.pose, -limits.roll_deg, limits.roll_deg)),
            shift=(float(shift_x * gains.pose), float(shift_y * gains.pose)),
            scale=float(1.0 + (scale - 1.0) * gains.pose),
            expression=(shape * gains.expression).astype(np.float32),
            eye_open=tuple(float(1.0 - gains.eyes * (1.0 - e)) for e in eyes),
            eye_open_level=tuple(float(1.0 - gains.eyes * (1.0 - v)) for v in levels),
            gaze=(float(gaze[0] * gains.eyes), float(gaze[1] * gains.eyes)),
            mouth_open=float((mouth_opening(local) - neutral.mouth_open) * gains.mouth),
            mouth_width=float((mouth_width(local) - neutral.mouth_width) * gains.mouth),
            mouth_own=0.0,
        )


def _ease(x: float) -> float:
    """Smoothstep: 0 → 1 with zero slope at both ends (no visible jerk)."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


class IdleAnimation:
    """What the avatar does while no face is seen: breathing and an occasional blink."""

    BREATH_PERIOD_S = 4.5
    BLINK_S = 0.18

    def __init__(self, seed: int = 0):
        self._rng = np.random.default_rng(seed)
        self._next_blink: float | None = None

    def motion(self, t: float) -> Motion:
        if self._next_blink is None or t > self._next_blink + self.BLINK_S * 4:
            self._next_blink = t + float(self._rng.uniform(2.5, 6.0))
        phase = 2.0 * np.pi * t / self.BREATH_PERIOD_S
        blink = (t - self._next_blink) / self.BLINK_S
        closed = max(0.0, 1.0 - abs(2.0 * blink - 1.0)) if 0.0 <= blink <= 1.0 else 0.0
        return Motion(
            state="idle",
            pitch=float(1.2 * np.sin(phase)),
            shift=(0.0, float(0.006 * np.sin(phase))),
            scale=float(1.0 + 0.004 * np.sin(phase)),
            eye_open=(1.0 - closed, 1.0 - closed),
        )
