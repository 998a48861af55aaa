"""Tiles of a slide at the model's resolution: the plan (where), and reading them (the pixels).

The contract, so that an engine can spread one slide over many workers:

    plan = plan_tiles(slide, model_mpp, image_size, stride=None)   # cheap: a thumbnail only
    batch, failed = read_tiles(slide, plan, indices)                # any subset, any worker
    # ... prob = run.calibrated(run.model_probabilities(batch)) ...
    outputs.write_slide_outputs(folder, plan, prob, ...)            # one writer at the end

A `TilePlan` is plain data (numbers and arrays, picklable): the level-0 rectangles of the tiles
on tissue and how to read them. `read_tiles` needs only the slide (opened by the worker itself
with `reader.open_slide(plan.slide_path, plan.slide_mpp)`) and the plan, and returns uint8
tiles at the model's input size; the tile order is the plan's.

Resolution: a tile covers `image_size * model_mpp` µm. It is read from the pyramid level just
finer than the model's µm/px (never a coarser one, never level 0 whole) and resized to
`image_size` with area averaging; when the level matches the model exactly, the pixels are the
file's own, unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from ..fileio import printable
from .qc import check_brightfield
from .reader import MPP_RANGE, Slide, SlideError, TileReadError, plausible_mpp
from .tissue import region_fractions, tissue_mask

# Of a tile, on the thumbnail's tissue mask. Measured on idc-sample: 98.9 % of the IDC patches
# have at least 20 % of their pixels off the glass (93 % at 40 %); on the three complete
# patients' rebuilt slides, 0.2 classifies 96-99 % of the annotated tiles and no glass tile.
MIN_TISSUE_FRACTION = 0.2
MPP_TOLERANCE = 0.1  # a slide up to 10 % coarser than the model is resized up, not refused
THUMBNAIL_SIDE = 2048  # at most, px; tissue is found on this
THUMBNAIL_PIXELS_PER_TILE = 16  # a tile spans this many thumbnail pixels a side, when the slide allows
TISSUE_PIXELS_PER_TILE = 8  # ... and this many (at least) where tissue is found


@dataclass(frozen=True, eq=False)
class TilePlan:
    """Where the tiles of one slide are and how to read them (level-0 pixels throughout)."""

    slide_path: str
    slide_mpp: float  # µm per level-0 pixel
    model_mpp: float  # µm per pixel of the model's input
    image_size: int  # the model's input side, px
    level: int  # pyramid level read
    level_downsample: float
    read_side: int  # px read at `level` for one tile
    tile_side: int  # level-0 px one tile covers
    stride: int  # level-0 px between tile corners
    dimensions: tuple[int, int]  # level-0 (width, height)
    grid_shape: tuple[int, int]  # (rows, columns) of the full grid, tissue or not
    xs: np.ndarray = field(repr=False)  # level-0 left of each tile on tissue
    ys: np.ndarray = field(repr=False)  # level-0 top
    tissue_fraction: np.ndarray = field(repr=False)
    thumbnail: np.ndarray = field(repr=False)  # RGB uint8 of the whole slide
    tissue: np.ndarray = field(repr=False)  # bool mask, thumbnail's shape

    @property
    def num_tiles(self) -> int:
        return len(self.xs)

    @property
    def num_grid_tiles(self) -> int:
        return self.grid_shape[0] * self.grid_shape[1]

    @property
    def thumbnail_scale(self) -> tuple[float, float]:
        """Level-0 pixels per thumbnail pixel (x, y)."""
        return (self.dimensions[0] / self.thumbnail.shape[1], self.dimensions[1] / self.thumbnail.shape[0])


def choose_level(downsamples, factor: float) -> int:
    """The coarsest level whose downsample is at most `factor` (level-0 px per model px)."""
    return max((i for i, d in enumerate(downsamples) if d <= factor * (1 + 1e-6)), default=0)


def plan_tiles(slide: Slide, model_mpp: float, image_size: int, stride: int | None = None,
               min_tissue_fraction: float | None = None) -> TilePlan:
    """Plans the tiles of `slide` on tissue. `stride` is in the model's pixels (default
    `image_size`: tiles side by side; smaller strides overlap and their probabilities are
    averaged in the map). A tile is planned when at least `min_tissue_fraction` of it is tissue.
    Raises SlideError for a slide without µm/px, one coarser than the model, one smaller than
    one tile, one that is not H&E brightfield, or one without tissue."""
    if slide.mpp is None:
        raise SlideError("the slide records no µm/px; give it with --slide-mpp (e.g. 0.25 for a 40x "
                         "scan, 0.5 for 20x)")
    if not plausible_mpp(slide.mpp):
        raise SlideError(f"implausible resolution: the file says {slide.mpp:.3g} µm/px, outside the "
                         f"{MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} µm/px scanners give (a units mix-up?); give the "
                         "slide's µm/px with --slide-mpp (e.g. 0.25 for a 40x scan, 0.5 for 20x)")
    stride = image_size if stride is None else int(stride)
    min_tissue_fraction = MIN_TISSUE_FRACTION if min_tissue_fraction is None else float(min_tissue_fraction)
    if not 1 <= stride <= image_size:
        raise SlideError(f"--stride must be between 1 and the model's input side {image_size}, got {stride}")
    factor = model_mpp / slide.mpp  # level-0 px per model px
    if factor < 1 - MPP_TOLERANCE:
        raise SlideError(f"the slide ({slide.mpp:.3g} µm/px) is coarser than the model's input "
                         f"({model_mpp:.3g} µm/px); the model needs a finer scan (or check --mpp / --slide-mpp)")
    tile_side = max(1, round(image_size * factor))
    stride_0 = max(1, round(stride * factor))
    width, height = slide.dimensions
    if width < tile_side or height < tile_side:
        raise SlideError(f"the slide ({width} x {height} px) is smaller than one tile ({tile_side} px at "
                         f"{slide.mpp:.3g} µm/px for the model's {image_size} px at {model_mpp:.3g} µm/px)")
    level = choose_level(slide.level_downsamples, factor)
    downsample = slide.level_downsamples[level]
    read_side = max(1, round(tile_side / downsample))

    # Enough thumbnail pixels per tile to measure its tissue; more would only cost reading.
    side = min(THUMBNAIL_SIDE, max(64, math.ceil(max(width, height) / tile_side * THUMBNAIL_PIXELS_PER_TILE)))
    thumbnail = slide.thumbnail(side)
    check_brightfield(thumbnail)
    # Tissue is found where a tile spans about TISSUE_PIXELS_PER_TILE pixels a side: enough to
    # measure its share, and a quarter of the thumbnail's cost.
    step = max(1, int(tile_side * thumbnail.shape[1] / width / TISSUE_PIXELS_PER_TILE))
    small = thumbnail if step == 1 else cv2.resize(
        thumbnail, (max(1, thumbnail.shape[1] // step), max(1, thumbnail.shape[0] // step)),
        interpolation=cv2.INTER_AREA)
    tile_on_small = tile_side * small.shape[1] / width  # px of `small` a tile spans
    small_mask = tissue_mask(small, max_hole_pixels=tile_on_small ** 2 / 4)
    columns, rows = (width - tile_side) // stride_0 + 1, (height - tile_side) // stride_0 + 1
    grid_y, grid_x = np.mgrid[0:rows, 0:columns]
    xs, ys = grid_x.ravel() * stride_0, grid_y.ravel() * stride_0
    scale = (width / small.shape[1], height / small.shape[0])
    fractions = region_fractions(small_mask, scale, xs, ys, tile_side)
    keep = fractions >= min_tissue_fraction
    if not keep.any():
        raise SlideError(no_tiles_message(small_mask, scale, slide.mpp, slide.mpp_source, tile_side,
                                          float(fractions.max(initial=0.0)), min_tissue_fraction))
    check_brightfield(small, small_mask)
    mask = small_mask if step == 1 else cv2.resize(small_mask.view(np.uint8), thumbnail.shape[1::-1],
                                                   interpolation=cv2.INTER_NEAREST).view(bool)
    return TilePlan(str(slide.path), float(slide.mpp), float(model_mpp), int(image_size), level, float(downsample),
                    read_side, tile_side, stride_0, (width, height), (rows, columns),
                    xs[keep].astype(np.int64), ys[keep].astype(np.int64), fractions[keep], thumbnail, mask)


def no_tiles_message(mask: np.ndarray, scale: tuple[float, float], slide_mpp: float, mpp_source: str | None,
                     tile_side: int, max_fraction: float, min_tissue_fraction: float) -> str:
    """Why a slide has no tile to classify (pure): no tissue at all on its thumbnail mask, or
    tissue that fills no tile up to `min_tissue_fraction` (a small biopsy, or a wrong µm/px
    that makes the tissue look small), with its size, the tile's, and the fix.
    `scale`: level-0 px per mask pixel (x, y); `max_fraction`: the largest share of tissue
    any tile holds."""
    if not mask.any():
        return ("no tissue found on the slide (nothing coloured enough on its thumbnail); is it blank, "
                "or not an H&E slide?")
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    width_um = (columns[-1] - columns[0] + 1) * scale[0] * slide_mpp
    height_um = (rows[-1] - rows[0] + 1) * scale[1] * slide_mpp
    tile_um = tile_side * slide_mpp
    source = f", {mpp_source}" if mpp_source else ""
    extent = max(width_um, height_um)
    smaller = "smaller than one tile" if extent < tile_um else "too thin or scattered to fill a tile"
    lower = math.floor(100 * max_fraction) / 100
    hint = (f"give --min-tissue {lower:g} or less (the fullest tile holds {100 * max_fraction:.0f} % tissue)"
            if lower > 0 else "no tile holds even 1 % tissue")
    return (f"the tissue is {smaller}: {width_um:,.0f} x {height_um:,.0f} µm, where a tile is {tile_um:,.0f} µm "
            f"({tile_side} px at {slide_mpp:.3g} µm/px{source}) and needs {100 * min_tissue_fraction:.0f} % tissue "
            f"(--min-tissue {min_tissue_fraction:g}); if the slide is truly coarser than {slide_mpp:.3g} µm/px "
            f"(an exported or downsampled image), give its µm/px with --slide-mpp (at "
            f"{slide_mpp * tile_um / extent:.3g} or more the tissue spans a tile), else {hint}")


def read_tiles(slide: Slide, plan: TilePlan, indices) -> tuple[np.ndarray, dict[int, str]]:
    """uint8 (len(indices), image_size, image_size, 3) tiles of `plan` at `indices`, and
    {index: why} for those that failed to decode (left black, never classified).

    Side-by-side tiles of a row are read in one region when the level's pixels fall on tile
    edges exactly (the same pixels as one read each, with a fraction of the calls); a region
    that fails is read again tile by tile, so only the bad tile is lost."""
    indices = np.asarray(indices, dtype=np.int64)
    batch = np.zeros((len(indices), plan.image_size, plan.image_size, 3), dtype=np.uint8)
    failed: dict[int, str] = {}
    for start, stop in _row_runs(plan, indices):
        run = indices[start:stop]
        if len(run) > 1:
            try:
                region = slide.read_region((int(plan.xs[run[0]]), int(plan.ys[run[0]])), plan.level,
                                           (plan.read_side * len(run), plan.read_side))
            except Exception:
                pass  # read again one by one below
            else:
                for k in range(len(run)):
                    batch[start + k] = _fit(region[:, k * plan.read_side:(k + 1) * plan.read_side], plan.image_size)
                continue
        for k, index in enumerate(run.tolist()):
            try:
                region = slide.read_region((int(plan.xs[index]), int(plan.ys[index])), plan.level,
                                           (plan.read_side, plan.read_side))
            except TileReadError as err:
                failed[index] = str(err)
                continue
            except Exception as err:  # a reader's own failure: one tile, not the slide
                failed[index] = f"the region could not be read ({printable(err)})"
                continue
            batch[start + k] = _fit(region, plan.image_size)
    return batch, failed


MAX_TILES_PER_READ = 32


def _row_runs(plan: TilePlan, indices: np.ndarray):
    """(start, stop) positions in `indices` of runs of tiles that touch side by side in a row."""
    exact = plan.stride == plan.tile_side and plan.read_side * plan.level_downsample == plan.tile_side
    start = 0
    for k in range(1, len(indices) + 1):
        if (k == len(indices) or not exact or k - start >= MAX_TILES_PER_READ
                or plan.ys[indices[k]] != plan.ys[indices[k - 1]]
                or plan.xs[indices[k]] != plan.xs[indices[k - 1]] + plan.stride):
            yield start, k
            start = k


def _fit(region: np.ndarray, size: int) -> np.ndarray:
    if region.shape[:2] == (size, size):
        return region
    return cv2.resize(region, (size, size), interpolation=cv2.INTER_AREA if region.shape[0] > size else cv2.INTER_LINEAR)


def describe_resolution(plan: TilePlan) -> str:
    resize = ("no resizing" if plan.read_side == plan.image_size
              else f"resized {plan.read_side} -> {plan.image_size} px")
    return (f"tiles of {plan.tile_side} px at level 0 ({plan.slide_mpp:.3g} µm/px) read from level "
            f"{plan.level} (downsample {plan.level_downsample:g}), {resize}, for a model at "
            f"{plan.model_mpp:.3g} µm/px; {math.prod(plan.grid_shape)} tiles in the grid")
