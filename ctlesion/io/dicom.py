"""Read a CT series from a folder of DICOM files into a :class:`~ctlesion.volume.Volume`.

Finding and choosing the series (headers only) is :mod:`ctlesion.io.series`; the geometry
decisions are :mod:`ctlesion.io.geometry`. This module decodes the pixels of the chosen series
and applies those decisions (SPEC section 3):

* HU = stored * RescaleSlope + RescaleIntercept, per slice; PixelPaddingValue (and
  PixelPaddingRangeLimit) becomes air (-1024 HU);
* compressed transfer syntaxes (JPEG 2000, JPEG-LS, JPEG lossless, RLE) are decoded by pydicom's
  pixel plugins (pylibjpeg-openjpeg, pyjpegls, pylibjpeg-libjpeg; RLE natively); big-endian and
  implicit-VR files are read by pydicom; Enhanced (multi-frame) CT frame by frame;
* a slice whose pixel data cannot be decoded is skipped with one warning line naming its file (the
  series is kept); what pydicom's decoders log meanwhile (tracebacks of each failing plugin, at
  ERROR) is kept from the user: at DEBUG on this module's logger, one line each, no traceback
  (:func:`_pydicom_log_captured`);
* non-finite HU (a rescale beyond the float32 range, NaN in float pixel data) are set to air with
  a warning, and a series without any finite voxel is refused (:func:`ctlesion.volume.finite_hu`,
  the rule every reader shares);
* images at the same position: identical pixels -> the copy is dropped with a warning,
  different pixels -> error;
* gantry tilt: refused by default (``tilt="refuse"``) with a message saying how to read it;
  ``tilt="resample"`` shifts every slice in its own plane to its true position (SimpleITK,
  linear) so the grid is orthogonal;
* missing slices / varying steps (> 5 % off the median step): resampled onto a regular grid at
  the median interval by linear interpolation along the normal, with a warning saying so
  (wide gaps split the stack, see :func:`ctlesion.io.geometry.plan_regular_grid`).

The geometry is LPS, like DICOM itself: ``direction_lps`` columns are the row cosine (x, along a
row), the column cosine (y, down a column) and the slice normal, oriented towards increasing
sorted position; ``origin_lps_mm`` is ImagePositionPatient of the first sorted slice (moved
in-plane when a tilt correction enlarges the grid).
"""

from __future__ import annotations

import contextlib
import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
import pydicom.pixels
from pydicom.pixels import as_pixel_options
from pydicom.uid import UID

from ctlesion.choices import TILT_CHOICES
from ctlesion.errors import CtlesionError
from ctlesion.io.geometry import (
    SAME_POSITION_TOLERANCE_MM,
    interpolate_stack,
    measure_tilt,
    median_interval_mm,
    plan_regular_grid,
    positions_along_normal_mm,
    summarize_thickness,
    unit,
    untilt_stack,
)
from ctlesion.io.series import (
    Discovery,
    SeriesInfo,
    SliceHeader,
    discover_series,
    distinct_positions,
    select_series,
)
from ctlesion.volume import AIR_HU, Volume, finite_hu

logger = logging.getLogger(__name__)
_INT16 = np.iinfo(np.int16)
#: The pixel data elements (group, element) and their keywords (PS3.6).
_PIXEL_KEYWORDS = {(0x7FE0, 0x0008): "FloatPixelData", (0x7FE0, 0x0009): "DoubleFloatPixelData",
                   (0x7FE0, 0x0010): "PixelData"}


