"""Lesions as a DICOM Segmentation (SEG) object beside the source CT series, with highdicom.

One segment per lesion (segment number = the lesion's ``label`` in results.json and the NIfTI
label map), BINARY type, coded as SNOMED CT "Morphologically abnormal structure" (49755003) /
"Lesion" (52988006), AUTOMATIC, with the algorithm identification (AI family, CID 7162). The
frames follow the geometry of the volume ``detect`` reconstructed (:class:`~ctlesion.volume.Volume`,
LPS), which may differ from the source slices (a regular grid over a missing slice, a tilt
correction), with source slices kept as they are at their own positions
(:func:`frame_positions_lps_mm`); highdicom references a source instance wherever a frame lies
on one (DICOM PS3.3 A.51, C.8.20). The SEG joins the source study (same Study Instance UID and Frame of
Reference), in a new series, so viewers (3D Slicer, OHIF) show it over the CT.
"""

from __future__ import annotations

from collections.abc import Sequence
from copy import deepcopy
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from ctlesion.atomic import atomic_write_bytes
from ctlesion.postprocess import Lesion
from ctlesion.report.results import format_score
from ctlesion.volume import Volume

#: Attributes every source image must carry for a SEG that refers to it (DICOM type 1 there).
REQUIRED_UIDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID")

#: SeriesNumber of the SEG: the source series' number plus this (or this when it has none).
SERIES_NUMBER_OFFSET = 1000


#: Data set attributes that equal a File Meta Information attribute (DICOM PS3.10 7.1), taken
#: from there where an anonymiser blanked them in the data set.
FROM_FILE_META = {"SOPClassUID": "MediaStorageSOPClassUID", "SOPInstanceUID": "MediaStorageSOPInstanceUID"}


def source_uid(image: Dataset, keyword: str) -> str:
    """A UID of the image, from its file meta (:data:`FROM_FILE_META`) when blank in the data set."""
    value = str(image.get(keyword, "") or "")
    if not value and keyword in FROM_FILE_META:
        meta = getattr(image, "file_meta", None)
        value = str(meta.get(FROM_FILE_META[keyword], "") or "") if meta is not None else ""
    return value


def seg_source_problem(source_images: Sequence[Dataset]) -> str | None:
    """Why a SEG cannot refer to these source images, or None when it can.

    A SEG must share the source's Study Instance UID and Frame of Reference UID and name each
    source instance, so anonymised series with those UIDs emptied cannot carry one.

    Args:
        source_images: the series' headers (pixel data not needed).

    Returns:
        A short reason naming the missing attribute, or None.
    """
    if not source_images:
        return "the input is not a DICOM series (a SEG refers to DICOM source images)"
    for keyword in REQUIRED_UIDS:
        if any(not source_uid(image, keyword) for image in source_images):
            return f"the source images have no {keyword} (anonymised?), which a SEG must refer to"
    return None


#: Type 2 attributes of the Patient and General Study modules (DICOM PS3.3 C.7.1.1, C.7.2.1):
#: present but possibly empty in a conforming image; highdicom copies them into the SEG.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")


def _completed(image: Dataset, slice_thickness_mm: float) -> Dataset:
    """The image, or a copy completed where anonymisers leave gaps: SOP Class and
    Instance UIDs from the file meta when blank, absent type 2 patient/study attributes added
    empty, an absent or empty SliceThickness set to ``slice_thickness_mm`` (the SEG frames'
    pixel measures need one)."""
    missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in image]
    blank_uids = [keyword for keyword in FROM_FILE_META if not str(image.get(keyword, "") or "")]
    no_thickness = image.get("SliceThickness") in (None, "")
    if not missing and not blank_uids and not no_thickness:
        return image
    copy = deepcopy(image)  # Dataset(image) would share, and so change, the caller's elements
    for keyword in blank_uids:
        setattr(copy, keyword, source_uid(image, keyword))
    for keyword in missing:
        setattr(copy, keyword, "")
    if no_thickness:
        copy.SliceThickness = slice_thickness_mm
    return copy


def derived_series_number(source_images: Sequence[Dataset], offset: int) -> int:
    """SeriesNumber of an object derived from the series: its SeriesNumber + ``offset``, or
    ``offset`` when it has none."""
    number = source_images[0].get("SeriesNumber") if source_images else None
    return offset + (int(number) if number not in (None, "") else 0)


def completed_sources(source_images: Sequence[Dataset], volume: Volume) -> list[Dataset]:
    """The source headers completed for highdicom (:func:`_completed`), SliceThickness from the
    volume's metadata (else its slice interval)."""
    thickness_mm = float(volume.meta.get("slice_thickness_mm") or volume.slice_interval_mm)
    return [_completed(image, thickness_mm) for image in source_images]


#: A source slice's ImagePositionPatient stands for a volume slice when it lies this close to
#: the volume's plane in-plane (mm), and within half a slice interval along the normal.
SAME_PLANE_TOLERANCE_MM = 1e-3


