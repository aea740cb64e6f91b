"""Find the DICOM series in a folder from their headers alone, and choose the one to read.

:func:`discover_series` walks a folder recursively (any file names, with or without ``.dcm``)
and reads every file's header with ``stop_before_pixels=True`` (pixel data are neither decoded
nor read). It explains everything it finds (SPEC section 3):

* non-DICOM files, unreadable or truncated files, objects without pixel data (reports,
  presentation states, ...), colour images, localizers (ImageType LOCALIZER) and images without
  patient geometry are skipped file by file, each with its reason;
* the remaining images (single-frame files, or frames of an Enhanced multi-frame file, whose
  geometry comes from the per-frame functional groups) are grouped into series by
  (StudyInstanceUID, SeriesInstanceUID, SeriesNumber, ImageOrientationPatient rounded to 3
  decimals, Rows, Columns, PixelSpacing rounded to 4 decimals): UIDs may be empty, so geometry
  takes part. A group whose images collide at the same positions but fall apart cleanly by
  AcquisitionNumber is split into one series per acquisition;
* non-axial series (slice normal not closest to the patient's head-feet axis) are skipped as a
  whole, with one reason for the series;
* every other series is described by a :class:`SeriesInfo` (slices, matrix, pixel spacing,
  slice interval = median step of ImagePositionPatient along the normal, SliceThickness, z
  extent, gantry tilt, warnings), the geometry coming from :mod:`ctlesion.io.geometry`, the same
  code the reader uses.

Selection rule (:data:`SELECTION_RULE`), applied when the user names no series: among the
series that can be read (at least 2 slice positions) and are CT (other modalities only with
``allow_non_ct`` and only when the folder has no CT series), prefer PRIMARY over SECONDARY
images (ImageType value 2: reformats, MIPs), keep those covering at least half the largest z
extent, and take the thinnest slice interval (to 0.01 mm), then the largest z extent, then the
most slices, then the first found (files are scanned in sorted path order).
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ctlesion.errors import CtlesionError
from ctlesion.io.geometry import (
    SAME_POSITION_TOLERANCE_MM,
    measure_tilt,
    median_interval_mm,
    plan_regular_grid,
    positions_along_normal_mm,
    summarize_thickness,
)

logger = logging.getLogger(__name__)

#: Decimals kept when ImageOrientationPatient / PixelSpacing are compared to group series.
ORIENTATION_DECIMALS = 3
SPACING_DECIMALS = 4
#: A series covering less than this fraction of the largest z extent is not chosen by the rule.
MIN_COVERAGE_FRACTION = 0.5
#: The rule :func:`discover_series` uses to choose the series that is read by default.
SELECTION_RULE = (
    "among axial series with at least 2 slice positions, CT only (other modalities only with "
    "--allow-non-ct when there is no CT), PRIMARY before SECONDARY images, covering at least "
    f"{MIN_COVERAGE_FRACTION:.0%} of the largest z extent: the thinnest slice interval, then the "
    "largest z extent, then the most slices, then the first found"
)
_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


@dataclass(frozen=True, eq=False)
class SliceHeader:
    """One 2-D image of a series: a single-frame file, or one frame of a multi-frame file.

    Attributes:
        path: the file.
        frame_index: index of the frame in a multi-frame file; None for a single-frame file.
        header: the file's data set read with ``stop_before_pixels=True``.
        position_lps_mm: (3,) ImagePositionPatient, centre of the first pixel, LPS mm.
        orientation: (6,) ImageOrientationPatient: row cosine then column cosine (LPS).
        pixel_spacing_mm: (between rows, between columns) from PixelSpacing, mm.
        rescale_slope, rescale_intercept: HU = stored * slope + intercept (1 and 0 if absent).
        slice_thickness_mm: SliceThickness (nominal), or None.
        pixel_offset: file offset of the pixel data element (where header reading stopped), so
            the reader decodes without parsing the header again; None if unknown.
        normal: (3,) unit slice normal = row cosine x column cosine.
        The other attributes are the identifying header values (empty string / None if absent).
    """

    path: Path
    frame_index: int | None
    header: Dataset
    series_uid: str
    study_uid: str
    series_number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    acquisition_number: str
    position_lps_mm: np.ndarray
    orientation: np.ndarray
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    rescale_slope: float
    rescale_intercept: float
    slice_thickness_mm: float | None
    pixel_offset: int | None = None
    normal: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        # plain floats: this runs once per image, where numpy's per-call overhead dominates
        row, col = [float(v) for v in self.orientation[:3]], [float(v) for v in self.orientation[3:]]
        row_norm, col_norm = math.hypot(*row), math.hypot(*col)
        if not (
            all(math.isfinite(v) for v in row + col)
            and abs(row_norm - 1) < 0.01
            and abs(col_norm - 1) < 0.01
            and abs(sum(a * b for a, b in zip(row, col))) < 0.01
        ):
            raise ValueError(f"ImageOrientationPatient {self.orientation.tolist()} is not two orthogonal unit vectors")
        if not all(math.isfinite(s) and s > 0 for s in self.pixel_spacing_mm):
            raise ValueError(f"PixelSpacing {list(self.pixel_spacing_mm)} is not positive")
        if not all(math.isfinite(float(v)) for v in self.position_lps_mm):
            raise ValueError(f"ImagePositionPatient {self.position_lps_mm.tolist()} is not finite")
        r = [v / row_norm for v in row]
        c = [v / col_norm for v in col]
        normal = [r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0]]
        length = math.hypot(*normal)
        object.__setattr__(self, "normal", np.array([v / length for v in normal]))

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Series identity: UIDs and number plus geometry (the UIDs alone may be empty or shared)."""
        return (
            self.study_uid,
            self.series_uid,
            self.series_number,
            tuple(np.round(self.orientation, ORIENTATION_DECIMALS) + 0.0),
            self.rows,
            self.columns,
            tuple(np.round(self.pixel_spacing_mm, SPACING_DECIMALS)),
        )

    @property
    def frame_number(self) -> int | None:
        """DICOM frame number (1-based) in a multi-frame file; None for a single-frame file."""
        return None if self.frame_index is None else self.frame_index + 1

    @property
    def label(self) -> str:
        """File name (with the frame number for multi-frame files), for messages."""
        return self.path.name if self.frame_index is None else f"{self.path.name}[frame {self.frame_number}]"


