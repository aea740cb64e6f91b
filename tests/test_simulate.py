"""Tests of the simulated DeepLesion-style dataset (ctlesion.data.simulate)."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ctlesion.data.simulate import SAMPLE_BACKGROUND, simulate_dataset, simulate_from_volumes
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import DL_INFO_COLUMNS, read_dl_info, read_png_hu, series_slice_indices
from ctlesion.volume import Volume

BASE_HU, SLOPE_HU_PER_MM = -50.0, 3.0


def _phantom() -> Volume:
    """A body disk in air whose HU rise linearly along z: -50 + 3 z_mm (2 mm slices, 3.5 mm px)."""
    z_mm = np.arange(41) * 2.0
    yy, xx = np.mgrid[:96, :96] + 0.5
    body = (yy - 48) ** 2 + (xx - 48) ** 2 <= 44**2
    hu = np.where(body[None], (BASE_HU + SLOPE_HU_PER_MM * z_mm)[:, None, None], -1000.0)
    return Volume(hu=hu.astype(np.float32), spacing_zyx_mm=(2.0, 3.5, 3.5), source="phantom")


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim_phantom")
    simulate_from_volumes(out, [_phantom()], num_series=6, image_size_px=128, seed=3)
    return out


def _manifest(root: Path) -> dict:
    return json.loads((root / "simulation.json").read_text())


def _series_plans(root: Path) -> dict[str, dict]:
    return {f"{s['patient']:06d}_{s['study']:02d}_{s['series']:02d}": s for s in _manifest(root)["series"]}


def _background_hu(plan: dict, written_index: int) -> float:
    """Phantom HU of written slice ``written_index`` (0-based): mean over its 1 mm slices."""
    thin_z = plan["z0_mm"] + (written_index * 5 + 2 if plan["thick"] else written_index)
    return BASE_HU + SLOPE_HU_PER_MM * thin_z


def _thin_z(plan: dict, written_index: int) -> float:
    """Index on the 1 mm grid of the centre of a written slice."""
    return written_index * 5 + 2 if plan["thick"] else written_index


def _expected_centre_excess(plan: dict, lesion: dict, written_index: int, covered: bool = False) -> float:
    """HU above the phantom at a lesion's centre pixel on a written slice (edge blur aside).

    The lesion's level is the phantom's HU at its centre (the median it replaced) plus its
    contrast; a thick slice averages the 5 thin slices, of which only those within the
    lesion's z extent are covered (all of them with ``covered``).
    """
    cz, half_z = lesion["centre_xyz"][2], lesion["semi_axis_z_mm"]
    thin = [written_index * 5 + k for k in range(5)] if plan["thick"] else [written_index]
    level = BASE_HU + SLOPE_HU_PER_MM * (plan["z0_mm"] + cz) + lesion["contrast_hu"]
    excess = [(level - BASE_HU - SLOPE_HU_PER_MM * (plan["z0_mm"] + z)) * (covered or abs(z - cz) <= half_z)
              for z in thin]
    return float(np.mean(excess))


def _lesion_of(row_recist: np.ndarray, plan: dict) -> dict:
    """The lesion object of a DL_info row: its centre is the long axis' midpoint."""
    centre = (row_recist[:2] + row_recist[2:4]) / 2
    lesions = [o for o in plan["objects"] if o["kind"] == "lesion"]
    distances = [np.hypot(*(np.array(o["centre_xyz"][:2]) - centre)) for o in lesions]
    assert min(distances) < 2e-3, "a DL_info row matches no inserted lesion (tubes must have no row)"
    return lesions[int(np.argmin(distances))]


