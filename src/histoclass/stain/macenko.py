"""Macenko et al. 2009 ("A method for normalizing histology slides for quantitative analysis").

Fitted on pooled pixels: optical density (`stain.maths`); pixels with OD >= BETA in every channel
(and not saturated) are tissue; the plane of the two largest eigenvectors of their OD covariance;
the ALPHA-th and (100 - ALPHA)-th percentiles of the angle in that plane are the two stain
vectors (haematoxylin: the one with more red OD); concentrations by least squares, and their
99th percentiles are the stain amounts.

The transform from a source (a patient, a slide, or one tile) to the reference is linear in OD:
concentrations in the source's basis (H, E and the residual H x E), H and E scaled so the
source's 99th percentiles become the reference's, recomposed with the reference's vectors (the
residual kept). It is one 3x3 matrix, so glass (OD 0) stays glass and a source equal to the
reference is left exactly as it is. The estimate is trusted by how much tissue it saw and how
much its stain vectors look like haematoxylin and eosin: an eosin-only tile, a flat grey tile or
a black one gives vectors that are not H and E, and such a source is blended toward identity.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .maths import intensity
from .transform import DENSITY, StainTransform, clip_scale, pixels_of, ramp, to_uint8, unsaturated_weight

BETA = 0.15  # Macenko's OD threshold (every channel) for a tissue pixel
ALPHA = 1.0  # stain vectors at the 1st and 99th percentiles of the angle
MAX_PERCENTILE = 99.0  # a stain's amount: the 99th percentile of its concentration
MIN_PIXELS = 50  # fewer tissue pixels than this: nothing to estimate
# Trust in an estimate: tissue share, likeness of its vectors to the reference's (cosine), and
# the angle between its own H and E (one stain gives two nearly equal vectors).
TRUST_TISSUE_SHARE = (0.05, 0.25)
TRUST_COSINE = (0.80, 0.95)
TRUST_ANGLE_DEGREES = (5.0, 15.0)


@dataclass(frozen=True)
class MacenkoStains:
    """What pooled pixels are fitted to: stain vectors (rows H, E; unit OD) and amounts."""

    stain_vectors: np.ndarray  # (2, 3)
    max_concentrations: np.ndarray  # (2,)
    tissue_share: float = 1.0
    num_pixels: int = 0

    def to_dict(self) -> dict:
        return {"stain_vectors": np.round(self.stain_vectors, 6).tolist(),
                "max_concentrations": np.round(self.max_concentrations, 6).tolist(),
                "tissue_share": round(float(self.tissue_share), 4), "num_pixels": int(self.num_pixels)}

    @classmethod
    def from_dict(cls, values: dict) -> "MacenkoStains":
        vectors = np.asarray(values["stain_vectors"], dtype=np.float64)
        amounts = np.asarray(values["max_concentrations"], dtype=np.float64)
        if vectors.shape != (2, 3) or amounts.shape != (2,) or not np.isfinite(vectors).all() or (amounts <= 0).any():
            raise ValueError(f"not a Macenko stain record: {values}")
        return cls(vectors, amounts, float(values.get("tissue_share", 1.0)), int(values.get("num_pixels", 0)))


def tissue_density(pixels: np.ndarray) -> np.ndarray:
    """OD (n, 3) of the tissue pixels among uint8 `pixels` (N, 3)."""
    density = DENSITY[pixels]
    keep = (density >= BETA).all(axis=1) & (unsaturated_weight(density) >= 1.0)
    return density[keep].astype(np.float64)


def stain_vectors(density: np.ndarray) -> np.ndarray:
    """Macenko's two stain vectors (rows: haematoxylin, eosin) of tissue OD pixels (n, 3)."""
    _, vectors = np.linalg.eigh(np.cov(density, rowvar=False))
    plane = vectors[:, [2, 1]]  # the two largest eigenvalues, largest first
    plane[:, 0] *= np.sign(plane[:, 0].sum()) or 1.0  # OD is positive: point the first axis there
    projected = density @ plane
    angle = np.arctan2(projected[:, 1], projected[:, 0])
    low, high = np.percentile(angle, [ALPHA, 100 - ALPHA])
    first = plane @ np.array([np.cos(low), np.sin(low)])
    second = plane @ np.array([np.cos(high), np.sin(high)])
    pair = np.stack([first, second] if first[0] > second[0] else [second, first])
    return pair * np.where(pair.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)


def concentrations(density: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares H and E concentrations (n, 2) of OD pixels (n, 3)."""
    return np.linalg.lstsq(stains.T, density.T, rcond=None)[0].T


def fit(images) -> MacenkoStains | None:
    """The stains of pooled uint8 pixels (any shape ending in 3); None with too little tissue."""
    pixels = pixels_of(images)
    density = tissue_density(pixels)
    if len(density) < MIN_PIXELS:
        return None
    stains = stain_vectors(density)
    amounts = np.percentile(concentrations(density, stains), MAX_PERCENTILE, axis=0)
    if not np.isfinite(amounts).all() or (amounts <= 1e-3).any():
        return None
    return MacenkoStains(stains, amounts, len(density) / len(pixels), len(density))


def trust(source: MacenkoStains, target: MacenkoStains) -> float:
    """0 (leave as it is) to 1 (normalize fully): see the module's docstring."""
    cosines = np.sum(source.stain_vectors * target.stain_vectors, axis=1)
    between = np.degrees(np.arccos(np.clip(np.dot(*source.stain_vectors), -1.0, 1.0)))
    return float(ramp(source.tissue_share, *TRUST_TISSUE_SHARE) * ramp(cosines.min(), *TRUST_COSINE)
                 * ramp(between, *TRUST_ANGLE_DEGREES))


def basis(stains: np.ndarray, residual: np.ndarray) -> np.ndarray:
    return np.stack([stains[0], stains[1], residual])


class MacenkoTransform(StainTransform):
    """OD' = OD @ matrix, from `source` to `target`; scales clipped to `scale_limits`; the
    matrix blended toward identity by `confidence`. source None: the identity."""

    method = "macenko"

    def __init__(self, source: MacenkoStains | None, target: MacenkoStains,
                 scale_limits: tuple[float, float], confidence: float = 1.0, alone: bool = False):
        # `alone` (one tile): bounded by `scale_limits` and `confidence` already.
        self.source, self.target = source, target
        self.confidence = float(confidence) if source is not None else 0.0
        self.matrix = np.eye(3)
        self.scale = np.ones(2)
        if source is not None:
            residual = np.cross(source.stain_vectors[0], source.stain_vectors[1])
            residual /= max(np.linalg.norm(residual), 1e-12)
            self.scale = clip_scale(target.max_concentrations / source.max_concentrations, scale_limits)
            full = (np.linalg.inv(basis(source.stain_vectors, residual)) @ np.diag([*self.scale, 1.0])
                    @ basis(target.stain_vectors, residual))
            self.matrix = np.eye(3) + self.confidence * (full - np.eye(3))
        self._matrix32 = self.matrix.astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        if self.confidence == 0.0:
            return np.array(images, dtype=np.uint8, copy=True)
        density = DENSITY[images]
        normalized = intensity(density @ self._matrix32)
        keep = unsaturated_weight(density)[..., None]
        return to_uint8(images + keep * (normalized - images))

    def record(self) -> dict:
        return {"method": self.method, "confidence": round(self.confidence, 4),
                "scale": np.round(self.scale, 4).tolist(),
                "source": None if self.source is None else self.source.to_dict()}
