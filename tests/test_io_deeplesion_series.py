"""A DeepLesion series folder read as a Volume (spacing from DL_info.csv), and via read_volume/info."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.errors import CtlesionError
from ctlesion.io import discover, read_volume
from ctlesion.io.deeplesion import DL_INFO_COLUMNS, write_dl_info, write_png_hu


def make_dataset(root, numbers, interval_mm=1.25):
    series = root / "Images_png" / "000123_01_02"
    for n in numbers:
        write_png_hu(series / f"{n:03d}.png", np.full((8, 10), n * 10 - 1000, dtype=np.int16))
    row = {column: "" for column in DL_INFO_COLUMNS}
    row.update(File_name=f"000123_01_02_{numbers[0]:03d}.png", Patient_index=123, Study_index=1, Series_ID=2,
               Key_slice_index=numbers[0], Measurement_coordinates="2, 2, 6, 6, 2, 6, 6, 2",
               Bounding_boxes="2, 2, 6, 6", Lesion_diameters_Pixel_="5.6, 5.6",
               Normalized_lesion_location="0.5, 0.5, 0.5", Coarse_lesion_type=4, Possibly_noisy=0,
               Slice_range=f"{numbers[0]}, {numbers[-1]}", Spacing_mm_px_=f"0.7, 0.8, {interval_mm}",
               Image_size="8, 10", DICOM_windows="-175, 275", Patient_gender="F", Patient_age=50,
               Train_Val_Test=3)
    write_dl_info(root / "DL_info.csv", [row])
    return series


def test_reads_consecutive_slices_with_dl_info_spacing(tmp_path):
    series = make_dataset(tmp_path, [7, 8, 9, 10])
    volume = read_volume(series)
    assert volume.shape_zyx == (4, 8, 10) and volume.hu.dtype == np.int16
    assert volume.spacing_zyx_mm == (1.25, 0.7, 0.8)
    np.testing.assert_array_equal(volume.hu[:, 0, 0], [-930, -920, -910, -900])
    assert volume.meta["first_slice_number"] == 7 and volume.origin_lps_mm[2] == pytest.approx(8.75)
    info = discover(series).series[0]
    assert info.num_slices == 4 and info.slice_interval_mm == 1.25 and info.rows == 8 and info.columns == 10


def test_gap_keeps_the_longest_run_with_a_warning(tmp_path):
    series = make_dataset(tmp_path, [1, 2, 5, 6, 7])
    volume = read_volume(series)
    assert volume.meta["first_slice_number"] == 5 and volume.shape_zyx[0] == 3
    assert any("left out 1-2" in w for w in volume.meta["warnings"])


def test_missing_dl_info_row_is_a_clear_error(tmp_path):
    series = make_dataset(tmp_path, [1, 2])
    other = series.parent / "000999_01_01"
    write_png_hu(other / "001.png", np.zeros((8, 10)))
    with pytest.raises(CtlesionError, match="has no row"):
        read_volume(other)


def test_info_lists_the_series(tmp_path):
    series = make_dataset(tmp_path, [3, 4, 5])
    result = CliRunner().invoke(app, ["info", str(series), "--json"])
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)["series"][0]
    assert entry["num_slices"] == 3 and entry["slice_interval_mm"] == 1.25 and entry["selected"]


def test_real_sample_folder(shared_data):
    series = shared_data / "deeplesion_sample" / "Images_png" / "002648_01_01"
    volume = read_volume(series)
    with open(shared_data / "deeplesion_sample" / "DL_info.csv") as handle:
        row = next(r for r in csv.DictReader(handle) if r["File_name"].startswith("002648_01_01"))
    assert volume.spacing_zyx_mm[0] == float(row["Spacing_mm_px_"].split(",")[2])
    assert volume.shape_zyx[1:] == (512, 512) and volume.hu.min() <= -1000
