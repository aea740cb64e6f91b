"""Preprocessing: HU normalisation, neighbour positions, z-resampling, in-plane fitting, windows."""

import numpy as np
import pytest

from ctlesion.preprocess import (
    fit_in_plane,
    neighbour_offsets,
    network_interval_mm,
    normalize_hu,
    num_resampled_slices,
    plan_slices,
    resample_to_reference,
    volume_window,
)
from ctlesion.volume import Volume


def ramp_volume(num: int, interval_mm: float) -> Volume:
    """HU equal to the slice's z position in mm (so interpolated values are predictable)."""
    z_mm = np.arange(num, dtype=np.float32) * interval_mm
    hu = np.broadcast_to(z_mm[:, None, None], (num, 4, 6)).copy()
    return Volume(hu=hu, spacing_zyx_mm=(interval_mm, 0.7, 0.7), origin_lps_mm=(1.0, 2.0, 3.0))


def test_normalize_hu_clips_and_scales():
    out = normalize_hu(np.array([-3000, -1024, 513, 2050, 4000]))
    np.testing.assert_allclose(out, [0, 0, (513 + 1024) / 3074, 1, 1], atol=1e-7)
    assert out.dtype == np.float32
    np.testing.assert_allclose(normalize_hu(np.array([-500.0, -175.0, 50.0, 275.0]), (-175, 275)), [0, 0, 0.5, 1])


def test_neighbour_offsets_thin_and_thick():
    np.testing.assert_allclose(neighbour_offsets(7, 0.8), np.arange(-3, 4) * 2.5)
    np.testing.assert_allclose(neighbour_offsets(3, 5.0), [-1, 0, 1])
    np.testing.assert_allclose(neighbour_offsets(3, 2.0), [-1, 0, 1])
    assert network_interval_mm(0.625) == 2.0 and network_interval_mm(5.0) == 5.0
    with pytest.raises(ValueError, match="odd"):
        neighbour_offsets(4, 1.0)


def test_plan_uses_floor_and_ceil_of_k_r_over_s():
    # s = 0.7 mm, third neighbour at 6 mm = 8.571 slices: slices 8 and 9, weight 0.571 on 9
    # (the released code's weights from r / s alone would give 6/7 for every neighbour).
    plan = plan_slices(10 + neighbour_offsets(7, 0.7), 30)
    assert plan.lo[-1] == 18 and plan.hi[-1] == 19
    assert plan.weight_hi[-1] == pytest.approx(6 / 0.7 - 8)
    assert plan.lo[3] == 10 and plan.weight_hi[3] == 0.0


def test_plan_replicates_edges():
    plan = plan_slices(np.array([-2.5, 0.0, 4.0, 7.5]), 5)
    assert plan.lo.tolist() == [0, 0, 4, 4] and plan.weight_hi.tolist() == [0, 0, 0, 0]


def test_resample_thin_volume_to_2mm_exactly():
    volume = ramp_volume(11, 0.8)  # 0 .. 8 mm
    out = resample_to_reference(volume)
    assert out.slice_interval_mm == 2.0 and out.shape_zyx[0] == num_resampled_slices(volume) == 5
    np.testing.assert_allclose(out.hu[:, 0, 0], [0, 2, 4, 6, 8], atol=1e-5)
    assert out.origin_lps_mm == volume.origin_lps_mm
    assert out.meta["resampled_from_interval_mm"] == 0.8


def test_thick_volume_is_kept():
    volume = ramp_volume(6, 5.0)
    assert resample_to_reference(volume) is volume
    assert num_resampled_slices(volume) == 6


def test_fit_in_plane_keeps_aspect_and_maps_boxes_back():
    stack = np.ones((3, 100, 200), dtype=np.float32)
    out, transform = fit_in_plane(stack, 64)
    assert out.shape == (3, 64, 64) and transform.scale == pytest.approx(0.32)
    assert out[:, :32].min() == 1.0 and out[:, 32:].max() == 0.0  # content on top, zero padding below
    boxes = transform.to_source(np.array([[3.2, 6.4, 32.0, 40.0]]))
    np.testing.assert_allclose(boxes, [[10, 20, 100, 100]])  # y clipped to the 100-row image


def test_volume_window_replicates_edges():
    volume = ramp_volume(4, 5.0)
    window = volume_window(volume, 0, 5)
    np.testing.assert_allclose(window[:, 0, 0], [0, 0, 0, 5, 10])


def test_tsm_and_2_5d_windows_are_sampled_2mm_apart_on_thick_volumes():
    # The TSM / 2.5D baselines see every window at r = 2 mm (paper, section 3): on a 5 mm ramp
    # the neighbours of slice 2 (z = 10 mm) lie at 10 +/- 2, 4 mm, interpolated.
    np.testing.assert_allclose(neighbour_offsets(5, 5.0, resample_thick=True), [-0.8, -0.4, 0, 0.4, 0.8])
    np.testing.assert_allclose(neighbour_offsets(3, 1.0, resample_thick=True), [-2, 0, 2])
    assert network_interval_mm(5.0, resample_thick=True) == 2.0
    assert network_interval_mm(1.0, resample_thick=True) == 2.0
    volume = ramp_volume(6, 5.0)
    np.testing.assert_allclose(volume_window(volume, 2, 5, resample_thick=True)[:, 0, 0], [6, 8, 10, 12, 14],
                               atol=1e-5)
    np.testing.assert_allclose(volume_window(volume, 2, 5)[:, 0, 0], [0, 5, 10, 15, 20])