def read_dicom_series(
    folder: Path, *, series: str | None = None, allow_non_ct: bool = False, tilt: str = "refuse"
) -> Volume:
    """Read one series of a folder of DICOM files (searched recursively) as a Volume.

    The series is the one :func:`ctlesion.io.series.discover_series` chooses by
    :data:`ctlesion.io.series.SELECTION_RULE` (thinnest axial CT series covering the most
    anatomy), or the one named by ``series``. Slices are sorted by ImagePositionPatient projected
    on the slice normal (never by InstanceNumber); the slice interval is the median step of the
    sorted positions. See the module docstring for what is done about duplicates, gaps and tilt.

    Args:
        folder: folder holding the DICOM files of the study or series.
        series: SeriesNumber, SeriesInstanceUID or SeriesDescription (case-insensitive) of the
            series to read; None: the rule's choice.
        allow_non_ct: read a series of another modality (MR, PT, ...) when named, or when the
            folder has no CT series.
        tilt: "refuse" (default: a tilted series is an error) or "resample" (onto an orthogonal grid).

    Returns:
        Volume with ``hu`` (Z, Y, X), in HU, int16 when every slice's rescale is integer and the
        values fit, else float32 (always float32 after a tilt correction or gap interpolation);
        z = sorted slice, y = row, x = column; ``spacing_zyx_mm`` = (slice interval,
        PixelSpacing[0] (between rows), PixelSpacing[1] (between columns)).
        ``meta`` keys: ``slice_thickness_mm`` (median SliceThickness or None), ``modality``,
        ``series_uid``, ``study_uid``, ``frame_of_reference_uid``, ``description``,
        ``series_number`` (int or None), ``warnings`` (list[str]: what was found and done),
        ``skipped`` (list of {"path", "reason"}: files, and the other series of the folder with
        why they were not read), ``num_files`` (files that make up the volume),
        ``num_files_scanned``, ``gantry_tilt_deg``, ``slice_positions_mm`` (position of each z
        index along the normal), ``slice_paths`` (source file of each z index, None for an
        interpolated slice), ``slice_frames`` (frame index in a multi-frame file, else None).

    Raises:
        CtlesionError: (naming the folder) see :func:`~ctlesion.io.series.discover_series` and
            :func:`~ctlesion.io.series.select_series`; ``series`` matches several series; the
            series is tilted and ``tilt`` is "refuse"; no decoder is installed for its transfer
            syntax; fewer than 2 slices remain after skipping undecodable ones; two different
            images share a position; no voxel is finite.
        ValueError: ``tilt`` is not one of :data:`TILT_CHOICES`.
    """
    discovery = discover_series(folder, allow_non_ct=allow_non_ct)
    chosen = select_series(discovery, series)
    if len(chosen) > 1:
        listing = "; ".join(f"{s.label} uid '{s.series_uid}'" for s in chosen)
        raise CtlesionError(f"{series!r} matches {len(chosen)} series ({listing}); name one by its UID", folder)
    return read_discovered(discovery, chosen[0], tilt=tilt)


def read_discovered(discovery: Discovery, info: SeriesInfo, *, tilt: str = "refuse") -> Volume:
    """Decode one series found by :func:`~ctlesion.io.series.discover_series` into a Volume.

    Args:
        discovery: the folder's discovery.
        info: one of ``discovery.series``.
        tilt: "refuse" or "resample" (see :func:`read_dicom_series`).

    Returns:
        The Volume (see :func:`read_dicom_series`).

    Raises:
        CtlesionError: as :func:`read_dicom_series`.
        ValueError: bad ``tilt``.
    """
    check_discovered(discovery, info, tilt=tilt)
    folder = Path(discovery.path)
    warnings, skipped = list(discovery.warnings), list(discovery.skipped)
    skipped += [{"path": s.folder, "reason": f"{s.label} not read: {s.selection}"} for s in discovery.series if s is not info]
    slices, hu = _load_hu(discovery.images_of(info), folder, warnings, skipped)
    if len(slices) < 2:
        where = slices[0].label if slices else "none"
        raise CtlesionError(
            f"{info.label}: only one slice ({where}) left after skipping undecodable and duplicate images, "
            "at least 2 needed to know the slice interval",
            folder,
        )
    hu = finite_hu(hu, folder, warnings, [s.label for s in slices])  # before interpolation spreads them
    return _assemble(discovery, info, slices, hu, tilt, warnings, skipped)


# --------------------------------------------------------------------------- checks


def check_discovered(discovery: Discovery, info: SeriesInfo, *, tilt: str = "refuse") -> None:
    """The checks :func:`read_discovered` makes before decoding, from headers only: the series is
    readable, not tilted (unless ``tilt="resample"``) and its transfer syntax has a decoder.

    Args:
        discovery: the folder's discovery; info: one of ``discovery.series``.
        tilt: "refuse" or "resample".

    Raises:
        CtlesionError: (naming the folder) the series cannot be read (single slice, one
            position), is gantry-tilted with ``tilt="refuse"``, or no decoder is installed for
            its pixel data.
        ValueError: bad ``tilt``; a discovery without images (not a DICOM folder).
    """
    if tilt not in TILT_CHOICES:
        raise ValueError(f"tilt must be one of {TILT_CHOICES}, got {tilt!r}")
    folder = Path(discovery.path)
    if not discovery.images:
        raise ValueError(f"{folder} was not discovered as a DICOM folder (no images to decode)")
    if info.unreadable:
        raise CtlesionError(f"{info.label}: {info.unreadable}", folder)
    slices = discovery.images_of(info)
    _refuse_tilt(slices, info, tilt, folder)
    _check_decodable(slices, folder)