@dataclass(frozen=True)
class SeriesInfo:
    """What is known about one axial image series from its headers.

    Attributes:
        index: position in :attr:`Discovery.series` (folder order).
        series_uid: SeriesInstanceUID ("" when empty).
        series_number: SeriesNumber, or None.
        description: SeriesDescription ("" when absent).
        modality: Modality, upper case ("" when absent).
        image_type: ImageType values of its first image, upper case.
        num_slices: distinct slice positions (images at an already taken position not counted).
        num_images: images (files, or frames of multi-frame files).
        rows, columns: matrix size, pixels.
        pixel_spacing_mm: (between rows, between columns), mm.
        slice_interval_mm: median step of the positions along the normal, mm; None with fewer
            than 2 positions.
        slice_thickness_mm: median SliceThickness (nominal), mm, or None.
        z_extent_mm: distance between the first and last slice positions along the normal, mm.
        gantry_tilt_deg: tilt angle computed from the positions (0 = none).
        warnings: what is unusual and what reading does about it, one line each.
        unreadable: why the series cannot be read (single slice, all slices at one position), or
            None.
        selectable: it may be read (by the rule, by name or with ``--all-series``): it is readable,
            and CT unless non-CT series were allowed.
        selected: read when no series is named (the rule's choice).
        selection: why it is or is not the rule's choice, one line.
        folder: the folder holding its files (their common parent).
    """

    index: int
    series_uid: str
    series_number: int | None
    description: str
    modality: str
    image_type: tuple[str, ...]
    num_slices: int
    num_images: int
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]
    slice_interval_mm: float | None
    slice_thickness_mm: float | None
    z_extent_mm: float
    gantry_tilt_deg: float
    warnings: tuple[str, ...]
    unreadable: str | None
    selectable: bool = False
    selected: bool = False
    selection: str = ""
    folder: str = ""

    @property
    def label(self) -> str:
        """``series #N 'description'`` (or the UID when there is no number), for messages."""
        name = f"#{self.series_number}" if self.series_number is not None else f"uid '{self.series_uid}'"
        return f"series {name} '{self.description}'"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``ctlesion info --json`` keys)."""
        return {
            "series_uid": self.series_uid,
            "series_number": self.series_number,
            "description": self.description,
            "modality": self.modality,
            "num_slices": self.num_slices,
            "rows": self.rows,
            "columns": self.columns,
            "pixel_spacing_mm": list(self.pixel_spacing_mm),  # header values, as written
            "slice_interval_mm": _rounded(self.slice_interval_mm),
            "slice_thickness_mm": self.slice_thickness_mm,
            "z_extent_mm": _rounded(self.z_extent_mm),
            "gantry_tilt_deg": _rounded(self.gantry_tilt_deg),
            "warnings": list(self.warnings),
            "selected": self.selected,
            "selection": self.selection,
        }


def _rounded(value: float | None) -> float | None:
    """A computed length/angle rounded to 9 decimals (float noise only), for JSON; None stays None."""
    return None if value is None else round(float(value), 9)


@dataclass(frozen=True)
class Discovery:
    """Every series found under one path, and everything skipped with its reason.

    Attributes:
        path: the folder (or NIfTI file) as given.
        series: the axial image series, folder order.
        skipped: ``{"path", "reason"}`` for each skipped file, and for each skipped series
            (path = the folder of its files).
        warnings: problems with files that belong to no series (unreadable, truncated), one line each.
        num_files: files found (recursively).
        images: for each series (same order), its :class:`SliceHeader` s sorted by position along
            the normal; what the reader decodes (empty for NIfTI).
    """

    path: str
    series: tuple[SeriesInfo, ...]
    skipped: tuple[dict[str, str], ...]
    warnings: tuple[str, ...]
    num_files: int
    images: tuple[tuple[SliceHeader, ...], ...] = field(default=(), repr=False, compare=False)

    @property
    def selected(self) -> SeriesInfo | None:
        """The series the rule chose, or None when none can be read."""
        return next((s for s in self.series if s.selected), None)

    def images_of(self, info: SeriesInfo) -> list[SliceHeader]:
        """The images of a series, sorted by position along the normal (stable in path order)."""
        return list(self.images[info.index])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: ``path``, ``series`` (see :meth:`SeriesInfo.to_dict`), ``skipped``, ``warnings``."""
        return {
            "path": self.path,
            "series": [s.to_dict() for s in self.series],
            "skipped": [dict(s) for s in self.skipped],
            "warnings": list(self.warnings),
        }


