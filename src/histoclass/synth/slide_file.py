"""Writing a painted slide as a pyramidal tiled TIFF that OpenSlide reads, with its µm/px.

Level 0 holds the painted pixels unchanged (lossless deflate), so tiles cut from the file are
the same pixels as the patches cut from the painting; each further level halves the previous
one (area averaging) until the slide fits in one tile. The resolution is written in pixels per
centimetre, which OpenSlide reports as `openslide.mpp-x` / `openslide.mpp-y`.
"""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from ..fileio import atomic_path

TILE = 256


def write_pyramid_tiff(path: str | os.PathLike, rgb: np.ndarray, mpp: float, tile: int = TILE) -> Path:
    """Writes RGB uint8 `rgb` at `mpp` µm/px (level 0) to `path`, atomically; returns the path."""
    import tifffile
    path = Path(path)
    with atomic_path(path, suffix=".tiff") as tmp:
        with tifffile.TiffWriter(tmp, bigtiff=rgb.nbytes > 2**31) as writer:
            level, downsample = np.ascontiguousarray(rgb), 1
            while True:
                per_cm = 1e4 / (mpp * downsample)
                writer.write(level, tile=(tile, tile), compression="zlib", photometric="rgb",
                             resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                             subfiletype=0 if downsample == 1 else 1, metadata=None)
                if max(level.shape[:2]) <= tile:
                    break
                level = cv2.resize(level, (max(1, level.shape[1] // 2), max(1, level.shape[0] // 2)),
                                   interpolation=cv2.INTER_AREA)
                downsample *= 2
    return path
