"""Issue 11: input checks a user met on a fresh clone.

1. non-finite voxels (NaN, +/-inf, from NIfTI scaling or DICOM rescale) are set to air with a
   warning, and a volume without any finite voxel is refused;
2. a corrupt compressed DICOM slice gives one warning line, never a library traceback;
3. a lone Enhanced (multi-frame) CT file is a whole series; a lone classic slice is refused;
4. ``ctlesion info`` on a NIfTI file: no DICOM-only hints, the whole description.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless
from synthetic_dicom import ROWS, stored_pattern, write_series, write_slice, z_positions
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.errors import CtlesionError
from ctlesion.io import discover, pending_volumes, read_volume, read_volumes
from ctlesion.io.dicom import read_dicom_series
from ctlesion.io.nifti import read_nifti

AIR_HU = -1024  # the documented value of air, SPEC section 3


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    output = result.output.strip()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in output and len(errors) == 1, output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def save_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    nib.save(nib.Nifti1Image(data, np.diag([-0.8, -0.7, 2.5, 1.0]) if affine is None else affine), path)
    return path


@pytest.fixture()
def nan_patch_nifti(tmp_path) -> Path:
    """float32 (x, y, z) = 40 x 30 x 12 of 40 HU with a 20 x 20 x 5 NaN patch on slices 3-7 (k axis)."""
    data = np.full((40, 30, 12), 40.0, np.float32)
    data[10:30, 5:25, 3:8] = np.nan
    return save_nifti(tmp_path / "nan_patch.nii.gz", data)


@pytest.fixture()
def no_network(monkeypatch):
    """Skip the detector's forward passes (slow on CPU): no lesions, the same interval."""
    import ctlesion.detect

    def no_lesions(model, volume, **kwargs):
        return [], max(volume.slice_interval_mm, model.config.ref_interval_mm)

    monkeypatch.setattr(ctlesion.detect, "detect_volume", no_lesions)


# --------------------------------------------------------------------------- 1. non-finite voxels


def test_nifti_nan_patch_becomes_air_with_a_warning(nan_patch_nifti, caplog):
    with caplog.at_level(logging.WARNING):
        volume = read_nifti(nan_patch_nifti)
    assert volume.hu.dtype == np.float32 and np.all(np.isfinite(volume.hu))
    # the affine is an LPS-ordered array (diag -, -, +): z = k, y = j, x = i
    np.testing.assert_array_equal(volume.hu[3:8, 5:25, 10:30], AIR_HU)
    assert np.count_nonzero(volume.hu == AIR_HU) == 2000 and np.count_nonzero(volume.hu == 40.0) == volume.hu.size - 2000
    (warning,) = [w for w in volume.meta["warnings"] if "not finite" in w]
    assert "2000 voxels" in warning and "2000 NaN" in warning and f"air ({AIR_HU} HU)" in warning
    assert "5 slices (z = 3 to 7)" in warning
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "not finite" in r.getMessage()]
    assert logged == [f"{nan_patch_nifti}: {warning}"]  # the log line names the file


def test_nifti_without_a_finite_voxel_is_refused(tmp_path):
    path = save_nifti(tmp_path / "all_nan.nii", np.full((6, 5, 4), np.nan, np.float32))
    with pytest.raises(CtlesionError, match="has no finite voxel") as raised:
        read_nifti(path)
    assert raised.value.path == path and "\n" not in str(raised.value)
    with pytest.raises(CtlesionError, match="has no finite voxel"):
        read_volumes(path)
    # info reads a float NIfTI's data (it may hold NaN): the volume is listed, as unreadable
    (info,) = discover(path, scan_values=True).series
    assert not info.selectable and not info.selected and "no finite voxel" in info.unreadable


