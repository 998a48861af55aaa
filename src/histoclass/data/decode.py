"""Decoding one image file into an RGB uint8 patch of the model's input size.

Every way a file can be bad ends in a reason string, never an exception: the caller skips the
file, counts it and lists it. The file itself is only ever read.
"""
from __future__ import annotations

import io
import os
import re
import stat
import struct
import warnings
import zlib

import cv2
import numpy as np

MAX_PIXELS = 50_000_000  # a 7,000 x 7,000 image; larger ones are slide scans, not patches
MAX_FILE_BYTES = 512 * 2**20  # an uncompressed 16-bit 7,000 x 7,000 RGB TIFF is ~300 MB
MIN_SIDE = 8
NPZ_SOURCE = re.compile(r"^(?P<file>.+\.npz)::(?P<part>train|val|test)\[(?P<index>\d+)\]$")


def npz_source(source: str) -> re.Match | None:
    """The parts (`file`, `part`, `index`) of an image held in an array file, `<file.npz>::<part>[<i>]`;
    None for an image file (checked by its `::` first: the pattern costs more than a stat at
    277k files)."""
    return NPZ_SOURCE.match(source) if "::" in source else None

try:  # libspng (imagecodecs): the same pixels as OpenCV's libpng for a data set's patches, in 0.8x the time
    from imagecodecs import spng_decode as _spng_decode
except ImportError:  # a build without it: OpenCV decodes them
    _spng_decode = None

cv2.setNumThreads(1)  # decoding runs in a thread pool already; nested threads only contend
# A bad file is reported once, in the skipped list; OpenCV would also print its own warnings.
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)

# The first bytes of each format the decoders read, to tell "not an image" from "damaged image".
SIGNATURES = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF",
              b"MM\x00*": "TIFF", b"II+\x00": "BigTIFF", b"MM\x00+": "BigTIFF", b"BM": "BMP",
              b"GIF8": "GIF", b"RIFF": "WebP"}


class BadImage(Exception):
    """Internal: why a file cannot be used. Carries the reason shown in the log."""


def decode_file(path: str, size: int) -> tuple[np.ndarray, bool]:
    """Returns (RGB uint8 array size x size x 3, whether it was resized); raises BadImage."""
    data = read_image_bytes(path)
    image = decode_plain_png(data, size)
    if image is not None:
        return image, False
    return fit_to_size(decode_bytes(data), size)


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_plain_png(data: bytes, size: int) -> np.ndarray | None:
    """The patch of a data set, fast: an 8-bit RGB PNG of exactly size x size, without
    transparency, decoded straight to RGB (by libspng where imagecodecs has it) after the same
    checksum walk. None for anything else, which `decode_bytes` then takes (and names, when it
    is bad)."""
    if (data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24:26] != b"\x08\x02"
            or data[16:24] != struct.pack(">II", size, size) or size < MIN_SIDE):
        return None
    if b"tRNS" in _check_png_chunks(data):  # a transparent colour: composited on white by the general path
        return None
    if _spng_decode is not None:
        try:
            return _spng_decode(data)
        except Exception:  # noqa: BLE001 - the general path names what is wrong
            return None
    try:
        return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    except cv2.error:
        return None


