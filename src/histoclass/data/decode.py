"""Decoding one image file into an RGB uint8 patch of the model's input size.

Every way a file can be bad ends in a reason string, never an exception: the caller skips the
file, counts it and lists it. The file itself is only ever read.
"""
from __future__ import annotations

import io
import re
import struct
import warnings

import cv2
import numpy as np
from PIL import Image

MAX_PIXELS = 50_000_000  # a 7,000 x 7,000 image; larger ones are slide scans, not patches
MIN_SIDE = 8
NPZ_SOURCE = re.compile(r"^(?P<file>.+\.npz)::(?P<part>train|val|test)\[(?P<index>\d+)\]$")

cv2.setNumThreads(1)  # decoding runs in a thread pool already; nested threads only contend


class BadImage(Exception):
    """Internal: why a file cannot be used. Carries the reason shown in the log."""


def decode_file(path: str, size: int) -> tuple[np.ndarray, bool]:
    """Returns (RGB uint8 array size x size x 3, whether it was resized); raises BadImage."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except IsADirectoryError:
        raise BadImage("a folder, not an image file") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except OSError as err:
        raise BadImage(f"cannot be read ({err.strerror or err})") from None
    image = decode_bytes(data)
    return fit_to_size(image, size)


def decode_bytes(data: bytes) -> np.ndarray:
    """Any PNG/JPEG/TIFF/BMP bytes to RGB uint8 of its own size; raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    _check_complete(data)
    width, height = _dimensions(data)
    if width * height > MAX_PIXELS:
        raise BadImage(f"too large to be a patch ({width}x{height} px, limit {MAX_PIXELS:,} px)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        image = _decode_with_pillow(data)
    else:
        image = _to_rgb_from_bgr(image)
    if min(image.shape[:2]) < MIN_SIDE:
        raise BadImage(f"too small ({image.shape[1]}x{image.shape[0]} px, at least "
                       f"{MIN_SIDE}x{MIN_SIDE} expected)")
    return image


def fit_to_size(image: np.ndarray, size: int) -> tuple[np.ndarray, bool]:
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image), False
    shrinking = height > size or width > size
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(image, (size, size), interpolation=interpolation), True


def _check_complete(data: bytes) -> None:
    """Truncated files decode to half-grey images without an error in some decoders."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        if b"IEND" not in data[-32:]:
            raise BadImage("truncated PNG (no end marker)")
    elif data.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in data.rstrip(b"\x00")[-16:]:
            raise BadImage("truncated JPEG (no end marker)")


def _dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone, so a decompression bomb is never decoded."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:
                return header.size
    except Image.DecompressionBombError:
        return (MAX_PIXELS, 2)  # Pillow refuses to even say; it is certainly too large
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for non-images
        raise BadImage(f"not a readable image ({_first_line(err)})") from None


def _decode_with_pillow(data: bytes) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return _pillow_to_rgb(opened)
    except Exception as err:  # noqa: BLE001
        raise BadImage(f"not a readable image ({_first_line(err)})") from None


def _pillow_to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image).astype(np.float64)
        top = 65535.0 if array.max() > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        return _composite_on_white(np.asarray(image.convert("RGBA")))
    return np.asarray(image.convert("RGB"))


def _to_rgb_from_bgr(image: np.ndarray) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image.astype(np.uint32) * 255 + 32767) // 65535
        image = image.astype(np.uint8)
    elif image.dtype != np.uint8:
        image = _float_to_uint8(image)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    channels = image.shape[2]
    if channels == 1:
        return cv2.cvtColor(image[..., 0], cv2.COLOR_GRAY2RGB)
    if channels == 2:  # grey + alpha
        rgba = np.dstack([image[..., 0]] * 3 + [image[..., 1]])
        return _composite_on_white(rgba)
    if channels == 4:
        return _composite_on_white(cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA))
    if channels == 3:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    raise BadImage(f"unsupported number of channels ({channels})")


def _float_to_uint8(image: np.ndarray) -> np.ndarray:
    image = np.nan_to_num(image.astype(np.float64))
    top = 1.0 if image.max() <= 1.0 else 255.0
    return np.clip(image / top * 255.0 + 0.5, 0, 255).astype(np.uint8)


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Transparent pixels become white, as the glass around tissue is on a slide."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:120]


def array_to_rgb(image: np.ndarray) -> np.ndarray:
    """An image from an array file (grey HxW, HxWx1 or RGB HxWx3, any dtype) to RGB uint8."""
    if image.dtype != np.uint8:
        image = _float_to_uint8(image) if image.dtype.kind == "f" else np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]
