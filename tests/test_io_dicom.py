"""Tests of the DICOM series reader (and `read_volume` dispatch) on synthetic and real series."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    RLELossless,
    generate_uid,
)
from synthetic_dicom import (
    AXIAL,
    COLUMNS,
    PIXEL_SPACING_MM,
    ROWS,
    TILT_DEG,
    TILTED,
    stored_pattern,
    tilt_phantom_hu,
    write_series,
    write_slice,
    write_tilted_series,
    z_positions,
)

from ctlesion.errors import CtlesionError
from ctlesion.io import discover, pending_volumes, read_volume, read_volumes
from ctlesion.io.dicom import read_dicom_series
from ctlesion.io.nifti import read_nifti, write_nifti
from ctlesion.io.series import discover_series, select_series


def expected_lps_mm(ipp, orientation, column: float, row: float) -> np.ndarray:
    """DICOM PS3.3 C.7.6.2.1.1: P = IPP + column * dc * row_cosine + row * dr * column_cosine."""
    row_cosine, column_cosine = np.array(orientation[:3]), np.array(orientation[3:])
    return (
        np.asarray(ipp)
        + column * PIXEL_SPACING_MM[1] * row_cosine
        + row * PIXEL_SPACING_MM[0] * column_cosine
    )


# --------------------------------------------------------------------------- sorting, geometry


@pytest.mark.parametrize(
    "orientation",
    [AXIAL, (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0), (0.8, 0.6, 0.0, -0.6, 0.8, 0.0)],
    ids=["head-first", "normal-towards-feet", "rotated-in-plane"],
)
def test_reversed_order_sorted_by_position_with_exact_geometry(tmp_path, orientation):
    # Files and InstanceNumbers run opposite to the positions: only IPP may decide the order.
    z_values = [30.0, 27.5, 25.0, 22.5, 20.0]
    positions = z_positions(z_values)
    write_series(tmp_path, positions, instance_numbers=[1, 2, 3, 4, 5], orientation=orientation)
    volume = read_dicom_series(tmp_path)

    assert volume.shape_zyx == (5, ROWS, COLUMNS)
    assert volume.hu.dtype == np.int16
    assert volume.spacing_zyx_mm == pytest.approx((2.5, 0.7, 0.8))
    normal = np.cross(orientation[:3], orientation[3:])
    along = np.array([np.dot(p, normal) for p in positions])
    order = np.argsort(along)  # sorted by position along the normal
    for k, slice_id in enumerate(order):
        np.testing.assert_array_equal(volume.hu[k], stored_pattern(slice_id).astype(np.int32) - 1024)
        # every voxel sits where the DICOM formula puts it
        for column, row in [(0, 0), (4, 0), (0, 5), (3, 2)]:
            np.testing.assert_allclose(
                volume.voxel_to_lps(np.array([column, row, k])),
                expected_lps_mm(positions[slice_id], orientation, column, row),
                atol=1e-9,
            )
    np.testing.assert_allclose(volume.origin_lps_mm, positions[order[0]])
    np.testing.assert_allclose(volume.direction_lps[:, 2], normal, atol=1e-12)
    assert volume.meta["warnings"] == []
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(0.0, abs=1e-9)
    assert volume.meta["slice_thickness_mm"] == 2.5
    assert volume.meta["modality"] == "CT"
    assert volume.meta["series_uid"] == ""
    assert volume.meta["description"] == "synthetic"
    assert volume.meta["series_number"] == 3
    assert volume.meta["num_files"] == 5
    assert volume.meta["slice_paths"] == [str(tmp_path / f"slice{i:03d}.dcm") for i in order]


def test_shuffled_names_without_extension_in_subfolders(tmp_path):
    rng = np.random.default_rng(0)
    z_values = np.arange(6) * 1.25 - 3.0
    permutation = rng.permutation(6)
    names = [f"sub{i % 2}/IM{code:05d}" for i, code in enumerate(rng.integers(0, 99999, 6))]
    folder = tmp_path / "study"
    for i in range(2):
        (folder / f"sub{i}").mkdir(parents=True)
    # slice i is written at z_values[permutation[i]] with a random InstanceNumber
    write_series(
        folder,
        z_positions(z_values[permutation]),
        names=names,
        instance_numbers=list(rng.permutation(6) + 1),
    )
    volume = read_dicom_series(folder)
    assert volume.shape_zyx == (6, ROWS, COLUMNS)
    assert volume.slice_interval_mm == pytest.approx(1.25)
    for k in range(6):
        slice_id = int(np.flatnonzero(permutation == k)[0])
        np.testing.assert_array_equal(volume.hu[k], stored_pattern(slice_id).astype(np.int32) - 1024)
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], z_values)


def linear_hu(z_mm: float) -> float:
    """A phantom whose HU grow linearly along z, so that linear interpolation is exact."""
    return -200.0 + 30.0 * z_mm


def write_linear_series(folder: Path, z_values_mm, **kwargs) -> list[Path]:
    """Slice at z has stored (Y, X) = pattern + 10 * (linear_hu(z) + 1024), rescale 0.1 / -1024."""
    folder.mkdir(parents=True, exist_ok=True)
    r, c = np.mgrid[0:ROWS, 0:COLUMNS]
    paths = []
    for i, z in enumerate(z_values_mm):
        stored = np.round(10 * (linear_hu(z) + 1024) + 10 * (r * COLUMNS + c)).astype(np.uint16)
        paths.append(write_slice(folder / f"s{i:03d}", (-10.0, 20.0, float(z)), stored, slope=0.1, intercept=-1024.0,
                                 **kwargs))
    return paths


def expected_linear_hu(z_mm: float) -> np.ndarray:
    r, c = np.mgrid[0:ROWS, 0:COLUMNS]
    return linear_hu(z_mm) + (r * COLUMNS + c)


def test_missing_slice_is_interpolated_at_the_median_interval(tmp_path):
    write_linear_series(tmp_path, [0.0, 2.5, 5.0, 10.0, 12.5])
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx == (6, ROWS, COLUMNS)
    assert volume.slice_interval_mm == pytest.approx(2.5)
    assert volume.hu.dtype == np.float32
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], [0, 2.5, 5, 7.5, 10, 12.5])
    for k, z in enumerate(volume.meta["slice_positions_mm"]):  # the missing z = 7.5 is the exact mean
        np.testing.assert_allclose(volume.hu[k], expected_linear_hu(z), atol=1e-3)
    assert volume.meta["slice_paths"][3] is None
    assert volume.meta["slice_paths"][4] == str(tmp_path / "s003")
    assert len(volume.meta["warnings"]) == 1
    warning = volume.meta["warnings"][0]
    assert "missing slices" in warning and "5.00 -> 10.00 mm" in warning
    assert "resampled onto a regular 2.500 mm grid by linear interpolation" in warning
    assert "6 slices from 0.00 to 12.50 mm, 1 of them interpolated" in warning
    # discovery (headers only) says the same thing before any pixel is read
    info = discover_series(tmp_path).series[0]
    assert info.warnings == (warning,)
    assert info.num_slices == 5 and info.slice_interval_mm == pytest.approx(2.5) and info.z_extent_mm == 12.5


def test_varying_steps_are_resampled_onto_a_regular_grid(tmp_path):
    # steps 2, 2, 2.5, 2, 2: median 2, the 2.5 mm step is 25 % off
    write_linear_series(tmp_path, [0.0, 2.0, 4.0, 6.5, 8.5, 10.5])
    volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], [0, 2, 4, 6, 8, 10])
    for k, z in enumerate(volume.meta["slice_positions_mm"]):
        np.testing.assert_allclose(volume.hu[k], expected_linear_hu(z), atol=1e-3)
    assert volume.meta["slice_paths"][:3] == [str(tmp_path / f"s{i:03d}") for i in range(3)]
    assert volume.meta["slice_paths"][3:] == [None, None, None]
    assert "3 of them interpolated" in volume.meta["warnings"][0]


def test_wide_gap_splits_and_keeps_the_largest_block(tmp_path):
    write_linear_series(tmp_path, [0.0, 2.0, 4.0, 6.0, 30.0, 32.0])
    volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], [0, 2, 4, 6])
    np.testing.assert_allclose(volume.origin_lps_mm, (-10.0, 20.0, 0.0))
    for k, z in enumerate([0, 2, 4, 6]):
        np.testing.assert_allclose(volume.hu[k], expected_linear_hu(z), atol=1e-3)
    warning = volume.meta["warnings"][0]
    assert "gaps wider than 3 intervals at 6.00 -> 30.00 mm split the stack" in warning
    assert "left out (30.00 to 32.00 mm (2 slices))" in warning


def test_block_kept_after_a_wide_gap_starts_at_its_own_origin(tmp_path):
    write_linear_series(tmp_path, [0.0, 2.0, 40.0, 42.0, 44.0, 46.0])
    volume = read_dicom_series(tmp_path)
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], [40, 42, 44, 46])
    np.testing.assert_allclose(volume.origin_lps_mm, (-10.0, 20.0, 40.0))
    np.testing.assert_allclose(volume.hu[0], expected_linear_hu(40.0), atol=1e-3)
    assert volume.meta["slice_paths"][0] == str(tmp_path / "s002")


def test_identical_duplicate_is_dropped_with_warning(tmp_path):
    paths = write_series(tmp_path, z_positions([0.0, 3.0, 6.0]))
    shutil.copy(paths[1], tmp_path / "copy_of_slice001")
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 3
    assert volume.slice_interval_mm == pytest.approx(3.0)
    assert any("duplicates" in w for w in volume.meta["warnings"])
    # files are read in sorted path order, so the later name is the dropped copy
    assert volume.meta["skipped"] == [
        {"path": str(tmp_path / "slice001.dcm"), "reason": "duplicate of copy_of_slice001 (same position, identical pixels)"}
    ]
    np.testing.assert_array_equal(volume.hu[1], stored_pattern(1).astype(np.int32) - 1024)


def test_different_slices_at_one_position_are_an_error(tmp_path):
    write_series(tmp_path, z_positions([0.0, 3.0, 6.0]))
    write_slice(tmp_path / "other", (-10.0, 20.0, 3.0), stored_pattern(7))
    with pytest.raises(CtlesionError, match="two different slices at the same position 3.00 mm"):
        read_dicom_series(tmp_path)


def test_gantry_tilt_is_refused_by_default_with_the_angle(tmp_path):
    write_tilted_series(tmp_path, [0.0, 3.0, 6.0, 9.0])
    info = discover_series(tmp_path).series[0]
    assert info.gantry_tilt_deg == pytest.approx(TILT_DEG, abs=1e-6)
    assert info.slice_interval_mm == pytest.approx(3.0 * np.cos(np.radians(TILT_DEG)))
    assert any("gantry tilt of 15.00 deg" in w and "--tilt resample" in w for w in info.warnings)
    with pytest.raises(CtlesionError, match=r"gantry tilt of 15\.00 deg .*refused \(--tilt refuse, the default\); "
                                            r"use --tilt resample"):
        read_dicom_series(tmp_path)
    with pytest.raises(CtlesionError, match="gantry tilt"):
        read_dicom_series(tmp_path, tilt="refuse")
    with pytest.raises(ValueError, match="tilt must be one of"):
        read_dicom_series(tmp_path, tilt="ignore")


def test_gantry_tilt_resampled_onto_an_orthogonal_grid(tmp_path):
    rows, columns = 12, 10
    ipps = write_tilted_series(tmp_path, [0.0, 3.0, 6.0, 9.0], rows, columns)
    volume = read_dicom_series(tmp_path, tilt="resample")
    normal = np.cross(TILTED[:3], TILTED[3:])
    # orthogonal grid: x = row cosine, y = column cosine, z = the slice normal; interval = plane distance
    np.testing.assert_allclose(volume.direction_lps, np.column_stack([TILTED[:3], TILTED[3:], normal]), atol=1e-12)
    np.testing.assert_allclose(volume.direction_lps.T @ volume.direction_lps, np.eye(3), atol=1e-12)
    assert volume.slice_interval_mm == pytest.approx(3.0 * np.cos(np.radians(TILT_DEG)))
    # the table moved 9 mm along z: -9 sin(15 deg) = -2.33 mm along the column cosine -> 4 more rows
    assert volume.shape_zyx == (4, rows + 4, columns)
    assert volume.hu.dtype == np.float32
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(TILT_DEG, abs=1e-6)
    assert any("resampled onto an orthogonal grid with SimpleITK" in w for w in volume.meta["warnings"])
    z, y, x = np.meshgrid(*[np.arange(n) for n in volume.shape_zyx], indexing="ij")
    lps = volume.voxel_to_lps(np.stack([x, y, z], axis=-1))
    covered = 0
    for k, ipp in enumerate(ipps):
        relative = lps[k] - ipp
        assert np.allclose(relative @ normal, 0.0, atol=1e-9)  # slice k stays in its own plane
        u = relative @ np.array(TILTED[:3]) / PIXEL_SPACING_MM[1]  # column index in source slice k
        v = relative @ np.array(TILTED[3:]) / PIXEL_SPACING_MM[0]  # row index
        inside = (u > -1e-6) & (u < columns - 1 + 1e-6) & (v > -1e-6) & (v < rows - 1 + 1e-6)
        outside = (u < -1) | (u > columns) | (v < -1) | (v > rows)
        np.testing.assert_allclose(volume.hu[k][inside], tilt_phantom_hu(lps[k][inside]), atol=0.06)
        assert np.all(volume.hu[k][outside] == -1024)
        covered += int(inside.sum())
    assert covered >= 4 * (rows - 1) * columns  # every source row lands somewhere (sub-pixel shifts)


def test_series_grouping_and_skips_are_explained(tmp_path):
    # A: 5 slices 2 mm, empty UID, 6x5; B: 3 slices 5 mm, empty UID but 4x4 (other geometry);
    # C: 4 slices 2 mm at A's positions with another UID; a 7-slice sagittal series; a localizer.
    write_series(tmp_path / "a", z_positions([0, 2, 4, 6, 8]), description="A")
    folder_b = tmp_path / "b"
    folder_b.mkdir()
    for i, z in enumerate([0, 5, 10]):
        write_slice(folder_b / f"b{i}", (0, 0, z), stored_pattern(i, 4, 4), description="B")
    write_series(tmp_path / "c", z_positions([0, 2, 4, 6]), series_uid="1.2.3.4", description="C")
    sagittal = (0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    write_series(tmp_path / "sag", [(x, 0.0, 0.0) for x in range(7)], orientation=sagittal, description="S")
    write_slice(
        tmp_path / "scout", (0.0, 0.0, 0.0), stored_pattern(0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")
    )
    volume = read_dicom_series(tmp_path)

    # all have the same interval or thicker; A and C share 2 mm, A covers more (8 mm vs 6 mm)
    assert volume.meta["description"] == "A"
    assert volume.shape_zyx == (5, ROWS, COLUMNS)
    reasons = {Path(s["path"]).relative_to(tmp_path).as_posix(): s["reason"] for s in volume.meta["skipped"]}
    assert reasons["scout"].startswith("localizer")
    assert reasons["sag"] == "series #3 'S' (7 images): non-axial orientation (slice normal [-1.0, 0.0, 0.0] in LPS)"
    assert reasons["b"].startswith("series #3 'B' not read: not chosen: slice interval 5.00 mm, series #3 'A' has thinner")
    assert reasons["c"].startswith("series #3 'C' not read: not chosen: same interval, covers 6.0 mm, series #3 'A' covers 8.0")
    assert len(reasons) == 4


def test_non_ct_modality_is_refused_unless_allowed(tmp_path):
    write_series(tmp_path, z_positions([0, 4, 8]), modality="MR", intercept=0.0)
    with pytest.raises(CtlesionError, match=r"modality MR is not CT \(use --allow-non-ct to read it anyway\)"):
        read_dicom_series(tmp_path)
    volume = read_dicom_series(tmp_path, allow_non_ct=True)
    assert volume.meta["modality"] == "MR"
    np.testing.assert_array_equal(volume.hu[2], stored_pattern(2))


def test_ct_series_preferred_over_larger_mr_series(tmp_path):
    write_series(tmp_path / "mr", z_positions(range(6)), modality="MR", series_uid="1.1")
    write_series(tmp_path / "ct", z_positions([0, 5, 10]), series_uid="2.2")
    volume = read_dicom_series(tmp_path, allow_non_ct=True)
    assert volume.meta["modality"] == "CT"
    assert volume.meta["skipped"] == [{
        "path": str(tmp_path / "mr"),
        "reason": "series #3 'synthetic' not read: not chosen: modality MR, and the folder has a CT series",
    }]
    # named explicitly, the MR series is read when allowed, refused otherwise
    assert read_dicom_series(tmp_path, series="1.1", allow_non_ct=True).meta["modality"] == "MR"
    with pytest.raises(CtlesionError, match=r"series #3 'synthetic' cannot be read: modality MR is not CT \(use --allow-non-ct"):
        read_dicom_series(tmp_path, series="1.1")


def test_truncated_and_corrupt_files_are_skipped_with_warnings(tmp_path):
    paths = write_series(tmp_path, z_positions([0, 2, 4, 6, 8, 10]))
    raw = paths[5].read_bytes()
    paths[5].write_bytes(raw[:-20])  # pixel data cut short
    header_cut = tmp_path / "header_cut"
    header_cut.write_bytes(paths[0].read_bytes()[:300])  # cut inside the header
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 5
    assert volume.meta["slice_positions_mm"] == pytest.approx([0, 2, 4, 6, 8])
    warnings = " | ".join(volume.meta["warnings"])
    assert "slice005.dcm" in warnings and "header_cut" in warnings
    skipped = {Path(s["path"]).name for s in volume.meta["skipped"]}
    assert skipped == {"slice005.dcm", "header_cut"}


def test_non_dicom_and_non_image_files_are_skipped(tmp_path):
    write_series(tmp_path, z_positions([0, 2, 4]))
    (tmp_path / "README.txt").write_text("not a DICOM file")
    (tmp_path / ".DS_Store").write_bytes(b"\x00\x01" * 100)
    (tmp_path / "empty").write_bytes(b"")
    text = Dataset()
    text.file_meta = FileMetaDataset()
    text.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"  # Basic Text SR
    text.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    text.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    text.SOPClassUID = text.file_meta.MediaStorageSOPClassUID
    text.Modality = "SR"
    text.save_as(tmp_path / "report.dcm", enforce_file_format=True)
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 3
    reasons = {Path(s["path"]).name: s["reason"] for s in volume.meta["skipped"]}
    assert reasons == {
        "README.txt": "not a DICOM file",
        ".DS_Store": "not a DICOM file",
        "empty": "not a DICOM file",
        "report.dcm": "no pixel data (Basic Text SR Storage)",
    }
    assert volume.meta["warnings"] == []
    assert volume.meta["num_files_scanned"] == 7


def test_rescale_and_padding(tmp_path):
    stored = [stored_pattern(i) for i in range(2)]
    for i, z in enumerate([0.0, 5.0]):
        stored[i][0, 0] = 7  # padding
        write_slice(tmp_path / f"s{i}", (0, 0, z), stored[i], slope=2.0, intercept=-1000.5, padding_value=7)
    volume = read_dicom_series(tmp_path)
    assert volume.hu.dtype == np.float32
    expected = stored[1].astype(np.float64) * 2.0 - 1000.5
    expected[0, 0] = -1024.0
    np.testing.assert_array_equal(volume.hu[1], expected.astype(np.float32))


# --------------------------------------------------------------------------- errors


def test_missing_path_and_file_instead_of_folder(tmp_path):
    with pytest.raises(CtlesionError, match="does not exist") as info:
        read_dicom_series(tmp_path / "nowhere")
    assert info.value.path == tmp_path / "nowhere"
    path = write_slice(tmp_path / "one.dcm", (0, 0, 0), stored_pattern(0))
    with pytest.raises(CtlesionError, match="is not a folder"):
        read_dicom_series(path)


def test_empty_folder(tmp_path):
    with pytest.raises(CtlesionError, match="folder is empty"):
        read_dicom_series(tmp_path)


def test_folder_without_dicom_files(tmp_path):
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(CtlesionError, match="no DICOM files among its 2 files"):
        read_dicom_series(tmp_path)


def test_only_localizers_and_non_axial(tmp_path):
    write_slice(tmp_path / "scout", (0, 0, 0), stored_pattern(0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "cor", [(0, y, 0) for y in range(3)], orientation=(1, 0, 0, 0, 0, -1))
    with pytest.raises(CtlesionError, match="no axial CT image series among its 4 files"):
        read_dicom_series(tmp_path)


def test_single_slice_is_an_error(tmp_path):
    write_slice(tmp_path / "lonely", (0, 0, 0), stored_pattern(0))
    with pytest.raises(CtlesionError, match="only one slice .*at least 2 needed to know the slice interval"):
        read_dicom_series(tmp_path)


def test_all_slices_at_one_position_is_an_error(tmp_path):
    write_series(tmp_path, z_positions([7.0, 7.0, 7.0]))
    with pytest.raises(CtlesionError, match="all 3 slices of the series lie at one position"):
        read_dicom_series(tmp_path)


def test_transfer_syntax_without_decoder_is_a_clear_error(tmp_path):
    for i, path in enumerate(write_series(tmp_path, z_positions([0, 2]))):
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: pydicom has no decoder
        ds.PixelData = pydicom.encaps.encapsulate([b"\x00" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)
    with pytest.raises(CtlesionError, match="MPEG2 Main Profile / Main Level transfer syntax, which cannot be decoded"):
        read_dicom_series(tmp_path)


def test_invalid_orientation_is_skipped(tmp_path):
    write_series(tmp_path, z_positions([0, 2, 4]))
    write_slice(tmp_path / "zero_iop", (0, 0, 9), stored_pattern(0), orientation=(0, 0, 0, 0, 0, 0))
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 3
    assert volume.meta["skipped"][0]["path"] == str(tmp_path / "zero_iop")
    assert "is not two orthogonal unit vectors" in volume.meta["skipped"][0]["reason"]


def test_unreadable_folder(tmp_path, monkeypatch):
    write_series(tmp_path, z_positions([0, 1]))
    real_scandir = os.scandir

    def denied(path="."):
        if Path(path) == tmp_path:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", denied)
    with pytest.raises(CtlesionError, match="cannot read folder \\(Permission denied\\)"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------- read_volume dispatch


def test_read_volume_dispatch(tmp_path):
    folder = tmp_path / "series"
    paths = write_series(folder, z_positions([0, 2]))
    assert read_volume(folder).shape_zyx == (2, ROWS, COLUMNS)
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.eye(4)), nii)
    assert read_volume(nii).shape_zyx == (5, 4, 3)
    with pytest.raises(CtlesionError, match="is a single DICOM file; pass the folder"):
        read_volume(paths[0])
    with pytest.raises(CtlesionError, match="does not exist"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CtlesionError, match="not a DICOM folder or NIfTI file"):
        read_volume(tmp_path / "notes.txt")
    write_series(tmp_path / "mr", z_positions([0, 2]), modality="MR")
    with pytest.raises(CtlesionError, match="modality MR is not CT"):
        read_volume(tmp_path / "mr")
    assert read_volume(tmp_path / "mr", allow_non_ct=True).meta["modality"] == "MR"


def test_pending_volumes_check_headers_and_read_like_read_volumes(tmp_path):
    folder = tmp_path / "study"
    write_series(folder / "a", z_positions([0, 5]), series_uid="1.2", series_number=2, description="thick")
    write_series(folder / "b", z_positions(range(7)), series_uid="1.3", series_number=3, description="thin")
    pending = pending_volumes(folder, all_series=True)
    assert [(p.path, p.info.series_number) for p in pending] == [(folder, 2), (folder, 3)]
    for item, volume in zip(pending, read_volumes(folder, all_series=True)):
        again = item.read()
        np.testing.assert_array_equal(again.hu, volume.hu)
        assert again.slice_interval_mm == volume.slice_interval_mm and again.meta == volume.meta
    (chosen,) = pending_volumes(folder)  # the rule's choice: the longer series
    assert chosen.info.series_number == 3
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), np.int16), np.eye(4)), nii)
    (one,) = pending_volumes(nii, all_series=True)  # one volume; --all-series does not apply
    assert one.info.num_slices == 5 and one.read().shape_zyx == (5, 4, 3)
    with pytest.raises(CtlesionError, match="no series matches '9'"):
        pending_volumes(folder, series="9")


# --------------------------------------------------------------------------- real data


@pytest.mark.data
def test_real_jpeg2000_series(shared_data):
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    volume = read_dicom_series(folder)
    assert volume.shape_zyx == (20, 512, 512)
    assert volume.spacing_zyx_mm == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert volume.meta["slice_thickness_mm"] == 3.0  # nominal thickness, not the interval
    assert volume.meta["series_uid"] == ""
    assert volume.meta["warnings"] == []
    np.testing.assert_allclose(volume.origin_lps_mm, (-249.51171875, -437.51171875, -804.5))
    np.testing.assert_allclose(volume.direction_lps, np.eye(3))
    assert volume.hu.dtype == np.int16
    assert volume.hu.min() == -1024  # stored 0 + RescaleIntercept -1024
    air_hu = np.median(volume.hu[:, 32:96, 236:276])  # air above the patient
    assert -1010 <= air_hu <= -985
    body_hu = np.median(volume.hu[:, 240:272, 240:272])  # soft tissue
    assert 0 <= body_hu <= 150
    # the same series through pydicom directly: HU = stored - 1024 for the slice at the top
    top = [p for p in folder.iterdir() if float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]) == -766.5]
    stored = pydicom.dcmread(top[0]).pixel_array
    np.testing.assert_array_equal(volume.hu[-1], stored.astype(np.int32) - 1024)


@pytest.mark.data
def test_real_series_matches_simpleitk(shared_data):
    sitk = pytest.importorskip("SimpleITK")
    folder = shared_data / "totalseg_example" / "example_ct_dicom"
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    image = reader.Execute()
    volume = read_dicom_series(folder)
    np.testing.assert_array_equal(volume.hu, sitk.GetArrayFromImage(image))
    np.testing.assert_allclose(volume.origin_lps_mm, image.GetOrigin())
    np.testing.assert_allclose(volume.spacing_zyx_mm, image.GetSpacing()[::-1])
    np.testing.assert_allclose(volume.direction_lps, np.reshape(image.GetDirection(), (3, 3)))


@pytest.mark.data
def test_real_missing_slice_series(shared_data):
    folder = shared_data / "dicom_bad_geometry" / "missing_slice"
    volume = read_dicom_series(folder)
    assert volume.shape_zyx[0] == 5  # 4 slices + the missing one at 33.11 mm, interpolated
    assert volume.slice_interval_mm == pytest.approx(5.0)
    np.testing.assert_allclose(volume.meta["slice_positions_mm"], [18.1075, 23.1075, 28.1075, 33.1075, 38.1075], atol=1e-5)
    assert any("missing slices" in w and "28.11 -> 38.11 mm" in w and "1 of them interpolated" in w
               for w in volume.meta["warnings"])
    files = sorted(folder.iterdir())
    hu = [pydicom.dcmread(f).pixel_array.astype(np.float64) * float(pydicom.dcmread(f).RescaleSlope)
          + float(pydicom.dcmread(f).RescaleIntercept) for f in files]
    np.testing.assert_allclose(volume.hu[2], hu[2])
    np.testing.assert_allclose(volume.hu[3], (hu[2] + hu[3]) / 2, atol=1e-3)
    np.testing.assert_allclose(volume.hu[4], hu[3])


@pytest.mark.data
def test_real_enhanced_multiframe_ct(shared_data, tmp_path):
    source = shared_data / "pydicom_small" / "eCT_Supplemental.dcm"
    shutil.copy(source, tmp_path / "eCT")
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx == (2, 512, 512)
    assert volume.slice_interval_mm == pytest.approx(10.0)
    assert volume.spacing_zyx_mm[1:] == pytest.approx((0.388672, 0.388672))
    # frames at z = -159 (frame 1) and -149 (frame 2); normal = (-1,0,0) x (0,1,0) = (0,0,-1)
    np.testing.assert_allclose(volume.origin_lps_mm, (99.5, -301.5, -149.0))
    np.testing.assert_allclose(volume.direction_lps, np.diag([-1.0, 1.0, -1.0]))
    assert volume.meta["slice_frames"] == [1, 0]
    assert volume.meta["slice_thickness_mm"] == 10.0
    frames = pydicom.dcmread(source).pixel_array.astype(np.int32) - 1024
    np.testing.assert_array_equal(volume.hu, frames[::-1])


@pytest.mark.data
def test_real_single_slice_folder_is_an_error(shared_data, tmp_path):
    shutil.copy(shared_data / "pydicom_small" / "CT_small.dcm", tmp_path / "CT_small.dcm")
    with pytest.raises(CtlesionError, match="only one slice \\(CT_small.dcm\\)"):
        read_dicom_series(tmp_path)


# --------------------------------------------------------------------------- discovery and selection


def test_discovery_reads_headers_only_and_explains_everything(tmp_path, monkeypatch):
    # two series, a localizer, a coronal reformat and a text file, all in one folder, shuffled names
    names = [f"IM{n:04d}" for n in np.random.default_rng(5).permutation(25)]
    write_series(tmp_path, z_positions([0, 5, 10, 15, 20]), series_uid="1.5", description="Abd 5mm",
                 series_number=2, slice_thickness_mm=5.0, names=names[:5])
    write_series(tmp_path, z_positions(np.arange(0, 20.1, 1.25)), series_uid="1.1", description="Abd 1.25mm",
                 series_number=3, slice_thickness_mm=1.5, names=names[5:22])
    write_slice(tmp_path / "scout", (0, 0, 0), stored_pattern(0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "cor", [(0, y, 0) for y in range(3)], orientation=(1, 0, 0, 0, 0, -1), series_number=9,
                 description="Cor MPR")
    (tmp_path / "DICOMDIR.txt").write_text("index")

    real_dcmread = pydicom.dcmread

    def headers_only(*args, **kwargs):
        assert kwargs.get("stop_before_pixels") is True, "discovery must not read pixel data"
        return real_dcmread(*args, **kwargs)

    def no_decoding(*args, **kwargs):
        raise AssertionError("discovery must not decode pixel data")

    monkeypatch.setattr(pydicom, "dcmread", headers_only)
    monkeypatch.setattr(pydicom.pixels, "pixel_array", no_decoding)
    discovery = discover_series(tmp_path)
    monkeypatch.undo()

    assert discovery.num_files == 5 + 17 + 1 + 3 + 1
    assert len(discovery.series) == 2
    thick, thin = sorted(discovery.series, key=lambda s: s.series_number)  # folder order follows file names
    assert (thick.description, thin.description) == ("Abd 5mm", "Abd 1.25mm")
    assert (thin.series_uid, thin.series_number, thin.modality) == ("1.1", 3, "CT")
    assert (thin.num_slices, thin.rows, thin.columns) == (17, ROWS, COLUMNS)
    assert thin.pixel_spacing_mm == PIXEL_SPACING_MM
    assert thin.slice_interval_mm == pytest.approx(1.25)
    assert thin.slice_thickness_mm == 1.5  # nominal thickness reported beside the interval
    assert thin.z_extent_mm == pytest.approx(20.0) and thin.gantry_tilt_deg == pytest.approx(0.0, abs=1e-9)
    assert thin.selected and thin.selectable and not thick.selected and thick.selectable
    assert discovery.selected is thin
    assert thin.selection == "chosen by the selection rule among 2 series (interval 1.25 mm, z extent 20.0 mm, 17 slices)"
    assert thick.selection == "not chosen: slice interval 5.00 mm, series #3 'Abd 1.25mm' has thinner 1.25 mm"
    assert thin.warnings == thick.warnings == ()
    assert thin.folder == thick.folder == str(tmp_path)
    reasons = {Path(s["path"]).name: s["reason"] for s in discovery.skipped}
    assert reasons == {
        "scout": "localizer (ImageType LOCALIZER)",
        "cor": "series #9 'Cor MPR' (3 images): non-axial orientation (slice normal [0.0, 1.0, 0.0] in LPS)",
        "DICOMDIR.txt": "not a DICOM file",
    }
    as_json = discovery.to_dict()
    assert as_json["series"][thin.index]["slice_interval_mm"] == pytest.approx(1.25)
    assert as_json["series"][thin.index]["selected"] is True
    assert {"series_uid", "description", "num_slices", "rows", "columns", "pixel_spacing_mm", "slice_interval_mm",
            "slice_thickness_mm", "gantry_tilt_deg", "warnings", "selected"} <= set(as_json["series"][0])


def test_rule_prefers_coverage_over_a_short_thin_series(tmp_path):
    write_series(tmp_path / "full", z_positions(np.arange(0, 101, 5)), series_uid="1", series_number=1)
    write_series(tmp_path / "partial", z_positions(np.arange(0, 41, 1.0)), series_uid="2", series_number=2)
    discovery = discover_series(tmp_path)
    full, partial = discovery.series
    assert full.selected and not partial.selected
    assert partial.selection == "not chosen: covers 40.0 mm, less than 50% of the 100.0 mm another series covers"


def test_rule_tie_breaks_extent_then_slices_then_primary(tmp_path):
    # same 2 mm interval: B covers more than A; C is thinner but SECONDARY (a reformat)
    write_series(tmp_path / "a", z_positions([0, 2, 4, 6]), series_uid="1", series_number=1)
    write_series(tmp_path / "b", z_positions([0, 2, 4, 6, 8, 10]), series_uid="2", series_number=2)
    write_series(tmp_path / "c", z_positions(np.arange(0, 10.1, 1.0)), series_uid="3", series_number=3,
                 image_type=("DERIVED", "SECONDARY", "AXIAL"))
    a, b, c = discover_series(tmp_path).series
    assert b.selected
    assert a.selection == "not chosen: same interval, covers 6.0 mm, series #2 'synthetic' covers 10.0 mm"
    assert c.selection == "not chosen: SECONDARY images (reformat/MIP?) while PRIMARY ones exist"


def test_rule_first_found_among_equals(tmp_path):
    write_series(tmp_path / "a", z_positions([0, 2, 4]), series_uid="1", series_number=1)
    write_series(tmp_path / "b", z_positions([0, 2, 4]), series_uid="2", series_number=2)
    a, b = discover_series(tmp_path).series
    assert a.selected and b.selection == "not chosen: equal to series #1 'synthetic' by every criterion; the first found was taken"


def test_series_named_by_number_uid_or_description(tmp_path):
    write_series(tmp_path / "a", z_positions([0, 5]), series_uid="1.2.5", series_number=2, description="Abd 5mm")
    write_series(tmp_path / "b", z_positions([0, 1, 2, 3]), series_uid="1.2.1", series_number=3, description="Abd 1mm")
    write_series(tmp_path / "c", z_positions([0, 1, 2, 3, 4]), series_uid="1.2.7", series_number=4, description="abd 1MM")
    assert read_dicom_series(tmp_path).meta["series_uid"] == "1.2.7"  # rule: 1 mm, covers most
    assert read_dicom_series(tmp_path, series="2").meta["series_uid"] == "1.2.5"
    assert read_dicom_series(tmp_path, series="1.2.1").meta["series_uid"] == "1.2.1"
    assert read_dicom_series(tmp_path, series=" abd 5MM ").meta["series_uid"] == "1.2.5"
    with pytest.raises(CtlesionError, match=r"'Abd 1mm' matches 2 series .*name one by its UID"):
        read_dicom_series(tmp_path, series="Abd 1mm")
    volumes = read_volumes(tmp_path, series="abd 1mm")
    assert [v.meta["series_uid"] for v in volumes] == ["1.2.1", "1.2.7"]
    with pytest.raises(CtlesionError, match=r"no series matches '7' \(by number, UID or description\); found: "
                                            r"series #2 'Abd 5mm' uid '1.2.5' \(2 slices\); series #3"):
        read_dicom_series(tmp_path, series="7")
    everything = read_volumes(tmp_path, all_series=True)
    assert [v.meta["series_number"] for v in everything] == [2, 3, 4]
    assert [v.shape_zyx[0] for v in everything] == [2, 4, 5]
    with pytest.raises(ValueError, match="not both"):
        read_volumes(tmp_path, series="2", all_series=True)
    discovery = discover_series(tmp_path)
    assert [s.series_number for s in select_series(discovery, all_series=True)] == [2, 3, 4]


def test_acquisitions_sharing_a_uid_are_split(tmp_path):
    # two phases, same SeriesInstanceUID and number, same positions, AcquisitionNumber 1 and 2
    write_series(tmp_path / "art", z_positions([0, 3, 6]), series_uid="9.9", acquisition_number=1)
    write_series(tmp_path / "ven", z_positions([0, 3, 6, 9]), series_uid="9.9", acquisition_number=2)
    discovery = discover_series(tmp_path)
    assert [s.num_slices for s in discovery.series] == [3, 4]
    assert discovery.series[1].selected  # same interval, covers more
    assert read_dicom_series(tmp_path).shape_zyx[0] == 4


def test_every_slice_with_its_own_acquisition_number_stays_one_series(tmp_path):
    for i, z in enumerate([0, 3, 6]):
        write_slice(tmp_path / f"s{i}", (0, 0, z), stored_pattern(i), acquisition_number=i + 1)
    assert [s.num_slices for s in discover_series(tmp_path).series] == [3]


def test_mixed_thickness_and_duplicates_are_warned_in_discovery(tmp_path):
    for i, (z, thickness) in enumerate([(0, 1.0), (2, 1.0), (4, 2.0), (6, 1.0)]):
        write_slice(tmp_path / f"s{i}", (0, 0, z), stored_pattern(i), slice_thickness_mm=thickness)
    shutil.copy(tmp_path / "s1", tmp_path / "s1_copy")
    info = discover_series(tmp_path).series[0]
    assert info.num_slices == 4
    assert "SliceThickness varies within the series (4 x 1 mm, 1 x 2 mm); the median is reported" in info.warnings
    assert any(w.startswith("1 image(s) at a position already taken (duplicates)") for w in info.warnings)
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 4
    assert "SliceThickness varies within the series (3 x 1 mm, 1 x 2 mm); the median is reported" in volume.meta["warnings"]


def test_lone_slice_and_one_position_are_listed_but_not_readable(tmp_path):
    (tmp_path / "lone").mkdir()
    write_slice(tmp_path / "lone" / "x", (0, 0, 0), stored_pattern(0), series_uid="1", series_number=1)
    write_series(tmp_path / "same", z_positions([7.0, 7.0, 7.0]), series_uid="2", series_number=2)
    lone, same = discover_series(tmp_path).series
    assert lone.unreadable == "only one slice (x) in the series, at least 2 needed to know the slice interval"
    assert lone.slice_interval_mm is None and not lone.selectable and lone.num_slices == 1
    assert same.unreadable.startswith("all 3 slices of the series lie at one position (7.00 mm")
    assert same.num_slices == 1 and same.num_images == 3
    with pytest.raises(CtlesionError, match=r"series #1 'synthetic': only one slice \(x\).*; series #2 'synthetic': all 3"):
        read_dicom_series(tmp_path)


def test_truncated_pixel_data_is_found_from_headers(tmp_path):
    paths = write_series(tmp_path, z_positions([0, 2, 4, 6, 8]))
    paths[2].write_bytes(paths[2].read_bytes()[:-7])
    discovery = discover_series(tmp_path)
    assert discovery.series[0].num_slices == 4
    assert discovery.skipped == ({"path": str(paths[2]), "reason": "truncated pixel data (53 of 60 pixel data bytes present)"},)
    assert discovery.warnings == ("slice002.dcm is truncated (53 of 60 pixel data bytes present); file skipped",)
    volume = read_dicom_series(tmp_path)  # the gap it leaves is interpolated, the series is kept
    assert volume.shape_zyx[0] == 5 and volume.meta["slice_paths"][2] is None
    assert "slice002.dcm is truncated" in volume.meta["warnings"][0]


# --------------------------------------------------------------------------- transfer syntaxes, pixel values


@pytest.mark.parametrize(
    "syntax",
    [RLELossless, JPEGLSLossless, JPEG2000Lossless, JPEGLosslessSV1, ExplicitVRBigEndian, ImplicitVRLittleEndian],
    ids=["rle", "jpeg-ls", "jpeg2000", "jpeg-lossless", "big-endian", "implicit-vr"],
)
def test_compressed_and_other_encodings_decode_exactly(tmp_path, syntax):
    rows, columns = 40, 36  # OpenJPEG needs more than a few pixels per side
    for i, z in enumerate([4.0, 0.0, 2.0]):  # written out of order
        write_slice(tmp_path / f"f{i}", (0, 0, z), stored_pattern(i, rows, columns), syntax=syntax)
    assert {str(pydicom.dcmread(p, stop_before_pixels=True).file_meta.TransferSyntaxUID) for p in tmp_path.iterdir()} == {syntax}
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx == (3, rows, columns) and volume.hu.dtype == np.int16
    for k, slice_id in enumerate([1, 2, 0]):
        np.testing.assert_array_equal(volume.hu[k], stored_pattern(slice_id, rows, columns).astype(np.int32) - 1024)


def test_values_beyond_int16_switch_to_float32(tmp_path):
    low = stored_pattern(0)
    high = stored_pattern(1)
    high[0, 0] = 65000  # 65000 - 1024 > 32767
    write_slice(tmp_path / "a", (0, 0, 0), low)
    write_slice(tmp_path / "b", (0, 0, 2), high)
    volume = read_dicom_series(tmp_path)
    assert volume.hu.dtype == np.float32
    np.testing.assert_array_equal(volume.hu[0], low.astype(np.float32) - 1024)
    np.testing.assert_array_equal(volume.hu[1], high.astype(np.float32) - 1024)


def test_integer_slope_rescale_is_exact(tmp_path):
    for i, z in enumerate([0.0, 1.5]):
        write_slice(tmp_path / f"s{i}", (0, 0, z), stored_pattern(i), slope=2.0, intercept=-2048.0)
    volume = read_dicom_series(tmp_path)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu[1], stored_pattern(1).astype(np.int32) * 2 - 2048)


# --------------------------------------------------------------------------- discover / read_volumes dispatch


def test_discover_and_read_volumes_on_nifti(tmp_path):
    affine = np.diag([-0.8, -0.7, 2.5, 1.0])  # RAS affine of an LPS-ordered array
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((5, 6, 4), np.int16), affine), nii)
    discovery = discover(nii)
    (info,) = discovery.series
    assert (info.num_slices, info.rows, info.columns) == (4, 6, 5)
    assert info.pixel_spacing_mm == pytest.approx((0.7, 0.8)) and info.slice_interval_mm == pytest.approx(2.5)
    assert info.z_extent_mm == pytest.approx(7.5) and info.gantry_tilt_deg == pytest.approx(0.0)
    assert info.selected and info.description == "ct.nii.gz" and discovery.skipped == ()
    assert [v.shape_zyx for v in read_volumes(nii, series="3", all_series=False)] == [(4, 6, 5)]
    with pytest.raises(CtlesionError, match="does not exist"):
        discover(tmp_path / "missing")


def test_discover_sheared_nifti_reports_its_tilt(tmp_path):
    affine = np.eye(4)
    affine[1, 2] = np.tan(np.radians(20.0))  # the k axis leans 20 deg towards y
    nii = tmp_path / "tilted.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), affine), nii)
    assert discover(nii).series[0].gantry_tilt_deg == pytest.approx(20.0)


@pytest.mark.data
def test_real_discovery_of_sample_and_multiframe(shared_data, tmp_path):
    (info,) = discover_series(shared_data / "totalseg_example" / "example_ct_dicom").series
    assert (info.num_slices, info.rows, info.columns, info.modality) == (20, 512, 512, "CT")
    assert info.slice_interval_mm == pytest.approx(2.0) and info.slice_thickness_mm == 3.0
    assert info.z_extent_mm == pytest.approx(38.0) and info.selected and info.warnings == ()
    shutil.copy(shared_data / "pydicom_small" / "eCT_Supplemental.dcm", tmp_path / "eCT")
    (frames,) = discover_series(tmp_path).series
    assert (frames.num_slices, frames.num_images, frames.slice_interval_mm) == (2, 2, pytest.approx(10.0))


@pytest.mark.data
def test_real_tilt_free_series_round_trips_through_nifti(shared_data, tmp_path):
    # issue 3, point 7: a voxel's LPS position is the same from DICOM and from the NIfTI written for it
    volume = read_dicom_series(shared_data / "dicom_bad_geometry" / "missing_slice")
    path = tmp_path / "ct.nii.gz"
    write_nifti(volume.hu, volume, path)
    back = read_nifti(path)
    probe = np.array([[0, 0, 0], [511, 0, 4], [100, 300, 3]])
    np.testing.assert_allclose(back.voxel_to_lps(probe), volume.voxel_to_lps(probe), atol=1e-4)
    np.testing.assert_array_equal(back.hu, volume.hu)


def test_tilt_and_missing_slice_together(tmp_path):
    # untilted first (each slice moved in its own plane), then the gap interpolated along the normal
    rows, columns = 12, 10
    ipps = write_tilted_series(tmp_path, [0.0, 3.0, 6.0, 12.0], rows, columns)
    volume = read_dicom_series(tmp_path, tilt="resample")
    assert volume.shape_zyx[0] == 5 and volume.meta["slice_paths"][3] is None
    assert len(volume.meta["warnings"]) == 2  # what was done about the tilt, then about the gap
    z, y, x = np.meshgrid(np.arange(5), np.arange(volume.shape_zyx[1]), np.arange(columns), indexing="ij")
    lps = volume.voxel_to_lps(np.stack([x, y, z], axis=-1))
    row_cosine, column_cosine = np.array(TILTED[:3]), np.array(TILTED[3:])

    def inside(k, ipp):
        u = (lps[k] - ipp) @ row_cosine / PIXEL_SPACING_MM[1]
        v = (lps[k] - ipp) @ column_cosine / PIXEL_SPACING_MM[0]
        return (u > -1e-6) & (u < columns - 1 + 1e-6) & (v > -1e-6) & (v < rows - 1 + 1e-6)

    for k, source in [(0, 0), (1, 1), (2, 2), (4, 3)]:
        mask = inside(k, ipps[source])
        np.testing.assert_allclose(volume.hu[k][mask], tilt_phantom_hu(lps[k][mask]), atol=0.06)
    # the interpolated slice: exact (the phantom is linear) where both neighbours have data
    both = inside(2, ipps[2]) & inside(4, ipps[3])
    assert both.sum() > rows * columns / 2
    np.testing.assert_allclose(volume.hu[3][both], tilt_phantom_hu(lps[3][both]), atol=0.06)


def test_oblique_series_along_its_normal_is_read_without_tilt(tmp_path):
    t = np.radians(12.0)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))  # oblique planes, normal (0, sin t, cos t)
    normal = np.cross(orientation[:3], orientation[3:])
    positions = [np.array([3.0, -4.0, 10.0]) + k * 2.5 * normal for k in (3, 0, 2, 1)]  # shuffled
    write_series(tmp_path, positions, orientation=orientation)
    volume = read_dicom_series(tmp_path)
    assert volume.meta["warnings"] == [] and volume.meta["gantry_tilt_deg"] == pytest.approx(0.0, abs=1e-6)
    assert volume.slice_interval_mm == pytest.approx(2.5)
    np.testing.assert_allclose(volume.direction_lps[:, 2], normal, atol=1e-12)
    for k, slice_id in enumerate([1, 3, 2, 0]):
        np.testing.assert_array_equal(volume.hu[k], stored_pattern(slice_id).astype(np.int32) - 1024)
        np.testing.assert_allclose(volume.voxel_to_lps([4, 5, k]),
                                   expected_lps_mm(positions[slice_id], orientation, 4, 5), atol=1e-9)


def test_unreadable_file_among_good_ones_is_skipped(tmp_path, monkeypatch):
    import ctlesion.io.series as series_module

    paths = write_series(tmp_path, z_positions([0, 2, 4, 6]))

    def guarded_open(path, *args, **kwargs):
        if Path(path) == paths[3]:
            raise PermissionError(13, "Permission denied", str(path))
        return open(path, *args, **kwargs)

    monkeypatch.setattr(series_module, "open", guarded_open, raising=False)
    discovery = discover_series(tmp_path)
    assert discovery.series[0].num_slices == 3
    assert discovery.skipped == ({"path": str(paths[3]), "reason": "unreadable file: Permission denied"},)
    assert discovery.warnings == ("cannot read slice003.dcm (Permission denied); file skipped",)