def test_table_layout_and_splits(phantom_set: Path) -> None:
    with (phantom_set / "DL_info.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == DL_INFO_COLUMNS
    assert all(all(row[c].strip() for c in DL_INFO_COLUMNS) for row in rows)
    keys = read_dl_info(phantom_set / "DL_info.csv")
    assert sum(k.num_lesions for k in keys) == len(rows)
    plans = _series_plans(phantom_set)
    assert len(plans) == 6
    assert sorted(p["thick"] for p in plans.values()) == [False] * 3 + [True] * 3
    # Whole patients per split, every split present.
    split_of_patient: dict[int, set[int]] = {}
    for p in plans.values():
        split_of_patient.setdefault(p["patient"], set()).add(p["split"])
    assert all(len(s) == 1 for s in split_of_patient.values())
    assert {k.split for k in keys} == {1, 2, 3}
    for row in rows:
        plan = plans[row["File_name"][:12]]
        assert int(row["Train_Val_Test"]) == plan["split"]
        assert row["Patient_index"] == str(plan["patient"]) and row["Study_index"] == str(plan["study"])
        assert row["File_name"].endswith(f"_{int(row['Key_slice_index']):03d}.png")
        assert row["DICOM_windows"] == "-175, 275" and row["Possibly_noisy"] == "0"
    for key in keys:
        plan = plans[key.series_dir]
        numbers = series_slice_indices(phantom_set / "Images_png" / key.series_dir)
        num_written = plan["num_thin_slices"] // (5 if plan["thick"] else 1)
        assert numbers == list(range(1, num_written + 1))
        assert key.slice_range.tolist() == [1, num_written]
        assert key.slice_interval_mm == (5.0 if plan["thick"] else 1.0)
        pixel_mm = plan["crop_side_mm"] / 128
        assert key.spacing_yx_mm == pytest.approx((pixel_mm, pixel_mm), rel=1e-5)
        assert key.image_size.tolist() == [128, 128]


def test_slices_are_1mm_interpolation_and_5mm_averages(phantom_set: Path) -> None:
    for name, plan in _series_plans(phantom_set).items():
        for number in series_slice_indices(phantom_set / "Images_png" / name):
            hu = read_png_hu(phantom_set / "Images_png" / name / f"{number:03d}.png")
            body = hu[hu > -500]
            assert abs(np.median(body) - _background_hu(plan, number - 1)) <= 1.0, (name, number)
            assert np.median(hu[hu <= -500]) == -1000


def test_annotations_match_the_inserted_lesions(phantom_set: Path) -> None:
    plans = _series_plans(phantom_set)
    checked_iou = 0
    for key in read_dl_info(phantom_set / "DL_info.csv"):
        plan = plans[key.series_dir]
        hu = read_png_hu(phantom_set / "Images_png" / key.series_dir / f"{key.slice_index:03d}.png")
        excess = hu.astype(np.float64) - _background_hu(plan, key.slice_index - 1)
        for box, recist, diameters in zip(key.boxes_px, key.recist_px, key.diameters_px):
            lesion = _lesion_of(recist, plan)
            contrast = lesion["contrast_hu"]
            long_axis, short_axis = recist[2:4] - recist[:2], recist[6:8] - recist[4:6]
            assert np.linalg.norm(long_axis) == pytest.approx(diameters[0], abs=1e-3)
            assert np.linalg.norm(short_axis) == pytest.approx(diameters[1], abs=1e-3)
            assert diameters[0] >= diameters[1] > 0
            assert abs(np.dot(long_axis, short_axis)) < 1e-3 * diameters[0] ** 2
            # The box is the tight box of the RECIST ellipse (to the pixel: pixel centres decide).
            half_axes = np.array([np.linalg.norm(long_axis), np.linalg.norm(short_axis)]) / 2
            cos, sin = long_axis / np.linalg.norm(long_axis)
            half_w = np.hypot(half_axes[0] * cos, half_axes[1] * sin)
            half_h = np.hypot(half_axes[0] * sin, half_axes[1] * cos)
            centre = (recist[:2] + recist[2:4]) / 2
            np.testing.assert_allclose(centre, (recist[4:6] + recist[6:8]) / 2, atol=1e-3)
            np.testing.assert_allclose(box, [centre[0] - half_w, centre[1] - half_h,
                                             centre[0] + half_w, centre[1] + half_h], atol=1.0)
            # The lesion is in the image where the table says: its level at its centre ...
            cx, cy, _ = lesion["centre_xyz"]
            expected = _expected_centre_excess(plan, lesion, key.slice_index - 1)
            assert abs(excess[int(cy), int(cx)] - expected) <= 0.2 * abs(contrast) + 2, key.file_name
            # ... and the region above half the full level (all 5 thin slices covered, for a
            # thick slice) inside the box is the annotated ellipse (where the phantom's own z
            # gradient does not swamp the contrast).
            full = _expected_centre_excess(plan, lesion, key.slice_index - 1, covered=True)
            x1, y1, x2, y2 = box.astype(int)
            if (x2 - x1) * (y2 - y1) >= 30 and abs(full) >= 0.5 * abs(contrast):
                yy, xx = np.mgrid[y1:y2, x1:x2] + 0.5
                u = ((xx - centre[0]) * long_axis[0] + (yy - centre[1]) * long_axis[1]) / np.dot(long_axis, long_axis)
                v = ((xx - centre[0]) * short_axis[0] + (yy - centre[1]) * short_axis[1]) / np.dot(short_axis, short_axis)
                ellipse = (2 * u) ** 2 + (2 * v) ** 2 <= 1
                seen = excess[y1:y2, x1:x2] / full >= 0.5
                iou = (ellipse & seen).sum() / (ellipse | seen).sum()
                assert iou > 0.85, (key.file_name, iou)
                checked_iou += 1
    assert checked_iou >= 5


def test_key_slice_holds_the_largest_section(phantom_set: Path) -> None:
    plans = _series_plans(phantom_set)
    keys = read_dl_info(phantom_set / "DL_info.csv")
    for name, plan in plans.items():
        key_numbers = {k.slice_index for k in keys if k.series_dir == name}
        num_written = plan["num_thin_slices"] // (5 if plan["thick"] else 1)
        centres = np.array([_thin_z(plan, j) for j in range(num_written)], dtype=np.float64)
        for lesion in (o for o in plan["objects"] if o["kind"] == "lesion"):
            distance = np.abs(centres - lesion["centre_xyz"][2])
            nearest = set((np.flatnonzero(distance <= distance.min() + 0.05) + 1).tolist())  # ties kept
            assert key_numbers & nearest, (name, lesion["centre_xyz"])


def test_tubes_cross_every_slice_without_annotation(phantom_set: Path) -> None:
    plans = _series_plans(phantom_set)
    assert sum(o["kind"] == "tube" for p in plans.values() for o in p["objects"]) >= 6
    for name, plan in plans.items():
        for tube in (o for o in plan["objects"] if o["kind"] == "tube"):
            for number in series_slice_indices(phantom_set / "Images_png" / name):
                z = _thin_z(plan, number - 1)
                cx0, cy0, cz0 = tube["centre_xyz"]
                cx = cx0 + tube["drift_px_per_mm"][0] * (z - cz0)
                cy = cy0 + tube["drift_px_per_mm"][1] * (z - cz0)
                hu = read_png_hu(phantom_set / "Images_png" / name / f"{number:03d}.png")
                # A constant level: the median HU it replaced (the phantom's HU at mid-series) + contrast.
                level = BASE_HU + SLOPE_HU_PER_MM * (plan["z0_mm"] + (plan["num_thin_slices"] - 1) / 2)
                expected = level + tube["contrast_hu"]
                assert abs(hu[int(cy), int(cx)] - expected) <= 0.25 * abs(tube["contrast_hu"]) + 1, (name, number)


def _digest(root: Path) -> str:
    sha = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            sha.update(str(path.relative_to(root)).encode())
            sha.update(path.read_bytes())
    return sha.hexdigest()


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    volume = _phantom()
    for name, seed in [("a", 5), ("b", 5), ("c", 6)]:
        simulate_from_volumes(tmp_path / name, [volume], num_series=3, image_size_px=64, seed=seed)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert (tmp_path / "a" / "DL_info.csv").read_bytes() != (tmp_path / "c" / "DL_info.csv").read_bytes()
    # An existing dataset is only replaced on request, and then wholly (no stale slices).
    with pytest.raises(CtlesionError, match="already holds an Images_png"):
        simulate_from_volumes(tmp_path / "c", [volume], num_series=3, image_size_px=64, seed=5)
    simulate_from_volumes(tmp_path / "c", [volume], num_series=3, image_size_px=64, seed=5, overwrite=True)
    assert _digest(tmp_path / "c") == _digest(tmp_path / "a")


def test_bad_inputs(tmp_path: Path) -> None:
    with pytest.raises(CtlesionError, match="no background"):
        simulate_from_volumes(tmp_path, [], num_series=2)
    with pytest.raises(CtlesionError, match="num_series"):
        simulate_from_volumes(tmp_path, [_phantom()], num_series=0)
    short = Volume(hu=np.zeros((2, 64, 64), dtype=np.float32), spacing_zyx_mm=(2.0, 1.0, 1.0), source="short.nii.gz")
    with pytest.raises(CtlesionError, match="too short"):
        simulate_from_volumes(tmp_path, [short], num_series=1)
    with pytest.raises(CtlesionError):
        simulate_dataset(tmp_path / "out", backgrounds=[tmp_path / "absent.nii.gz"], num_series=1)


def test_real_background(tmp_path: Path) -> None:
    if not SAMPLE_BACKGROUND.is_dir():
        pytest.skip(f"repository sample CT not found at {SAMPLE_BACKGROUND}")
    csv_path = simulate_dataset(tmp_path, backgrounds=[SAMPLE_BACKGROUND], num_series=3, image_size_px=128, seed=0)
    keys = read_dl_info(csv_path)
    assert {k.split for k in keys} == {1, 2, 3}
    assert {k.slice_interval_mm for k in keys} == {1.0, 5.0}
    for key in keys:
        hu = read_png_hu(key.png_path(tmp_path / "Images_png"))
        assert hu.shape == (128, 128)
        assert np.mean(hu < -900) > 0.05 and np.mean(hu > 300) > 0.003  # air and bone: real CT
        assert np.all(key.boxes_px >= 0) and np.all(key.boxes_px <= 128)
    assert _manifest(tmp_path)["backgrounds"] == ["abdomen_ct_dicom"]
