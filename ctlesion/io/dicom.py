"""Read one CT series from a folder of DICOM files into a :class:`~ctlesion.volume.Volume`.

All DICOM conventions end here (SPEC section 3):

* files are found recursively, whatever their names; non-DICOM files, non-image objects,
  localizers and non-axial images are skipped, each with the reason in ``meta["skipped"]``;
* slices are grouped into series by SeriesInstanceUID *and* geometry (orientation, matrix size,
  pixel spacing), since UIDs may be empty;
* slices are sorted by ImagePositionPatient projected on the slice normal (never by
  InstanceNumber); the slice interval is the median step of those positions;
* HU = stored * RescaleSlope + RescaleIntercept, per slice; PixelPaddingValue becomes air;
* compressed transfer syntaxes are decoded by pydicom's pixel plugins (pylibjpeg-openjpeg for
  JPEG 2000);
* Enhanced (multi-frame) CT is read frame by frame from its functional groups.

The geometry is LPS, like DICOM itself: ``direction_lps`` columns are the row cosine (x, along a
row), the column cosine (y, down a column) and the slice normal, oriented towards increasing
sorted position; ``origin_lps_mm`` is ImagePositionPatient of the first sorted slice.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ctlesion.errors import CtlesionError
from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

#: HU written where PixelPaddingValue marks padding (air).
AIR_HU = -1024
#: Decimals kept when ImageOrientationPatient / PixelSpacing are compared to group series.
ORIENTATION_DECIMALS = 3
SPACING_DECIMALS = 4
#: Two slices whose positions along the normal differ by less than this are at the same place.
SAME_POSITION_TOLERANCE_MM = 0.01
#: Relative deviation of a step from the median step that is reported as a gap / irregular step.
STEP_RTOL = 0.05
#: Gantry tilt (deg) below which positions count as lying along the slice normal.
TILT_TOLERANCE_DEG = 0.05
#: Elements larger than this (the pixel data) are not read while headers are scanned.
_DEFER_SIZE = "64 KB"


@dataclass(frozen=True, eq=False)
class _Slice:
    """One 2-D image: a single-frame file, or one frame of a multi-frame file."""

    path: Path
    frame_index: int | None  # index of the frame in a multi-frame file; None for single-frame
    header: Dataset  # pixel data deferred (not read)
    series_uid: str
    modality: str
    image_type: tuple[str, ...]
    position_lps_mm: np.ndarray  # (3,) ImagePositionPatient: centre of the first pixel
    orientation: np.ndarray  # (6,) ImageOrientationPatient: row cosine then column cosine
    rows: int
    columns: int
    pixel_spacing_mm: tuple[float, float]  # (row spacing = between rows, column spacing)
    rescale_slope: float
    rescale_intercept: float
    slice_thickness_mm: float | None

    def __post_init__(self) -> None:
        row, col = self.orientation[:3], self.orientation[3:]
        if not (
            np.all(np.isfinite(self.orientation))
            and abs(np.linalg.norm(row) - 1) < 0.01
            and abs(np.linalg.norm(col) - 1) < 0.01
            and abs(row @ col) < 0.01
        ):
            raise ValueError(f"ImageOrientationPatient {self.orientation.tolist()} is not two orthogonal unit vectors")
        if not all(np.isfinite(s) and s > 0 for s in self.pixel_spacing_mm):
            raise ValueError(f"PixelSpacing {list(self.pixel_spacing_mm)} is not positive")

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal = row cosine x column cosine (LPS)."""
        row, col = _unit(self.orientation[:3]), _unit(self.orientation[3:])
        return _unit(np.cross(row, col))

    @property
    def group_key(self) -> tuple[Any, ...]:
        """Series identity: UID plus geometry (the UID alone may be empty or shared)."""
        return (
            self.series_uid,
            tuple(np.round(self.orientation, ORIENTATION_DECIMALS) + 0.0),
            self.rows,
            self.columns,
            tuple(np.round(self.pixel_spacing_mm, SPACING_DECIMALS)),
        )

    @property
    def label(self) -> str:
        """File name (with the frame number for multi-frame files), for messages."""
        return self.path.name if self.frame_index is None else f"{self.path.name}[frame {self.frame_index + 1}]"