def test_nifti_scaling_that_overflows_to_inf(tmp_path, caplog):
    data = np.zeros((5, 4, 3), np.int16)
    data[1, 2, 0], data[3, 1, 2] = 30000, -30000  # x scl_slope 3e38 = +/-9e42: beyond float32, inf
    image = nib.Nifti1Image(data, np.diag([-1.0, -1.0, 2.0, 1.0]))
    image.header.set_slope_inter(3e38, 0.0)
    path = tmp_path / "scaled.nii"
    nib.save(image, path)
    with caplog.at_level(logging.WARNING):
        volume = read_nifti(path)
    assert volume.hu[0, 2, 1] == AIR_HU and volume.hu[2, 1, 3] == AIR_HU
    assert np.all(np.isfinite(volume.hu)) and np.count_nonzero(volume.hu) == 2
    (warning,) = [w for w in volume.meta["warnings"] if "not finite" in w]
    assert "2 voxels" in warning and "1 +inf" in warning and "1 -inf" in warning
    assert not any("overflow" in r.getMessage() for r in caplog.records)


def test_dicom_rescale_that_overflows_is_air_and_all_overflowing_is_refused(tmp_path, caplog):
    folder = tmp_path / "series"
    paths = write_series(folder, z_positions([0, 2, 4]), slope=0.5)
    write_slice(paths[1], (-10.0, 20.0, 2.0), stored_pattern(1), slope=1e38)  # 1000 x 1e38 > float32 max
    with caplog.at_level(logging.WARNING):
        volume = read_dicom_series(folder)
    assert volume.hu.dtype == np.float32 and np.all(volume.hu[1] == AIR_HU)
    np.testing.assert_array_equal(volume.hu[0], stored_pattern(0) * 0.5 - 1024)
    (warning,) = [w for w in volume.meta["warnings"] if "not finite" in w]
    assert f"{ROWS * 5} voxels" in warning and "slice001.dcm" in warning
    assert any(str(folder) in r.getMessage() and "not finite" in r.getMessage() for r in caplog.records)
    for i, path in enumerate(paths):
        write_slice(path, (-10.0, 20.0, 2.0 * i), stored_pattern(i), slope=1e38)
    with pytest.raises(CtlesionError, match=f"^{folder}: has no finite voxel"):
        read_dicom_series(folder)


def test_info_and_detect_report_non_finite_voxels(nan_patch_nifti, tmp_path, tiny_weights, no_network):
    document = json.loads(invoke("info", "--json", nan_patch_nifti).stdout)
    (series,) = document["series"]
    assert series["selected"] and any("2000 voxels" in w and "not finite" in w for w in series["warnings"])
    out = tmp_path / "out" / "results.json"
    result = invoke("detect", nan_patch_nifti, "--out", out, "--weights", tiny_weights, "--device", "cpu")
    assert result.exit_code == 0, result.output
    (study,) = json.loads(out.read_text())["studies"]
    assert any("2000 voxels" in w and "not finite" in w for w in study["series"]["warnings"])
    all_nan = save_nifti(tmp_path / "all_nan.nii.gz", np.full((8, 8, 3), np.nan, np.float32))
    assert_one_error_line(invoke("detect", all_nan, "--out", tmp_path / "o2" / "r.json", "--weights", tiny_weights,
                                 "--device", "cpu"), str(all_nan), "has no finite voxel")
    assert not (tmp_path / "o2" / "r.json").exists()


# --------------------------------------------------------------------------- 2. decoder log noise


@pytest.mark.parametrize("syntax, cut", [(RLELossless, 100), (JPEG2000Lossless, 200)], ids=["rle", "jpeg2000"])
def test_corrupt_compressed_slice_gives_one_warning_line_and_no_traceback(tmp_path, caplog, capsys, syntax, cut):
    rows, columns = 40, 36  # OpenJPEG needs more than a few pixels per side
    paths = [write_slice(tmp_path / f"f{i}", (0, 0, 2.0 * i), stored_pattern(i, rows, columns), syntax=syntax)
             for i in range(4)]
    raw = paths[1].read_bytes()
    paths[1].write_bytes(raw[: len(raw) - cut])  # the header is whole, the pixel data are cut short
    with caplog.at_level(logging.DEBUG):
        volume = read_dicom_series(tmp_path)
    assert volume.meta["slice_paths"][1] is None  # skipped, and the gap interpolated
    assert not [r for r in caplog.records if r.exc_info or r.exc_text or r.stack_info]
    assert not [r for r in caplog.records if r.name.startswith("pydicom")]
    assert "Traceback" not in caplog.text and "Traceback" not in capsys.readouterr().err
    about_f1 = [r for r in caplog.records if r.levelno >= logging.WARNING and "f1" in r.getMessage()]
    assert len(about_f1) == 1 and "\n" not in about_f1[0].getMessage(), [r.getMessage() for r in about_f1]
    assert "f1: corrupt or truncated pixel data" in about_f1[0].getMessage()
    assert [s["path"] for s in volume.meta["skipped"]] == [str(paths[1])]


