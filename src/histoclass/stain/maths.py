"""The one optical-density convention of histoclass, and the H&E(-DAB) stain vectors.

Beer-Lambert: a pixel of intensity I (0-255) under glass of brightness `background` has optical
density OD = -ln((I + 1) / (background + 1)) per channel; white glass reads 0, and the +1 keeps a
black pixel finite (OD = ln 256 = 5.55 on white glass). Every module that needs optical density
(stain normalization, stain augmentation, the tissue mask, the re-staining benchmark) takes it
from here, as a function on arrays or as a 256-entry lookup table for uint8 images.
"""
from __future__ import annotations

import numpy as np

WHITE = 255.0  # the brightness of clean glass in an 8-bit image

# Stain vectors (rows: haematoxylin, eosin, DAB) in optical density, as in Ruifrok & Johnston
# 2001 and scikit-image's `rgb_from_hed`, each normalised to unit length.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]], dtype=np.float32)
RGB_FROM_HED /= np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED).astype(np.float32)


def optical_density(rgb, background=WHITE) -> np.ndarray:
    """OD per channel (float64) of 0-255 pixels `rgb` (..., 3) under glass of brightness
    `background` (a number, or one per channel)."""
    rgb = np.asarray(rgb, dtype=np.float64)
    return -np.log((rgb + 1.0) / (np.asarray(background, dtype=np.float64) + 1.0))


def intensity(density, background=WHITE) -> np.ndarray:
    """The inverse of `optical_density`: 0-255 intensities (unclipped) of OD values; float32
    for float32 OD (whole batches of tiles), else float64."""
    density = np.asarray(density)
    dtype = np.float32 if density.dtype == np.float32 else np.float64
    glass = np.asarray(background, dtype=dtype) + dtype(1.0)
    return glass * np.exp(-density.astype(dtype, copy=False)) - dtype(1.0)


def density_table(background=WHITE) -> np.ndarray:
    """OD of every uint8 level, (256,) for one background or (256, 3) for one per channel:
    index it with a uint8 image instead of taking a logarithm per pixel."""
    levels = np.arange(256, dtype=np.float64)
    background = np.asarray(background, dtype=np.float64)
    if background.ndim:
        return optical_density(levels[:, None], background[None, :])
    return optical_density(levels, background)