def _refuse_tilt(slices: list[SliceHeader], info: SeriesInfo, tilt: str, folder: Path) -> None:
    """Fail before decoding when the series is tilted and tilt correction was not asked for."""
    if tilt != "refuse":
        return
    _, firsts = distinct_positions(slices)
    first = slices[0]
    measured = measure_tilt(np.stack([slices[i].position_lps_mm for i in firsts]), first.orientation,
                            first.pixel_spacing_mm)
    if measured.significant:
        raise CtlesionError(
            f"{info.label}: {measured.describe()}; refused (--tilt refuse, the default); use --tilt resample to "
            "resample it onto an orthogonal grid",
            folder,
        )


def _check_decodable(slices: list[SliceHeader], folder: Path) -> None:
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


# --------------------------------------------------------------------------- pixels


def _load_hu(
    slices: list[SliceHeader], folder: Path, warnings: list[str], skipped: list[dict[str, str]]
) -> tuple[list[SliceHeader], np.ndarray]:
    """Decode the sorted slices into one preallocated HU array, skipping and deduplicating.

    The array is int16 when every slice's rescale is integer (it turns float32 if a slice's
    values do not fit int16), else float32. A slice whose pixels cannot be decoded is skipped
    with a warning; a slice at the position of the previous kept one is dropped if its HU are
    identical and is an error otherwise.
    """
    integer = all(float(s.rescale_slope).is_integer() and float(s.rescale_intercept).is_integer() for s in slices)
    hu = np.empty((len(slices), slices[0].rows, slices[0].columns), dtype=np.int16 if integer else np.float32)
    positions, _ = distinct_positions(slices)
    kept: list[SliceHeader] = []
    kept_positions: list[float] = []
    for slice_, position in zip(slices, positions):
        stored = _decode(slice_, warnings, skipped)
        if stored is None:
            continue
        k = len(kept)
        stored_range = (stored.min(), stored.max()) if stored.size else (0, 0)
        if hu.dtype == np.int16 and not _fits_int16(slice_, stored, stored_range):
            hu = hu.astype(np.float32)
        _to_hu(slice_, stored, stored_range, out=hu[k])
        if kept and position - kept_positions[-1] < SAME_POSITION_TOLERANCE_MM:
            if not np.array_equal(hu[k], hu[k - 1], equal_nan=hu.dtype.kind == "f"):
                raise CtlesionError(
                    f"two different slices at the same position {position:.2f} mm along the slice normal: "
                    f"{kept[-1].label} and {slice_.label} (several acquisitions or phases mixed in one series?)",
                    folder,
                )
            message = f"{slice_.label} duplicates {kept[-1].label} (same position {position:.2f} mm, identical pixels)"
            logger.warning("%s: %s; the copy is dropped", folder, message)
            warnings.append(f"{message}; the copy is dropped")
            skipped.append({"path": str(slice_.path), "reason": f"duplicate of {kept[-1].path.name} (same position, identical pixels)"})
            continue
        kept.append(slice_)
        kept_positions.append(position)
    return kept, hu[: len(kept)]


def _decode(slice_: SliceHeader, warnings: list[str], skipped: list[dict[str, str]]) -> np.ndarray | None:
    """Stored values (Y, X) of one slice, or None (with one warning line) when they cannot be decoded."""
    try:
        with _pydicom_log_captured(slice_.label):
            stored = _stored_values(slice_)
    except Exception as error:  # noqa: BLE001 - decoders raise many types on corrupt data
        reason = f"corrupt or truncated pixel data: {_one_line(error)}"
    else:
        if stored.shape == (slice_.rows, slice_.columns):
            return stored
        reason = f"pixel data shape {stored.shape} does not match Rows x Columns {slice_.rows}x{slice_.columns}"
    message = f"{slice_.label}: {reason}; slice skipped"
    logger.warning("%s", message)
    warnings.append(message)
    skipped.append({"path": str(slice_.path), "reason": reason})
    return None