class _FolderScan:
    """Collects folder-level warnings and skipped files while a folder is scanned."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.warnings: list[str] = []
        self.skipped: list[dict[str, str]] = []
        self._skipped_paths: set[str] = set()

    def warn(self, message: str) -> None:
        logger.warning("%s: %s", self.folder, message)
        self.warnings.append(message)

    def skip(self, path: Path, reason: str) -> None:
        if str(path) in self._skipped_paths:  # a multi-frame file is listed once
            return
        logger.debug("skipping %s: %s", path, reason)
        self._skipped_paths.add(str(path))
        self.skipped.append({"path": str(path), "reason": reason})


def discover_series(folder: Path, *, allow_non_ct: bool = False) -> Discovery:
    """Find every series in a folder of DICOM files (searched recursively) from headers only.

    Pixel data are not read (``stop_before_pixels=True``); a file whose pixel data are missing or
    shorter than Rows x Columns x frames needs (uncompressed transfer syntaxes) is skipped as
    truncated. See the module docstring for grouping, skipping and :data:`SELECTION_RULE`.

    Args:
        folder: folder holding the DICOM files of a study or series, or one Enhanced multi-frame
            file, which holds a whole series by itself (:func:`is_multiframe_series_file`).
        allow_non_ct: mark non-CT series selectable (by name, ``all_series``, or by the rule when
            the folder has no CT series).

    Returns:
        The :class:`Discovery`: series (folder order, at most one ``selected``), skipped files and
        series with reasons, folder-level warnings.

    Raises:
        CtlesionError: (naming the folder) it does not exist, is not a folder (nor a multi-frame
            series file) or cannot be read; it holds no files, or no DICOM files.
    """
    folder = Path(folder)
    _check_folder(folder)
    scan = _FolderScan(folder)
    files = _list_files(folder, scan)
    if not files:
        raise CtlesionError("folder is empty (no files found, searched recursively)", folder)
    slices = [s for path in files for s in _read_slices(path, scan)]
    if not slices and {e["reason"] for e in scan.skipped} == {"not a DICOM file"}:
        raise CtlesionError(f"no DICOM files among its {len(files)} files", folder)

    infos, images = [], []
    for group in _group(slices):
        if not _is_axial(group[0]):
            normal = (np.round(group[0].normal, 3) + 0.0).tolist()
            scan.skip(_common_folder(group), f"{_group_label(group)}: non-axial orientation (slice normal {normal} in LPS)")
            continue
        group = _sort_by_position(group)
        infos.append(_summarize(len(infos), group))
        images.append(tuple(group))
    infos = _apply_rule(infos, allow_non_ct)
    return Discovery(
        path=str(folder),
        series=tuple(infos),
        skipped=tuple(scan.skipped),
        warnings=tuple(scan.warnings),
        num_files=len(files),
        images=tuple(images),
    )


def select_series(discovery: Discovery, series: str | None = None, *, all_series: bool = False) -> list[SeriesInfo]:
    """The series to read: the rule's choice, the one(s) named, or all that can be read.

    Args:
        discovery: from :func:`discover_series`.
        series: a SeriesNumber, SeriesInstanceUID or SeriesDescription (case-insensitive, exact);
            every matching series is returned. None: the rule's choice.
        all_series: every selectable series (``series`` must then be None).

    Returns:
        One or more :class:`SeriesInfo`, folder order.

    Raises:
        ValueError: both ``series`` and ``all_series`` given.
        CtlesionError: (naming the folder) nothing matches ``series`` (the message lists what was
            found); a named series cannot be read (single slice, all at one position, not CT
            without ``allow_non_ct``); nothing can be read at all (the message says why).
    """
    folder = discovery.path
    if series is not None and all_series:
        raise ValueError("name a series or ask for all series, not both")
    if series is not None:
        matches = [s for s in discovery.series if _matches(s, series)]
        if not matches:
            found = "; ".join(_listing(s) for s in discovery.series) or "no axial image series"
            raise CtlesionError(f"no series matches {series!r} (by number, UID or description); found: {found}", folder)
        for info in matches:
            if not info.selectable:
                raise CtlesionError(f"{info.label} cannot be read: {_why_unselectable(info)}", folder)
        return matches
    chosen = [s for s in discovery.series if s.selectable] if all_series else [s for s in discovery.series if s.selected]
    if not chosen:
        _raise_nothing_readable(discovery)
    return chosen


# --------------------------------------------------------------------------- files and headers


def is_multiframe_series_file(path: Path) -> bool:
    """True for a DICOM file that is a whole series by itself: an Enhanced (multi-frame) image with
    more than one frame and per-frame geometry (PerFrameFunctionalGroupsSequence).

    Reads the header only (``stop_before_pixels``); a classic single-frame slice, a multi-frame
    file without per-frame functional groups, an unreadable or non-DICOM file give False.

    Args:
        path: any file.
    """
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True,
                                 specific_tags=["NumberOfFrames", "PerFrameFunctionalGroupsSequence"])
        frames = int(header.get("NumberOfFrames", 1) or 1)
    except Exception:  # noqa: BLE001 - pydicom raises many types on corrupt or non-DICOM input
        return False
    return frames > 1 and len(header.get("PerFrameFunctionalGroupsSequence") or ()) > 1


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise CtlesionError("does not exist", folder)
    if not folder.is_dir() and not (folder.is_file() and is_multiframe_series_file(folder)):
        raise CtlesionError("is not a folder (a DICOM series is read from the folder of its files)", folder)


def _list_files(folder: Path, scan: _FolderScan) -> list[Path]:
    """All regular files under ``folder``, sorted (a multi-frame series file: itself); unreadable
    sub-folders are reported."""
    if folder.is_file():
        return [folder]

    def on_error(error: OSError) -> None:
        failed = Path(error.filename) if error.filename else folder
        if failed == folder:
            raise CtlesionError(f"cannot read folder ({error.strerror or error})", folder) from error
        scan.warn(f"cannot read sub-folder {failed} ({error.strerror or error}); its files are skipped")
        scan.skip(failed, f"unreadable folder: {error.strerror or error}")

    files = []
    for root, _dirs, names in os.walk(folder, onerror=on_error):
        files.extend(Path(root) / name for name in names)
    return sorted(path for path in files if path.is_file())


def _read_slices(path: Path, scan: _FolderScan) -> list[SliceHeader]:
    """The images of one file (one, or one per frame), or [] with the reason recorded."""
    try:
        with open(path, "rb") as file:
            header = pydicom.dcmread(file, stop_before_pixels=True)
            pixel_offset, size = file.tell(), os.fstat(file.fileno()).st_size
    except InvalidDicomError:
        scan.skip(path, "not a DICOM file")
        return []
    except OSError as error:
        scan.warn(f"cannot read {path.name} ({error.strerror or error}); file skipped")
        scan.skip(path, f"unreadable file: {error.strerror or error}")
        return []
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on corrupt input
        scan.warn(f"{path.name} is a corrupt or truncated DICOM file ({type(error).__name__}: {error}); file skipped")
        scan.skip(path, f"corrupt or truncated DICOM file: {error}")
        return []
    return _slices_from_header(path, header, pixel_offset, size - pixel_offset, scan)


def _is_image_storage(header: Dataset) -> bool:
    return "Image Storage" in _sop_class_name(header)


def _sop_class_name(header: Dataset) -> str:
    meta = getattr(header, "file_meta", None)
    sop_class = header.get("SOPClassUID") or (meta.get("MediaStorageSOPClassUID") if meta else "") or ""
    return UID(str(sop_class)).name


def _slices_from_header(
    path: Path, header: Dataset, pixel_offset: int, bytes_left: int, scan: _FolderScan
) -> list[SliceHeader]:
    """Turn a header into images, or record why the file is skipped.

    ``pixel_offset`` is where the header reading stopped (the pixel data element, if any);
    ``bytes_left`` the file size past it: 0 when the file has no pixel data element.
    """
    if bytes_left <= 0 or "Rows" not in header:
        if _is_image_storage(header):
            scan.warn(f"{path.name} is an image object without pixel data (truncated or corrupt?); file skipped")
            scan.skip(path, "image object without pixel data (truncated or corrupt)")
        else:
            scan.skip(path, f"no pixel data ({_sop_class_name(header) or 'not an image'})")
        return []
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        scan.skip(path, f"not a grayscale image (SamplesPerPixel {header.SamplesPerPixel})")
        return []
    image_type = tuple(str(v).upper() for v in (header.get("ImageType") or ()))
    if "LOCALIZER" in image_type:
        scan.skip(path, "localizer (ImageType LOCALIZER)")
        return []
    try:
        short = _pixel_bytes_short(header, bytes_left)
        if short:
            scan.warn(f"{path.name} is truncated ({short}); file skipped")
            scan.skip(path, f"truncated pixel data ({short})")
            return []
        if "PerFrameFunctionalGroupsSequence" in header:
            return _frame_slices(path, header, image_type, pixel_offset)
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            scan.skip(path, "multi-frame image without per-frame geometry (functional groups): not supported")
            return []
        return [_single_slice(path, header, image_type, pixel_offset)]
    except _MissingGeometry as missing:
        scan.skip(path, f"no patient geometry ({missing} missing)")
    except (ValueError, TypeError, IndexError, KeyError) as error:
        scan.warn(f"{path.name} has unreadable image attributes ({error}); file skipped")
        scan.skip(path, f"unreadable image attributes: {error}")
    return []


def _pixel_bytes_short(header: Dataset, bytes_left: int) -> str:
    """For uncompressed transfer syntaxes, a description when the file is too short for its pixels."""
    syntax = str(getattr(header.file_meta, "TransferSyntaxUID", "") or "")
    if syntax not in _NATIVE_SYNTAXES:
        return ""  # compressed: only decoding can tell
    frames = int(header.get("NumberOfFrames", 1) or 1)
    needed = int(header.Rows) * int(header.Columns) * frames * int(header.get("BitsAllocated", 16) or 16) // 8
    element_header = 8 if syntax == "1.2.840.10008.1.2" else 12
    available = bytes_left - element_header
    return f"{max(available, 0)} of {needed} pixel data bytes present" if available < needed else ""


class _MissingGeometry(Exception):
    """A geometry attribute (position, orientation, spacing) is absent."""


def _required(item: Dataset | None, keyword: str) -> Any:
    value = None if item is None else item.get(keyword)
    if value is None or (hasattr(value, "__len__") and len(value) == 0):
        raise _MissingGeometry(keyword)
    return value


def _optional_float(value: Any) -> float | None:
    if value is None or value == "":
        return None
    return float(value)


def _common_fields(header: Dataset, image_type: tuple[str, ...], pixel_offset: int) -> dict[str, Any]:
    number = header.get("SeriesNumber")
    return {
        "header": header,
        "image_type": image_type,
        "pixel_offset": pixel_offset,
        "series_uid": str(header.get("SeriesInstanceUID", "") or ""),
        "study_uid": str(header.get("StudyInstanceUID", "") or ""),
        "series_number": None if number in (None, "") else int(number),
        "description": str(header.get("SeriesDescription", "") or "").strip(),
        "modality": str(header.get("Modality", "") or "").upper(),
        "acquisition_number": str(header.get("AcquisitionNumber", "") or ""),
        "rows": int(_required(header, "Rows")),
        "columns": int(_required(header, "Columns")),
    }


def _single_slice(path: Path, header: Dataset, image_type: tuple[str, ...], pixel_offset: int) -> SliceHeader:
    slope = _optional_float(header.get("RescaleSlope"))
    intercept = _optional_float(header.get("RescaleIntercept"))
    spacing = _required(header, "PixelSpacing")
    return SliceHeader(
        path=path,
        frame_index=None,
        position_lps_mm=np.asarray(_required(header, "ImagePositionPatient"), dtype=np.float64).reshape(3),
        orientation=np.asarray(_required(header, "ImageOrientationPatient"), dtype=np.float64).reshape(6),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        slice_thickness_mm=_optional_float(header.get("SliceThickness")),
        **_common_fields(header, image_type, pixel_offset),
    )


def _functional_item(header: Dataset, frame_group: Dataset, sequence: str) -> Dataset | None:
    """First item of a functional-group macro, per-frame first, then shared (PS3.3 C.7.6.16)."""
    for group in (frame_group, *(header.get("SharedFunctionalGroupsSequence") or ())):
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _frame_slices(path: Path, header: Dataset, image_type: tuple[str, ...], pixel_offset: int) -> list[SliceHeader]:
    """One image per frame of an Enhanced (multi-frame) image, geometry from functional groups."""
    slices = []
    common = _common_fields(header, image_type, pixel_offset)
    for index, group in enumerate(header.PerFrameFunctionalGroupsSequence):
        position = _required(_functional_item(header, group, "PlanePositionSequence"), "ImagePositionPatient")
        orientation = _required(_functional_item(header, group, "PlaneOrientationSequence"), "ImageOrientationPatient")
        measures = _functional_item(header, group, "PixelMeasuresSequence")
        spacing = _required(measures, "PixelSpacing")
        transform = _functional_item(header, group, "PixelValueTransformationSequence")
        slope = _optional_float(transform.get("RescaleSlope") if transform else header.get("RescaleSlope"))
        intercept = _optional_float(transform.get("RescaleIntercept") if transform else header.get("RescaleIntercept"))
        slices.append(
            SliceHeader(
                path=path,
                frame_index=index,
                position_lps_mm=np.asarray(position, dtype=np.float64).reshape(3),
                orientation=np.asarray(orientation, dtype=np.float64).reshape(6),
                pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
                rescale_slope=1.0 if slope is None else slope,
                rescale_intercept=0.0 if intercept is None else intercept,
                slice_thickness_mm=_optional_float(measures.get("SliceThickness") if measures else None),
                **common,
            )
        )
    return slices


# --------------------------------------------------------------------------- grouping


def _group(slices: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Group images into series by :attr:`SliceHeader.group_key`, then split by acquisition if needed."""
    groups: dict[tuple[Any, ...], list[SliceHeader]] = {}
    for slice_ in slices:
        groups.setdefault(slice_.group_key, []).append(slice_)
    return [part for group in groups.values() for part in _split_acquisitions(group)]


