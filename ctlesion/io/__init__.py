"""Readers and writers between files (DICOM, NIfTI) and :class:`~ctlesion.volume.Volume`."""

from __future__ import annotations

from pathlib import Path

import pydicom.misc

from ctlesion.errors import CtlesionError
from ctlesion.io.dicom import read_dicom_series
from ctlesion.io.nifti import is_nifti_path, read_nifti, write_nifti
from ctlesion.volume import Volume

__all__ = ["read_dicom_series", "read_nifti", "read_volume", "write_nifti"]


def read_volume(path: Path, *, allow_non_ct: bool = False) -> Volume:
    """Read a CT volume from a DICOM series folder or a NIfTI file.

    Dispatch: a folder -> :func:`read_dicom_series` (searched recursively); a ``.nii`` /
    ``.nii.gz`` file -> :func:`read_nifti`.

    Args:
        path: DICOM folder or NIfTI file.
        allow_non_ct: passed to :func:`read_dicom_series` (read a non-CT series); NIfTI files carry
            no modality and are always read.

    Returns:
        The Volume (HU (Z, Y, X), LPS geometry), see the readers.

    Raises:
        CtlesionError: (naming the path) it does not exist; it is a single DICOM file (the folder
            of the series is needed); it is neither a folder nor a NIfTI file; or the reader's
            own errors.
    """
    path = Path(path)
    if not path.exists():
        raise CtlesionError("does not exist", path)
    if path.is_dir():
        return read_dicom_series(path, allow_non_ct=allow_non_ct)
    if is_nifti_path(path):
        return read_nifti(path)
    if _is_dicom_file(path):
        raise CtlesionError(
            "is a single DICOM file; pass the folder that holds all the slices of the series", path
        )
    raise CtlesionError("not a DICOM folder or NIfTI file (.nii / .nii.gz)", path)


def _is_dicom_file(path: Path) -> bool:
    try:
        return pydicom.misc.is_dicom(path)
    except OSError as error:
        raise CtlesionError(f"cannot read file ({error.strerror or error})", path) from error
