"""Stain normalization in context: one transform per patient or slide, fitted on many of its tiles.

Stain differs between labs, batches and slides, not between the tiles of one slide; a tile's
own stain amount is signal (dense tumour, pale stroma). So the stain parameters are estimated
once per group (a patient's patches, a slide's tissue tiles), from the pooled tissue pixels of
up to TILES_PER_GROUP of its tiles, and that one fixed transform is applied to every tile of the
group. Only where there is no context (one image given to `predict` or the service) is a
transform estimated from the tile itself, with tighter limits, and blended toward identity where
the tile cannot tell its stain (one stain, flat, black, pale).

The reference (the target stain) is fitted on training images and stored with the run
(stain.json); the model itself never normalizes, so every path normalizes the uint8 images
before the model and before the test-time views, once.
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import HistoclassError
from . import macenko, reinhard
from .transform import StainTransform, pixels_of

METHODS = ("none", "reinhard", "macenko")
TILES_PER_GROUP = 64  # tiles of a patient or slide whose pixels are pooled for its transform
MIN_CONTEXT_TILES = 8  # a group of fewer tiles is no context: each of its tiles is fitted alone
GROUP_SCALE_LIMITS = (0.5, 2.0)  # a patient's stain amounts may be off by up to 2x
TILE_SCALE_LIMITS = (2 / 3, 3 / 2)  # one tile: its own amount is mostly signal, not stain
STAIN_FILE = "stain.json"
_MODULES = {"macenko": (macenko, macenko.MacenkoStains, macenko.MacenkoTransform),
            "reinhard": (reinhard, reinhard.ReinhardStats, reinhard.ReinhardTransform)}


class StainError(HistoclassError):
    """A stain reference that cannot be fitted or read."""


def check_method(method: str) -> str:
    if method not in METHODS:
        raise StainError(f"stain normalization {method!r} is not one of: {', '.join(METHODS)}")
    return method


@dataclass(frozen=True)
class StainReference:
    """The target stain of a run: `method` and its fitted statistics."""

    method: str
    target: object  # macenko.MacenkoStains or reinhard.ReinhardStats
    fitted_on: str = ""

    def transform_for(self, images, context: bool = True) -> StainTransform:
        """The transform that takes the stain of `images` (pooled) to the reference's;
        `context` False: they are one tile, estimated with the tight limits."""
        module, _, transform = _MODULES[self.method]
        source = module.fit(images)
        if source is None:
            return transform(None, self.target, GROUP_SCALE_LIMITS, 0.0)
        return transform(source, self.target, GROUP_SCALE_LIMITS if context else TILE_SCALE_LIMITS,
                         module.trust(source, self.target), alone=not context)

    def to_dict(self) -> dict:
        return {"method": self.method, "fitted_on": self.fitted_on, "target": self.target.to_dict(),
                "tiles_per_group": TILES_PER_GROUP}

    @classmethod
    def from_dict(cls, values: dict) -> "StainReference":
        method = check_method(values.get("method", "?"))
        if method == "none":
            raise StainError("stain normalization 'none' has no reference")
        _, stats, _ = _MODULES[method]
        try:
            return cls(method, stats.from_dict(values["target"]), str(values.get("fitted_on", "")))
        except (KeyError, TypeError, ValueError) as err:
            raise StainError(f"the stain reference is damaged ({err})") from None


def fit_reference(method: str, images, fitted_on: str = "") -> StainReference:
    """The reference of `method` from pooled uint8 images (one or many)."""
    check_method(method)
    if method == "none":
        raise StainError("stain normalization 'none' has no reference to fit")
    module, _, _ = _MODULES[method]
    target = module.fit(pixels_of(images))
    if target is None:
        raise StainError("the stain reference holds almost no tissue (it is glass, white or black); "
                         "give images of stained tissue")
    return StainReference(method, target, fitted_on)


def read_reference(folder: str | Path) -> StainReference | None:
    """The reference stored in a run folder, or None where it has none (no normalization)."""
    path = Path(folder) / STAIN_FILE
    if not path.is_file():
        return None
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise StainError(f"{path} cannot be read ({err}); retrain the run") from None
    return StainReference.from_dict(values)


def group_sample(count: int, group: str, seed: int = 0, size: int = TILES_PER_GROUP) -> np.ndarray:
    """Sorted positions (of `count`) of the tiles a group's transform is fitted on: seeded by
    the group's own name, so a patient gets the same transform whatever else is scored."""
    if count <= size:
        return np.arange(count)
    rng = np.random.default_rng([seed, zlib.crc32(str(group).encode())])
    return np.sort(rng.choice(count, size, replace=False))


