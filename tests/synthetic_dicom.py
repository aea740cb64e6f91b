"""Synthetic DICOM series for the reader and CLI tests, written with pydicom (GDCM for JPEG
Lossless): single-frame CT/MR slices with chosen geometry, encodings and headers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGLosslessSV1,
    MRImageStorage,
    generate_uid,
)

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
    study_uid: str = "",
    frame_uid: str | None = None,
    modality: str = "CT",
    image_type=("ORIGINAL", "PRIMARY", "AXIAL"),
    instance_number: int = 1,
    slope: float = 1.0,
    intercept: float = -1024.0,
    pixel_spacing_mm=PIXEL_SPACING_MM,
    slice_thickness_mm: float | None = 2.5,
    padding_value: int | None = None,
    description: str = "synthetic",
    series_number: int | None = 3,
    acquisition_number: int | None = None,
    syntax: str = ExplicitVRLittleEndian,
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
    ds.StudyInstanceUID = study_uid
    if frame_uid is not None:
        ds.FrameOfReferenceUID = frame_uid
    ds.SeriesDescription = description
    if series_number is not None:
        ds.SeriesNumber = series_number
    if acquisition_number is not None:
        ds.AcquisitionNumber = acquisition_number
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
    if syntax == ExplicitVRLittleEndian:
        ds.save_as(path, enforce_file_format=True)
    elif syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(path, enforce_file_format=True)
    elif syntax == ExplicitVRBigEndian:
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = stored.astype(">u2").tobytes()  # OW words in the file's byte order
        ds.preamble = b"\0" * 128
        dcmwrite(path, ds, little_endian=False, implicit_vr=False, force_encoding=True)
    elif syntax == JPEGLosslessSV1:  # pydicom cannot encode it: GDCM (through SimpleITK) does
        ds.file_meta.TransferSyntaxUID = syntax
        ds.PixelData = _gdcm_jpeg_lossless(stored, path)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(path, enforce_file_format=True)
    else:  # a compressed transfer syntax, encoded by pydicom's plugins
        ds.compress(syntax)
        ds.save_as(path, enforce_file_format=True)
    return path


def _gdcm_jpeg_lossless(stored: np.ndarray, path: Path) -> bytes:
    """Encapsulated JPEG Lossless (process 14, SV1) pixel data of a uint16 image, by GDCM."""
    scratch = path.with_name(path.name + ".gdcm.dcm")
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    writer.SetFileName(str(scratch))
    writer.Execute(sitk.GetImageFromArray(stored.astype(np.uint16)))
    encoded = pydicom.dcmread(scratch)
    scratch.unlink()
    assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    return encoded.PixelData


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


TILT_DEG = 15.0
TILTED = (1.0, 0.0, 0.0, 0.0, np.cos(np.radians(TILT_DEG)), -np.sin(np.radians(TILT_DEG)))  # normal (0, sin, cos)


def tilt_phantom_hu(lps_mm: np.ndarray) -> np.ndarray:
    """HU linear in LPS, so that the in-plane (bilinear) resampling of a tilt correction is exact."""
    lps_mm = np.asarray(lps_mm, dtype=np.float64)
    return 100.0 + 2.0 * lps_mm[..., 0] + 3.0 * lps_mm[..., 1] + 4.0 * lps_mm[..., 2]


def write_tilted_series(folder: Path, z_values_mm, rows: int = 12, columns: int = 10) -> list[np.ndarray]:
    """A series tilted by TILT_DEG whose table moves along z; returns each slice's IPP."""
    folder.mkdir(parents=True, exist_ok=True)
    row_cosine, column_cosine = np.array(TILTED[:3]), np.array(TILTED[3:])
    r, c = np.mgrid[0:rows, 0:columns]
    ipps = []
    for i, z in enumerate(z_values_mm):
        ipp = np.array([-5.0, 8.0, float(z)])
        lps = ipp + (c * PIXEL_SPACING_MM[1])[..., None] * row_cosine + (r * PIXEL_SPACING_MM[0])[..., None] * column_cosine
        stored = np.round(10 * (tilt_phantom_hu(lps) + 1024)).astype(np.uint16)
        write_slice(folder / f"t{i}", ipp, stored, orientation=TILTED, slope=0.1, intercept=-1024.0)
        ipps.append(ipp)
    return ipps