def read_image_bytes(path: str) -> bytes:
    """The file's bytes, read only. Named pipes and devices (`/dev/zero` linked as `x.png`)
    would block or never end, so only regular files of a sane size are read."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except IsADirectoryError:
        raise BadImage("a folder, not an image file") from None
    except PermissionError:
        raise BadImage("permission denied") from None
    except FileNotFoundError:
        kind = "broken symbolic link" if os.path.islink(path) else "file vanished"
        raise BadImage(f"cannot be read ({kind})") from None
    except OSError as err:
        raise BadImage(f"cannot be read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise BadImage("a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            raise BadImage("not a regular file (a named pipe, socket or device)")
        if info.st_size > MAX_FILE_BYTES:
            raise BadImage(f"too large to be a patch ({info.st_size:,} bytes, limit {MAX_FILE_BYTES:,})")
        # One read of the whole file (a buffered reader costs more than decoding a 50 px PNG).
        data = os.read(fd, info.st_size + 1)
        while len(data) < info.st_size and (more := os.read(fd, MAX_FILE_BYTES + 1 - len(data))):
            data += more  # a short read (network file systems); rare
        return data
    except OSError as err:
        raise BadImage(f"cannot be read ({err.strerror or err})") from None
    finally:
        os.close(fd)


def decode_bytes(data: bytes) -> np.ndarray:
    """Any PNG/JPEG/TIFF/BMP bytes to RGB uint8 of its own size; raises BadImage."""
    if not data:
        raise BadImage("empty file (0 bytes)")
    if sniff_format(data) is None:
        raise BadImage(f"not an image ({_describe_content(data)})")
    _check_complete(data)
    width, height = _dimensions(data)
    if width * height > MAX_PIXELS:
        raise BadImage(f"too large to be a patch ({width}x{height} px, limit {MAX_PIXELS:,} px)")
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error:
        image = None
    if image is None:
        image = _decode_with_pillow(data)
    else:
        image = _to_rgb_from_bgr(image)
    if min(image.shape[:2]) < MIN_SIDE:
        raise BadImage(f"too small ({image.shape[1]}x{image.shape[0]} px, at least "
                       f"{MIN_SIDE}x{MIN_SIDE} expected)")
    return image


def sniff_format(data: bytes) -> str | None:
    """The image format the bytes start with, or None."""
    for signature, name in SIGNATURES.items():
        if data.startswith(signature):
            return name if name != "WebP" or data[8:12] == b"WEBP" else None
    return None


def _describe_content(data: bytes) -> str:
    head = data[:512]
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html", b"<?xml", b"<svg")):
        return "an HTML/XML document with an image extension"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive with an image extension"
    if head.startswith(b"%PDF"):
        return "a PDF document with an image extension"
    try:
        head.decode("utf-8")
        return "a text file with an image extension"
    except UnicodeDecodeError:
        return "no PNG, JPEG, TIFF or BMP signature at its start"


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
        _check_png_chunks(data)
    elif data.startswith(b"\xff\xd8"):
        if b"\xff\xd9" not in data.rstrip(b"\x00")[-16:]:
            raise BadImage("truncated JPEG (no end marker)")


def _check_png_chunks(data: bytes) -> list[bytes]:
    """Walks the chunks and checks each one's CRC: a damaged PNG is named here, before libpng
    prints its own complaint to the terminal. Returns the chunks' kinds."""
    kinds = []
    position = 8
    while position + 12 <= len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        end = position + 12 + length
        if end > len(data):
            break
        crc = struct.unpack(">I", data[end - 4:end])[0]
        if zlib.crc32(data[position + 4:end - 4]) != crc:
            name = kind.decode("latin-1") if kind.isalpha() else "?"
            raise BadImage(f"damaged PNG (chunk {name} fails its checksum)")
        kinds.append(kind)
        if kind == b"IEND":
            return kinds
        position = end
    raise BadImage("truncated PNG (no end marker)")


def _dimensions(data: bytes) -> tuple[int, int]:
    """Width and height from the header alone, so a decompression bomb is never decoded."""
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    from PIL import Image  # here, not at the top: decoding workers start faster without it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as header:
                return header.size
    except Image.DecompressionBombError:
        return (MAX_PIXELS, 2)  # Pillow refuses to even say; it is certainly too large
    except Exception as err:  # noqa: BLE001 - Pillow raises many types for non-images
        raise BadImage(f"damaged {sniff_format(data)} file ({_first_line(err)})") from None


def _decode_with_pillow(data: bytes) -> np.ndarray:
    from PIL import Image
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as opened:
                opened.load()
                return _pillow_to_rgb(opened)
    except Exception as err:  # noqa: BLE001
        raise BadImage(f"damaged {sniff_format(data)} file ({_first_line(err)})") from None


def _pillow_to_rgb(image) -> np.ndarray:
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
    line = text[0] if text else type(err).__name__
    return re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-f]+>", "", line)[:120]


def array_to_rgb(image: np.ndarray) -> np.ndarray:
    """An image from an array file (grey HxW, HxWx1 or RGB HxWx3, any dtype) to RGB uint8."""
    if image.dtype != np.uint8:
        image = _float_to_uint8(image) if image.dtype.kind == "f" else np.clip(image, 0, 255).astype(np.uint8)
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[..., :3]