class StainNormalizer:
    """Fits one transform per group and applies it to the group's tiles."""

    def __init__(self, reference: StainReference, tiles_per_group: int = TILES_PER_GROUP, seed: int = 0):
        self.reference, self.tiles_per_group, self.seed = reference, tiles_per_group, seed

    @property
    def method(self) -> str:
        return self.reference.method

    def fit_group(self, tiles: np.ndarray) -> StainTransform:
        """The transform of one group from (a sample of) its tiles (N, H, W, 3)."""
        return self.reference.transform_for(tiles, context=True)

    def fit_tile(self, tile: np.ndarray) -> StainTransform:
        """The transform of one tile (H, W, 3) with no context: bounded."""
        return self.reference.transform_for(tile, context=False)

    def transforms(self, images: np.ndarray, indices: np.ndarray | None = None,
                   groups: Sequence | None = None) -> tuple[list[StainTransform], np.ndarray]:
        """(transforms, the transform index of each row of `images`, -1 where not chosen) for
        the rows `indices` (all when None); `groups` gives each chosen row's group (None: each
        row is alone; so is each tile of a group of fewer than MIN_CONTEXT_TILES)."""
        chosen = np.arange(len(images)) if indices is None else np.asarray(indices)
        which = np.full(len(images), -1, dtype=np.int64)
        if groups is None:
            made = [self.fit_tile(np.asarray(images[i])) for i in chosen]
            which[chosen] = np.arange(len(chosen))
            return made, which
        groups = np.asarray(groups, dtype=object)
        if len(groups) != len(chosen):
            raise ValueError(f"{len(groups)} groups given for {len(chosen)} images")
        made = []
        for name in dict.fromkeys(groups.tolist()):
            rows = chosen[groups == name]
            if len(rows) < MIN_CONTEXT_TILES:
                for row in rows:
                    which[row] = len(made)
                    made.append(self.fit_tile(np.asarray(images[row])))
                continue
            sample = rows[group_sample(len(rows), name, self.seed, self.tiles_per_group)]
            which[rows] = len(made)
            made.append(self.fit_group(np.asarray(images[np.sort(sample)])))
        return made, which

    def view(self, images: np.ndarray, indices: np.ndarray | None = None,
             groups: Sequence | None = None) -> "NormalizedImages":
        transforms, which = self.transforms(images, indices, groups)
        return NormalizedImages(images, transforms, which)

    def normalize(self, images: np.ndarray, groups: Sequence | None = None) -> np.ndarray:
        """A normalized copy of uint8 images (N, H, W, 3), per group (None: per image)."""
        return self.view(images, None, groups)[np.arange(len(images))]


class NormalizedImages:
    """`images` (possibly memory-mapped) read through their transforms: indexing with an array
    of rows returns normalized uint8 rows. What the engines read instead of the raw images."""

    def __init__(self, images: np.ndarray, transforms: list[StainTransform], which: np.ndarray):
        self.images, self.transforms, self.which = images, transforms, which

    @property
    def shape(self) -> tuple:
        return self.images.shape

    @property
    def dtype(self):
        return np.dtype(np.uint8)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, rows) -> np.ndarray:
        if isinstance(rows, (int, np.integer)):
            return self[np.array([rows])][0]
        rows = np.arange(len(self.images))[rows] if isinstance(rows, slice) else np.asarray(rows)
        out = np.array(self.images[rows], dtype=np.uint8)
        which = self.which[rows]
        for index in np.unique(which):
            if index >= 0:
                at = which == index
                out[at] = self.transforms[index].apply(out[at])
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self.images))]
        return out if dtype is None else out.astype(dtype)
