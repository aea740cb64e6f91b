"""Tests of the NIfTI reader/writer: RAS <-> LPS, reorientation that keeps every voxel's position."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from ctlesion.errors import CtlesionError
from ctlesion.io.dicom import read_dicom_series
from ctlesion.io.nifti import read_nifti, write_nifti
from ctlesion.volume import Volume

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def rotation(axis: str, angle_deg: float) -> np.ndarray:
    c, s = np.cos(np.radians(angle_deg)), np.sin(np.radians(angle_deg))
    i, j = {"x": (1, 2), "y": (0, 2), "z": (0, 1)}[axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def assert_same_voxel_positions(volume: Volume, data_ijk: np.ndarray, affine_ras: np.ndarray) -> None:
    """Every file voxel (i, j, k) must appear in the volume at the same LPS position, same value."""
    ijk = np.stack(np.meshgrid(*[np.arange(n) for n in data_ijk.shape], indexing="ij"), axis=-1).reshape(-1, 3)
    lps_mm = (RAS_TO_LPS @ affine_ras @ np.c_[ijk, np.ones(len(ijk))].T).T[:, :3]
    xyz = np.linalg.solve(volume.affine_lps[:3, :3], (lps_mm - volume.affine_lps[:3, 3]).T).T
    xyz_vox = np.rint(xyz).astype(int)
    np.testing.assert_allclose(xyz, xyz_vox, atol=1e-6)  # lands exactly on a voxel centre
    np.testing.assert_allclose(volume.voxel_to_lps(xyz_vox), lps_mm, atol=1e-9)
    values = volume.hu[xyz_vox[:, 2], xyz_vox[:, 1], xyz_vox[:, 0]]
    np.testing.assert_array_equal(values, data_ijk[ijk[:, 0], ijk[:, 1], ijk[:, 2]])


def save(path: Path, data: np.ndarray, affine: np.ndarray, **kwargs) -> Path:
    nib.save(nib.Nifti1Image(data, affine, **kwargs), path)
    return path


# --------------------------------------------------------------------------- reading


def test_permuted_flipped_oblique_nifti_keeps_every_voxel_position(tmp_path):
    # voxel axis i runs inferior (S-I), j runs towards the patient's right, k anterior,
    # spacings 2.5 / 0.7 / 0.8 mm, plus a 10 deg oblique rotation
    columns = np.array([[0, 0, -2.5], [0.7, 0, 0], [0, 0.8, 0]]).T  # RAS directions of i, j, k
    affine = np.eye(4)
    affine[:3, :3] = rotation("z", 10) @ columns
    affine[:3, 3] = (12.0, -30.0, 55.0)
    data = np.random.default_rng(1).integers(-1000, 2000, size=(4, 5, 6)).astype(np.int16)
    volume = read_nifti(save(tmp_path / "oblique.nii.gz", data, affine))

    assert volume.shape_zyx == (4, 6, 5)  # z = file axis i (S-I), y = k (A-P), x = j (R-L)
    assert volume.spacing_zyx_mm == pytest.approx((2.5, 0.8, 0.7))
    assert volume.hu.dtype == np.int16
    # DICOM-like orientation: x towards Left, y towards Posterior, z towards Superior
    assert volume.direction_lps[0, 0] > 0.9 and volume.direction_lps[1, 1] > 0.9 and volume.direction_lps[2, 2] > 0.9
    assert_same_voxel_positions(volume, data, affine)
    assert volume.meta["slice_thickness_mm"] is None
    assert volume.meta["orientation_in_file"] == "IRA"
    assert volume.meta["warnings"] == []


def test_trailing_singleton_dimension_and_float_data(tmp_path):
    affine = np.diag([-0.5, 0.6, 3.0, 1.0])
    data = np.random.default_rng(2).normal(0, 100, size=(3, 4, 2)).astype(np.float32)
    volume = read_nifti(save(tmp_path / "float.nii", data[..., None], affine))
    assert volume.hu.dtype == np.float32
    assert_same_voxel_positions(volume, data, affine)
    integral = np.round(data).astype(np.float64)
    assert read_nifti(save(tmp_path / "integral.nii", integral, affine)).hu.dtype == np.int16


def test_integer_widths(tmp_path):
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    small = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 1024
    volume = read_nifti(save(tmp_path / "int32.nii.gz", small, affine))
    assert volume.hu.dtype == np.int16
    assert_same_voxel_positions(volume, small, affine)
    large = (np.arange(24, dtype=np.uint16).reshape(2, 3, 4) + 40000).astype(np.uint16)
    volume = read_nifti(save(tmp_path / "uint16.nii.gz", large, affine))
    assert volume.hu.dtype == np.float32
    assert_same_voxel_positions(volume, large.astype(np.float32), affine)


@pytest.mark.parametrize("shape", [(4, 5, 6, 2), (4, 5)])
def test_non_3d_is_an_error(tmp_path, shape):
    path = save(tmp_path / "bad.nii.gz", np.zeros(shape, np.int16), np.eye(4))
    with pytest.raises(CtlesionError, match="a 3-D CT volume is needed") as info:
        read_nifti(path)
    assert info.value.path == path


def test_sform_qform_disagreement_is_warned(tmp_path):
    image = nib.Nifti1Image(np.zeros((2, 3, 4), np.int16), np.eye(4))
    image.set_sform(np.diag([1.0, 1.0, 1.0, 1.0]), code=1)
    image.set_qform(np.diag([1.0, 1.0, 2.0, 1.0]), code=1)
    nib.save(image, tmp_path / "disagree.nii")
    volume = read_nifti(tmp_path / "disagree.nii")
    assert len(volume.meta["warnings"]) == 1
    assert "sform (code 1) and qform (code 1) disagree" in volume.meta["warnings"][0]
    assert volume.spacing_zyx_mm == pytest.approx((1.0, 1.0, 1.0))  # the sform wins


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(CtlesionError, match="does not exist"):
        read_nifti(tmp_path / "missing.nii.gz")
    (tmp_path / "junk.nii.gz").write_bytes(b"not a nifti at all")
    with pytest.raises(CtlesionError, match="cannot read NIfTI file"):
        read_nifti(tmp_path / "junk.nii.gz")
    noise = np.random.default_rng(3).integers(-1000, 1000, size=(20, 20, 20)).astype(np.int16)
    good = save(tmp_path / "good.nii.gz", noise, np.eye(4))
    (tmp_path / "cut.nii.gz").write_bytes(good.read_bytes()[:2000])
    with pytest.raises(CtlesionError, match="cut.nii.gz"):
        read_nifti(tmp_path / "cut.nii.gz")


# --------------------------------------------------------------------------- writing


def make_reference(direction_lps=None, shape_zyx=(3, 4, 5)) -> Volume:
    hu = np.arange(np.prod(shape_zyx), dtype=np.int16).reshape(shape_zyx) - 100
    direction_lps = np.eye(3) if direction_lps is None else direction_lps
    return Volume(hu, (2.5, 0.7, 0.8), (-12.5, 30.25, 101.0), direction_lps, source="synthetic")


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int16, np.int32, np.float32])
def test_write_keeps_dtype_and_geometry(tmp_path, dtype):
    reference = make_reference()
    array = (np.arange(60).reshape(3, 4, 5) % 7).astype(dtype)
    path = tmp_path / "labels.nii.gz"
    write_nifti(array, reference, path)
    image = nib.load(path)
    assert image.get_data_dtype() == np.dtype(dtype)
    np.testing.assert_array_equal(np.asanyarray(image.dataobj), array.transpose(2, 1, 0))
    np.testing.assert_allclose(image.affine, RAS_TO_LPS @ reference.affine_lps, atol=1e-4)
    assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
    back = read_nifti(path)
    np.testing.assert_allclose(back.affine_lps, reference.affine_lps, atol=1e-4)
    np.testing.assert_array_equal(back.hu, array)
    assert back.meta["warnings"] == []


def test_write_bool_and_int64(tmp_path):
    reference = make_reference()
    write_nifti(np.ones(reference.shape_zyx, bool), reference, tmp_path / "mask.nii")
    assert nib.load(tmp_path / "mask.nii").get_data_dtype() == np.uint8
    labels = np.zeros(reference.shape_zyx, np.int64)
    labels[1, 2, 3] = 300
    write_nifti(labels, reference, tmp_path / "labels.nii")
    assert nib.load(tmp_path / "labels.nii").get_data_dtype() == np.int16
    labels[0, 0, 0] = 2**40
    with pytest.raises(ValueError, match="do not fit in int32"):
        write_nifti(labels, reference, tmp_path / "huge.nii")


def test_write_flipped_reference_round_trip(tmp_path):
    # a feet-first style reference (x towards Right, z towards Inferior), slightly oblique
    direction = rotation("x", 5) @ np.diag([-1.0, 1.0, -1.0])
    reference = make_reference(direction)
    path = tmp_path / "flipped.nii.gz"
    write_nifti(reference.hu, reference, path)
    image = nib.load(path)
    data_ijk = np.asanyarray(image.dataobj)
    np.testing.assert_array_equal(data_ijk, reference.hu.transpose(2, 1, 0))
    back = read_nifti(path)  # reoriented to x -> L, z -> S: flipped arrays, same voxel positions
    assert_same_voxel_positions(back, data_ijk, RAS_TO_LPS @ reference.affine_lps)
    np.testing.assert_array_equal(back.hu, reference.hu[::-1, :, ::-1])


def test_write_gzip_by_name_and_atomically(tmp_path, monkeypatch):
    reference = make_reference()
    write_nifti(reference.hu, reference, tmp_path / "a.nii.gz")
    write_nifti(reference.hu, reference, tmp_path / "b.nii")
    assert (tmp_path / "a.nii.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert (tmp_path / "b.nii").read_bytes()[:2] != b"\x1f\x8b"
    gzip.decompress((tmp_path / "a.nii.gz").read_bytes())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii"]  # no temporary left

    before = (tmp_path / "a.nii.gz").read_bytes()

    def failing_fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", failing_fsync)  # fails after the partial bytes are written
    with pytest.raises(CtlesionError, match="cannot write NIfTI file \\(No space left on device\\)"):
        write_nifti(reference.hu, reference, tmp_path / "a.nii.gz")
    assert (tmp_path / "a.nii.gz").read_bytes() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.nii.gz", "b.nii"]


def test_write_errors(tmp_path):
    reference = make_reference()
    with pytest.raises(ValueError, match="differs from the reference"):
        write_nifti(np.zeros((3, 4, 4)), reference, tmp_path / "x.nii")
    with pytest.raises(CtlesionError, match="must end in .nii or .nii.gz"):
        write_nifti(reference.hu, reference, tmp_path / "x.nrrd")
    with pytest.raises(CtlesionError, match="does not exist"):
        write_nifti(reference.hu, reference, tmp_path / "nowhere" / "x.nii")


# --------------------------------------------------------------------------- real data


@pytest.mark.data
@pytest.mark.parametrize(
    ("name", "shape_xyz", "stored_dtype"),
    [("example_ct_sm.nii.gz", (122, 101, 30), "int16"), ("example_ct.nii.gz", (122, 101, 112), "int32")],
)
def test_real_nifti(shared_data, name, shape_xyz, stored_dtype):
    path = shared_data / "totalseg_example" / name
    volume = read_nifti(path)
    image = nib.load(path)
    assert volume.meta["nifti_dtype"] == stored_dtype
    assert volume.meta["orientation_in_file"] == "RAS"
    assert volume.shape_zyx == shape_xyz[::-1]
    assert volume.spacing_zyx_mm == pytest.approx((3.0, 3.0, 3.0))
    assert volume.hu.dtype == np.int16
    # RAS file -> x and y flipped to point Left and Posterior, the voxel (0,0,0) moves accordingly
    np.testing.assert_allclose(volume.direction_lps, np.eye(3))
    corner_ras = image.affine @ [shape_xyz[0] - 1, shape_xyz[1] - 1, 0, 1]
    np.testing.assert_allclose(volume.origin_lps_mm, [-corner_ras[0], -corner_ras[1], corner_ras[2]])
    data = np.asanyarray(image.dataobj)
    for i, j, k in [(0, 0, 0), (60, 50, 10), (121, 100, 29)]:
        x, y, z = shape_xyz[0] - 1 - i, shape_xyz[1] - 1 - j, k
        assert volume.hu[z, y, x] == data[i, j, k]
        np.testing.assert_allclose(volume.voxel_to_lps([x, y, z]), (RAS_TO_LPS @ image.affine @ [i, j, k, 1])[:3])
    assert -1300 <= volume.hu.min() and volume.hu.max() <= 4000  # resampled data undershoots -1024 a little
    assert np.median(volume.hu[:, :5, :5]) < -900  # air in the corners


@pytest.mark.data
def test_dicom_to_nifti_round_trip(shared_data, tmp_path):
    volume = read_dicom_series(shared_data / "totalseg_example" / "example_ct_dicom")
    path = tmp_path / "ct.nii.gz"
    write_nifti(volume.hu, volume, path)
    back = read_nifti(path)
    np.testing.assert_array_equal(back.hu, volume.hu)
    assert back.hu.dtype == np.int16
    # sform is stored in float32: positions agree to float32 precision (~1e-4 mm at 800 mm)
    np.testing.assert_allclose(back.affine_lps, volume.affine_lps, atol=1e-4)
    probe = np.array([[0, 0, 0], [511, 0, 19], [100, 300, 7]])
    np.testing.assert_allclose(back.voxel_to_lps(probe), volume.voxel_to_lps(probe), atol=1e-4)
    np.testing.assert_allclose(volume.voxel_to_lps([511, 0, 19]), [-249.51171875 + 511 * 0.9765625, -437.51171875, -766.5])