def _split_acquisitions(group: list[SliceHeader]) -> list[list[SliceHeader]]:
    """Split a group whose positions collide into acquisitions, when that removes every collision.

    Several acquisitions (phases) may share a SeriesInstanceUID; splitting by AcquisitionNumber
    only when it resolves duplicate positions keeps series whose every slice has its own
    AcquisitionNumber (some scanners do that) in one piece.
    """
    if len(group) < 2 or not _has_duplicates(group):
        return [group]
    parts: dict[str, list[SliceHeader]] = {}
    for slice_ in group:
        parts.setdefault(slice_.acquisition_number, []).append(slice_)
    if len(parts) < 2 or any(len(p) < 2 or _has_duplicates(p) for p in parts.values()):
        return [group]
    return list(parts.values())


def _has_duplicates(group: list[SliceHeader]) -> bool:
    positions = np.sort(positions_along_normal_mm(np.stack([s.position_lps_mm for s in group]), group[0].normal))
    return bool(np.any(np.diff(positions) < SAME_POSITION_TOLERANCE_MM))


def _is_axial(slice_: SliceHeader) -> bool:
    return int(np.argmax(np.abs(slice_.normal))) == 2


def _sort_by_position(slices: list[SliceHeader]) -> list[SliceHeader]:
    """Sort by ImagePositionPatient projected on the slice normal (stable for equal positions)."""
    positions = positions_along_normal_mm(np.stack([s.position_lps_mm for s in slices]), slices[0].normal)
    return [slices[i] for i in np.argsort(positions, kind="stable")]