def frame_positions_lps_mm(volume: Volume, source_positions_lps_mm: Sequence[np.ndarray | None] | None) -> np.ndarray:
    """(Z, 3) LPS position (mm) of the first pixel of each SEG frame.

    Slice z of the volume is at ``volume.voxel_to_lps((0, 0, z))``: a regular grid from the
    first slice at the median interval. Where the slice is a source slice kept as it is (same
    in-plane grid: not tilt-corrected, not interpolated), the source's own ImagePositionPatient
    is used instead, so that steps within the reader's 5 % tolerance do not move the frame off
    its source slice (and highdicom can name that slice as the frame's source).

    Args:
        volume: the volume the SEG is built on.
        source_positions_lps_mm: per volume slice, its source slice's (3,) ImagePositionPatient
            (:meth:`~ctlesion.io.PendingVolume.source_slices`), or None; None for no sources.

    Returns:
        (Z, 3) float64 positions, LPS mm.
    """
    num_z = volume.shape_zyx[0]
    grid = volume.voxel_to_lps(np.column_stack([np.zeros(num_z), np.zeros(num_z), np.arange(num_z)]))
    if source_positions_lps_mm is None:
        return grid
    row, column, normal = (volume.direction_lps[:, k] for k in range(3))
    positions = grid.copy()
    for z, source in enumerate(source_positions_lps_mm):
        if source is None:
            continue
        offset = np.asarray(source, dtype=np.float64) - grid[z]
        in_plane = max(abs(offset @ row), abs(offset @ column))
        if in_plane < SAME_PLANE_TOLERANCE_MM and abs(offset @ normal) < 0.5 * volume.slice_interval_mm:
            positions[z] = source
    return positions


def lesion_segmentation(
    volume: Volume,
    labels_zyx: np.ndarray,
    lesions: Sequence[Lesion],
    source_images: Sequence[Dataset],
    *,
    version: str,
    model_name: str = "",
    source_positions_lps_mm: Sequence[np.ndarray | None] | None = None,
):
    """Build the DICOM SEG of a study's lesions.

    Args:
        volume: the volume ``detect`` ran on (its grid and LPS geometry are the SEG's).
        labels_zyx: (Z, Y, X) unsigned integer label map of the volume (label i = lesion i), as
            :func:`~ctlesion.report.results.label_map` makes it.
        lesions: the lesions, label order (scores go into the segment labels).
        source_images: headers of the source series (single-frame images, or one multi-frame
            image), see :func:`seg_source_problem`.
        version: ctlesion version (SoftwareVersions, algorithm version).
        model_name: the checkpoint's file name, recorded as an algorithm parameter.
        source_positions_lps_mm: per volume slice, the ImagePositionPatient of the source slice
            it is (None where none), for :func:`frame_positions_lps_mm`; None: the volume's
            regular grid throughout.

    Returns:
        ``highdicom.seg.Segmentation`` (a pydicom Dataset): one frame per segment and slice
        it covers, at :func:`frame_positions_lps_mm`, with the volume's orientation and pixel
        spacing.

    Raises:
        ValueError: no lesions (a SEG needs one segment), a label map of another shape than
            the volume, source positions not one per slice, or source images a SEG cannot refer
            to (see :func:`seg_source_problem`).
    """
    import highdicom as hd  # noqa: PLC0415 (only when a SEG is asked for)
    from pydicom.sr.codedict import codes  # noqa: PLC0415

    if not lesions:
        raise ValueError("no lesions: a DICOM SEG needs at least one segment")
    if tuple(labels_zyx.shape) != volume.shape_zyx:
        raise ValueError(f"label map shape {labels_zyx.shape} differs from the volume's {volume.shape_zyx}")
    if source_positions_lps_mm is not None and len(source_positions_lps_mm) != volume.shape_zyx[0]:
        raise ValueError(f"{len(source_positions_lps_mm)} source positions for {volume.shape_zyx[0]} slices")
    problem = seg_source_problem(source_images)
    if problem:
        raise ValueError(problem)
    sources = completed_sources(source_images, volume)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="ctlesion AlignShift", version=version, family=codes.cid7162.ArtificialIntelligence,
        parameters={"model": model_name} if model_name else None)
    segments = [
        hd.seg.SegmentDescription(
            segment_number=label, segment_label=f"lesion {label} (score {format_score(lesion.score)})",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm, tracking_id=f"lesion {label}", tracking_uid=hd.UID())
        for label, lesion in enumerate(lesions, start=1)
    ]
    positions = [hd.PlanePositionSequence("PATIENT", [float(v) for v in position])
                 for position in frame_positions_lps_mm(volume, source_positions_lps_mm)]
    orientation = hd.PlaneOrientationSequence(
        "PATIENT", [float(v) for v in (*volume.direction_lps[:, 0], *volume.direction_lps[:, 1])])
    measures = hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in volume.spacing_zyx_mm[1:]],
                                        slice_thickness=float(sources[0].SliceThickness),
                                        spacing_between_slices=float(volume.slice_interval_mm))
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=np.ascontiguousarray(labels_zyx), plane_positions=positions,
        plane_orientation=orientation, pixel_measures=measures, segmentation_type="BINARY",
        segment_descriptions=segments,
        series_instance_uid=hd.UID(), series_number=derived_series_number(sources, SERIES_NUMBER_OFFSET),
        sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="ctlesion", manufacturer_model_name="AlignShift lesion detector", software_versions=version,
        device_serial_number="none", content_label="LESIONS", content_description="ctlesion lesion detection",
        series_description="ctlesion lesions")


def write_dicom_file(path: Path, dataset: Dataset) -> None:
    """Write a DICOM data set (a SEG, an SR) to ``path`` atomically as a DICOM Part 10 file."""
    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    atomic_write_bytes(path, buffer.getvalue())
