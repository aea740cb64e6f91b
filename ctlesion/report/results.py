"""``results.json`` and the lesion label map (SPEC section 9).

Layout of ``results.json``::

    {"version": "0.1.0", "model": {...}, "studies": [study_record(...), ...]}

Each study record holds the input, the slice interval found, the series chosen and why others
were skipped, and one entry per lesion with its label in the label map, score, boxes in voxels
and LPS mm, key slice, RECIST axes and volume. Patient name and ID are never written: only the
metadata keys listed in :func:`study_record` are copied.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ctlesion.atomic import atomic_write_text
from ctlesion.postprocess import Lesion, box_lps_mm
from ctlesion.volume import Volume

#: Significant digits kept for floats in results.json: relative precision 1e-7, so that a
#: one-voxel volume (a few microlitres) keeps the precision of its voxel count.
FLOAT_SIGNIFICANT_DIGITS = 7


def format_score(score: float) -> str:
    """A lesion's detection score as shown to people (console, overlays, summary sheet, SEG labels).

    Four decimals with trailing zeros dropped down to two: 0.9 -> "0.90", 0.87341 -> "0.8734",
    0.99534 -> "0.9953". Two decimals alone would print every finding of a confident model as
    "1.00" (the shipped demo model's default threshold is 0.9952); ``results.json`` keeps the
    exact float.
    """
    text = f"{score:.4f}".rstrip("0")
    return text if len(text.partition(".")[2]) >= 2 else f"{score:.2f}"


def label_map(volume: Volume, lesions: Sequence[Lesion]) -> np.ndarray:
    """The (Z, Y, X) label map of the lesions in the input volume's geometry.

    Lesion ``i`` of ``lesions`` gets label ``i + 1`` (the ``label`` of :func:`study_record`).
    The lesions must be disjoint, as :func:`ctlesion.postprocess.link_detections` returns
    them (:func:`ctlesion.postprocess.disjoint_lesions`), so that each lesion's voxels in the
    map are exactly its mask and its ``volume_ml``.

    Args:
        volume: the input volume (only its shape is used).
        lesions: disjoint lesions in the input geometry.

    Returns:
        (Z, Y, X) uint8 array (uint16 beyond 255 lesions), 0 = background.

    Raises:
        ValueError: if two lesions share a voxel, or a mask does not fit the volume.
    """
    dtype = np.uint8 if len(lesions) <= np.iinfo(np.uint8).max else np.uint16
    labels = np.zeros(volume.shape_zyx, dtype=dtype)
    for label, lesion in enumerate(lesions, start=1):
        region = tuple(slice(o, o + n) for o, n in zip(lesion.mask_offset_zyx, lesion.mask_zyx.shape))
        if labels[region].shape == lesion.mask_zyx.shape and labels[region][lesion.mask_zyx].any():
            raise ValueError(f"lesion {label} shares voxels with another lesion: lesions must be disjoint "
                             "(ctlesion.postprocess.disjoint_lesions)")
        lesion.paint(labels, label)  # raises if the mask does not fit
    return labels


def _series_record(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "uid": meta.get("series_uid") or None,  # DICOM UIDs may be empty strings
        "description": meta.get("description") or None,
        "warnings": list(meta.get("warnings", [])),
        "skipped": list(meta.get("skipped", [])),
    }


def study_record(
    volume: Volume,
    lesions: Sequence[Lesion],
    *,
    input_path: str,
    detector_interval_mm: float,
    label_map_file: str | None = None,
    overlay_files: Sequence[str | None] | None = None,
    dicom_seg_file: str | None = None,
    dicom_sr_file: str | None = None,
    summary_sheet_file: str | None = None,
) -> dict[str, Any]:
    """One entry of ``studies`` in results.json.

    Args:
        volume: the input volume. From ``volume.meta`` only ``slice_thickness_mm``,
            ``series_uid``, ``description``, ``warnings`` and ``skipped`` are used.
        lesions: lesions in the input geometry, in label order (lesion i has label i + 1).
        input_path: the input as the user gave it (file or folder).
        detector_interval_mm: slice interval the detector saw, mm; reported as
            ``resampled_to_mm`` when it differs from the input's interval.
        label_map_file: label map file name relative to results.json, or None if not written.
        overlay_files: one overlay file name (relative) or None per lesion.
        dicom_seg_file: DICOM SEG file name relative to results.json, or None if not written.
        dicom_sr_file: DICOM SR (measurement report) file name, likewise.
        summary_sheet_file: the study's summary sheet picture (all lesions' crops), likewise.

    Returns:
        A JSON-ready dict: ``input``, ``slice_interval_mm``, ``slice_thickness_mm``,
        ``shape_zyx``, ``spacing_zyx_mm``, ``series`` (``uid``, ``description``, ``warnings``,
        ``skipped``), ``resampled_to_mm``, ``label_map``, ``dicom_seg``, ``dicom_sr``,
        ``summary_sheet`` and ``lesions`` (each with ``label``,
        ``score``, ``box_vox`` [x1, y1, z1, x2, y2, z2], ``box_lps_mm`` [x, y, z min then max],
        ``key_slice``, ``long_axis_mm``, ``short_axis_mm``, ``long_axis_px`` and
        ``short_axis_px`` (end points [[x0, y0], [x1, y1]] on the key slice, continuous pixel
        coordinates, or null), ``volume_ml``, ``overlay``).

    Raises:
        ValueError: if ``overlay_files`` does not have one entry per lesion.
    """
    if overlay_files is not None and len(overlay_files) != len(lesions):
        raise ValueError(f"overlay_files has {len(overlay_files)} entries for {len(lesions)} lesions")
    overlays = list(overlay_files) if overlay_files is not None else [None] * len(lesions)
    interval = volume.slice_interval_mm
    resampled = not math.isclose(detector_interval_mm, interval, rel_tol=1e-6)
    thickness = volume.meta.get("slice_thickness_mm")
    return {
        "input": str(input_path),
        "slice_interval_mm": interval,
        "slice_thickness_mm": None if thickness is None else float(thickness),
        "shape_zyx": list(volume.shape_zyx),
        "spacing_zyx_mm": list(volume.spacing_zyx_mm),
        "series": _series_record(volume.meta),
        "resampled_to_mm": float(detector_interval_mm) if resampled else None,
        "label_map": label_map_file,
        "dicom_seg": dicom_seg_file,
        "dicom_sr": dicom_sr_file,
        "summary_sheet": summary_sheet_file,
        "lesions": [
            {
                "label": i + 1,
                "score": float(les.score),
                "box_vox": [float(v) for v in les.box_vox],
                "box_lps_mm": box_lps_mm(les.box_vox, volume),
                "key_slice": int(les.key_slice),
                "long_axis_mm": float(les.long_axis_mm),
                "short_axis_mm": float(les.short_axis_mm),
                "long_axis_px": _axis_ends(les.long_axis_px),
                "short_axis_px": _axis_ends(les.short_axis_px),
                "volume_ml": float(les.volume_ml),
                "overlay": overlay,
            }
            for i, (les, overlay) in enumerate(zip(lesions, overlays))
        ],
    }


def _axis_ends(ends) -> list[list[float]] | None:
    """[[x0, y0], [x1, y1]] of an axis' end points, or None."""
    return None if ends is None else [[float(v) for v in point] for point in ends]


def _jsonable(value: Any) -> Any:
    """Plain JSON types with floats rounded to FLOAT_SIGNIFICANT_DIGITS; non-finite floats become None."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(f"{float(value):.{FLOAT_SIGNIFICANT_DIGITS}g}") if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results_json(path: str | Path, studies: Sequence[dict[str, Any]], *, model: dict[str, Any], version: str) -> None:
    """Write ``{"version", "model", "studies"}`` to ``path`` atomically (indent 2, UTF-8).

    Floats keep 7 significant digits; NaN or infinite values are written as null.

    Args:
        path: destination file.
        studies: records from :func:`study_record`.
        model: model description (name, checkpoint, config...), JSON-serialisable.
        version: ctlesion version string.

    Raises:
        TypeError: if a value is not JSON-serialisable.
    """
    document = _jsonable({"version": version, "model": model, "studies": list(studies)})
    atomic_write_text(path, json.dumps(document, indent=2, allow_nan=False) + "\n")
