"""Reading slides: one interface over OpenSlide (scanner formats, tiled TIFF) and plain images.

    slide = open_slide("case.svs")          # or a PNG/JPEG/TIFF of any size
    slide.dimensions, slide.level_dimensions, slide.level_downsamples, slide.mpp, slide.vendor
    slide.read_region((x, y), level, (width, height))   # RGB uint8; (x, y) in level-0 pixels
    slide.thumbnail(max_side)                           # RGB uint8, read level by level in bands

A `Slide` is safe to share between reader threads (OpenSlide handles are thread-safe; the image
fallback holds its pixels in memory). OpenSlide is imported here only, when a slide is opened.

Resolution is always microns per pixel (µm/px) of level 0: from the file (OpenSlide's
`openslide.mpp-x`, or a TIFF's resolution in centimetres for the fallback), else the
`slide_mpp` given by the user (`--slide-mpp`). PNG and JPEG carry no trustworthy resolution
(their dpi is for printing), so they need `--slide-mpp`. A file's resolution outside what
scanners give (MPP_RANGE: a units mix-up) is replaced by `slide_mpp` when given, and refused
by `tiling.plan_tiles` when not.
"""
from __future__ import annotations

import logging
import math
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import HistoclassError
from ..fileio import printable

log = logging.getLogger(__name__)

# What a folder given to `histoclass slide` is searched for (its top level only).
SLIDE_EXTENSIONS = frozenset({".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs",
                              ".svslide", ".bif", ".dcm", ".png", ".jpg", ".jpeg"})
MPP_RANGE = (0.05, 100.0)  # µm/px a scan can plausibly have: 0.05 is finer than any objective
THUMBNAIL_BAND_PIXELS = 1 << 24  # pixels of a level read at once while making a thumbnail


class SlideError(HistoclassError):
    """A slide that cannot be used; the message is the one line its summary row shows."""


class TileReadError(Exception):
    """One region of a slide failed to decode; the slide itself goes on."""