def _common_folder(group: list[SliceHeader]) -> Path:
    return Path(os.path.commonpath([str(s.path.parent) for s in group]))


def _group_label(group: list[SliceHeader]) -> str:
    first = group[0]
    name = f"#{first.series_number}" if first.series_number is not None else f"uid '{first.series_uid}'"
    return f"series {name} '{first.description}' ({len(group)} images)"


# --------------------------------------------------------------------------- description


def distinct_positions(slices: list[SliceHeader]) -> tuple[np.ndarray, list[int]]:
    """Positions along the normal of slices sorted by position, and the indices of the first at each.

    Args:
        slices: sorted by position (as in :meth:`Discovery.images_of`).

    Returns:
        (positions (N,) mm of all slices, indices of the slices that open a new position, i.e.
        are more than :data:`SAME_POSITION_TOLERANCE_MM` past the previous distinct one).
    """
    positions = positions_along_normal_mm(np.stack([s.position_lps_mm for s in slices]), slices[0].normal)
    firsts = [0]
    for i in range(1, len(positions)):
        if positions[i] - positions[firsts[-1]] >= SAME_POSITION_TOLERANCE_MM:
            firsts.append(i)
    return positions, firsts


def _summarize(index: int, group: list[SliceHeader]) -> SeriesInfo:
    """Describe a sorted series from its headers (same geometry code as the reader)."""
    first = group[0]
    positions, firsts = distinct_positions(group)
    distinct = positions[firsts]
    warnings: list[str] = []
    unreadable = None
    interval, tilt_deg = None, 0.0
    if len(group) == 1:
        unreadable = f"only one slice ({first.label}) in the series, at least 2 needed to know the slice interval"
    elif len(distinct) == 1:
        unreadable = (
            f"all {len(group)} slices of the series lie at one position ({distinct[0]:.2f} mm along the slice "
            "normal), so there is no slice interval (a time series or repeated scan?)"
        )
    else:
        interval = median_interval_mm(distinct)
        if len(group) > len(distinct):
            warnings.append(
                f"{len(group) - len(distinct)} image(s) at a position already taken (duplicates): identical copies "
                "are dropped when read, different images at one position are an error"
            )
        grid = plan_regular_grid(distinct)
        if grid is not None:
            warnings.append(grid.message)
        tilt = measure_tilt(np.stack([group[i].position_lps_mm for i in firsts]), first.orientation,
                            first.pixel_spacing_mm)
        tilt_deg = tilt.angle_deg
        if tilt.significant:
            warnings.append(
                f"{tilt.describe()}: refused unless read with --tilt resample (each slice is then shifted in its "
                "plane onto an orthogonal grid)"
            )
    if unreadable:
        warnings.append(unreadable)
    thickness, thickness_warning = summarize_thickness([s.slice_thickness_mm for s in group if s.slice_thickness_mm is not None])
    if thickness_warning:
        warnings.append(thickness_warning)
    if first.modality != "CT":
        warnings.append(f"modality {first.modality or '(none)'} is not CT: read only with --allow-non-ct")
    return SeriesInfo(
        index=index,
        series_uid=first.series_uid,
        series_number=first.series_number,
        description=first.description,
        modality=first.modality,
        image_type=first.image_type,
        num_slices=len(distinct),
        num_images=len(group),
        rows=first.rows,
        columns=first.columns,
        pixel_spacing_mm=first.pixel_spacing_mm,
        slice_interval_mm=interval,
        slice_thickness_mm=thickness,
        z_extent_mm=float(distinct[-1] - distinct[0]),
        gantry_tilt_deg=tilt_deg,
        warnings=tuple(warnings),
        unreadable=unreadable,
        folder=str(_common_folder(group)),
    )


