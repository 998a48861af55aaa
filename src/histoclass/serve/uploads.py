"""Uploaded bytes to images, with the decoder guards of training; and the Grad-CAM overlay.

Nothing here touches the file system: uploads stay in memory, the client's file name is only
echoed back (made printable), never used as a path.
"""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..data.decode import BadImage, decode_bytes, decode_plain_png
from ..data.parallel import usable_cores
from ..fileio import printable

MAX_NAME_CHARS = 255


@dataclass
class Upload:
    filename: str
    image: np.ndarray | None  # RGB uint8 of its own size; None when it cannot be used
    status: str  # "ok" or "skipped: <why>"


def clean_filename(name: str | None, index: int) -> str:
    """The client's name for the file, for display only."""
    name = printable(name or f"file {index + 1}")
    return name if len(name) <= MAX_NAME_CHARS else name[:MAX_NAME_CHARS - 3] + "..."


def decode_upload(filename: str, data: bytes, size: int | None = None) -> Upload:
    """Not an image, damaged, a decompression bomb, too small: the status says which. A plain
    PNG of `size` (the model's input) takes the data sets' fast path, with the same pixels."""
    try:
        image = decode_plain_png(data, size) if size else None
        return Upload(filename, decode_bytes(data) if image is None else image, "ok")
    except BadImage as err:
        # The decoder speaks of files on disk with an image extension; an upload has no extension.
        return Upload(filename, None, f"skipped: {str(err).replace(' with an image extension', '')}")
    except Exception as err:  # a decoder library's own failure on hostile bytes: still one file's problem
        return Upload(filename, None, f"skipped: cannot be decoded ({type(err).__name__})")


def decode_uploads(contents: list[tuple[str, bytes]], size: int | None = None) -> list[Upload]:
    """`decode_upload` of each (name, bytes), on every core: the decoders release the GIL, so
    the threads of one pool, kept for the service's life, decode side by side."""
    if len(contents) < 2 * UPLOADS_PER_TASK:
        return [decode_upload(name, data, size) for name, data in contents]
    tasks = [(contents[start:start + UPLOADS_PER_TASK], size)
             for start in range(0, len(contents), UPLOADS_PER_TASK)]
    return [upload for part in _pool().map(_decode_part, tasks) for upload in part]


UPLOADS_PER_TASK = 16
_POOL: list[ThreadPoolExecutor] = []


def _decode_part(task: tuple[list[tuple[str, bytes]], int | None]) -> list[Upload]:
    contents, size = task
    return [decode_upload(name, data, size) for name, data in contents]


def _pool() -> ThreadPoolExecutor:
    if not _POOL:
        _POOL.append(ThreadPoolExecutor(max_workers=usable_cores(), thread_name_prefix="histoclass-decode"))
    return _POOL[0]


def overlay_png_data_uri(image: np.ndarray, heatmap: np.ndarray, side: int = 200, alpha: float = 0.45) -> str:
    """The image (RGB uint8, the model's input) under its Grad-CAM map in the jet colour map,
    enlarged to `side` pixels, as a PNG data URI."""
    picture = cv2.resize(image, (side, side), interpolation=cv2.INTER_CUBIC)
    heat = cv2.resize(heatmap.astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
    colours = cv2.applyColorMap(np.uint8(np.clip(heat, 0, 1) * 255), cv2.COLORMAP_JET)[..., ::-1]
    blended = (picture.astype(np.float32) * (1 - alpha) + colours.astype(np.float32) * alpha)
    ok, encoded = cv2.imencode(".png", np.clip(blended, 0, 255).astype(np.uint8)[..., ::-1])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return "data:image/png;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