class _Report:
    """Collects warnings and skipped files while one folder is read."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.num_files = 0
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


def read_dicom_series(folder: Path, *, allow_non_ct: bool = False) -> Volume:
    """Read the CT series in a folder of DICOM files (searched recursively) as a Volume.

    Files may have any name (with or without ``.dcm``). Non-DICOM files, objects without pixel
    data, localizers (ImageType LOCALIZER) and non-axial images are skipped; truncated or
    corrupt files are skipped with a warning. Slices are grouped into series by
    (SeriesInstanceUID, ImageOrientationPatient rounded to 3 decimals, Rows, Columns,
    PixelSpacing); when several axial CT series remain, the one with the most slices is read and
    the others are listed in ``meta["skipped"]``.

    Slices are sorted by ImagePositionPatient projected on the slice normal (row cosine x column
    cosine), never by InstanceNumber. The slice interval is the median step of the sorted
    positions (SPEC section 3). Detected and reported:

    * duplicate positions: identical pixels -> the copy is dropped with a warning; different
      pixels -> error;
    * steps that differ from the median by more than 5 % (missing slices): warning, the median
      interval is kept and nothing is resampled;
    * gantry tilt (positions not along the normal): ``meta["gantry_tilt_deg"]`` and a warning;
      the geometry keeps the slice normal as z axis (the in-plane shear is not represented);
    * SliceThickness differing from the interval (overlapping reconstruction): logged, and kept
      in ``meta["slice_thickness_mm"]``; varying SliceThickness: warning.

    Enhanced (multi-frame) CT is read frame by frame: position, orientation, pixel spacing,
    thickness and rescale come from the per-frame functional groups (PS3.3 C.7.6.16), falling back
    to the shared ones. A single slice is an error: at least 2 slices are needed to know the slice
    interval.

    Args:
        folder: folder holding the DICOM files of the study or series.
        allow_non_ct: read a series of another modality (MR, PT, ...) when no CT series is found.

    Returns:
        Volume with ``hu`` (Z, Y, X) int16 when every slice's rescale is integer and the values
        fit, else float32, in HU (z = sorted slice, y = row, x = column);
        ``spacing_zyx_mm`` = (slice interval, PixelSpacing[0] (between rows),
        PixelSpacing[1] (between columns)); ``origin_lps_mm`` = ImagePositionPatient of the first
        sorted slice; ``direction_lps`` columns = row cosine, column cosine, slice normal (LPS).
        ``meta`` keys: ``slice_thickness_mm`` (float or None), ``modality``, ``series_uid``,
        ``study_uid``, ``frame_of_reference_uid``, ``description``, ``series_number``
        (int or None), ``warnings`` (list[str]), ``skipped`` (list of {"path", "reason"}),
        ``num_files`` (files that make up the volume), ``num_files_scanned``,
        ``gantry_tilt_deg``, ``slice_positions_mm`` (sorted positions along the normal),
        ``slice_paths`` (file of each z index), ``slice_frames`` (frame index of each z index in a
        multi-frame file, else None).

    Raises:
        CtlesionError: (naming the folder) it does not exist, is not a folder or cannot be read;
            it holds no files, no DICOM files, or no axial image series; the only image series are
            not CT (without ``allow_non_ct``); no pixel-data decoder is installed for the series'
            transfer syntax; the series has a single slice, all its slices lie at one position, or
            two different slices share a position.
    """
    folder = Path(folder)
    _check_folder(folder)
    report = _Report(folder)
    files = _list_files(folder, report)
    report.num_files = len(files)
    if not files:
        raise CtlesionError("folder is empty (no files found, searched recursively)", folder)

    slices = _scan_headers(files, report)
    if not slices:
        _raise_no_images(report)

    chosen = _choose_series(slices, folder, allow_non_ct, report)
    chosen = _sort_by_position(chosen)
    _check_positions_differ(chosen, folder)
    _check_enough_slices(chosen, folder, "")
    _check_decodable(chosen, folder)

    chosen, stored = _load_pixels(chosen, report)
    _check_enough_slices(chosen, folder, " after skipping unreadable files")
    hu_slices = [_to_hu(s, a) for s, a in zip(chosen, stored)]
    chosen, hu_slices = _drop_duplicate_positions(chosen, hu_slices, folder, report)
    _check_enough_slices(chosen, folder, " after dropping duplicate slices")

    return _assemble(folder, chosen, hu_slices, len(files), report)


# --------------------------------------------------------------------------- files and headers


def _check_folder(folder: Path) -> None:
    if not folder.exists():
        raise CtlesionError("does not exist", folder)
    if not folder.is_dir():
        raise CtlesionError("is not a folder (a DICOM series is read from the folder of its files)", folder)


def _list_files(folder: Path, report: _Report) -> list[Path]:
    """All regular files under ``folder``, sorted; unreadable sub-folders are reported."""

    def on_error(error: OSError) -> None:
        failed = Path(error.filename) if error.filename else folder
        if failed == folder:
            raise CtlesionError(f"cannot read folder ({error.strerror or error})", folder) from error
        report.warn(f"cannot read sub-folder {failed} ({error.strerror or error}); its files are skipped")
        report.skip(failed, f"unreadable folder: {error.strerror or error}")

    files = []
    for root, _dirs, names in os.walk(folder, onerror=on_error):
        files.extend(Path(root) / name for name in names)
    return sorted(path for path in files if path.is_file())


def _scan_headers(files: list[Path], report: _Report) -> list[_Slice]:
    """Read every file's header (pixel data deferred) and turn image files into slices."""
    slices: list[_Slice] = []
    for path in files:
        header = _read_header(path, report)
        if header is None:
            continue
        found = _slices_from_header(path, header, report)
        slices.extend(found)
    return slices


