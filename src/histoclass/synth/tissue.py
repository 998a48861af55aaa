"""Painting H&E-like slides for the synthetic IDC data: tissue, tumour regions, nuclei, stain.

Painting works in optical density (Beer-Lambert): each pixel gets a hematoxylin and an eosin
concentration, and colour = 255 * exp(-(H * h_vector + E * e_vector + glass)). Per-patient stain
vectors and strengths vary, as between labs and staining batches.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from histoclass.errors import HistoclassError

# Macenko's reference stain vectors (optical density per R, G, B channel).
HEMATOXYLIN_OD = np.array([0.5626, 0.7201, 0.4062], dtype=np.float32)
EOSIN_OD = np.array([0.2159, 0.8012, 0.5581], dtype=np.float32)

MEAN_POSITIVE_FRACTION = 0.28  # IDC: 78,786 of 277,524 patches
KERNEL_SIZE = 7  # nucleus stamps; at IDC's ~4 um/px even tumour nuclei are under 6 px across



# --------------------------------------------------------------------------------------------
# Noise fields


def _noise(rng: np.random.Generator, height: int, width: int, cell: float) -> np.ndarray:
    """Smooth value noise with features about `cell` px wide, roughly unit variance.

    One cubic upsampling of a small Gaussian grid (OpenCV's resize is ~10x faster than a
    warp), cheap enough to call a dozen times per slide.
    """
    grid_h = max(round(height / cell), 2)
    grid_w = max(round(width / cell), 2)
    # x1.3: cubic interpolation shrinks the variance of the grid.
    grid = (rng.standard_normal((grid_h, grid_w)) * 1.3).astype(np.float32)
    return cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)


def _fibres(rng: np.random.Generator, height: int, width: int, angle: float,
            length: float, thickness: float) -> np.ndarray:
    """Wavy streaks along `angle`: collagen bundles of the stroma.

    Anisotropic noise, sampled through a smoothly bent coordinate map so that bundles curve
    and change direction across the slide instead of running dead straight.
    """
    diagonal = math.hypot(height, width)
    grid_h, grid_w = int(diagonal / thickness) + 8, int(diagonal / length) + 8
    grid = (rng.standard_normal((grid_h, grid_w)) * 1.3).astype(np.float32)
    factor = 8
    rows, cols = height // factor + 2, width // factor + 2
    ys, xs = np.mgrid[0:rows, 0:cols].astype(np.float32) * factor
    cos, sin = math.cos(angle), math.sin(angle)
    along = (xs - width / 2) * cos + (ys - height / 2) * sin
    across = -(xs - width / 2) * sin + (ys - height / 2) * cos
    across += 25 * _noise(rng, rows, cols, 200 / factor) + 3 * _noise(rng, rows, cols, 40 / factor)
    full_size = (cols * factor, rows * factor)
    map_x = cv2.resize(along / length + grid_w / 2, full_size)[:height, :width]
    map_y = cv2.resize(across / thickness + grid_h / 2, full_size)[:height, :width]
    return cv2.remap(grid, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def _upsample(field: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bring a coarse field to slide resolution; linear keeps region edges smooth."""
    return cv2.resize(field, (width, height), interpolation=cv2.INTER_LINEAR)


# --------------------------------------------------------------------------------------------
# Regions: tissue, tumour, fat, lymphocyte aggregates, ducts


