"""Tests of the simulated DeepLesion-style dataset (ctlesion.data.simulate).

Phantom tests run everywhere; the real-CT ones (anatomy-aware placement, the default
background set) skip without ../shared/data.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ctlesion.data.simulate import (
    MASKS_DIR,
    SAMPLE_BACKGROUND,
    read_key_slice_masks,
    simulate_dataset,
    simulate_from_volumes,
)
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import DL_INFO_COLUMNS, read_dl_info, read_png_hu, series_slice_indices
from ctlesion.postprocess import recist_axes
from ctlesion.volume import Volume

BASE_HU, SLOPE_HU_PER_MM, FAT_HU = 20.0, 1.0, -100.0


def _phantom(left_right: bool = False, source: str = "phantom") -> Volume:
    """A body disk in air (2 mm slices, 3.5 mm pixels) of soft tissue whose HU rise along z
    (20 + 1 z_mm) in a 42 mm ring of fat (-100 HU); with ``left_right`` the image-left half of
    the body is 60 HU brighter."""
    z_mm = np.arange(41) * 2.0
    yy, xx = np.mgrid[:96, :96] + 0.5
    radius = np.hypot(yy - 48, xx - 48)
    body = radius <= 44
    hu = np.where(body[None], (BASE_HU + SLOPE_HU_PER_MM * z_mm)[:, None, None], -1000.0)
    hu[:, body & (radius > 32)] = FAT_HU
    if left_right:
        hu = hu + np.where(body & (xx < 48), 60.0, 0.0)[None]
    return Volume(hu=hu.astype(np.float32), spacing_zyx_mm=(2.0, 3.5, 3.5), source=source)


@pytest.fixture(scope="module")
def phantom_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim_phantom")
    simulate_from_volumes(out, [_phantom()], num_series=6, image_size_px=160, seed=3)
    return out


def _manifest(root: Path) -> dict:
    return json.loads((root / "simulation.json").read_text())


def _series_plans(root: Path) -> dict[str, dict]:
    return {f"{s['patient']:06d}_{s['study']:02d}_{s['series']:02d}": s for s in _manifest(root)["series"]}


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "DL_info.csv").open(newline="") as handle:
        return list(csv.DictReader(handle))


def _numbers(text: str) -> np.ndarray:
    return np.array([float(v) for v in text.split(",")])


def _lesion_of(plan: dict, key_slice: int, mask: np.ndarray) -> dict:
    """The simulation.json record of the lesion a key-slice mask belongs to (same area there)."""
    matches = [lesion for lesion in plan["lesions"] if lesion["areas_px"][key_slice - 1] == int(mask.sum())]
    assert matches, "a DL_info row matches no inserted lesion"
    return matches[0]


def test_table_layout_and_splits(phantom_set: Path) -> None:
    rows = _rows(phantom_set)
    with (phantom_set / "DL_info.csv").open(newline="") as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == DL_INFO_COLUMNS
    assert all(all(row[c].strip() for c in DL_INFO_COLUMNS) for row in rows)
    keys = read_dl_info(phantom_set / "DL_info.csv")
    assert sum(k.num_lesions for k in keys) == len(rows)
    plans = _series_plans(phantom_set)
    assert len(plans) == 6
    assert sorted(p["thick"] for p in plans.values()) == [False] * 3 + [True] * 3
    # One background: synthetic patients are split, whole patients per split, every split present.
    assert _manifest(phantom_set)["split_by"] == "synthetic patient"
    split_of_patient: dict[int, set[int]] = {}
    for p in plans.values():
        split_of_patient.setdefault(p["patient"], set()).add(p["split"])
    assert all(len(s) == 1 for s in split_of_patient.values())
    assert {k.split for k in keys} == {1, 2, 3}
    for row in rows:
        plan = plans[row["File_name"][:12]]
        assert int(row["Train_Val_Test"]) == plan["split"]
        assert row["File_name"].endswith(f"_{int(row['Key_slice_index']):03d}.png")
        assert row["Possibly_noisy"] == "0"
        assert 1 <= int(row["Coarse_lesion_type"]) <= 8
    for key in keys:
        plan = plans[key.series_dir]
        numbers = series_slice_indices(phantom_set / "Images_png" / key.series_dir)
        num_written = plan["num_thin_slices"] // (5 if plan["thick"] else 1)
        assert numbers == list(range(1, num_written + 1))
        assert key.slice_range.tolist() == [1, num_written]
        assert key.slice_interval_mm == (5.0 if plan["thick"] else 1.0)
        assert key.spacing_yx_mm == pytest.approx((plan["pixel_mm"], plan["pixel_mm"]), rel=1e-5)
        assert plan["pixel_mm"] == pytest.approx(plan["crop_side_mm"] * plan["scale"] / 160)
        assert 0.9 <= plan["scale"] <= 1.1 and abs(plan["rotation_deg"]) <= 5.0
        assert key.image_size.tolist() == [160, 160]


def test_slices_are_1mm_interpolation_and_5mm_averages(phantom_set: Path) -> None:
    """Away from the lesions, a written slice is the phantom at its z: thin slices 1 mm / scale
    apart, a thick slice the mean of 5 of them."""
    for name, plan in _series_plans(phantom_set).items():
        per = 5 if plan["thick"] else 1
        for number in series_slice_indices(phantom_set / "Images_png" / name):
            thin = (number - 1) * per + np.arange(per)
            expected = BASE_HU + SLOPE_HU_PER_MM * np.mean(plan["z0_mm"] + thin / plan["scale"])
            hu = read_png_hu(phantom_set / "Images_png" / name / f"{number:03d}.png")
            assert abs(np.median(hu[hu > -500]) - expected) <= 1.0, (name, number)
            assert np.median(hu[hu <= -500]) <= -1000  # the phantom's air, or air around a wider view


def test_rows_match_the_true_masks(phantom_set: Path) -> None:
    """RECIST axes measured on the key-slice mask, DeepLesion's box around them, masks in CSV order."""
    rows = _rows(phantom_set)
    plans = _series_plans(phantom_set)
    by_file: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_file.setdefault(row["File_name"], []).append(row)
    assert len(list((phantom_set / MASKS_DIR).rglob("*.npz"))) == len(by_file)
    for file_name, file_rows in by_file.items():
        masks = read_key_slice_masks(phantom_set, file_name)
        assert masks.dtype == bool and masks.shape == (len(file_rows), 160, 160)
        plan = plans[file_name[:12]]
        for row, mask in zip(file_rows, masks):
            ys, xs = np.nonzero(mask)
            recist = _numbers(row["Measurement_coordinates"])
            # DeepLesion's box: the endpoints' extent + 5 px; the endpoints lie on the mask.
            x1, y1, x2, y2 = _numbers(row["Bounding_boxes"])
            assert [x1, y1, x2, y2] == pytest.approx([recist[0::2].min() - 5, recist[1::2].min() - 5,
                                                      recist[0::2].max() + 5, recist[1::2].max() + 5], abs=1e-3)
            assert xs.min() - 1 <= x1 + 5 and x2 - 5 <= xs.max() + 2
            assert ys.min() - 1 <= y1 + 5 and y2 - 5 <= ys.max() + 2
            axes = recist_axes(mask, (plan["pixel_mm"], plan["pixel_mm"]))
            diameters = _numbers(row["Lesion_diameters_Pixel_"])
            assert diameters[0] == pytest.approx(axes.long_mm / plan["pixel_mm"], rel=1e-4)
            assert diameters[0] >= diameters[1] > 0
            assert np.hypot(*(recist[2:4] - recist[:2])) == pytest.approx(diameters[0], rel=1e-3)
            assert np.hypot(*(recist[6:8] - recist[4:6])) == pytest.approx(diameters[1], rel=1e-2)
            lesion = _lesion_of(plan, int(row["Key_slice_index"]), mask)
            assert int(row["Coarse_lesion_type"]) == lesion["coarse_type"]


