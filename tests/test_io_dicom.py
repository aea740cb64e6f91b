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
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

from ctlesion.errors import CtlesionError
from ctlesion.io import read_volume
from ctlesion.io.dicom import read_dicom_series

ROWS, COLUMNS = 6, 5  # non-square, so that a row/column mix-up changes the shape
PIXEL_SPACING_MM = (0.7, 0.8)  # (between rows, between columns)
AXIAL = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


def stored_pattern(slice_id: int, rows: int = ROWS, columns: int = COLUMNS) -> np.ndarray:
    """Stored values unique per slice and pixel: 1000 + 100 * slice_id + 10 * row + column."""
    r, c = np.mgrid[0:rows, 0:columns]
    return (1000 + 100 * slice_id + 10 * r + c).astype(np.uint16)


def write_slice(
    path: Path,
    position_lps_mm,
    stored: np.ndarray,
    *,
    orientation=AXIAL,
    series_uid: str = "",
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    instance_number: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_spacing_mm=PIXEL_SPACING_MM,
    slice_thickness_mm: float | None = 2.5,
    padding_value: int | None = None,
    description: str = "synthetic",
) -> Path:
    """Write one single-frame image (explicit VR little endian, with preamble) with pydicom."""
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.SeriesInstanceUID = series_uid
    ds.StudyInstanceUID = ""
    ds.SeriesDescription = description
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance_number
    ds.ImageType = list(image_type)
    ds.ImagePositionPatient = [float(v) for v in position_lps_mm]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [float(v) for v in pixel_spacing_mm]
    if slice_thickness_mm is not None:
        ds.SliceThickness = slice_thickness_mm
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    if padding_value is not None:
        ds.PixelPaddingValue = padding_value
    ds.PixelData = stored.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def write_series(folder: Path, positions_lps_mm, *, names=None, instance_numbers=None, **kwargs) -> list[Path]:
    """Write slice i at positions_lps_mm[i] with stored_pattern(i); returns the paths."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, position in enumerate(positions_lps_mm):
        name = names[i] if names else f"slice{i:03d}.dcm"
        number = instance_numbers[i] if instance_numbers else i + 1
        paths.append(write_slice(folder / name, position, stored_pattern(i), instance_number=number, **kwargs))
    return paths


def z_positions(z_values_mm, x_mm: float = -10.0, y_mm: float = 20.0) -> list[tuple[float, float, float]]:
    return [(x_mm, y_mm, float(z)) for z in z_values_mm]


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


def test_missing_slice_warns_and_keeps_median_interval(tmp_path):
    write_series(tmp_path, z_positions([0.0, 2.5, 5.0, 10.0, 12.5]))
    volume = read_dicom_series(tmp_path)
    assert volume.shape_zyx[0] == 5
    assert volume.slice_interval_mm == pytest.approx(2.5)
    assert len(volume.meta["warnings"]) == 1
    assert "missing slices" in volume.meta["warnings"][0]
    assert "5.00 -> 10.00 mm" in volume.meta["warnings"][0]


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


def test_gantry_tilt_angle_is_reported(tmp_path):
    tilt_deg = 15.0
    t = np.radians(tilt_deg)
    orientation = (1.0, 0.0, 0.0, 0.0, np.cos(t), -np.sin(t))  # normal (0, sin t, cos t)
    write_series(tmp_path, z_positions([0.0, 3.0, 6.0, 9.0]), orientation=orientation)  # table moves along z
    volume = read_dicom_series(tmp_path)
    assert volume.meta["gantry_tilt_deg"] == pytest.approx(tilt_deg, abs=0.1)
    assert any("gantry tilt of 15.00 deg" in w for w in volume.meta["warnings"])
    # the interval is the distance between slice planes: 3 mm * cos(tilt)
    assert volume.slice_interval_mm == pytest.approx(3.0 * np.cos(t))


def test_series_grouping_picks_largest_axial_ct_series(tmp_path):
    # A: 5 slices, empty UID, 6x5; B: 3 slices, empty UID but 4x4 (other geometry);
    # C: 4 slices at A's positions with another UID; a 7-slice sagittal series; a localizer.
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

    assert volume.meta["description"] == "A"
    assert volume.shape_zyx == (5, ROWS, COLUMNS)
    reasons = {Path(s["path"]).relative_to(tmp_path).as_posix(): s["reason"] for s in volume.meta["skipped"]}
    assert reasons["scout"].startswith("localizer")
    assert all(reasons[f"sag/slice{i:03d}.dcm"].startswith("non-axial orientation") for i in range(7))
    assert all("not chosen" in reasons[f"b/b{i}"] for i in range(3))
    assert all("not chosen" in reasons[f"c/slice{i:03d}.dcm"] for i in range(4))
    assert len(reasons) == 1 + 7 + 3 + 4


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
    assert sum("modality MR is not CT" in s["reason"] for s in volume.meta["skipped"]) == 6


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
    volume = read_dicom_series(shared_data / "dicom_bad_geometry" / "missing_slice")
    assert volume.shape_zyx[0] == 4
    assert volume.slice_interval_mm == pytest.approx(5.0)
    assert any("missing slices" in w and "28.11 -> 38.11 mm" in w for w in volume.meta["warnings"])


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
