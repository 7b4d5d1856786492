"""The avatar image: loaded safely, checked at the boundary, with the embedded default."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import cv2
import numpy as np

from engines.errors import AvatarError

log = logging.getLogger(__name__)

MAX_AVATAR_BYTES = 50 * 1024 * 1024
MAX_AVATAR_PIXELS = 40_000_000  # refuse decompression bombs before decoding
MIN_AVATAR_SIDE = 64
DEFAULT_FIELDS = ("avatar.image", "--avatar")  # the settings where 'default' is an image


def default_avatar_path() -> Path:
    """Grace Hopper (public domain), shipped with matplotlib's sample data."""
    from matplotlib import cbook

    return Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))


def read_avatar_file(spec: str, field: str = "avatar.image") -> tuple[Path, bytes]:
    """`avatar.image` ('default' or a path) → (path, its bytes), size-checked, or AvatarError
    naming the fix and `field`, the setting or argument that named the file."""
    path = default_avatar_path() if spec == "default" else Path(spec)
    try:
        data = path.read_bytes() if path.stat().st_size <= MAX_AVATAR_BYTES else None
    except FileNotFoundError:
        fix = "fix the path or use 'default'" if field in DEFAULT_FIELDS else "fix the path"
        raise AvatarError(f"{field}: {path} not found; {fix}") from None
    except OSError as exc:
        raise AvatarError(f"{field}: cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise AvatarError(f"{field}: {path!r} is not a usable path: {exc}") from None
    if data is None:
        raise AvatarError(f"{field}: {path} is larger than {MAX_AVATAR_BYTES >> 20} MiB")
    return path, data


def load_avatar(spec: str, field: str = "avatar.image") -> np.ndarray:
    """`avatar.image` ('default' or a path) → BGR uint8 image, or AvatarError naming the fix
    and `field` (a background image is loaded the same way, named as its own setting)."""
    path, data = read_avatar_file(spec, field)
    return decode_avatar(data, str(path), field)


def decode_avatar(data: bytes, name: str, field: str = "avatar.image") -> np.ndarray:
    """Encoded image bytes → BGR uint8; gray, alpha and 16-bit inputs are converted."""
    width, height = _header_size(data, name, field)
    if width * height > MAX_AVATAR_PIXELS:
        raise AvatarError(
            f"{field}: {name} is {width}x{height}, over {MAX_AVATAR_PIXELS:,} pixels; scale it down"
        )
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise AvatarError(f"{field}: {name} is not a readable image; use a PNG or JPEG file")
    image = _to_bgr8(image)
    if min(image.shape[:2]) < MIN_AVATAR_SIDE:
        raise AvatarError(
            f"{field}: {name} is {image.shape[1]}x{image.shape[0]}; "
            f"use an image at least {MIN_AVATAR_SIDE} pixels on each side"
        )
    return image


def _header_size(data: bytes, name: str, field: str) -> tuple[int, int]:
    """Image size from the header alone, so a decompression bomb is refused undecoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as header:
            return header.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise AvatarError(
            f"{field}: {name} is not a readable image; use a PNG or JPEG file"
        ) from None


def _to_bgr8(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:  # composite transparency over white, as an image viewer shows it
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        rgb = image[:, :, :3].astype(np.float32)
        return (rgb * alpha + 255.0 * (1.0 - alpha)).round().astype(np.uint8)
    return np.ascontiguousarray(image[:, :, :3])
