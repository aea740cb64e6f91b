"""Readers and writers between files (DICOM, NIfTI, DeepLesion PNG series) and :class:`~ctlesion.volume.Volume`.

Entry points by path: :func:`discover` (what is there, headers only), :func:`pending_volumes`
(the volumes ``detect`` processes, checked from headers and decoded one at a time),
:func:`read_volumes` (the same, decoded at once) and :func:`read_volume` (exactly one volume).

A path is a DICOM folder (searched recursively), a lone Enhanced (multi-frame) DICOM file, which
holds a whole series, a NIfTI file (``.nii`` / ``.nii.gz``) or a DeepLesion PNG series folder. A
lone classic DICOM slice is refused: the slice interval needs the other slices of its folder.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pydicom.misc
from pydicom.dataset import Dataset

from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion_series import (
    describe_deeplesion_series,
    is_deeplesion_series,
    read_deeplesion_series,
)
from ctlesion.io.dicom import (
    TILT_CHOICES,
    check_discovered,
    read_dicom_series,
    read_discovered,
)
from ctlesion.io.nifti import describe_nifti, is_nifti_path, read_nifti, write_nifti
from ctlesion.io.series import (
    SELECTION_RULE,
    Discovery,
    SeriesInfo,
    SliceHeader,
    discover_series,
    is_multiframe_series_file,
    select_series,
)
from ctlesion.volume import Volume

__all__ = [
    "SELECTION_RULE",
    "TILT_CHOICES",
    "Discovery",
    "PendingVolume",
    "SeriesInfo",
    "SliceHeader",
    "discover",
    "discover_series",
    "pending_volumes",
    "read_deeplesion_series",
    "read_dicom_series",
    "read_nifti",
    "read_volume",
    "read_volumes",
    "select_series",
    "write_nifti",
]

logger = logging.getLogger(__name__)


def discover(path: Path, *, allow_non_ct: bool = False, scan_values: bool = False) -> Discovery:
    """Describe what a DICOM folder or file, NIfTI file or DeepLesion series holds, from headers
    only (no pixel data; but see ``scan_values``).

    Args:
        path: DICOM folder (searched recursively), lone Enhanced multi-frame DICOM file,
            ``.nii`` / ``.nii.gz`` file or DeepLesion PNG series folder.
        allow_non_ct: see :func:`~ctlesion.io.series.discover_series`.
        scan_values: for a NIfTI file whose values may be non-finite (float, or scaled), read its
            data block to report them (:func:`~ctlesion.io.nifti.describe_nifti`); ``ctlesion
            info`` does, ``detect`` does not (it reads the data once, later).

    Returns:
        :func:`~ctlesion.io.series.discover_series` for DICOM; a one-series Discovery from
        :func:`~ctlesion.io.nifti.describe_nifti` or
        :func:`~ctlesion.io.deeplesion_series.describe_deeplesion_series` otherwise.

    Raises:
        CtlesionError: as :func:`read_volume`'s path checks, and the describers' own errors.
    """
    path, kind = _input_kind(path)
    if kind == "dicom":
        return discover_series(path, allow_non_ct=allow_non_ct)
    if kind == "deeplesion":
        return describe_deeplesion_series(path)
    return describe_nifti(path, scan_values=scan_values)


@dataclass(frozen=True)
class PendingVolume:
    """One volume an input path stands for, found and checked from headers, not yet decoded.

    Attributes:
        path: the input (DICOM folder or multi-frame file, NIfTI file or DeepLesion PNG series folder).
        discovery: what :func:`discover` found there.
        info: the series to read (one of ``discovery.series``).
        tilt: "refuse" or "resample" (DICOM gantry tilt).
    """

    path: Path
    discovery: Discovery
    info: SeriesInfo
    tilt: str = "refuse"

    def read(self) -> Volume:
        """Decode the volume (HU (Z, Y, X), LPS geometry), see the readers.

        Raises:
            CtlesionError: what only the pixel data show (truncated or corrupt files, too few
                decodable slices), naming the input.
        """
        if self.discovery.images:  # DICOM (the describers of the others list no images)
            return read_discovered(self.discovery, self.info, tilt=self.tilt)
        if self.path.is_dir():
            return read_deeplesion_series(self.path)
        return read_nifti(self.path)

    def source_slices(self, volume: Volume) -> list[SliceHeader | None]:
        """Per slice of ``volume`` (this input's :meth:`read`), the source image (file, or frame of
        a multi-frame file) it came from.

        The DICOM reader records, per volume slice, the file and frame it came from
        (``volume.meta["slice_paths"]``, ``["slice_frames"]``; None for a slice interpolated
        over a gap), so the match is exact whatever the rounding of the positions.

        Args:
            volume: the volume :meth:`read` returned.

        Returns:
            (Z,) list of :class:`~ctlesion.io.series.SliceHeader` (header, frame, ImagePositionPatient)
            or None for an interpolated slice; all None for a non-DICOM input.
        """
        paths, frames = volume.meta.get("slice_paths"), volume.meta.get("slice_frames")
        if not self.discovery.images or not paths:
            return [None] * volume.shape_zyx[0]
        by_file = {(str(image.path), image.frame_index): image for image in self.discovery.images_of(self.info)}
        return [None if path is None else by_file.get((path, frame)) for path, frame in zip(paths, frames)]

    def source_images(self) -> list[Dataset]:
        """The DICOM headers (no pixel data) of the series, one per file in slice order (a
        multi-frame file once); empty for a NIfTI file or DeepLesion PNG series."""
        if not self.discovery.images:
            return []
        unique = {s.path: s.header for s in self.discovery.images_of(self.info)}
        return list(unique.values())


def pending_volumes(
    path: Path,
    *,
    series: str | None = None,
    all_series: bool = False,
    allow_non_ct: bool = False,
    tilt: str = "refuse",
) -> list[PendingVolume]:
    """The volume(s) one input path stands for, checked from headers, to be decoded one at a time.

    A DICOM folder (or a lone Enhanced multi-frame file) gives the series chosen by :data:`~ctlesion.io.series.SELECTION_RULE`, every
    series matching ``series`` (number, UID or description), or every readable series with
    ``all_series``; each is checked before any is decoded (readable, not tilted unless
    ``tilt="resample"``, a decoder installed: :func:`~ctlesion.io.dicom.check_discovered`). A
    NIfTI file or DeepLesion PNG series gives its one volume (``series`` and ``all_series`` do
    not apply and are ignored). Holding the list costs headers only; ``detect`` decodes and
    drops one volume at a time.

    Args:
        path: DICOM folder or multi-frame file, NIfTI file or DeepLesion PNG series folder.
        series: series selector for DICOM folders, or None.
        all_series: every readable series of a DICOM folder.
        allow_non_ct: select non-CT DICOM series (NIfTI carries no modality and is always read).
        tilt: "refuse" or "resample": what to do with a gantry-tilted DICOM series.

    Returns:
        One or more :class:`PendingVolume`, folder order.

    Raises:
        CtlesionError: see :func:`read_volume` and :func:`~ctlesion.io.series.select_series`
            (errors visible in headers only; the rest come from :meth:`PendingVolume.read`).
        ValueError: both ``series`` and ``all_series``; ``tilt`` not in :data:`TILT_CHOICES`.
    """
    path, kind = _input_kind(path)
    if kind != "dicom":
        if series is not None or all_series:
            logger.info("%s: holds one volume; --series / --all-series do not apply to it", path)
        discovery = discover(path)
        return [PendingVolume(path, discovery, discovery.series[0], tilt)]
    discovery = discover_series(path, allow_non_ct=allow_non_ct)
    chosen = select_series(discovery, series, all_series=all_series)
    for info in chosen:
        check_discovered(discovery, info, tilt=tilt)
    return [PendingVolume(path, discovery, info, tilt) for info in chosen]


def read_volumes(
    path: Path,
    *,
    series: str | None = None,
    all_series: bool = False,
    allow_non_ct: bool = False,
    tilt: str = "refuse",
) -> list[Volume]:
    """Read the volume(s) one input path stands for: :func:`pending_volumes`, all decoded.

    Args:
        path, series, all_series, allow_non_ct, tilt: as :func:`pending_volumes`.

    Returns:
        One or more Volumes (HU (Z, Y, X), LPS geometry), see the readers.

    Raises:
        CtlesionError: see :func:`read_volume`.
        ValueError: both ``series`` and ``all_series``; ``tilt`` not in :data:`TILT_CHOICES`.
    """
    return [pending.read() for pending in pending_volumes(path, series=series, all_series=all_series,
                                                          allow_non_ct=allow_non_ct, tilt=tilt)]


def read_volume(path: Path, *, allow_non_ct: bool = False, series: str | None = None, tilt: str = "refuse") -> Volume:
    """Read one CT volume from a DICOM series folder or multi-frame file, or a NIfTI file.

    Dispatch: a folder (or a lone Enhanced multi-frame DICOM file) ->
    :func:`~ctlesion.io.dicom.read_dicom_series` (searched recursively, the rule's series or the
    one named by ``series``); a ``.nii`` / ``.nii.gz`` file -> :func:`~ctlesion.io.nifti.read_nifti`;
    a DeepLesion PNG series folder -> :func:`~ctlesion.io.deeplesion_series.read_deeplesion_series`.

    Args:
        path: DICOM folder or multi-frame file, NIfTI file or DeepLesion PNG series folder.
        allow_non_ct: passed to :func:`read_dicom_series` (read a non-CT series); NIfTI files carry
            no modality and are always read.
        series: series selector for a DICOM folder (must match exactly one series).
        tilt: "refuse" or "resample" (gantry tilt), DICOM only.

    Returns:
        The Volume (HU (Z, Y, X), LPS geometry), see the readers.

    Raises:
        CtlesionError: (naming the path) it does not exist; it is a single classic DICOM slice
            (the folder of the series is needed); it is neither a folder nor a NIfTI or
            multi-frame DICOM file; or the reader's own errors.
    """
    path, kind = _input_kind(path)
    if kind == "dicom":
        return read_dicom_series(path, series=series, allow_non_ct=allow_non_ct, tilt=tilt)
    if kind == "deeplesion":
        return read_deeplesion_series(path)
    return read_nifti(path)


def _input_kind(path: Path) -> tuple[Path, str]:
    """The path and what it is: "dicom" (a folder, or a lone Enhanced multi-frame file),
    "deeplesion" (a PNG series folder) or "nifti"; else a CtlesionError saying what it is."""
    path = Path(path)
    if not path.exists():
        raise CtlesionError("does not exist", path)
    if path.is_dir():
        return path, "deeplesion" if is_deeplesion_series(path) else "dicom"
    if is_nifti_path(path):
        return path, "nifti"
    if _is_dicom_file(path):
        if is_multiframe_series_file(path):
            return path, "dicom"
        raise CtlesionError(
            "is a single DICOM file; pass the folder that holds all the slices of the series", path
        )
    raise CtlesionError("not a DICOM folder or NIfTI file (.nii / .nii.gz)", path)


def _is_dicom_file(path: Path) -> bool:
    try:
        return pydicom.misc.is_dicom(path)
    except OSError as error:
        raise CtlesionError(f"cannot read file ({error.strerror or error})", path) from error
