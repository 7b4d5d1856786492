"""The landmark stage's config (`tracking:`): one model per `type`, a tagged union."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from engines.section import Section


class MediaPipeTrackingConfig(Section):
    """Face landmarks with MediaPipe FaceMesh on the CPU (478 points, models in the package)."""

    type: Literal["mediapipe"] = Field(
        "mediapipe", description="mediapipe: FaceMesh with refined eyes, lips and irises"
    )
    max_faces: int = Field(
        3,
        ge=1,
        le=10,
        description="faces looked at; the one followed is the current track, "
        "else the largest, most central",
    )
    redetect_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="run the face detector again at least this often, s "
        "(0: only when the track is lost)",
    )
    min_detection_confidence: float = Field(0.5, ge=0, le=1, description="to find a face")
    min_tracking_confidence: float = Field(0.5, ge=0, le=1, description="to keep following it")


TrackingConfig = Annotated[MediaPipeTrackingConfig, Field(discriminator="type")]