# --------------------------------------------------------------------------- selection


def _apply_rule(infos: list[SeriesInfo], allow_non_ct: bool) -> list[SeriesInfo]:
    """Mark ``selectable``, ``selected`` and ``selection`` by :data:`SELECTION_RULE`."""
    selectable = [s for s in infos if s.unreadable is None and (s.modality == "CT" or allow_non_ct)]
    candidates = [s for s in selectable if s.modality == "CT"] or selectable
    primary = [s for s in candidates if not _is_secondary(s)] or candidates
    max_extent = max((s.z_extent_mm for s in primary), default=0.0)
    covering = [s for s in primary if s.z_extent_mm >= MIN_COVERAGE_FRACTION * max_extent]
    chosen = min(covering, key=_rank, default=None)
    result = []
    for info in infos:
        if info is chosen:
            note = (f"chosen by the selection rule among {len(candidates)} series (interval {info.slice_interval_mm:.2f} mm, "
                    f"z extent {info.z_extent_mm:.1f} mm, {info.num_slices} slices)" if len(candidates) > 1
                    else "the only series that can be read")
        elif not any(info is s for s in selectable):
            note = "not selectable: " + _why_unselectable(info)
        elif not any(info is c for c in candidates):
            note = f"not chosen: modality {info.modality or '(none)'}, and the folder has a CT series"
        elif not any(info is p for p in primary):
            note = "not chosen: SECONDARY images (reformat/MIP?) while PRIMARY ones exist"
        elif not any(info is c for c in covering):
            note = (f"not chosen: covers {info.z_extent_mm:.1f} mm, less than {MIN_COVERAGE_FRACTION:.0%} of the "
                    f"{max_extent:.1f} mm another series covers")
        else:
            note = "not chosen: " + _why_ranked_lower(info, chosen)
        result.append(replace(info, selectable=any(info is s for s in selectable), selected=info is chosen,
                              selection=note))
    return result