def test_key_slice_holds_the_largest_section(phantom_set: Path) -> None:
    keys = {(k.series_dir, k.slice_index) for k in read_dl_info(phantom_set / "DL_info.csv")}
    lesions = 0
    for name, plan in _series_plans(phantom_set).items():
        for lesion in plan["lesions"]:
            areas = lesion["areas_px"]
            assert areas[lesion["key_slice"] - 1] == max(areas) >= 3
            assert (name, lesion["key_slice"]) in keys
            lesions += 1
    assert lesions >= 6


def test_lesions_are_in_the_image_where_the_masks_say(phantom_set: Path) -> None:
    """Inside a mask the HU follow the lesion's level (its core + texture), around it the phantom
    (fat or the soft tissue of the series' z range: no halo)."""
    checked = 0
    for key in read_dl_info(phantom_set / "DL_info.csv"):
        plan = _series_plans(phantom_set)[key.series_dir]
        hu = read_png_hu(key.png_path(phantom_set / "Images_png")).astype(np.float64)
        for mask in read_key_slice_masks(phantom_set, key.file_name):
            lesion = _lesion_of(plan, key.slice_index, mask)
            look = lesion["appearance"]
            if (mask.sum() < 30 or plan["thick"] or look["necrosis_radius"] or look["rim_width"]
                    or look["calcification_radius_mm"] or look["ground_glass_hu"]):
                continue
            import cv2  # noqa: PLC0415

            core = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
            ring = cv2.dilate(mask.astype(np.uint8), np.ones((11, 11), np.uint8)).astype(bool) & ~cv2.dilate(
                mask.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool)
            if core.sum() < 5:
                continue
            assert abs(np.mean(hu[core]) - look["core_hu"]) <= look["texture_sd_hu"] + 8, key.file_name
            # Around it, the phantom: fat or the soft tissue of that z (no halo).
            around = hu[ring & (hu > -500)]
            soft = BASE_HU + SLOPE_HU_PER_MM * (plan["z0_mm"] + np.arange(plan["num_thin_slices"]) / plan["scale"])
            phantom = (np.abs(around - FAT_HU) <= 25) | ((around >= soft.min() - 25) & (around <= soft.max() + 25))
            assert phantom.mean() >= 0.85, key.file_name  # the rest: the fat/soft-tissue and skin interfaces
            checked += 1
    assert checked >= 1


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
    assert any((tmp_path / "a" / MASKS_DIR).rglob("*.npz"))
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")  # PNGs, masks, tables
    assert (tmp_path / "a" / "DL_info.csv").read_bytes() != (tmp_path / "c" / "DL_info.csv").read_bytes()
    # An existing dataset is only replaced on request, and then wholly (no stale slices).
    with pytest.raises(CtlesionError, match="already holds an Images_png"):
        simulate_from_volumes(tmp_path / "c", [volume], num_series=3, image_size_px=64, seed=5)
    simulate_from_volumes(tmp_path / "c", [volume], num_series=3, image_size_px=64, seed=5, overwrite=True)
    assert _digest(tmp_path / "c") == _digest(tmp_path / "a")


