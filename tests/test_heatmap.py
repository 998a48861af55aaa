import time

import numpy as np
import pytest

from histoclass.errors import HistoclassError
from histoclass.explain.heatmap import assemble_mosaic, assemble_slide, region_outline

PATCH = 50


def test_assemble_slide_places_values_by_coordinates():
    # IDC-style coordinates: origin (1001, 51), step 50. Cells: (1001, 51) -> row 0, col 0;
    # (1051, 51) -> row 0, col 1; (1151, 101) -> row 1, col 3. The rest of the 2 x 4 grid is empty.
    slide_map = assemble_slide([1001, 1051, 1151], [51, 51, 101], [0.1, 0.2, 0.3], PATCH)
    expected = np.full((2, 4), np.nan)
    expected[0, 0], expected[0, 1], expected[1, 3] = 0.1, 0.2, 0.3
    np.testing.assert_array_equal(slide_map, expected)


def test_overlapping_patches_share_a_cell_unless_the_step_is_given():
    # Patches every 25 pixels: with cells of patch size 50, pairs share a cell and are averaged.
    xs, ys, values = [0, 25, 50, 75], [0, 0, 0, 0], [0.0, 1.0, 0.2, 0.4]
    np.testing.assert_allclose(assemble_slide(xs, ys, values, PATCH), [[0.5, 0.3]])
    np.testing.assert_allclose(assemble_slide(xs, ys, values, PATCH, step=25), [values])


def test_assemble_slide_errors_name_the_problem():
    with pytest.raises(HistoclassError, match=r"got 2 patch coordinates but values of shape \(3,\)"):
        assemble_slide([0, 50], [0, 0], [1, 2, 3], PATCH)
    with pytest.raises(HistoclassError, match="patch_size must be a positive whole number of pixels, got 0"):
        assemble_slide([0], [0], [1], 0)


def _solid_patches(colours, size=PATCH):
    return np.stack([np.full((size, size, 3), colour, dtype=np.uint8) for colour in colours])


def test_mosaic_puts_patches_at_their_pixels_on_white():
    patches = _solid_patches([(255, 0, 0), (0, 255, 0), (0, 0, 255)])
    mosaic = assemble_mosaic([1001, 1051, 1151], [51, 51, 101], patches, PATCH)
    assert mosaic.shape == (100, 200, 3) and mosaic.dtype == np.uint8
    assert (mosaic[0:50, 0:50] == (255, 0, 0)).all()
    assert (mosaic[0:50, 50:100] == (0, 255, 0)).all()
    assert (mosaic[50:100, 150:200] == (0, 0, 255)).all()
    assert (mosaic[50:100, 0:150] == 255).all()


def test_mosaic_scale_shrinks_without_gaps():
    patches = _solid_patches([(10, 10, 10)] * 4)
    mosaic = assemble_mosaic([0, 50, 0, 50], [0, 0, 50, 50], patches, PATCH, scale=0.3)
    # (50 + 50) * 0.3 = 30 pixels a side, every one covered by a patch.
    assert mosaic.shape == (30, 30, 3)
    assert (mosaic == 10).all()


def test_a_smaller_edge_patch_keeps_its_size():
    patches = [np.zeros((50, 50, 3), np.uint8), np.zeros((50, 20, 3), np.uint8)]
    mosaic = assemble_mosaic([0, 50], [0, 0], lambda i: patches[i], PATCH)
    assert (mosaic[:, 70:] == 255).all() and (mosaic[:, :70] == 0).all()


def test_mosaic_reads_only_the_patches_it_needs(tmp_path):
    everything = np.lib.format.open_memmap(tmp_path / "patches.npy", mode="w+", dtype=np.uint8,
                                           shape=(10, PATCH, PATCH, 3))
    everything[:] = np.arange(10, dtype=np.uint8)[:, None, None, None] * 20
    everything.flush()
    memory_map = np.load(tmp_path / "patches.npy", mmap_mode="r")
    requested = []

    def patch_by_index(index):
        requested.append(index)
        return memory_map[index]

    xs, ys, slide_indices = [0, 50], [0, 0], [7, 3]
    from_callable = assemble_mosaic(xs, ys, patch_by_index, PATCH, indices=slide_indices)
    assert requested == [7, 3]
    from_memory_map = assemble_mosaic(xs, ys, memory_map, PATCH, indices=slide_indices)
    np.testing.assert_array_equal(from_callable, from_memory_map)
    assert (from_memory_map[:, :50] == 140).all() and (from_memory_map[:, 50:] == 60).all()


def test_five_thousand_patches_in_well_under_a_second():
    rng = np.random.default_rng(0)
    cells = rng.choice(100 * 100, 5000, replace=False)
    patches = rng.integers(0, 256, (5000, PATCH, PATCH, 3), dtype=np.uint8)
    start = time.perf_counter()
    mosaic = assemble_mosaic(1001 + cells % 100 * PATCH, 1 + cells // 100 * PATCH, patches, PATCH,
                             scale=0.25)
    assert time.perf_counter() - start < 1.0  # about 0.1 s
    assert mosaic.shape == (1250, 1250, 3)


def test_mosaic_errors_name_the_problem():
    with pytest.raises(HistoclassError, match=r"patch 0 has shape \(50, 50\, 4\)"):
        assemble_mosaic([0], [0], np.zeros((1, 50, 50, 4), np.uint8), PATCH)
    with pytest.raises(HistoclassError, match="pass a smaller scale"):
        assemble_mosaic([0, 10**6], [0, 10**6], _solid_patches([(0, 0, 0)] * 2), PATCH)


def test_outline_of_one_cell_is_its_four_sides():
    segments = region_outline(np.array([[0.0, 0.0], [0.0, 1.0]]))
    as_set = {tuple(map(tuple, segment)) for segment in segments.tolist()}
    assert as_set == {((1, 1), (2, 1)), ((1, 2), (2, 2)), ((1, 1), (1, 2)), ((2, 1), (2, 2))}


def test_outline_of_an_l_shape_has_its_perimeter():
    # Cells (0, 1), (1, 0), (1, 1) inside: perimeter 8 unit edges, none between inside cells.
    segments = region_outline(np.array([[0, 1], [1, 1]]))
    assert len(segments) == 8
    lengths = np.linalg.norm(segments[:, 1] - segments[:, 0], axis=1)
    np.testing.assert_array_equal(lengths, 1.0)


def test_missing_patches_count_as_outside():
    segments = region_outline(np.array([[np.nan, 1.0]]))
    assert len(segments) == 4