def _is_secondary(info: SeriesInfo) -> bool:
    """ImageType value 2 is SECONDARY (created after the examination: reformats, MIPs, ...)."""
    return len(info.image_type) > 1 and info.image_type[1] == "SECONDARY"


def _rank(info: SeriesInfo) -> tuple[float, float, int, int]:
    return (round(info.slice_interval_mm, 2), -round(info.z_extent_mm, 1), -info.num_slices, info.index)


def _why_ranked_lower(info: SeriesInfo, chosen: SeriesInfo) -> str:
    if round(info.slice_interval_mm, 2) != round(chosen.slice_interval_mm, 2):
        return f"slice interval {info.slice_interval_mm:.2f} mm, {chosen.label} has thinner {chosen.slice_interval_mm:.2f} mm"
    if round(info.z_extent_mm, 1) != round(chosen.z_extent_mm, 1):
        return f"same interval, covers {info.z_extent_mm:.1f} mm, {chosen.label} covers {chosen.z_extent_mm:.1f} mm"
    if info.num_slices != chosen.num_slices:
        return f"same interval and extent, {info.num_slices} slices, {chosen.label} has {chosen.num_slices}"
    return f"equal to {chosen.label} by every criterion; the first found was taken"


def _why_unselectable(info: SeriesInfo) -> str:
    if info.unreadable:
        return info.unreadable
    return f"modality {info.modality or '(none)'} is not CT (use --allow-non-ct to read it anyway)"


