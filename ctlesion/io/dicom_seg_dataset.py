"""Datasets of DICOM CT series with DICOM Segmentation (SEG) objects beside them.

Layout: any folder tree holding DICOM CT series and SEG files (as annotation tools such as
3D Slicer or OHIF export them, or ``ctlesion detect --dicom-seg`` writes them). Each SEG is one
case: its CT is the series it references (``ReferencedSeriesSequence``), read from the folder
that holds that series' files (:func:`ctlesion.io.read_volume` with the series UID); its labels
are its segments, named by ``SegmentLabel`` (``--lesion-label`` takes a label or a segment
number; the same label in several SEGs is one label of the dataset). The lesions of a case are
the 3D connected components of the chosen segment(s), as for nnU-Net label maps
(:func:`ctlesion.io.masked_datasets.read_case`).

The SEG's frames must lie on the CT's grid (same rows, columns, pixel spacing and orientation,
each frame at a slice position): resampling a SEG is not supported, and a SEG off the grid is
refused naming its file. BINARY segmentations are read as they are, FRACTIONAL ones at half
their maximum value (DICOM PS3.3 C.8.20.2). Splits: ``splits_final.json`` / ``splits.json`` of
the folder (case ids), else ``--val-fraction``, else every case in train; there is no test split.
A case id is the SEG file's path inside the folder, without ``.dcm``, with ``/`` as ``_``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from ctlesion.errors import CtlesionError
from ctlesion.volume import Volume

#: SOP Class UID of the Segmentation Storage IOD.
SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: Largest distance (mm) between a SEG frame and the CT slice position it is put on, and between grids.
GRID_TOLERANCE_MM = 1e-2
_HEADER_TAGS = ["SOPClassUID", "Modality", "SeriesInstanceUID", "ReferencedSeriesSequence", "SegmentSequence"]


def _header(path: Path):
    try:
        return pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
    except (InvalidDicomError, OSError, ValueError, TypeError):
        return None


def _dicom_files(root: Path):
    for path in sorted(Path(root).rglob("*")):
        if path.is_file() and not path.name.startswith(".") and "ctlesion_cache" not in path.parts:
            yield path


def may_hold_segs(path: Path) -> bool:
    """True for a folder that is neither an nnU-Net/nnDetection (``dataset.json``) nor a DeepLesion
    (``DL_info.csv``) dataset: where DICOM SEG files are looked for."""
    path = Path(path)
    return path.is_dir() and not (path / "dataset.json").is_file() and not (path / "DL_info.csv").is_file()


def is_dicom_seg_dataset(path: Path) -> bool:
    """True for a folder (:func:`may_hold_segs`) holding at least one DICOM SEG file."""
    if not may_hold_segs(path):
        return False
    for file in _dicom_files(path):
        header = _header(file)
        if header is not None and str(header.get("SOPClassUID", "")) == SEG_STORAGE:
            return True
    return False


def scan_dicom_seg_folder(root: Path) -> tuple[list[tuple[Path, str, dict[int, str]]], dict[str, Path]]:
    """The SEGs of a folder and the folders of its CT series.

    Returns:
        ``(segs, series_folders)``: per SEG file, (path, referenced CT series UID, segment number ->
        label); and per CT series UID, the deepest folder holding all its files.

    Raises:
        CtlesionError: (naming the SEG) a SEG that references no series.
    """
    segs, series_files = [], {}
    for file in _dicom_files(root):
        header = _header(file)
        if header is None:
            continue
        if str(header.get("SOPClassUID", "")) == SEG_STORAGE:
            referenced = header.get("ReferencedSeriesSequence") or []
            if not referenced:
                raise CtlesionError("DICOM SEG references no series (no ReferencedSeriesSequence)", file)
            segments = {int(s.SegmentNumber): str(s.get("SegmentLabel", s.SegmentNumber))
                        for s in header.get("SegmentSequence") or []}
            segs.append((file, str(referenced[0].SeriesInstanceUID), segments))
        elif str(header.get("Modality", "")) == "CT":
            series_files.setdefault(str(header.SeriesInstanceUID), []).append(file)
    folders = {uid: Path(*_common_parts([f.parent for f in files])) for uid, files in series_files.items()}
    return segs, folders


def _common_parts(folders: list[Path]) -> tuple[str, ...]:
    parts = folders[0].parts
    for folder in folders[1:]:
        n = 0
        while n < min(len(parts), len(folder.parts)) and parts[n] == folder.parts[n]:
            n += 1
        parts = parts[:n]
    return parts


def seg_lesion_mask(seg_path: Path, volume: Volume, segment_numbers: set[int]) -> np.ndarray:
    """(Z, Y, X) bool: where any of ``segment_numbers`` of a SEG lies, on the CT volume's grid.

    Raises:
        CtlesionError: (naming the SEG) unreadable, frames off the CT's grid, or an unsupported
            segmentation type.
    """
    try:
        seg = pydicom.dcmread(seg_path)
        frames = seg.pixel_array
    except (InvalidDicomError, OSError, ValueError, AttributeError, RuntimeError) as exc:
        raise CtlesionError(f"cannot read the DICOM SEG ({exc})", seg_path) from None
    frames = frames.reshape(-1, *frames.shape[-2:])
    kind = str(seg.get("SegmentationType", "BINARY"))
    if kind == "FRACTIONAL":
        on = frames >= 0.5 * float(seg.get("MaximumFractionalValue", 255))
    elif kind == "BINARY":
        on = frames > 0
    else:
        raise CtlesionError(f"segmentation type {kind} is not supported (BINARY or FRACTIONAL)", seg_path)
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    mask = np.zeros(volume.shape_zyx, dtype=bool)
    if on.shape[1:] != volume.shape_zyx[1:]:
        raise CtlesionError(f"SEG frames of {on.shape[1]} x {on.shape[2]} px on a CT of {volume.shape_zyx[1]} x "
                            f"{volume.shape_zyx[2]} px (resampling a SEG is not supported)", seg_path)
    inverse = np.linalg.inv(volume.affine_lps)
    for index, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        number = int(_group(frame, shared, "SegmentIdentificationSequence").ReferencedSegmentNumber)
        if number not in segment_numbers:
            continue
        _check_plane(frame, shared, volume, seg_path)
        position = [float(v) for v in _group(frame, shared, "PlanePositionSequence").ImagePositionPatient]
        x, y, z = (inverse @ np.array([*position, 1.0]))[:3]
        spacing = volume.spacing_zyx_mm
        if (abs(x) * spacing[2] > GRID_TOLERANCE_MM or abs(y) * spacing[1] > GRID_TOLERANCE_MM
                or abs(z - round(z)) * spacing[0] > GRID_TOLERANCE_MM or not 0 <= round(z) < volume.shape_zyx[0]):
            raise CtlesionError(f"SEG frame {index + 1} at {position} mm is not on a slice of the CT's grid "
                                "(resampling a SEG is not supported)", seg_path)
        mask[round(z)] |= on[index]
    return mask


def _group(frame, shared, name: str):
    if name in frame:
        return frame[name][0]
    if shared is not None and name in shared:
        return shared[name][0]
    raise KeyError(name)


def _check_plane(frame, shared, volume: Volume, seg_path: Path) -> None:
    plane = _group(frame, shared, "PlaneOrientationSequence")
    orientation = np.array([float(v) for v in plane.ImageOrientationPatient])
    spacing = np.array([float(v) for v in _group(frame, shared, "PixelMeasuresSequence").PixelSpacing])
    ours = np.concatenate([volume.direction_lps[:, 0], volume.direction_lps[:, 1]])
    if np.abs(orientation - ours).max() > 1e-4 or np.abs(spacing - np.array(volume.spacing_zyx_mm[1:])).max() > 1e-4:
        raise CtlesionError("SEG frames have another orientation or pixel spacing than the CT (resampling a SEG is "
                            "not supported)", seg_path)
