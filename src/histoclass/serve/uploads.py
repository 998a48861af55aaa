"""Uploads: the multipart body read into (name, bytes), the bytes decoded to images with the
decoder guards of training; and the Grad-CAM overlay.

Nothing here touches the file system: uploads stay in memory, the client's file name is only
echoed back (made printable), never used as a path.
"""
from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import AsyncIterable

import cv2
import numpy as np

from ..data.decode import BadImage, decode_bytes, decode_plain_png
from ..data.parallel import usable_cores
from ..fileio import printable

MAX_NAME_CHARS = 255


class MalformedBody(Exception):
    """The body is not the multipart/form-data its header announces; says why."""


@dataclass
class FileParts:
    """The parts of one multipart field: each client's file name (None if it gave none) and its
    bytes. Past `max_files` parts only the count goes on (the error can say how many there
    were); `largest` is the first part over `max_file_bytes`, as (name, its size), if any, and
    no part after it is kept either."""

    files: list[tuple[str | None, bytes]] = field(default_factory=list, repr=False)
    count: int = 0
    largest: tuple[str | None, int] | None = None


async def read_file_parts(content_type: str, body: AsyncIterable[bytes], name: str, max_files: int,
                          max_file_bytes: int) -> FileParts | None:
    """The parts of field `name` of a multipart/form-data body, parsed as it streams in, with
    python-multipart's parser; None when the body is not multipart (no boundary).

    Starlette's form parser (what `UploadFile` parameters use) spools each part into a
    temporary file object with its own headers, and FastAPI then validates each one: for a
    request of 256 patches that was 7 ms of a 70 ms request (docs/speed.md). Here a part is a
    list of byte slices joined once; other fields are read past and dropped."""
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header

    media_type, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if media_type != b"multipart/form-data" or not boundary:
        return None
    parts = FileParts()
    header_name, header_value, disposition = bytearray(), bytearray(), b""
    current: list[bytes] | None = None  # the data kept of a part of field `name`
    current_name: str | None = None
    current_size = -1  # bytes of the part of field `name` being read; -1 in other fields' parts

    def on_part_begin() -> None:
        nonlocal disposition
        disposition = b""

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header_name.extend(data[start:end])

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header_value.extend(data[start:end])

    def on_header_end() -> None:
        nonlocal disposition
        if header_name.lower() == b"content-disposition":
            disposition = bytes(header_value)
        header_name.clear()
        header_value.clear()

    def on_headers_finished() -> None:
        nonlocal current, current_name, current_size
        _, params = parse_options_header(disposition)
        current, current_size = None, -1
        if params.get(b"name", b"").decode("utf-8", "replace") != name:
            return
        parts.count += 1
        filename = params.get(b"filename")
        current_name = None if filename is None else filename.decode("utf-8", "replace")
        current_size = 0
        if parts.count <= max_files and parts.largest is None:
            current = []

    def on_part_data(data: bytes, start: int, end: int) -> None:
        nonlocal current, current_size
        if current_size < 0:
            return
        current_size += end - start
        if current is not None:
            if current_size > max_file_bytes:
                current = None  # nothing more is kept: the request will be refused
            else:
                current.append(data[start:end])

    def on_part_end() -> None:
        if current_size > max_file_bytes and parts.largest is None:
            parts.largest = (current_name, current_size)
        elif current is not None:
            parts.files.append((current_name, b"".join(current)))

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field, "on_header_value": on_header_value,
        "on_header_end": on_header_end, "on_headers_finished": on_headers_finished, "on_part_data": on_part_data,
        "on_part_end": on_part_end})
    try:
        async for chunk in body:
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as err:
        raise MalformedBody(f"the body is not valid multipart/form-data ({err})") from None
    return parts


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
