"""Contact sheets of scripted motions on a photo, a painting and a cartoon: what a person
looks at before calling the generator better (`make eval`).

    python -m thc_tools.poses --data ../shared/data --out reports   → reports/poses.png

One row per avatar; columns: at rest, nod down and up (pitch ±20°), turn (yaw ±30°), tilt
(roll ±25°), each about the neck as a person turns, a lean towards the camera with a slide
sideways, a wide-open mouth, a smile and a broad one, a blink, a wink, a frown, a look down (the
gaze lowered, the head a little).
Each tile is the generator's own output at the avatar's own size, scaled to one height.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from daemon.config import Config
from engines.facegeom import (
    LIPS_LOWER_INNER,
    LIPS_LOWER_OUTER,
    LIPS_UPPER_INNER,
    LIPS_UPPER_OUTER,
    MOUTH_LEFT,
    MOUTH_RIGHT,
    angles_to_rotation,
)
from engines.generator.avatar_prep import prepare_avatar
from engines.generator.config import MeshGeneratorConfig
from engines.generator.mesh_cpu import NECK, MeshGenerator
from engines.motion.estimator import Motion
from thc_tools.evaluate import report_parser, run_report

AVATARS = ("photo_woman_bun.png", "photo_woman_a.png", "painting_1.png", "anime_3.png")
TILE_HEIGHT = 240
# FaceMesh's brows (lower edge), each from its outer end to its inner end: subject's right, left
RIGHT_BROW = [46, 53, 52, 65, 55]
LEFT_BROW = [276, 283, 282, 295, 285]


def smile(strength: float) -> np.ndarray:
    """An expression that pulls the mouth corners out and up (eye distances)."""
    expression = np.zeros((478, 3), np.float32)
    expression[MOUTH_RIGHT] = (-strength, -strength, 0.0)
    expression[MOUTH_LEFT] = (strength, -strength, 0.0)
    return expression


def broad_smile(strength: float) -> np.ndarray:
    """A smile that takes the lips along: every lip point goes out and up as far as it lies
    towards a corner (the corners all the way, the middle not at all)."""
    expression = np.zeros((478, 3), np.float32)
    for contour in (LIPS_UPPER_OUTER, LIPS_LOWER_OUTER, LIPS_UPPER_INNER, LIPS_LOWER_INNER):
        side = np.linspace(-1.0, 1.0, len(contour))
        expression[contour, 0] = strength * side
        expression[contour, 1] = -strength * side**2
    return expression


def frown(strength: float) -> np.ndarray:
    """Brows drawn down and together, the inner ends most (eye distances)."""
    expression = np.zeros((478, 3), np.float32)
    for brow, inward in ((RIGHT_BROW, 1.0), (LEFT_BROW, -1.0)):
        towards_nose = np.linspace(0.0, 1.0, len(brow)) ** 1.5  # outer end → inner end
        expression[brow, 0] = inward * 0.5 * strength * towards_nose
        expression[brow, 1] = strength * towards_nose
    return expression


def about_the_neck(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> Motion:
    """A head turned as a person turns it, on the neck: the generator turns the head about
    the face's centre, so the face's centre moves by what turning about the neck adds (a
    driver's measured motion has that shift in it; a bare rotation would swing the skull
    about the nose)."""
    rotation = angles_to_rotation(yaw, pitch, roll)
    shift = -(NECK @ rotation.T - NECK)[:2]
    return Motion(yaw=yaw, pitch=pitch, roll=roll, shift=(float(shift[0]), float(shift[1])))


POSES: tuple[tuple[str, Motion], ...] = (
    ("rest", Motion()),
    ("nod down 20", about_the_neck(pitch=20.0)),  # positive pitch: the nose goes down
    ("nod up 20", about_the_neck(pitch=-20.0)),
    ("turn 30", about_the_neck(yaw=30.0)),
    ("turn -30", about_the_neck(yaw=-30.0)),
    ("roll 25", about_the_neck(roll=25.0)),
    ("lean + slide", Motion(scale=1.2, shift=(0.6, 0.1))),
    ("mouth wide", Motion(mouth_open=0.45)),
    ("smile", Motion(expression=smile(0.08), mouth_open=0.08)),
    ("broad smile", Motion(expression=broad_smile(0.12), mouth_open=0.15)),
    ("blink", Motion(eye_open=(0.0, 0.0))),
    ("wink", Motion(eye_open=(1.0, 0.0))),
    ("frown", Motion(expression=frown(0.08))),
    ("look down", replace(about_the_neck(pitch=8.0), gaze=(0.0, 0.25), eye_open=(0.75, 0.75))),
)


def render_poses(path: Path, cache: Path) -> list[np.ndarray]:
    avatar = prepare_avatar(str(path), cache)
    height, width = avatar.image.shape[:2]
    width, height = width - width % 2, height - height % 2
    tiles = []
    for label, motion in POSES:
        generator = MeshGenerator(MeshGeneratorConfig(), avatar, width, height)
        frame = generator.render(motion)
        scale = TILE_HEIGHT / frame.shape[0]
        tile = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 2)
        cv2.putText(tile, label, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1)
        tiles.append(tile)
    return tiles


def write_sheet(
    config: Config, data: Path, out_dir: Path, progress: Callable[[str], None] = print
) -> Path:
    del config  # the generator's defaults: the sheet shows the product as shipped
    started = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="poses-") as cache:
        for name in AVATARS:
            path = data / "avatars" / name
            if path.is_file():
                progress(f"{name}: {len(POSES)} poses")
                rows.append(np.hstack(render_poses(path, Path(cache))))
    width = max(row.shape[1] for row in rows)
    sheet = np.vstack([np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0))) for row in rows])
    out = out_dir / "poses.png"
    cv2.imwrite(str(out), sheet)
    progress(f"{len(rows)} avatars in {time.monotonic() - started:.0f} s")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = report_parser("python -m thc_tools.poses", __doc__.splitlines()[0]).parse_args(argv)
    return run_report("poses", args, lambda config, data: write_sheet(config, data, Path(args.out)))


if __name__ == "__main__":
    sys.exit(main())