class _Capture(logging.Filter):
    """Keeps the records of the loggers it is attached to from being emitted, and collects them."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def filter(self, record: logging.LogRecord) -> bool:
        self.records.append(record)
        return False


@contextlib.contextmanager
def _pydicom_log_captured(label: str) -> Iterator[None]:
    """While decoding, keep pydicom's log records (its decoders log every failing plugin at ERROR
    with a traceback, although the caller reports the failure) from reaching any handler.

    A filter on the ``pydicom`` logger and on each of its child loggers (a logger's filters see
    only its own records) drops them at their source; afterwards each is logged here at DEBUG,
    one line, without its traceback, naming ``label`` (the slice's file). The logging setup of
    the application (handlers, levels, propagation) is not touched.
    """
    capture = _Capture()
    loggers = [logging.getLogger("pydicom")] + [
        item for name, item in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("pydicom.") and isinstance(item, logging.Logger)
    ]
    for item in loggers:
        item.addFilter(capture)
    try:
        yield
    finally:
        for item in loggers:
            item.removeFilter(capture)
        for record in capture.records:
            logger.debug("%s: pydicom %s: %s", label, record.levelname.lower(), _one_line(record.getMessage()))


def _one_line(error: object) -> str:
    """An exception or message as one line (decoders' messages list each plugin on its own line)."""
    return " ".join(str(error).split()) or type(error).__name__


def _stored_values(slice_: SliceHeader) -> np.ndarray:
    """Decode one frame with pydicom, reusing the header read during discovery.

    pydicom's decoder takes a file positioned at the start of the pixel data value plus the
    Image Pixel options of the header (``Decoder.as_array``), exactly what
    ``pydicom.pixels.pixel_array(path)`` does after parsing the header again; the offset found
    during discovery saves that second parse. Deflated files (whose offsets are in the inflated
    stream) and images without a known offset go through ``pixel_array(path)``.
    """
    syntax = UID(str(slice_.header.file_meta.TransferSyntaxUID))
    if slice_.pixel_offset is None or syntax.is_deflated:
        return pydicom.pixels.pixel_array(slice_.path, index=slice_.frame_index)
    options = as_pixel_options(slice_.header, transfer_syntax_uid=syntax)
    with open(slice_.path, "rb") as file:
        file.seek(slice_.pixel_offset)
        options.update(_pixel_element_options(file, syntax))
        array, _ = pydicom.pixels.get_decoder(syntax).as_array(file, index=slice_.frame_index, **options)
    return array


def _pixel_element_options(file: BinaryIO, syntax: UID) -> dict[str, str]:
    """Read the pixel data element's tag, VR and length (as pydicom's own pixel_array does).

    Leaves ``file`` at the start of the value and returns the decoder's ``pixel_keyword`` (and
    ``pixel_vr`` for explicit VR).
    """
    endian = "<" if syntax.is_little_endian else ">"
    head = file.read(8)
    if len(head) < 8:
        raise ValueError("no pixel data element where the header ended")
    options = {}
    if syntax.is_implicit_VR:
        group, element, _length = struct.unpack(f"{endian}HHL", head)
    else:
        group, element, vr, _reserved = struct.unpack(f"{endian}HH2sH", head)
        file.read(4)  # 32-bit length of OB/OW/OF/OD
        options["pixel_vr"] = vr.decode("ascii")
    keyword = _PIXEL_KEYWORDS.get((group, element))
    if keyword is None:
        raise ValueError(f"element ({group:04X},{element:04X}) where the pixel data were expected")
    options["pixel_keyword"] = keyword
    return options


def _padding_mask(slice_: SliceHeader, stored: np.ndarray) -> np.ndarray | None:
    """Pixels marked as padding by PixelPaddingValue (and PixelPaddingRangeLimit), PS3.3 C.7.5.1.1.2."""
    value = slice_.header.get("PixelPaddingValue")
    if value is None:
        return None
    limit = slice_.header.get("PixelPaddingRangeLimit")
    if limit is None:
        return stored == value
    low, high = sorted((int(value), int(limit)))
    return (stored >= low) & (stored <= high)


def _fits_int16(slice_: SliceHeader, stored: np.ndarray, stored_range: tuple) -> bool:
    """Integer stored values whose HU (from their min and max) all fit int16."""
    if stored.dtype.kind not in "iub":
        return False
    ends = [float(v) * slice_.rescale_slope + slice_.rescale_intercept for v in stored_range]
    return _INT16.min <= min(ends) and max(ends) <= _INT16.max


def _to_hu(slice_: SliceHeader, stored: np.ndarray, stored_range: tuple, *, out: np.ndarray) -> None:
    """HU = stored * RescaleSlope + RescaleIntercept (PS3.3 C.11.1.1.2) into ``out``; padding -> air.

    Into an int16 ``out`` (integer rescale, HU known to fit from ``stored_range`` = (min, max)):
    in int16 when the stored values themselves fit and the slope is 1 (exact: no intermediate
    value leaves the int16 range), else in int32. Otherwise in float64, stored as float32.
    """
    slope, intercept = slice_.rescale_slope, slice_.rescale_intercept
    if out.dtype == np.int16:
        if slope == 1 and _INT16.min <= min(stored_range[0], intercept) and max(stored_range[1], intercept) <= _INT16.max:
            np.copyto(out, stored, casting="unsafe")
            out += np.int16(intercept)
        else:
            np.add(stored.astype(np.int32) * np.int32(slope), np.int32(intercept), out=out, casting="unsafe")
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # beyond float32: inf, then finite_hu's rule
            out[...] = stored.astype(np.float64) * slope + intercept
    padding = _padding_mask(slice_, stored)
    if padding is not None:
        out[padding] = AIR_HU


# --------------------------------------------------------------------------- volume


def _assemble(
    discovery: Discovery,
    info: SeriesInfo,
    slices: list[SliceHeader],
    hu: np.ndarray,
    tilt: str,
    warnings: list[str],
    skipped: list[dict[str, str]],
) -> Volume:
    """Apply the tilt and gap decisions to the decoded stack and build the Volume."""
    folder = discovery.path
    first = slices[0]
    row_cosine, column_cosine, normal = unit(first.orientation[:3]), unit(first.orientation[3:]), first.normal
    ipp = np.stack([s.position_lps_mm for s in slices])
    positions = positions_along_normal_mm(ipp, normal)
    origin = first.position_lps_mm.copy()
    slice_paths: list[str | None] = [str(s.path) for s in slices]
    slice_frames: list[int | None] = [s.frame_index for s in slices]

    measured = measure_tilt(ipp, first.orientation, first.pixel_spacing_mm)
    if measured.significant:
        if tilt == "refuse":  # reached only if skipped slices changed the picture
            raise CtlesionError(f"{info.label}: {measured.describe()}; use --tilt resample to read it", folder)
        hu, (shift_row_mm, shift_column_mm) = untilt_stack(hu, measured.offsets_mm, first.pixel_spacing_mm, AIR_HU)
        origin = origin + shift_row_mm * row_cosine + shift_column_mm * column_cosine
        _warn(warnings, folder, f"{measured.describe()}; resampled onto an orthogonal grid with SimpleITK (each slice "
                                f"shifted in its plane to its true position, linear interpolation; matrix now "
                                f"{hu.shape[1]}x{hu.shape[2]})")

    grid = plan_regular_grid(positions)
    if grid is None:
        interval = median_interval_mm(positions)
    else:
        hu = interpolate_stack(hu, positions, grid)
        interval = grid.interval_mm
        start, stop = grid.block
        origin = origin + (positions[start] - positions[0]) * normal
        nearest = start + np.argmin(np.abs(positions[start:stop, None] - grid.positions_mm[None, :]), axis=0)
        exact = np.abs(positions[nearest] - grid.positions_mm) < SAME_POSITION_TOLERANCE_MM
        slice_paths = [slice_paths[j] if same else None for j, same in zip(nearest, exact)]
        slice_frames = [slice_frames[j] if same else None for j, same in zip(nearest, exact)]
        positions = grid.positions_mm
        _warn(warnings, folder, grid.message)

    thickness, thickness_warning = summarize_thickness([s.slice_thickness_mm for s in slices if s.slice_thickness_mm is not None])
    if thickness_warning:
        _warn(warnings, folder, thickness_warning)
    if thickness is not None and abs(thickness - interval) > 0.01:
        logger.info("%s: SliceThickness %g mm differs from the slice interval %.3f mm (from ImagePositionPatient); "
                    "the interval is used", folder, thickness, interval)
    header = first.header
    meta = {
        "slice_thickness_mm": thickness,
        "modality": first.modality,
        "series_uid": first.series_uid,
        "study_uid": first.study_uid,
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
        "description": first.description,
        "series_number": first.series_number,
        "warnings": warnings,
        "skipped": skipped,
        "num_files": len({s.path for s in slices}),
        "num_files_scanned": discovery.num_files,
        "gantry_tilt_deg": measured.angle_deg,
        "slice_positions_mm": [float(p) for p in positions],
        "slice_paths": slice_paths,
        "slice_frames": slice_frames,
    }
    volume = Volume(
        hu=hu,
        spacing_zyx_mm=(interval, first.pixel_spacing_mm[0], first.pixel_spacing_mm[1]),
        origin_lps_mm=tuple(origin),
        direction_lps=np.column_stack([row_cosine, column_cosine, normal]),
        source=str(folder),
        meta=meta,
    )
    logger.info("%s: read %s: %d x %d x %d voxels (z, y, x), interval %.3f mm, pixel %.3f x %.3f mm, %s",
                folder, info.label, *volume.shape_zyx, interval, *first.pixel_spacing_mm, volume.hu.dtype)
    return volume


def _warn(warnings: list[str], folder: str, message: str) -> None:
    logger.warning("%s: %s", folder, message)
    warnings.append(message)