class Slide:
    """The interface: a pyramid of levels, level 0 the finest, with µm/px of level 0."""

    path: Path
    vendor: str
    dimensions: tuple[int, int]  # (width, height) of level 0
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None  # µm per level-0 pixel, None when unknown
    mpp_source: str

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """RGB uint8 (height, width, 3) of `size` pixels at `level`, top-left `location` in
        level-0 pixels. Raises TileReadError when the region cannot be decoded."""
        raise NotImplementedError

    def thumbnail(self, max_side: int) -> np.ndarray:
        """The whole slide at most `max_side` pixels a side, read from the coarsest level that
        is large enough, in bands, so that memory stays bounded for a slide without a pyramid."""
        # The coarsest level with at least 3/4 of `max_side`: a pyramid level a little smaller
        # than asked is read as it is, rather than a level four times larger shrunk.
        level = max((i for i, (w, h) in enumerate(self.level_dimensions) if max(w, h) >= 0.75 * max_side),
                    default=0)
        level_w, level_h = self.level_dimensions[level]
        step = max(1, math.ceil(max(level_w, level_h) / max_side))  # level pixels per thumbnail pixel
        out_w, out_h = max(1, level_w // step), max(1, level_h // step)
        rows_per_band = max(1, THUMBNAIL_BAND_PIXELS // (level_w * step)) * step
        bands = []
        downsample = self.level_downsamples[level]
        for top in range(0, out_h * step, rows_per_band):
            rows = min(rows_per_band, out_h * step - top)
            try:
                region = self.read_region((0, round(top * downsample)), level, (out_w * step, rows))
            except TileReadError as err:  # its tissue is not found; the rest of the slide is
                log.warning("%s: part of the thumbnail could not be read (%s)", self.path.name, err)
                region = np.full((rows, out_w * step, 3), 255, dtype=np.uint8)
            bands.append(region if step == 1 else
                         cv2.resize(region, (out_w, rows // step), interpolation=cv2.INTER_AREA))
        return np.concatenate(bands, axis=0)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class OpenSlideSlide(Slide):
    """Aperio, Hamamatsu, MIRAX, Leica, Philips, Ventana, DICOM and generic tiled TIFF."""

    def __init__(self, path: Path, handle) -> None:
        self.path, self._lock = path, threading.Lock()
        self._local = threading.local()  # this thread's handle: see _thread_handle
        self._local.handle, self._handles = handle, [handle]
        properties = handle.properties
        self.vendor = properties.get("openslide.vendor", "unknown")
        self.dimensions = tuple(handle.dimensions)
        self.level_dimensions = tuple(tuple(d) for d in handle.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in handle.level_downsamples)
        self.mpp, self.mpp_source = None, "none"
        mpp_x, mpp_y = _positive(properties.get("openslide.mpp-x")), _positive(properties.get("openslide.mpp-y"))
        if mpp_x:
            self.mpp, self.mpp_source = (mpp_x + (mpp_y or mpp_x)) / 2, "file"

    def read_region(self, location, level, size) -> np.ndarray:
        import openslide
        handle = self._thread_handle()
        try:
            rgba = np.asarray(handle.read_region(tuple(int(v) for v in location), int(level),
                                                 tuple(int(v) for v in size)))
        except openslide.OpenSlideError as err:
            # After an error an OpenSlide handle refuses every later call: this thread opens a
            # fresh one, so that one bad region costs one tile, not the rest of the slide.
            self._local.handle = None
            raise TileReadError(f"OpenSlide could not decode the region ({printable(err)})") from err
        return _rgba_on_white(rgba)

    def _thread_handle(self):
        """Each reading thread has its own handle: an error on one (a damaged region) can then
        never fail a good region that another thread reads at the same moment."""
        import openslide
        handle = getattr(self._local, "handle", None)
        if handle is None:
            try:
                handle = openslide.OpenSlide(str(self.path))
            except openslide.OpenSlideError as err:
                raise TileReadError(f"OpenSlide could not reopen the slide ({printable(err)})") from err
            self._local.handle = handle
            with self._lock:
                self._handles.append(handle)
        return handle

    def close(self) -> None:
        with self._lock:
            for handle in self._handles:
                handle.close()
            self._handles.clear()


class ImageSlide(Slide):
    """A plain PNG, JPEG or (untiled) TIFF: decoded whole into memory, one level."""

    def __init__(self, path: Path, pixels: np.ndarray, mpp: float | None, image_format: str) -> None:
        self.path, self._pixels = path, pixels
        self.vendor = f"image ({image_format})"
        self.dimensions = (pixels.shape[1], pixels.shape[0])
        self.level_dimensions = (self.dimensions,)
        self.level_downsamples = (1.0,)
        self.mpp, self.mpp_source = mpp, ("file" if mpp else "none")

    def read_region(self, location, level, size) -> np.ndarray:
        if level != 0:
            raise TileReadError(f"an image has one level, not level {level}")
        (x, y), (w, h) = location, size
        out = np.full((h, w, 3), 255, dtype=np.uint8)  # outside the image: white, as OpenSlide
        x0, y0 = max(x, 0), max(y, 0)
        x1, y1 = min(x + w, self.dimensions[0]), min(y + h, self.dimensions[1])
        if x1 > x0 and y1 > y0:
            out[y0 - y:y1 - y, x0 - x:x1 - x] = self._pixels[y0:y1, x0:x1]
        return out


def open_slide(path: str | os.PathLike, slide_mpp: float | None = None) -> Slide:
    """Opens a slide with OpenSlide, or as a plain image when OpenSlide does not know the format.

    `slide_mpp` (µm/px of level 0) is used where the file records none, or an implausible
    one (outside MPP_RANGE). Raises SlideError, with
    one line saying what is wrong, for a missing file, a file that is neither a slide nor an
    image, or a damaged one.
    """
    path = Path(path)
    if not path.is_file():
        raise SlideError(f"{printable(path)} is not a file" if path.exists() else f"{printable(path)} does not exist")
    slide = _open_with_openslide(path)
    if slide is None:
        slide = _open_as_image(path)
    if slide_mpp is not None and not plausible_mpp(slide.mpp):
        if slide.mpp is not None:
            log.warning("%s: the file's %.3g µm/px is implausible; using --slide-mpp %g", path.name, slide.mpp,
                        slide_mpp)
        slide.mpp, slide.mpp_source = float(slide_mpp), "--slide-mpp"
    return slide


def plausible_mpp(mpp: float | None) -> bool:
    return mpp is not None and MPP_RANGE[0] <= mpp <= MPP_RANGE[1]


def _open_with_openslide(path: Path) -> Slide | None:
    try:
        import openslide
    except ImportError as err:  # pragma: no cover - a declared dependency
        raise HistoclassError("reading slides needs openslide-python and openslide-bin: "
                              "pip install openslide-python openslide-bin") from err
    try:
        handle = openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError:
        return None
    except openslide.OpenSlideError as err:
        raise SlideError(f"damaged or unreadable slide ({printable(err)})") from err
    except OSError as err:
        raise SlideError(f"cannot read the file ({err.strerror or err})") from err
    if handle.dimensions[0] < 1 or handle.dimensions[1] < 1:
        handle.close()
        raise SlideError("the slide has no pixels")
    return OpenSlideSlide(path, handle)


def _open_as_image(path: Path) -> Slide:
    from PIL import Image, UnidentifiedImageError
    # Pillow refuses images over ~179 Mpx as a guard against decompression bombs; a slide named
    # on the command line is meant to be large, and the size check below bounds it instead.
    # The limit is lifted for this one open only (patch decoding keeps its guard).
    saved_limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        with Image.open(path) as image:
            image_format = image.format or path.suffix.lstrip(".")
            mpp = _tiff_mpp(image)
            if image.width * image.height > 1 << 31:
                raise SlideError(f"a plain {image_format} of {image.width} x {image.height} px is too large to "
                                 "read whole; convert it to a tiled pyramidal TIFF (e.g. vips tiffsave "
                                 "--tile --pyramid) so OpenSlide can read it in pieces")
            image.load()
            pixels = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise SlideError("not a slide: OpenSlide does not know the format and it is not an image "
                         "Pillow can read") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise SlideError(f"damaged image ({printable(err)})") from err
    finally:
        Image.MAX_IMAGE_PIXELS = saved_limit
    return ImageSlide(path, pixels, mpp, image_format)


def _tiff_mpp(image) -> float | None:
    """µm/px of a TIFF whose resolution is in centimetres (unit 3); inches are mostly 72/96 dpi
    defaults, not a scan's resolution, so they are not trusted."""
    tags = getattr(image, "tag_v2", None)
    if not tags or tags.get(296) != 3 or not tags.get(282):
        return None
    pixels_per_cm = float(tags[282])
    return 1e4 / pixels_per_cm if pixels_per_cm > 0 else None


def _positive(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """OpenSlide gives RGBA with alpha 0 outside scanned areas: show those as white glass."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha[..., None].astype(np.float32) / 255
    return (rgb * a + 255 * (1 - a)).round().astype(np.uint8)


def find_slides(inputs) -> list[Path]:
    """The slides named: files as given, folders searched (top level) for slide and image files."""
    found: list[Path] = []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found.extend(sorted(p for p in item.iterdir()
                                if p.is_file() and p.suffix.lower() in SLIDE_EXTENSIONS and not p.name.startswith(".")))
        else:
            found.append(item)  # a missing or odd file gets its own row saying why
    return found

