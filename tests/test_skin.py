"""Skin that folds (issue 15): a smile raises the cheeks and deepens the nasolabial folds, a
frown draws lines between the brows, and skin_detail: driver carries the driver's own
expression wrinkles over as a band-passed luminance ratio, with nothing else of the driver."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from conftest import driver_view

from engines.facegeom import N_FACE, eye_distance
from engines.generator.avatar_prep import PreparedAvatar, prepare_avatar
from engines.generator.config import MeshGeneratorConfig
from engines.generator.interface import DriverView
from engines.generator.mesh_cpu import MeshGenerator
from engines.generator.skin import DriverDetail, SkinSpace, skin_mask
from engines.generator.warp import maps_from_ids, triangle_affines
from engines.motion.estimator import Motion

CHEEKS = ((50, 101, 118, 205), (280, 330, 347, 425))  # the malar area, right then left
NASOLABIAL = ((206,), (426,))  # on each fold's crease, between the nose wing and the corner


@pytest.fixture(scope="module")
def hopper(tmp_path_factory: pytest.TempPathFactory) -> PreparedAvatar:
    return prepare_avatar("default", tmp_path_factory.mktemp("avatar-cache"))


def own_size(avatar: PreparedAvatar) -> tuple[int, int]:
    height, width = avatar.image.shape[:2]
    return width - width % 2, height - height % 2


def smile(strength: float) -> np.ndarray:
    """The mouth corners out and up (eye distances), as thc_tools.poses scripts a smile."""
    expression = np.zeros((478, 3), np.float32)
    expression[61] = (-strength, -strength, 0.0)
    expression[291] = (strength, -strength, 0.0)
    return expression


def frown(strength: float) -> np.ndarray:
    """The inner brows down and together."""
    expression = np.zeros((478, 3), np.float32)
    expression[[55, 65, 107]] = (strength, strength, 0.0)
    expression[[285, 295, 336]] = (-strength, strength, 0.0)
    return expression


def grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(np.float32)


def patch_shift(before: np.ndarray, after: np.ndarray, centre: np.ndarray, half: int) -> np.ndarray:
    """How far (x, y pixels) the texture of a square patch moved between two frames."""
    x, y = np.round(centre).astype(int)
    window = cv2.createHanningWindow((2 * half, 2 * half), cv2.CV_32F)
    a = grey(before)[y - half : y + half, x - half : x + half]
    b = grey(after)[y - half : y + half, x - half : x + half]
    (dx, dy), _ = cv2.phaseCorrelate(a, b, window)
    return np.array([dx, dy])


def test_a_driver_smile_raises_the_avatars_cheek_texture(hopper):
    """The tracker's cheek landmarks barely move in a smile; the cheeks themselves bunch up
    towards the lower lids. The texture under each eye moves up by a clear amount, the nose
    stays."""
    size = own_size(hopper)
    generator = MeshGenerator(MeshGeneratorConfig(skin_detail="off"), hopper, *size)
    rest = generator.render(Motion())
    smiling = generator.render(Motion(expression=smile(0.08), mouth_open=0.05))
    unit = generator.unit
    half = round(0.1 * unit)
    for cheek in CHEEKS:
        _, dy = patch_shift(rest, smiling, generator.rest[list(cheek), :2].mean(0), half)
        assert dy < -0.025 * unit, f"cheek moved {dy / unit:+.3f} eye distances up/down"
    nose = patch_shift(rest, smiling, generator.rest[[5, 195], :2].mean(0), half)
    assert np.abs(nose).max() < 0.01 * unit, nose / unit


def test_a_smile_deepens_the_nasolabial_folds_and_a_frown_lines_the_glabella(hopper):
    """The same skin (followed through the mesh) is darker on each fold's crease in a smile
    than at rest, and between the brows in a frown; the forehead above is left alone."""
    size = own_size(hopper)
    generator = MeshGenerator(MeshGeneratorConfig(skin_detail="off"), hopper, *size)
    rest_points = generator.rest[:N_FACE, :2].copy()
    rest = grey(generator.render(Motion()))

    def luminance(image: np.ndarray, points: np.ndarray) -> float:
        xy = np.asarray(points, np.float32).reshape(1, -1, 2)
        blurred = cv2.blur(image, (3, 3))
        return float(cv2.remap(blurred, xy[..., 0], xy[..., 1], cv2.INTER_LINEAR).mean())

    smiling = grey(generator.render(Motion(expression=smile(0.08), mouth_open=0.05)))
    for crease in NASOLABIAL:
        ids = list(crease)
        ratio = luminance(smiling, generator.last_dest[ids, :2]) / luminance(rest, rest_points[ids])
        assert ratio < 0.95, f"the nasolabial crease only {1 - ratio:.1%} darker"
    frowning = grey(generator.render(Motion(expression=frown(0.04))))
    unit = generator.unit
    heads = rest_points[[55, 285]].mean(0)
    lines = np.array(
        [heads + np.array([dx, dy]) * unit for dx in (-0.06, 0.06) for dy in (-0.04, 0.0)]
    )
    assert luminance(frowning, lines) / luminance(rest, lines) < 0.95
    forehead = rest_points[[151, 108, 337]]
    assert abs(luminance(frowning, forehead) / luminance(rest, forehead) - 1.0) < 0.01


# ---------------------------------------------------------------- skin_detail: driver


@pytest.fixture(scope="module")
def driver_face(other_face) -> DriverView:
    """A real face (not the avatar's) with its landmarks, as the pipeline lends it."""
    return driver_view(other_face)


BROW_TOPS = [70, 63, 105, 66, 107, 336, 296, 334, 293, 300]  # right to left
CREASES = (0.05, 0.11)  # forehead creases this far above the brows (eye distances)


def with_forehead_lines(driver: DriverView) -> DriverView:
    """The driver with two dark creases drawn across its forehead, following its brows."""
    image = driver.image.copy()
    unit = eye_distance(driver.points)
    for above in CREASES:
        line = driver.points[BROW_TOPS, :2] - (0.0, above * unit)
        cv2.polylines(
            image, [np.round(line * 16).astype(np.int32)], False, (70, 80, 110), 2, cv2.LINE_AA, 4
        )
    return DriverView(image, driver.points)


TALKING = Motion(state="tracked", mouth_open=0.1)  # no neutral face: its skin is not learnt


def render_pair(avatar: PreparedAvatar, neutral: DriverView, driver: DriverView):
    """(skin_detail: driver, skin_detail: off) output for a few frames of `driver` after a
    neutral frame, and the last generator."""
    outputs = []
    for skin in ("driver", "off"):
        generator = MeshGenerator(MeshGeneratorConfig(skin_detail=skin), avatar, *own_size(avatar))
        generator.render(
            Motion(state="tracked", expression=np.zeros((478, 3), np.float32)), neutral
        )
        for _ in range(5):  # the detail is updated on every other frame and eased in
            out = generator.render(TALKING, driver)
        outputs.append(out)
    return outputs[0], outputs[1], generator


def test_driver_wrinkles_darken_the_avatar_along_them_and_nothing_else(hopper, driver_face):
    creased = with_forehead_lines(driver_face)
    detailed, plain, generator = render_pair(hopper, driver_face, creased)
    unit = generator.unit
    dest = generator.last_dest
    band = np.zeros(plain.shape[:2], np.uint8)
    for above in CREASES:  # where the creases land on the avatar, give or take
        line = dest[BROW_TOPS[2:-2], :2] - (0.0, above * unit)
        cv2.polylines(band, [np.round(line).astype(np.int32)], False, 1, max(1, round(0.03 * unit)))
    a, b = grey(detailed)[band > 0].mean(), grey(plain)[band > 0].mean()
    assert a / b < 0.98, f"the creases only {1 - a / b:.1%} darker"
    face = np.zeros(plain.shape[:2], np.uint8)
    cv2.fillConvexPoly(face, cv2.convexHull(np.round(dest[:N_FACE, :2]).astype(np.int32)), 1)
    mean_a, mean_b = grey(detailed)[face > 0].mean(), grey(plain)[face > 0].mean()
    assert abs(mean_a / mean_b - 1.0) < 0.005, "the driver's detail shaded the whole face"


def test_a_driver_like_its_neutral_changes_nothing(hopper, driver_face):
    detailed, plain, _ = render_pair(hopper, driver_face, driver_face)
    assert np.abs(detailed.astype(int) - plain).max() <= 1


def test_driver_detail_carries_no_identity(hopper, driver_face, other_face):
    """The output with the driver's detail is no closer to the camera frame than without."""
    creased = with_forehead_lines(driver_face)
    detailed, plain, _ = render_pair(hopper, driver_face, creased)

    def correlation(image: np.ndarray) -> float:
        a = cv2.resize(image, (80, 60), interpolation=cv2.INTER_AREA).astype(np.float64).ravel()
        b = cv2.resize(other_face, (80, 60), interpolation=cv2.INTER_AREA).astype(np.float64)
        return float(np.corrcoef(a, b.ravel())[0, 1])

    assert correlation(detailed) < 0.5
    assert abs(correlation(detailed) - correlation(plain)) < 0.01


def test_the_driver_neutral_is_forgotten_when_the_face_is_lost_or_recalibrated(hopper, driver_face):
    generator = MeshGenerator(MeshGeneratorConfig(), hopper, *own_size(hopper))
    detail = generator.skin.driver
    assert isinstance(detail, DriverDetail)
    detail.update(Motion(state="tracked", expression=np.zeros((478, 3), np.float32)), driver_face)
    assert detail.neutral is not None
    assert detail.update(Motion(state="lost"), driver_face) is None
    assert detail.neutral is None
    # an expression is no neutral: nothing is learnt from it, so nothing shows
    assert detail.update(TALKING, driver_face) is None
    # a recalibration forgets it too (from the next frame on: the web thread asks)
    detail.update(Motion(state="tracked", expression=np.zeros((478, 3), np.float32)), driver_face)
    assert detail.update(TALKING, driver_face) is not None
    generator.forget_driver_neutral()
    assert detail.update(TALKING, driver_face) is None and detail.neutral is None


def test_the_skin_mask_leaves_out_eyes_and_lips(hopper):
    points = hopper.points
    triangles = MeshGenerator(MeshGeneratorConfig(), hopper, 64, 64).face_triangles
    space = SkinSpace.build(points, eye_distance(points), triangles, points[:, 2])
    mask = skin_mask(space)
    for inside, landmark in ((False, 468), (False, 473), (False, 13), (True, 151), (True, 50)):
        x, y = (
            np.round(space.points[landmark]).astype(int)
            if landmark < N_FACE
            else (np.round(points[landmark, :2] * space.scale - space.origin).astype(int))
        )
        assert bool(mask[y, x] > 0.5) == inside, landmark


def test_skin_space_maps_are_its_triangles_affines_wherever_the_face_moves(hopper):
    """SkinSpace keeps each pixel's mix of its triangle's corners from the rest face; for a
    face that has since moved (turned, stretched, one cheek pulled) its maps are still the
    ones the moved triangles' own affines give, and off the face they point outside."""
    points = hopper.points
    triangles = MeshGenerator(MeshGeneratorConfig(), hopper, 64, 64).face_triangles
    space = SkinSpace.build(points, eye_distance(points), triangles, points[:, 2])
    rng = np.random.default_rng(3)
    stretch = np.array([[0.7, 0.2], [-0.1, 1.3]])
    for moved in (
        space.points @ stretch.T + (40.0, -12.0),
        space.points * 2.5 + rng.normal(0.0, 1.5, space.points.shape),
    ):
        map_x, map_y = space.maps_to(moved)
        affines, _ = triangle_affines(space.triangles, space.points, moved)
        want_x, want_y = maps_from_ids(space.ids, affines, 0.0, 0.0)
        face = space.ids > 0
        assert face.mean() > 0.3
        error = np.maximum(np.abs(map_x - want_x), np.abs(map_y - want_y))
        assert error[face].max() < 1e-3, error[face].max()
        assert (map_x[~face] == -1).all() and (map_y[~face] == -1).all()