def _read_header(path: Path, report: _Report) -> Dataset | None:
    try:
        return pydicom.dcmread(path, defer_size=_DEFER_SIZE, force=False)
    except InvalidDicomError:
        report.skip(path, "not a DICOM file")
    except OSError as error:
        report.warn(f"cannot read {path.name} ({error.strerror or error}); file skipped")
        report.skip(path, f"unreadable file: {error.strerror or error}")
    except Exception as error:  # noqa: BLE001 - pydicom raises many types on corrupt input
        report.warn(f"{path.name} is a corrupt or truncated DICOM file ({type(error).__name__}: {error}); file skipped")
        report.skip(path, f"corrupt or truncated DICOM file: {error}")
    return None


def _is_image_storage(header: Dataset) -> bool:
    sop_class = header.get("SOPClassUID") or getattr(header.file_meta, "MediaStorageSOPClassUID", "") or ""
    return "Image Storage" in UID(str(sop_class)).name


def _slices_from_header(path: Path, header: Dataset, report: _Report) -> list[_Slice]:
    """The 2-D images one DICOM file holds (one, or one per frame), or [] with the reason."""
    if not any(tag in header for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        if _is_image_storage(header):
            report.warn(f"{path.name} is an image object without pixel data (truncated or corrupt?); file skipped")
            report.skip(path, "image object without pixel data (truncated or corrupt)")
        else:
            report.skip(path, f"no pixel data ({UID(str(header.get('SOPClassUID', ''))).name or 'not an image'})")
        return []
    if int(header.get("SamplesPerPixel", 1) or 1) != 1:
        report.skip(path, f"not a grayscale image (SamplesPerPixel {header.SamplesPerPixel})")
        return []
    image_type = tuple(str(v).upper() for v in (header.get("ImageType") or ()))
    if "LOCALIZER" in image_type:
        report.skip(path, "localizer (ImageType LOCALIZER)")
        return []
    try:
        if "PerFrameFunctionalGroupsSequence" in header:
            return _frame_slices(path, header, image_type)
        if int(header.get("NumberOfFrames", 1) or 1) > 1:
            report.skip(path, "multi-frame image without per-frame geometry (functional groups): not supported")
            return []
        return [_single_slice(path, header, image_type)]
    except _MissingGeometry as missing:
        report.skip(path, f"no patient geometry ({missing} missing)")
    except (ValueError, TypeError, IndexError) as error:
        report.warn(f"{path.name} has unreadable geometry attributes ({error}); file skipped")
        report.skip(path, f"unreadable geometry attributes: {error}")
    return []


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


def _common_fields(header: Dataset) -> dict[str, Any]:
    return {
        "series_uid": str(header.get("SeriesInstanceUID", "") or ""),
        "modality": str(header.get("Modality", "") or "").upper(),
        "rows": int(_required(header, "Rows")),
        "columns": int(_required(header, "Columns")),
    }


def _single_slice(path: Path, header: Dataset, image_type: tuple[str, ...]) -> _Slice:
    slope = _optional_float(header.get("RescaleSlope"))
    intercept = _optional_float(header.get("RescaleIntercept"))
    spacing = _required(header, "PixelSpacing")
    return _Slice(
        path=path,
        frame_index=None,
        header=header,
        image_type=image_type,
        position_lps_mm=np.asarray(_required(header, "ImagePositionPatient"), dtype=np.float64).reshape(3),
        orientation=np.asarray(_required(header, "ImageOrientationPatient"), dtype=np.float64).reshape(6),
        pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
        rescale_slope=1.0 if slope is None else slope,
        rescale_intercept=0.0 if intercept is None else intercept,
        slice_thickness_mm=_optional_float(header.get("SliceThickness")),
        **_common_fields(header),
    )


def _functional_item(header: Dataset, frame_group: Dataset, sequence: str) -> Dataset | None:
    """First item of a functional-group macro, per-frame first, then shared (PS3.3 C.7.6.16)."""
    for group in (frame_group, *(header.get("SharedFunctionalGroupsSequence") or ())):
        items = group.get(sequence)
        if items:
            return items[0]
    return None


def _frame_slices(path: Path, header: Dataset, image_type: tuple[str, ...]) -> list[_Slice]:
    """One slice per frame of an Enhanced (multi-frame) image, geometry from functional groups."""
    slices = []
    for index, group in enumerate(header.PerFrameFunctionalGroupsSequence):
        position = _required(_functional_item(header, group, "PlanePositionSequence"), "ImagePositionPatient")
        orientation = _required(_functional_item(header, group, "PlaneOrientationSequence"), "ImageOrientationPatient")
        measures = _functional_item(header, group, "PixelMeasuresSequence")
        spacing = _required(measures, "PixelSpacing")
        transform = _functional_item(header, group, "PixelValueTransformationSequence")
        slope = _optional_float(transform.get("RescaleSlope") if transform else header.get("RescaleSlope"))
        intercept = _optional_float(transform.get("RescaleIntercept") if transform else header.get("RescaleIntercept"))
        slices.append(
            _Slice(
                path=path,
                frame_index=index,
                header=header,
                image_type=image_type,
                position_lps_mm=np.asarray(position, dtype=np.float64).reshape(3),
                orientation=np.asarray(orientation, dtype=np.float64).reshape(6),
                pixel_spacing_mm=(float(spacing[0]), float(spacing[1])),
                rescale_slope=1.0 if slope is None else slope,
                rescale_intercept=0.0 if intercept is None else intercept,
                slice_thickness_mm=_optional_float(measures.get("SliceThickness") if measures else None),
                **_common_fields(header),
            )
        )
    return slices


def _raise_no_images(report: _Report) -> None:
    reasons = Counter(entry["reason"] for entry in report.skipped)
    if reasons and set(reasons) == {"not a DICOM file"}:
        raise CtlesionError(f"no DICOM files among its {report.num_files} files", report.folder)
    summary = "; ".join(f"{count} x {reason}" for reason, count in reasons.most_common(3)) or "nothing readable"
    raise CtlesionError(f"no axial CT image series among its {report.num_files} files ({summary})", report.folder)


# --------------------------------------------------------------------------- series selection


def _is_axial(slice_: _Slice) -> bool:
    return int(np.argmax(np.abs(slice_.normal))) == 2


def _choose_series(slices: list[_Slice], folder: Path, allow_non_ct: bool, report: _Report) -> list[_Slice]:
    """Group slices into series and return the axial CT series with the most slices."""
    axial = []
    for slice_ in slices:
        if _is_axial(slice_):
            axial.append(slice_)
        else:
            normal = np.round(slice_.normal, 3).tolist()
            report.skip(slice_.path, f"non-axial orientation (slice normal {normal} in LPS)")
    if not axial:
        _raise_no_images(report)

    series: dict[tuple[Any, ...], list[_Slice]] = {}
    for slice_ in axial:
        series.setdefault(slice_.group_key, []).append(slice_)
    groups = list(series.values())

    wanted = [g for g in groups if g[0].modality == "CT"] or (groups if allow_non_ct else [])
    for group in groups:
        if not any(group is w for w in wanted):
            for slice_ in group:
                report.skip(slice_.path, f"modality {group[0].modality or '(none)'} is not CT")
    if not wanted:
        modalities = sorted({g[0].modality or "(none)" for g in groups})
        raise CtlesionError(
            f"modality {', '.join(modalities)} is not CT (use --allow-non-ct to read it anyway)", folder
        )

    chosen = max(wanted, key=len)  # first of equals: files are scanned in sorted order
    if len(wanted) > 1:
        logger.info(
            "%s: %d candidate series (%s); reading %s: it has the most slices",
            folder,
            len(wanted),
            "; ".join(_describe(g) for g in wanted),
            _describe(chosen),
        )
    if chosen[0].modality != "CT":
        logger.info("%s: no CT series; reading a %s series as allowed", folder, chosen[0].modality or "(no modality)")
    for group in wanted:
        if group is not chosen:
            for slice_ in group:
                report.skip(
                    slice_.path,
                    f"other series not chosen ({_describe(group)}); the chosen series has more slices ({len(chosen)})",
                )
    return chosen


def _describe(group: list[_Slice]) -> str:
    header = group[0].header
    description = str(header.get("SeriesDescription", "") or "")
    return (
        f"series '{description}' #{header.get('SeriesNumber', '')} uid '{group[0].series_uid}' "
        f"{group[0].modality} {group[0].rows}x{group[0].columns}, {len(group)} slices"
    )


# --------------------------------------------------------------------------- geometry checks


def _positions_along_normal_mm(slices: list[_Slice]) -> np.ndarray:
    normal = slices[0].normal
    return np.array([float(s.position_lps_mm @ normal) for s in slices])


def _sort_by_position(slices: list[_Slice]) -> list[_Slice]:
    """Sort by ImagePositionPatient projected on the slice normal (stable for equal positions)."""
    positions = _positions_along_normal_mm(slices)
    return [slices[i] for i in np.argsort(positions, kind="stable")]


def _check_positions_differ(slices: list[_Slice], folder: Path) -> None:
    positions = _positions_along_normal_mm(slices)
    if len(slices) > 1 and np.ptp(positions) < SAME_POSITION_TOLERANCE_MM:
        raise CtlesionError(
            f"all {len(slices)} slices of the series lie at one position ({positions[0]:.2f} mm along the "
            "slice normal), so there is no slice interval (a time series or repeated scan?)",
            folder,
        )


def _check_enough_slices(slices: list[_Slice], folder: Path, context: str) -> None:
    if len(slices) < 2:
        where = slices[0].label if slices else "none"
        raise CtlesionError(
            f"only one slice ({where}) in the series{context}, at least 2 needed to know the slice interval",
            folder,
        )


# --------------------------------------------------------------------------- pixels


def _check_decodable(slices: list[_Slice], folder: Path) -> None:
    """Fail clearly when no pixel-data decoder is installed for the series' transfer syntax."""
    syntaxes = {str(getattr(s.header.file_meta, "TransferSyntaxUID", "") or "") for s in slices} - {""}
    for syntax in sorted(syntaxes):
        uid = UID(syntax)
        try:
            decoder = pydicom.pixels.get_decoder(uid)
        except NotImplementedError as error:
            raise CtlesionError(f"pixel data use the {uid.name} transfer syntax, which cannot be decoded", folder) from error
        if not decoder.is_available:
            raise CtlesionError(
                f"pixel data use the {uid.name} transfer syntax and no decoder for it is installed "
                f"(install one of: {'; '.join(decoder.missing_dependencies)})",
                folder,
            )


def _load_pixels(slices: list[_Slice], report: _Report) -> tuple[list[_Slice], list[np.ndarray]]:
    """Decode the stored values of each slice; unreadable pixel data skips the slice with a warning."""
    kept, arrays = [], []
    for slice_ in slices:
        try:
            stored = pydicom.pixels.pixel_array(slice_.path, index=slice_.frame_index)
        except Exception as error:  # noqa: BLE001 - decoders raise many types on corrupt data
            report.warn(f"pixel data of {slice_.label} cannot be decoded ({error}); slice skipped")
            report.skip(slice_.path, f"corrupt or truncated pixel data: {error}")
            continue
        if stored.shape != (slice_.rows, slice_.columns):
            report.warn(f"{slice_.label} decodes to shape {stored.shape}, not {slice_.rows}x{slice_.columns}; slice skipped")
            report.skip(slice_.path, f"pixel data shape {stored.shape} does not match Rows x Columns")
            continue
        kept.append(slice_)
        arrays.append(stored)
    return kept, arrays


def _padding_mask(slice_: _Slice, stored: np.ndarray) -> np.ndarray | None:
    """Pixels marked as padding by PixelPaddingValue (and PixelPaddingRangeLimit), PS3.3 C.7.5.1.1.2."""
    value = slice_.header.get("PixelPaddingValue")
    if value is None:
        return None
    limit = slice_.header.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == value
    low, high = sorted((int(value), int(limit)))
    return (stored >= low) & (stored <= high)


def _to_hu(slice_: _Slice, stored: np.ndarray) -> np.ndarray:
    """HU = stored * RescaleSlope + RescaleIntercept (PS3.3 C.11.1.1.2); padding -> air.

    Returns (Y, X) int16 when the rescale is integer and the values fit (exact), else float32.
    """
    hu = stored.astype(np.float64) * slice_.rescale_slope + slice_.rescale_intercept
    padding = _padding_mask(slice_, stored)
    if padding is not None:
        hu[padding] = AIR_HU
    int16 = np.iinfo(np.int16)
    integer_rescale = float(slice_.rescale_slope).is_integer() and float(slice_.rescale_intercept).is_integer()
    if integer_rescale and hu.size and int16.min <= hu.min() and hu.max() <= int16.max:
        return hu.astype(np.int16)
    return hu.astype(np.float32)


def _drop_duplicate_positions(
    slices: list[_Slice], hu_slices: list[np.ndarray], folder: Path, report: _Report
) -> tuple[list[_Slice], list[np.ndarray]]:
    """Drop identical copies at one position; raise when different images share a position."""
    positions = _positions_along_normal_mm(slices)
    kept, kept_hu, kept_positions = [slices[0]], [hu_slices[0]], [positions[0]]
    for slice_, hu, position in zip(slices[1:], hu_slices[1:], positions[1:]):
        if abs(position - kept_positions[-1]) >= SAME_POSITION_TOLERANCE_MM:
            kept.append(slice_)
            kept_hu.append(hu)
            kept_positions.append(position)
        elif np.array_equal(hu, kept_hu[-1]):
            report.warn(
                f"{slice_.label} duplicates {kept[-1].label} (same position {position:.2f} mm, identical pixels); "
                "the copy is dropped"
            )
            report.skip(slice_.path, f"duplicate of {kept[-1].path.name} (same position, identical pixels)")
        else:
            raise CtlesionError(
                f"two different slices at the same position {position:.2f} mm along the slice normal: "
                f"{kept[-1].label} and {slice_.label} (several acquisitions or phases mixed in one series?)",
                folder,
            )
    return kept, kept_hu


# --------------------------------------------------------------------------- volume


def _slice_interval_mm(positions: np.ndarray, report: _Report) -> float:
    """Median step of the sorted positions; steps off by > 5 % are reported (SPEC section 3)."""
    steps = np.diff(positions)
    interval = float(np.median(steps))
    irregular = np.flatnonzero(np.abs(steps - interval) > STEP_RTOL * interval)
    if irregular.size:
        gaps = [f"{positions[i]:.2f} -> {positions[i + 1]:.2f} mm" for i in irregular[:5]]
        more = f" and {irregular.size - 5} more" if irregular.size > 5 else ""
        report.warn(
            f"slice steps vary by more than {STEP_RTOL:.0%} of the median interval {interval:.3f} mm "
            f"(steps {steps.min():.3f} to {steps.max():.3f} mm; missing slices?) at {', '.join(gaps)}{more}; "
            "the median interval is used and the slices are not resampled"
        )
    return interval


def _gantry_tilt_deg(slices: list[_Slice], normal: np.ndarray, report: _Report) -> float:
    """Angle (deg) between the line through the slice positions and the slice normal."""
    offset = slices[-1].position_lps_mm - slices[0].position_lps_mm
    along_mm = float(offset @ normal)
    across_mm = float(np.linalg.norm(offset - along_mm * normal))
    tilt_deg = float(np.degrees(np.arctan2(across_mm, abs(along_mm))))
    if tilt_deg > TILT_TOLERANCE_DEG:
        report.warn(
            f"gantry tilt of {tilt_deg:.2f} deg: slice positions are not along the slice normal; the volume "
            f"geometry keeps the normal as z axis and ignores the in-plane shift (up to {across_mm:.1f} mm at the "
            "last slice); tilt correction is not implemented"
        )
    return tilt_deg


def _slice_thickness_mm(slices: list[_Slice], interval_mm: float, folder: Path, report: _Report) -> float | None:
    values = [s.slice_thickness_mm for s in slices if s.slice_thickness_mm is not None]
    if not values:
        return None
    thickness = float(np.median(values))
    if np.ptp(values) > 1e-3:
        report.warn(f"SliceThickness varies within the series ({min(values):g} to {max(values):g} mm)")
    if abs(thickness - interval_mm) > 0.01:
        logger.info(
            "%s: SliceThickness tag %g mm differs from the slice interval %.3f mm (from ImagePositionPatient); "
            "the interval is used",
            folder,
            thickness,
            interval_mm,
        )
    return thickness


def _assemble(
    folder: Path, slices: list[_Slice], hu_slices: list[np.ndarray], num_scanned: int, report: _Report
) -> Volume:
    first = slices[0]
    row_cosine, column_cosine, normal = _unit(first.orientation[:3]), _unit(first.orientation[3:]), first.normal
    positions = _positions_along_normal_mm(slices)
    interval_mm = _slice_interval_mm(positions, report)
    tilt_deg = _gantry_tilt_deg(slices, normal, report)
    thickness_mm = _slice_thickness_mm(slices, interval_mm, folder, report)
    header = first.header
    series_number = header.get("SeriesNumber")
    meta = {
        "slice_thickness_mm": thickness_mm,
        "modality": first.modality,
        "series_uid": first.series_uid,
        "study_uid": str(header.get("StudyInstanceUID", "") or ""),
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
        "description": str(header.get("SeriesDescription", "") or ""),
        "series_number": None if series_number in (None, "") else int(series_number),
        "warnings": report.warnings,
        "skipped": report.skipped,
        "num_files": len({s.path for s in slices}),
        "num_files_scanned": num_scanned,
        "gantry_tilt_deg": tilt_deg,
        "slice_positions_mm": positions.tolist(),
        "slice_paths": [str(s.path) for s in slices],
        "slice_frames": [s.frame_index for s in slices],
    }
    volume = Volume(
        hu=np.stack(hu_slices),  # int16 if every slice is int16, else float32 (exact for int16 values)
        spacing_zyx_mm=(interval_mm, first.pixel_spacing_mm[0], first.pixel_spacing_mm[1]),
        origin_lps_mm=tuple(first.position_lps_mm),
        direction_lps=np.column_stack([row_cosine, column_cosine, normal]),
        source=str(folder),
        meta=meta,
    )
    logger.info(
        "%s: read %s: %d x %d x %d voxels, interval %.3f mm, pixel %.3f x %.3f mm, %s",
        folder,
        _describe(slices),
        *volume.shape_zyx,
        interval_mm,
        *first.pixel_spacing_mm,
        volume.hu.dtype,
    )
    return volume


def _unit(vector: np.ndarray) -> np.ndarray:
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)