# --------------------------------------------------------------------------- 3. lone Enhanced multi-frame file


@pytest.mark.data
def test_lone_enhanced_multiframe_file_is_a_series(shared_data, tmp_path):
    source = shared_data / "pydicom_small" / "eCT_Supplemental.dcm"
    (info,) = discover(source).series
    assert (info.num_slices, info.num_images, info.selected) == (2, 2, True)
    (pending,) = pending_volumes(source)
    volume = pending.read()
    assert volume.shape_zyx == (2, 512, 512) and volume.slice_interval_mm == pytest.approx(10.0)
    assert volume.meta["slice_frames"] == [1, 0]
    shutil.copy(source, tmp_path / "eCT")  # the same file in a folder: the same volume
    np.testing.assert_array_equal(volume.hu, read_dicom_series(tmp_path).hu)
    assert [v.shape_zyx for v in read_volumes(source)] == [(2, 512, 512)]
    assert read_volume(source).shape_zyx == (2, 512, 512)
    result = invoke("info", "--json", source)
    assert result.exit_code == 0, result.output
    (series,) = json.loads(result.stdout)["series"]
    assert series["num_slices"] == 2 and series["selected"]


@pytest.mark.data
def test_lone_classic_slice_keeps_its_error(shared_data):
    lone = shared_data / "pydicom_small" / "CT_small.dcm"
    for read in (discover, pending_volumes, read_volumes, read_volume):
        with pytest.raises(CtlesionError, match="is a single DICOM file; pass the folder"):
            read(lone)
    assert_one_error_line(invoke("info", lone), str(lone), "is a single DICOM file; pass the folder")


def test_lone_synthetic_slice_keeps_its_error(tmp_path):
    lone = write_slice(tmp_path / "one.dcm", (0, 0, 0), stored_pattern(0))
    with pytest.raises(CtlesionError, match="is a single DICOM file; pass the folder"):
        pending_volumes(lone)
    with pytest.raises(CtlesionError, match="is not a folder"):
        read_dicom_series(lone)


# --------------------------------------------------------------------------- 4. info on NIfTI


LONG_NAME = "patient_0042_abdomen_portal_venous_phase_1mm_recon_with_a_long_name.nii.gz"


@pytest.mark.parametrize("columns", [None, "120"], ids=["pipe", "terminal"])
def test_info_on_nifti_shows_the_whole_name_and_no_dicom_hints(tmp_path, monkeypatch, columns):
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    path = save_nifti(tmp_path / LONG_NAME, np.zeros((8, 7, 6), np.int16))
    result = invoke("info", path)
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "--series" not in text and "--all-series" not in text and "selection rule" not in text
    assert "detect reads it (a NIfTI file holds one volume)" in text
    assert "…" not in text  # nothing cut short
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().startswith("[1]"))
    if columns is None:  # a file or pipe: the table is as wide as it needs, the name whole on its row
        assert LONG_NAME in lines[start]
    else:  # a terminal narrower than the table: the name folds inside its cell, every character kept
        cell = [lines[start].split()[1]]
        for line in lines[start + 1:]:
            if not line.strip():
                break
            cell.append(line.split()[0])
        assert "".join(cell) == LONG_NAME, lines[start:start + 8]
    (series,) = json.loads(invoke("info", "--json", path).stdout)["series"]
    assert series["description"] == LONG_NAME


def test_info_on_dicom_keeps_its_hints(tmp_path, monkeypatch):
    monkeypatch.delenv("COLUMNS", raising=False)
    write_series(tmp_path / "s", z_positions([0, 2, 4]))
    nii = save_nifti(tmp_path / "scan.nii", np.zeros((4, 4, 3), np.int16))
    text = invoke("info", tmp_path / "s", nii).stdout
    assert text.count("choose another with --series, or all with --all-series") == 1
    assert "selection rule:" in text
