"""Tests of the DeepLesion layout reader/writer (ctlesion.io.deeplesion)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

import ctlesion.io.deeplesion as dl
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import (
    DL_INFO_COLUMNS,
    SPLITS,
    load_key_slice_window,
    read_dl_info,
    read_png_hu,
    recist_box,
    series_slice_indices,
    write_dl_info,
    write_png_hu,
)


def _row(file_name: str, interval_mm: float, **overrides: object) -> dict[str, object]:
    """A complete DL_info row for a 32 x 40 image (values as the simulator writes them)."""
    patient, study, series, key = (int(v) for v in file_name[:-4].split("_"))
    row: dict[str, object] = {
        "File_name": file_name,
        "Patient_index": patient,
        "Study_index": study,
        "Series_ID": series,
        "Key_slice_index": key,
        "Measurement_coordinates": [10.5, 12.0, 20.5, 12.0, 15.5, 9.0, 15.5, 15.0],
        "Bounding_boxes": [10.5, 9.0, 20.5, 15.0],
        "Lesion_diameters_Pixel_": [10.0, 6.0],
        "Normalized_lesion_location": [0.4, 0.3, 0.5],
        "Coarse_lesion_type": 7,
        "Possibly_noisy": 0,
        "Slice_range": [1, 30],
        "Spacing_mm_px_": [0.75, 0.75, interval_mm],
        "Image_size": [32, 40],
        "DICOM_windows": [-175, 275],
        "Patient_gender": "F",
        "Patient_age": 61,
        "Train_Val_Test": 1,
    }
    row.update(overrides)
    return row


def _profile_hu(number: int) -> np.ndarray:
    """Slice ``number`` of the synthetic series: n^2 HU plus a column ramp (nonlinear in n)."""
    return number**2 + np.tile(np.arange(40, dtype=np.float64), (32, 1))


def _write_series(images_dir: Path, series: str, numbers: list[int]) -> None:
    for n in numbers:
        write_png_hu(images_dir / series / f"{n:03d}.png", _profile_hu(n))


# --------------------------------------------------------------------------- tables


def test_official_test_table_counts(shared_data: Path) -> None:
    table = shared_data / "deeplesion_tables" / "DL_info_niftiID_test.csv"
    keys = read_dl_info(table, drop_noisy=False)
    assert len(keys) == 4831
    assert sum(k.num_lesions for k in keys) == 4927
    assert sum(int(k.noisy.sum()) for k in keys) == 15
    lesions_at = lambda s: sum(k.num_lesions for k in keys if k.slice_interval_mm == s)  # noqa: E731
    assert lesions_at(1.0) == 2314
    assert lesions_at(5.0) == 2469
    assert {k.split for k in keys} == {3}
    clean = read_dl_info(table)  # drop_noisy=True by default
    assert sum(k.num_lesions for k in clean) == 4927 - 15
    assert not any(k.noisy.any() for k in clean)
    assert read_dl_info(table, split="train") == []
    assert len(read_dl_info(table, split="test", drop_noisy=False)) == 4831


def test_official_test_table_first_row_values(shared_data: Path) -> None:
    keys = read_dl_info(shared_data / "deeplesion_tables" / "DL_info_niftiID_test.csv", drop_noisy=False)
    first = keys[0]
    assert first.file_name == "000001_01_01_109.png"
    assert first.series_dir == "000001_01_01"
    assert first.slice_index == 109
    assert first.spacing_yx_mm == (0.488281, 0.488281)
    assert first.slice_interval_mm == 5.0
    np.testing.assert_array_equal(first.boxes_px, [[226.169, 90.0204, 241.252, 111.977]])
    np.testing.assert_array_equal(
        first.recist_px, [[233.537, 95.0204, 234.057, 106.977, 231.169, 101.605, 236.252, 101.143]]
    )
    np.testing.assert_array_equal(first.diameters_px, [[11.9677, 5.10387]])
    assert first.lesion_types.tolist() == [3]
    assert first.slice_range.tolist() == [103, 115]
    assert first.image_size.tolist() == [512, 512]
    assert (first.age, first.gender, first.split) == (62.0, "F", 3)
    # 000001_02_01_017.png is its own key slice; two key slices of one series stay apart.
    second_series = [k for k in keys if k.series_dir == "000001_02_01"]
    assert [k.slice_index for k in second_series] == [14, 17]


def test_lesions_grouped_per_key_slice(shared_data: Path) -> None:
    keys = read_dl_info(shared_data / "deeplesion_tables" / "DL_info_niftiID_test.csv", drop_noisy=False)
    names = [k.file_name for k in keys]
    assert len(set(names)) == len(names)
    multi = [k for k in keys if k.num_lesions > 1]
    assert sum(k.num_lesions - 1 for k in multi) == 4927 - 4831
    for k in multi:
        assert k.boxes_px.shape == (k.num_lesions, 4)
        assert k.recist_px.shape == (k.num_lesions, 8)
        assert np.all(k.boxes_px[:, 2] > k.boxes_px[:, 0]) and np.all(k.boxes_px[:, 3] > k.boxes_px[:, 1])


def test_sample_tables(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    sample = shared_data / "deeplesion_sample"
    keys = read_dl_info(sample / "DL_info.csv")
    assert sum(k.num_lesions for k in keys) == 22
    assert {k.split for k in keys} == {2, 3}
    assert len(read_dl_info(sample / "DL_info.csv", split="val")) + len(
        read_dl_info(sample / "DL_info.csv", split=SPLITS["test"])
    ) == len(keys)
    # key_slices.csv: all 27 key slices, 5 with empty columns, plus an extra Image_path column.
    with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
        all_keys = read_dl_info(sample / "key_slices.csv")
    assert sum(k.num_lesions for k in all_keys) == 22
    assert "skipped 5 row(s) with empty required fields" in caplog.text


def test_recist_box_is_deeplesions_box(shared_data: Path) -> None:
    """Every real row's Bounding_boxes is its RECIST endpoints' extent widened by 5 px."""
    keys = read_dl_info(shared_data / "deeplesion_sample" / "DL_info.csv")
    pairs = [(box, recist) for key in keys for box, recist in zip(key.boxes_px, key.recist_px)]
    assert len(pairs) == 22
    for box, recist in pairs:
        np.testing.assert_allclose(recist_box(recist), box, atol=1e-3)


def test_recist_box_rule_and_errors() -> None:
    # Long axis (10, 20) -> (30, 24), short axis (22, 15) -> (18, 29): extent x 10..30, y 15..29.
    assert recist_box([10, 20, 30, 24, 22, 15, 18, 29]) == [5.0, 10.0, 35.0, 34.0]
    assert recist_box([10, 20, 30, 24, 22, 15, 18, 29], padding_px=0.0) == [10.0, 15.0, 30.0, 29.0]
    with pytest.raises(ValueError, match="8 finite numbers"):
        recist_box([1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="8 finite numbers"):
        recist_box([1.0, 2.0, 3.0, float("nan"), 5.0, 6.0, 7.0, 8.0])


def test_sample_pngs_are_plausible_hu(shared_data: Path) -> None:
    sample = shared_data / "deeplesion_sample"
    for key in read_dl_info(sample / "DL_info.csv"):
        hu = read_png_hu(key.png_path(sample / "Images_png"))
        assert hu.dtype == np.int16 and hu.shape == (512, 512)
        assert -1030 <= np.median(hu[:20, :20]) <= -900  # air outside the body
        assert 0.3 < np.mean(hu < -900) < 0.85
        assert np.mean((hu > -200) & (hu < 300)) > 0.15  # soft tissue
        x1, y1, x2, y2 = key.boxes_px[0].astype(int)
        assert -100 < np.median(hu[y1:y2, x1:x2]) < 250  # liver lesions


def test_write_dl_info_header_and_round_trip(shared_data: Path, tmp_path: Path) -> None:
    official_header = (shared_data / "deeplesion_tables" / "DL_info.csv").read_text().splitlines()[0]
    rows = [_row("000003_02_01_015.png", 0.8), _row("000003_02_01_015.png", 0.8, Coarse_lesion_type=4),
            _row("000004_01_01_007.png", 5.0, Train_Val_Test=2, Possibly_noisy=1)]
    path = tmp_path / "DL_info.csv"
    write_dl_info(path, rows)
    lines = path.read_text().splitlines()
    assert lines[0] == official_header
    assert ",".join(DL_INFO_COLUMNS) == official_header
    assert lines[1] == (
        '000003_02_01_015.png,3,2,1,15,"10.5, 12, 20.5, 12, 15.5, 9, 15.5, 15","10.5, 9, 20.5, 15",'
        '"10, 6","0.4, 0.3, 0.5",7,0,"1, 30","0.75, 0.75, 0.8","32, 40","-175, 275",F,61,1'
    )
    keys = read_dl_info(path, drop_noisy=False)
    assert [k.num_lesions for k in keys] == [2, 1]
    assert keys[0].lesion_types.tolist() == [7, 4]
    assert keys[0].slice_interval_mm == 0.8 and keys[0].spacing_yx_mm == (0.75, 0.75)
    assert keys[1].split == 2 and keys[1].noisy.tolist() == [True]
    assert [k.file_name for k in read_dl_info(path)] == ["000003_02_01_015.png"]


def test_malformed_tables_raise_clear_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "DL_info.csv"
    write_dl_info(path, [_row("000001_01_01_005.png", 1.0), _row("000001_01_01_006.png", 1.0,
                                                                   Bounding_boxes="1, 2, x, 4")])
    with pytest.raises(CtlesionError, match=r"line 3, column Bounding_boxes") as info:
        read_dl_info(path)
    assert str(path) in str(info.value)

    write_dl_info(path, [_row("000001_01_01_005.png", 1.0, Spacing_mm_px_="0.7, 0.7")])
    with pytest.raises(CtlesionError, match=r"line 2, column Spacing_mm_px_: expected 3"):
        read_dl_info(path)

    write_dl_info(path, [_row("000001_01_01_005.png", 1.0, Train_Val_Test=7)])
    with pytest.raises(CtlesionError, match="Train_Val_Test"):
        read_dl_info(path)

    write_dl_info(path, [_row("000001_01_01_005.png", 1.0, File_name="series_5.png")])
    with pytest.raises(CtlesionError, match="File_name"):
        read_dl_info(path)

    text = path.read_text().replace("Bounding_boxes", "Boxes")
    path.write_text(text)
    with pytest.raises(CtlesionError, match="missing DL_info column"):
        read_dl_info(path)

    with pytest.raises(CtlesionError, match="not found"):
        read_dl_info(tmp_path / "absent.csv")
    with pytest.raises(CtlesionError, match="unknown split"):
        read_dl_info(path, split="training")

    write_dl_info(path, [_row("000001_01_01_005.png", 1.0), _row("000001_01_01_006.png", 1.0, Spacing_mm_px_="")])
    with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
        keys = read_dl_info(path)
    assert [k.file_name for k in keys] == ["000001_01_01_005.png"]
    assert "skipped 1 row(s) with empty required fields (lines 3)" in caplog.text


# --------------------------------------------------------------------------- PNG slices


def test_png_round_trip_and_clipping(tmp_path: Path) -> None:
    hu = np.array([[-1024.4, -1000.0, 0.0, 39.6], [3071.0, -40000.0, 40000.0, 1.5]])
    path = tmp_path / "s" / "001.png"
    write_png_hu(path, hu)
    back = read_png_hu(path)
    assert back.dtype == np.int16
    np.testing.assert_array_equal(back, [[-1024, -1000, 0, 40], [3071, -32768, 32767, 2]])
    import cv2

    stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert stored.dtype == np.uint16 and stored[0, 2] == 32768


def test_png_errors(tmp_path: Path) -> None:
    import cv2

    with pytest.raises(CtlesionError, match="not found"):
        read_png_hu(tmp_path / "absent.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(CtlesionError, match="cannot decode"):
        read_png_hu(bad)
    eight_bit = tmp_path / "eight.png"
    cv2.imwrite(str(eight_bit), np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(CtlesionError, match="16-bit"):
        read_png_hu(eight_bit)


def test_series_slice_indices(tmp_path: Path) -> None:
    _write_series(tmp_path, "000001_01_01", [3, 1, 12])
    (tmp_path / "000001_01_01" / "notes.txt").write_text("x")
    (tmp_path / "000001_01_01" / "thumb_2.png").write_bytes(b"")
    assert series_slice_indices(tmp_path / "000001_01_01") == [1, 3, 12]
    with pytest.raises(CtlesionError, match="series folder not found"):
        series_slice_indices(tmp_path / "000009_01_01")


# --------------------------------------------------------------------------- windows


def _key(tmp_path: Path, file_name: str, interval_mm: float, slice_range: list[int]):
    table = tmp_path / f"{file_name}.csv"
    write_dl_info(table, [_row(file_name, interval_mm, Slice_range=slice_range)])
    return read_dl_info(table)[0]


def _blend(position: float) -> np.ndarray:
    """Hand-computed linear blend of the synthetic slices at a fractional slice number."""
    lo, hi = int(np.floor(position)), int(np.ceil(position))
    w = position - lo
    return (1 - w) * _profile_hu(lo) + w * _profile_hu(hi)


@pytest.mark.parametrize("interval_mm", [0.8, 0.7])
def test_thin_window_interpolates_at_j_times_r(tmp_path: Path, interval_mm: float, monkeypatch) -> None:
    images = tmp_path / "Images_png"
    _write_series(images, "000001_01_01", list(range(1, 31)))
    key = _key(tmp_path, "000001_01_01_015.png", interval_mm, [1, 30])
    reads: list[str] = []
    real_read = dl.read_png_hu
    monkeypatch.setattr(dl, "read_png_hu", lambda p: reads.append(Path(p).name) or real_read(p))
    window, network_mm = load_key_slice_window(images, key, num_slices=7)
    assert network_mm == 2.0
    assert window.shape == (7, 32, 40) and window.dtype == np.float32
    assert len(reads) == len(set(reads))  # each PNG read once
    step = 2.0 / interval_mm
    for j in range(-3, 4):
        np.testing.assert_allclose(window[3 + j], _blend(15 + j * step), rtol=0, atol=1e-3)
    if interval_mm == 0.8:
        # Exactly the slices with a non-zero weight are read.
        assert sorted(reads) == [f"{n:03d}.png" for n in (7, 8, 10, 12, 13, 15, 17, 18, 20, 22, 23)]
        # j = 2: 5 source slices away exactly; j = 3: halfway between 7 and 8 slices away.
        np.testing.assert_allclose(window[5], _profile_hu(20), atol=1e-4)
        np.testing.assert_allclose(window[6], 0.5 * _profile_hu(22) + 0.5 * _profile_hu(23), atol=1e-4)
        np.testing.assert_allclose(window[0], 0.5 * _profile_hu(7) + 0.5 * _profile_hu(8), atol=1e-4)
    else:
        # j = 2: 40/7 = 5.714 slices -> 20 and 21 with weight 5/7 on 21 (not the 6/7 of r/s alone).
        np.testing.assert_allclose(window[5], (2 / 7) * _profile_hu(20) + (5 / 7) * _profile_hu(21), atol=1e-3)
        np.testing.assert_allclose(window[6], (3 / 7) * _profile_hu(23) + (4 / 7) * _profile_hu(24), atol=1e-3)


def test_thick_window_uses_adjacent_slices_and_replicates_edges(tmp_path: Path) -> None:
    images = tmp_path / "Images_png"
    _write_series(images, "000002_01_01", list(range(1, 11)))
    key = _key(tmp_path, "000002_01_01_005.png", 5.0, [1, 10])
    window, network_mm = load_key_slice_window(images, key, num_slices=3)
    assert network_mm == 5.0
    for d, n in enumerate([4, 5, 6]):
        np.testing.assert_array_equal(window[d], _profile_hu(n))
    edge = _key(tmp_path, "000002_01_01_002.png", 5.0, [1, 10])
    window, _ = load_key_slice_window(images, edge, num_slices=5)
    for d, n in enumerate([1, 1, 2, 3, 4]):
        np.testing.assert_array_equal(window[d], _profile_hu(n))


def test_missing_neighbours_use_nearest_present_slice(tmp_path: Path, caplog) -> None:
    images = tmp_path / "Images_png"
    _write_series(images, "000003_01_01", [8, 9, 10, 13])
    key = _key(tmp_path, "000003_01_01_010.png", 5.0, [8, 13])
    with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
        window, _ = load_key_slice_window(images, key, num_slices=5)
    for d, n in enumerate([8, 9, 10, 10, 13]):  # 11 -> 10 (nearest), 12 -> 13
        np.testing.assert_array_equal(window[d], _profile_hu(n))
    assert "single-slice context" not in caplog.text
    assert "2 of 4 neighbour slice(s) absent; nearest present slices used" in caplog.text

    _write_series(images, "000004_01_01", [20])
    only_key = _key(tmp_path, "000004_01_01_020.png", 1.0, [10, 30])
    with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
        window, network_mm = load_key_slice_window(images, only_key, num_slices=7)
    assert network_mm == 2.0
    np.testing.assert_array_equal(window, np.broadcast_to(_profile_hu(20), (7, 32, 40)))
    assert caplog.text.count("single-slice context: neighbours replicated") == 1

    absent_key = _key(tmp_path, "000004_01_01_021.png", 1.0, [10, 30])
    with pytest.raises(CtlesionError, match="key slice PNG not found"):
        load_key_slice_window(images, absent_key, num_slices=3)


def test_real_sample_window_replicates_the_key_slice(shared_data: Path, caplog) -> None:
    sample = shared_data / "deeplesion_sample"
    key = read_dl_info(sample / "DL_info.csv")[0]
    with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
        window, network_mm = load_key_slice_window(sample / "Images_png", key, num_slices=3)
    assert network_mm == max(2.0, key.slice_interval_mm)
    key_hu = read_png_hu(key.png_path(sample / "Images_png"))
    for d in range(3):
        np.testing.assert_array_equal(window[d], key_hu)
    assert "single-slice context: neighbours replicated" in caplog.text
