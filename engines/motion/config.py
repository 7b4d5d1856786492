"""The motion stage's config (`motion:`): gains, limits, smoothing, calibration, idling."""

from __future__ import annotations

from pydantic import Field

from engines.section import Section


class GainsConfig(Section):
    """How strongly each channel of the driver's motion moves the avatar (1 = as measured)."""

    pose: float = Field(1.0, ge=0, le=3, description="head rotation and movement")
    expression: float = Field(1.0, ge=0, le=3, description="face shape changes (brows, cheeks)")
    eyes: float = Field(1.0, ge=0, le=3, description="blinks and gaze")
    mouth: float = Field(1.0, ge=0, le=3, description="mouth opening and width")


class LimitsConfig(Section):
    """Largest head rotation passed on to the avatar, degrees either way."""

    yaw_deg: float = Field(35.0, ge=0, le=90, description="turning left/right")
    pitch_deg: float = Field(25.0, ge=0, le=90, description="nodding up/down")
    roll_deg: float = Field(30.0, ge=0, le=90, description="tilting sideways")


class SmoothingConfig(Section):
    """One-Euro filters: still when still, fast when fast (a blink stays one blink)."""

    min_cutoff_hz: float = Field(
        1.0, gt=0, le=30, description="cutoff when still: lower = steadier, more lag"
    )
    beta: float = Field(
        20.0, ge=0, le=1000, description="how fast the cutoff rises with speed: higher = less lag"
    )
    d_cutoff_hz: float = Field(5.0, gt=0, le=30, description="cutoff of the speed estimate")


class CalibrationConfig(Section):
    """How the user's neutral face (the reference of all motion) is found."""

    auto: bool = Field(
        True, description="find a stable, eyes-open, mouth-closed, frontal moment by itself"
    )
    window_s: float = Field(
        3.0, ge=0, le=60, description="the first seconds searched for the best neutral"
    )
    stable_frames: int = Field(
        4, ge=2, le=120, description="frames a candidate neutral must hold (nearly) still"
    )
    refine: bool = Field(
        True, description="keep refining the resting face shape while running (not the pose)"
    )


class MotionConfig(Section):
    """From landmarks to head pose and expression, relative to the user's neutral face."""

    relative: bool = Field(
        True, description="pose relative to how you normally sit (false: relative to the camera)"
    )
    gains: GainsConfig = Field(default_factory=GainsConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    smoothing: SmoothingConfig = Field(default_factory=SmoothingConfig)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    lost_grace_s: float = Field(
        0.5, ge=0, le=10, description="face lost: hold the last motion this long, s"
    )
    idle_ease_s: float = Field(
        1.0, ge=0, le=10, description="then ease to the neutral pose over this long, s"
    )
    resume_ease_s: float = Field(
        0.3, ge=0, le=5, description="face found again: ease back in over this long, s"
    )
    idle_animation: bool = Field(
        True, description="while idle: gentle breathing and occasional blinks"
    )