def _matches(info: SeriesInfo, selector: str) -> bool:
    wanted = selector.strip()
    return (
        (info.series_number is not None and wanted == str(info.series_number))
        or (info.series_uid != "" and wanted == info.series_uid)
        or (info.description != "" and wanted.casefold() == info.description.casefold())
    )


def _listing(info: SeriesInfo) -> str:
    return f"{info.label} uid '{info.series_uid}' ({info.num_slices} slices)"


def _raise_nothing_readable(discovery: Discovery) -> None:
    """The one-line error when the rule finds nothing to read, saying why."""
    folder = discovery.path
    if not discovery.series:
        reasons = Counter(entry["reason"] for entry in discovery.skipped)
        summary = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common(3)) or "nothing readable"
        raise CtlesionError(f"no axial CT image series among its {discovery.num_files} files ({summary})", folder)
    readable = [s for s in discovery.series if s.unreadable is None]
    if not readable:
        raise CtlesionError(discovery.series[0].unreadable if len(discovery.series) == 1 else
                            "; ".join(f"{s.label}: {s.unreadable}" for s in discovery.series), folder)
    modalities = sorted({s.modality or "(none)" for s in readable})
    raise CtlesionError(f"modality {', '.join(modalities)} is not CT (use --allow-non-ct to read it anyway)", folder)