def _coarse_grid(height: int, width: int, factor: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised (0..1) y and x coordinates of a grid `factor` times coarser than the slide."""
    rows, cols = max(height // factor, 4), max(width // factor, 4)
    ys = (np.arange(rows, dtype=np.float32) + 0.5) / rows
    xs = (np.arange(cols, dtype=np.float32) + 0.5) / cols
    return np.meshgrid(ys, xs, indexing="ij")


def _tissue_mask(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """One to three overlapping irregular lobes covering 40-70 % of the slide."""
    ys, xs = _coarse_grid(height, width, 16)
    envelope = np.full(ys.shape, -np.inf, dtype=np.float32)
    for _ in range(rng.integers(1, 4)):
        cy, cx = rng.uniform(0.3, 0.7, size=2)
        ry, rx = rng.uniform(0.25, 0.5, size=2)
        envelope = np.maximum(envelope, 1 - ((ys - cy) / ry) ** 2 - ((xs - cx) / rx) ** 2)
    rows, cols = ys.shape
    field = envelope + 0.6 * _noise(rng, rows, cols, max(rows, cols) / 4)
    field += 0.25 * _noise(rng, rows, cols, max(rows, cols) / 12)
    threshold = np.quantile(field, 1 - rng.uniform(0.4, 0.7))
    full = _upsample(field - threshold, height, width)
    full += 0.08 * _noise(rng, height, width, 20)  # ragged, torn-looking edges
    return full > 0


def _tumour_masks(rng: np.random.Generator, tissue: np.ndarray, fraction: float, spill: float,
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Irregular invasive regions covering about `fraction` of the tissue.

    Returns (annotated, cancer). Like IDC's hand-drawn region annotations, the annotated mask
    (which gives the labels) is smoother than the carcinoma itself: cancer spills past it in
    places and it takes in some benign tissue in others, by about `spill` (field units).
    """
    height, width = tissue.shape
    if fraction <= 0:
        return np.zeros_like(tissue), np.zeros_like(tissue)
    ys, xs = _coarse_grid(height, width, 16)
    tissue_coarse = cv2.resize(tissue.view(np.uint8), (xs.shape[1], xs.shape[0]),
                               interpolation=cv2.INTER_AREA) > 0
    candidates = np.argwhere(tissue_coarse)
    if len(candidates) == 0:
        return np.zeros_like(tissue), np.zeros_like(tissue)
    field = np.zeros(ys.shape, dtype=np.float32)
    for _ in range(rng.integers(1, 5)):
        cy, cx = (candidates[rng.integers(len(candidates))] + 0.5) / ys.shape
        spread = rng.uniform(0.06, 0.16)
        distance2 = (ys - cy) ** 2 + (xs - cx) ** 2
        field += rng.uniform(0.6, 1.0) * np.exp(-distance2 / (2 * spread**2))
    rows, cols = ys.shape
    field += 0.35 * _noise(rng, rows, cols, max(rows, cols) / 10)
    threshold = np.quantile(field[tissue_coarse], 1 - min(fraction, 0.99))
    full = _upsample(field - threshold, height, width)
    full += 0.03 * _noise(rng, height, width, 14)
    annotated = (full > 0) & tissue
    # Spiky, infiltrative margins: the border of IDC is never a clean line.
    full += spill * _noise(rng, height, width, 30) + 0.4 * spill * _noise(rng, height, width, 8)
    return annotated, (full > 0) & tissue


def _fat_cells(rng: np.random.Generator, benign: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Adipose patches: packed polygonal white cells with thin pink septa; returns (fat, septa).

    The septa are the Voronoi edges of jittered cell centres, drawn as 1 px lines.
    """
    height, width = benign.shape
    region = _noise(rng, height // 8 + 1, width // 8 + 1, rng.uniform(12, 30))
    region = _upsample(region, height, width) > rng.uniform(0.3, 1.3)
    fat = region & benign
    spacing = rng.uniform(14, 22)  # ~60-90 um fat cells at IDC's ~4 um/px
    gy, gx = np.mgrid[0:height / spacing + 1, 0:width / spacing + 1]
    jitter = rng.uniform(0.1, 0.9, size=(2, *gy.shape))
    centres = np.stack([(gx + jitter[0]) * spacing, (gy + jitter[1]) * spacing], axis=-1)
    centres = centres.reshape(-1, 2).astype(np.float32)
    centres = centres[(centres[:, 0] < width) & (centres[:, 1] < height)]
    centres = centres[region[centres[:, 1].astype(int), centres[:, 0].astype(int)]]
    septa = np.zeros((height, width), dtype=np.uint8)
    if len(centres) > 0:
        subdivision = cv2.Subdiv2D((0, 0, width, height))
        subdivision.insert(centres)
        facets, _ = subdivision.getVoronoiFacetList([])
        cv2.polylines(septa, [np.round(f).astype(np.int32) for f in facets], True, 1, 1)
    return fat, fat & septa.view(bool)


def _lymph_aggregates(rng: np.random.Generator, benign: np.ndarray) -> np.ndarray:
    """Lymphocyte clusters: dense, dark, benign look-alikes of a tumour."""
    height, width = benign.shape
    factor = 4
    canvas = np.zeros((height // factor + 1, width // factor + 1), dtype=np.float32)
    points = np.argwhere(benign[::factor, ::factor])
    count = rng.poisson(benign.sum() / 6e5 * rng.uniform(0.5, 6.0))
    if len(points) == 0 or count == 0:
        return np.zeros_like(benign)
    for y, x in points[rng.integers(len(points), size=count)]:
        axes = (int(rng.uniform(3, 25)), int(rng.uniform(3, 25)))
        cv2.ellipse(canvas, (int(x), int(y)), axes, rng.uniform(0, 180), 0, 360, 1.0, -1)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 1.5)
    canvas += 0.25 * _noise(rng, *canvas.shape, 3)
    return (_upsample(canvas, height, width) > 0.5) & benign


def _glands(rng: np.random.Generator, benign: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Benign ducts and lobules; returns (epithelium, lumen, lobular stroma).

    Lobules are clusters of small acini in loose, cellular stroma; some ducts are filled with
    (benign) epithelium: both are dense and purple, so density alone does not mean tumour.
    """
    height, width = benign.shape
    epithelium = np.zeros((height, width), dtype=np.uint8)
    lumen = np.zeros_like(epithelium)
    loose = np.zeros_like(epithelium)
    points = np.argwhere(benign[::8, ::8]) * 8
    count = rng.poisson(benign.sum() / 1.2e5 * rng.uniform(0.5, 3.0))
    for y, x in points[rng.integers(len(points), size=count)] if len(points) else []:
        if rng.random() < 0.35:  # a duct, open or filled
            radius = rng.uniform(6, 22)
            cv2.circle(epithelium, (int(x), int(y)), int(radius + rng.uniform(2, 5)), 1, -1)
            if rng.random() < 0.7:
                cv2.circle(lumen, (int(x), int(y)), int(radius), 1, -1)
            continue
        size = rng.uniform(30, 110)
        cv2.ellipse(loose, (int(x), int(y)), (int(size), int(size * rng.uniform(0.6, 1))),
                    rng.uniform(0, 180), 0, 360, 1, -1)
        for _ in range(int(size**2 / rng.uniform(70, 160))):
            r, t = size * math.sqrt(rng.random()) * 0.9, rng.uniform(0, 2 * np.pi)
            centre = (int(x + r * math.cos(t)), int(y + r * math.sin(t) * 0.8))
            cv2.circle(epithelium, centre, int(rng.uniform(3, 6)), 1, -1)
            cv2.circle(lumen, centre, int(rng.uniform(0, 2.5)), 1, -1)
    lumen_mask = lumen.view(bool) & benign
    epithelium_mask = epithelium.view(bool) & benign & ~lumen_mask
    return epithelium_mask, lumen_mask, loose.view(bool) & benign & ~epithelium_mask & ~lumen_mask


# --------------------------------------------------------------------------------------------
# Nuclei


@functools.cache
def _nucleus_bank() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Stamps of nuclei (soft, slightly irregular ellipses with chromatin texture).

    Returns (stamps[n, K*K], radius[n], aspect[n], angle[n]); a fixed seed keeps every slide's
    nuclei drawn from the same bank, so output never depends on call order.
    """
    rng = np.random.default_rng(20240611)
    radii = np.array([0.6, 0.8, 1.0, 1.2, 1.45, 1.7, 2.0, 2.35, 2.7], dtype=np.float32)
    aspects = np.array([1.0, 1.35, 1.8, 2.5], dtype=np.float32)
    angles = np.linspace(0, np.pi, 12, endpoint=False, dtype=np.float32)
    r, a, t, _ = np.meshgrid(radii, aspects, angles, np.arange(3), indexing="ij")
    r, a, t = r.ravel(), a.ravel(), t.ravel()
    half = KERNEL_SIZE // 2
    dy, dx = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float32)
    dy, dx = dy.ravel()[None], dx.ravel()[None]
    cos, sin = np.cos(t)[:, None], np.sin(t)[:, None]
    u = (dx * cos + dy * sin) / (r[:, None] * np.sqrt(a)[:, None])
    v = (-dx * sin + dy * cos) * np.sqrt(a)[:, None] / r[:, None]
    rho, phi = np.hypot(u, v), np.arctan2(v, u)
    wobble = rng.uniform(0, 0.18, size=(len(r), 2)).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, size=(len(r), 2)).astype(np.float32)
    edge = (1 + wobble[:, :1] * np.cos(2 * phi + phase[:, :1])
            + wobble[:, 1:] * np.cos(3 * phi + phase[:, 1:]))
    stamps = np.clip((edge - rho) * r[:, None] / 0.8 + 0.5, 0, 1)
    stamps *= rng.uniform(0.7, 1.0, size=stamps.shape)  # coarse chromatin
    return stamps.astype(np.float32), r, a, t


def _pick_stamps(radius: np.ndarray, aspect: np.ndarray, angle: np.ndarray,
                 rng: np.random.Generator) -> np.ndarray:
    """Index of the bank stamp nearest to each requested nucleus shape."""
    _, radii, aspects, angles = _nucleus_bank()
    r_levels, a_levels = np.unique(radii), np.unique(aspects)
    n_angles = len(np.unique(angles))
    ri = np.abs(radius[:, None] - r_levels[None]).argmin(1)
    ai = np.abs(aspect[:, None] - a_levels[None]).argmin(1)
    ti = np.round((angle % np.pi) / np.pi * n_angles).astype(int) % n_angles
    variant = rng.integers(0, 3, size=len(radius))
    return ((ri * len(a_levels) + ai) * n_angles + ti) * 3 + variant


@dataclass(frozen=True)
class _Population:
    """How one kind of nucleus looks: density per px^2 and shape/darkness ranges."""

    density: float
    radius: tuple[float, float]  # mean, standard deviation
    aspect: tuple[float, float]  # uniform range
    darkness: tuple[float, float]  # uniform range


def _scatter(rng: np.random.Generator, labels: np.ndarray, codes: tuple[int, ...],
             population: _Population, angle: float | None = None,
             gate: np.ndarray | None = None) -> tuple[np.ndarray, ...]:
    """Place nuclei of one population in the given compartments.

    A Poisson process of `population.density` nuclei per px^2 over the slide, kept where the
    compartment is one of `codes` and, if given, the coarse boolean `gate` (1/8 of the slide's
    size) is set. Returns (ys, xs, stamp index, darkness).
    """
    height, width = labels.shape
    allowed = np.zeros(len(EOSIN_LEVEL), dtype=bool)
    allowed[list(codes)] = True
    flat = rng.integers(0, height * width, size=rng.poisson(population.density * height * width))
    flat = flat[allowed[labels.ravel()[flat]]]
    ys, xs = np.divmod(flat, width)
    if gate is not None:
        keep = gate[ys // 8, xs // 8]
        ys, xs = ys[keep], xs[keep]
    n = len(ys)
    radius = np.clip(rng.normal(*population.radius, size=n), 0.6, 2.7)
    aspect = rng.uniform(*population.aspect, size=n)
    angles = rng.uniform(0, np.pi, size=n) if angle is None else angle + rng.normal(0, 0.3, n)
    darkness = rng.uniform(*population.darkness, size=n).astype(np.float32)
    return ys, xs, _pick_stamps(radius, aspect, angles, rng), darkness


def _stamp_nuclei(shape: tuple[int, int], nuclei: list[tuple[np.ndarray, ...]]) -> np.ndarray:
    """Sum nucleus stamps into one map; overlaps add up, as stacked chromatin would."""
    height, width = shape
    half = KERNEL_SIZE // 2
    padded_w = width + 2 * half
    stamps = _nucleus_bank()[0]
    ys = np.concatenate([n[0] for n in nuclei])
    xs = np.concatenate([n[1] for n in nuclei])
    kinds = np.concatenate([n[2] for n in nuclei])
    darkness = np.concatenate([n[3] for n in nuclei])
    base = ys * padded_w + xs
    # Two nuclei on the same pixel are one too many; dropping them also makes the fancy-index
    # additions below safe (numpy applies only one of duplicate indices).
    base, first = np.unique(base, return_index=True)
    weights = stamps[kinds[first]] * darkness[first, None]
    canvas = np.zeros((height + 2 * half) * padded_w, dtype=np.float32)
    for offset in range(KERNEL_SIZE * KERNEL_SIZE):
        dy, dx = divmod(offset, KERNEL_SIZE)
        canvas[base + dy * padded_w + dx] += weights[:, offset]
    return canvas.reshape(height + 2 * half, padded_w)[half:half + height, half:half + width]


# --------------------------------------------------------------------------------------------
# The slide


def _tumour_fraction_for(u: float) -> float:
    """Map a uniform number to a patient's tumour share of tissue: mean 0.28 (IDC's positive
    share), up to 0.7, and one patient in eight with almost none (under 3 %)."""
    return 2.5 * MEAN_POSITIVE_FRACTION * u**1.5


# Tissue compartments, painted into one uint8 map; each has its eosin and background
# hematoxylin level (nests' hematoxylin depends on the tumour's grade, so it is set per slide).
(BACKGROUND, STROMA, FAT, SEPTUM, LYMPH, LOOSE, EPITHELIUM, LUMEN, CLEFT, TUMOUR_STROMA,
 NEST) = range(11)
EOSIN_LEVEL = np.float32([0.0, 1.0, 0.03, 1.3, 0.35, 0.6, 0.6, 0.03, 0.03, 0.85, 0.55])
HEMATOXYLIN_LEVEL = np.float32([0.0, 0.04, 0.0, 0.0, 0.1, 0.08, 0.2, 0.0, 0.0, 0.04, 0.22])


def _compartments(rng: np.random.Generator, tissue: np.ndarray, tumour: np.ndarray,
                  grade: float) -> np.ndarray:
    """Label every pixel with its compartment (the codes above)."""
    height, width = tissue.shape
    benign = tissue & ~tumour
    fat, septa = _fat_cells(rng, benign)
    benign_cells = benign & ~fat
    lymph = _lymph_aggregates(rng, benign_cells)
    epithelium, lumen, loose = _glands(rng, benign_cells & ~lymph)
    labels = tissue.astype(np.uint8) * STROMA
    for mask, code in ((fat, FAT), (septa, SEPTUM), (lymph, LYMPH), (loose, LOOSE),
                       (epithelium, EPITHELIUM), (lumen, LUMEN)):
        labels[mask] = code
    # Retraction clefts: thin wavy tears in parts of the stroma.
    torn = _upsample(_noise(rng, height // 8 + 1, width // 8 + 1, 20), height, width) > 0.3
    labels[(np.abs(_noise(rng, height, width, 40)) < 0.04) & torn & (labels == STROMA)] = CLEFT

    # Tumour: nests of cells (sheets at high grade) in desmoplastic stroma, each nest ringed
    # by a retraction cleft; glandular lumina at low grade.
    nest_field = _noise(rng, height, width, rng.uniform(6, 12))
    nest_level = np.float32(0.7 - 1.3 * grade + rng.uniform(-0.2, 0.2))
    labels[tumour] = TUMOUR_STROMA
    labels[tumour & (nest_field > nest_level)] = NEST
    labels[tumour & (nest_field > nest_level - 0.15) & (nest_field <= nest_level)] = CLEFT
    lumina = _noise(rng, height, width, 3) > 2.0 + 1.5 * grade
    labels[lumina & (labels == NEST)] = LUMEN
    return labels


def _nuclei(rng: np.random.Generator, labels: np.ndarray, grade: float,
            fibre_angle: float) -> list[tuple[np.ndarray, ...]]:
    """All nuclei of a slide, population by population (see `_scatter`)."""
    height, width = labels.shape
    cellular = _noise(rng, height // 8 + 1, width // 8 + 1, 15) > 0.2  # cell-rich stroma
    stromal = (STROMA, TUMOUR_STROMA)

    def scatter(codes, density, radius, aspect, darkness, **options):
        population = _Population(density, radius, aspect, darkness)
        return _scatter(rng, labels, codes, population, **options)

    return [
        scatter(stromal, 0.004, (0.8, 0.1), (1.8, 2.6), (0.7, 1.1), angle=fibre_angle),
        scatter(stromal, 0.012, (0.85, 0.1), (1.3, 2.4), (0.7, 1.1), gate=cellular),
        scatter((STROMA, LOOSE), 0.0015, (0.75, 0.05), (1.0, 1.2), (1.2, 1.6)),  # lymphocytes
        scatter((LOOSE,), 0.012, (0.85, 0.1), (1.0, 1.8), (0.8, 1.2)),
        scatter((LYMPH,), 0.10, (0.8, 0.08), (1.0, 1.3), (1.2, 1.7)),
        scatter((EPITHELIUM,), 0.08, (1.05, 0.12), (1.0, 1.5), (0.8, 1.2)),
        scatter((SEPTUM,), 0.002, (0.8, 0.1), (2.0, 2.6), (0.8, 1.1)),
        # Carcinoma: denser, larger, darker and more varied nuclei as the grade rises.
        scatter((NEST,), 0.04 + 0.03 * grade, (1.15 + 0.8 * grade, 0.15 + 0.3 * grade),
                (1.0, 1.4 + 0.6 * grade), (0.7 + 0.2 * grade, 1.2 + 0.5 * grade)),
        scatter((TUMOUR_STROMA,), 0.006, (1.1 + 0.6 * grade, 0.3), (1.0, 1.8), (0.8, 1.4)),
    ]


def render_slide(rng: np.random.Generator, width: int, height: int, *,
                 tumour_fraction: float | None = None,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Paint one H&E-like slide.

    Returns (rgb uint8 HxWx3, tumour_mask bool HxW, tissue_mask bool HxW); the tumour mask lies
    inside the tissue mask. `tumour_fraction` (share of tissue that is tumour) is drawn from
    `rng` when not given; `generate_idc_dataset` passes it so that a set's positive share stays
    near IDC's 28 % whatever the number of patients.
    """
    if width < 16 or height < 16:
        raise HistoclassError(f"slide size must be at least 16x16 px, got {width}x{height}")
    if tumour_fraction is not None and not 0 <= tumour_fraction <= 1:
        raise HistoclassError(f"tumour_fraction must be between 0 and 1, got {tumour_fraction}")
    if tumour_fraction is None:
        tumour_fraction = _tumour_fraction_for(rng.random())
    grade = rng.random()  # 0: well differentiated, close to benign epithelium; 1: anaplastic
    tissue = _tissue_mask(rng, height, width)
    annotated, tumour = _tumour_masks(rng, tissue, tumour_fraction, rng.uniform(0.08, 0.22))
    labels = _compartments(rng, tissue, tumour, grade)

    angle = rng.uniform(0, np.pi)
    fibres = _fibres(rng, height, width, angle, rng.uniform(30, 70), rng.uniform(1.5, 3))
    eosin = np.clip(0.72 + 0.25 * fibres, 0.15, 1.2) * EOSIN_LEVEL[labels]
    hematoxylin_level = HEMATOXYLIN_LEVEL.copy()
    hematoxylin_level[NEST] += 0.15 * grade
    hema = hematoxylin_level[labels]

    stain = _draw_stain(rng)
    nuclei = _stamp_nuclei((height, width), _nuclei(rng, labels, grade, angle))
    nuclear = 1 - cv2.exp(-1.8 * nuclei)
    rgb = _compose(rng, hema + stain["nucleus_gain"] * nuclear, eosin * (1 - 0.6 * nuclear),
                   stain)
    return rgb, annotated, tissue


def _draw_stain(rng: np.random.Generator) -> dict:
    """Per-patient staining: jittered H and E vectors and strengths, glass tint, focus."""
    def jitter(vector: np.ndarray) -> np.ndarray:
        moved = np.clip(vector + rng.normal(0, 0.05, 3).astype(np.float32), 0.02, None)
        return moved / np.linalg.norm(moved)

    return {
        "h_vector": jitter(HEMATOXYLIN_OD) * rng.uniform(0.75, 1.25),
        "e_vector": jitter(EOSIN_OD) * rng.uniform(0.45, 1.0),
        "glass": rng.uniform(0.01, 0.05, 3).astype(np.float32),
        "nucleus_gain": rng.uniform(0.9, 1.4),
        "blur": rng.uniform(0.35, 0.9),
        "noise": rng.uniform(0.004, 0.012),  # OD; about 1-3 grey levels per pixel
    }


def _compose(rng: np.random.Generator, hema: np.ndarray, eosin: np.ndarray,
             stain: dict) -> np.ndarray:
    """Turn stain concentrations into RGB by Beer-Lambert, with scanner blur and noise."""
    sigma = stain["blur"]
    height, width = hema.shape
    grain = rng.random((height, width), dtype=np.float32)  # uniform: 6x cheaper than normal
    layers = cv2.merge([cv2.GaussianBlur(hema, (0, 0), sigma),
                        cv2.GaussianBlur(eosin, (0, 0), sigma), grain])
    # -OD per channel = -(H * h + E * e + (grain - 1/2) * amount + glass), in one OpenCV pass;
    # amount = noise * sqrt(12) gives the grain a standard deviation of `noise`.
    amount = np.full(3, stain["noise"] * math.sqrt(12), dtype=np.float32)
    matrix = -np.column_stack([stain["h_vector"], stain["e_vector"], amount,
                               stain["glass"] - amount / 2])
    transmitted = cv2.exp(cv2.transform(layers, matrix.astype(np.float32)))
    return cv2.convertScaleAbs(transmitted, alpha=255.0)


# --------------------------------------------------------------------------------------------
# Patients and the IDC tree