def test_workers_write_the_same_bytes(tmp_path: Path) -> None:
    """A pool of workers (several chunks per background) writes exactly what one process writes."""
    volumes = [_phantom(source=f"p{i}.nii.gz") for i in range(3)]
    simulate_from_volumes(tmp_path / "one", volumes, num_series=7, image_size_px=64, seed=4)
    simulate_from_volumes(tmp_path / "pool", volumes, num_series=7, image_size_px=64, seed=4, workers=2)
    assert _digest(tmp_path / "one") == _digest(tmp_path / "pool")
    with pytest.raises(CtlesionError, match="workers"):
        simulate_from_volumes(tmp_path / "bad", volumes, num_series=2, workers=-1)


def test_no_mirroring(tmp_path: Path) -> None:
    """The background's left-right orientation is kept: its bright half stays on the image's left."""
    simulate_from_volumes(tmp_path, [_phantom(left_right=True)], num_series=4, image_size_px=64, seed=2)
    for series in sorted((tmp_path / "Images_png").iterdir()):
        for png in sorted(series.glob("*.png")):
            hu = read_png_hu(png).astype(np.float64)
            body = hu > -500
            columns = np.nonzero(body.any(axis=0))[0]
            mid = (columns[0] + columns[-1] + 1) // 2
            left, right = hu[:, :mid][body[:, :mid]], hu[:, mid:][body[:, mid:]]
            assert np.median(left) - np.median(right) > 40, png


def test_patients_split_wholly(tmp_path: Path) -> None:
    """With >= 3 patients, each background (patient) lies wholly in one split, every split used."""
    volumes = [_phantom(source=f"p{i}.nii.gz") for i in range(4)]
    simulate_from_volumes(tmp_path, volumes, num_series=8, image_size_px=64, seed=1,
                          patients=["a", "b", "c", "a"])
    manifest = _manifest(tmp_path)
    assert manifest["split_by"] == "patient"
    split_of = {b["name"]: b["split"] for b in manifest["backgrounds"]}
    assert split_of["p0"] == split_of["p3"]
    assert sorted({split_of[f"p{i}"] for i in range(3)}) == [1, 2, 3]
    patients: dict[int, set[str]] = {}
    for series in manifest["series"]:
        assert series["split"] == split_of[series["background"]]
        patients.setdefault(series["patient"], set()).add(series["background"])
    assert {frozenset(v) for v in patients.values()} == {frozenset({"p0", "p3"}),
                                                        frozenset({"p1"}), frozenset({"p2"})}
    # Every background gives thin and thick series.
    thick = {}
    for series in manifest["series"]:
        thick.setdefault(series["background"], set()).add(series["thick"])
    assert all(v == {False, True} for v in thick.values())


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
    with pytest.raises(CtlesionError, match="true key-slice mask"):
        read_key_slice_masks(tmp_path, "000001_01_01_001.png")


# ------------------------------------------------------------------------------ real CT


def test_real_background_without_masks(tmp_path: Path) -> None:
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
        assert not set(key.lesion_types.tolist()) & {4, 6}  # no liver or kidney without organ masks
    assert [b["name"] for b in _manifest(tmp_path)["backgrounds"]] == ["abdomen_ct_dicom"]
