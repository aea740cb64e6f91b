"""The DeepLesion dataset layout: ``DL_info.csv`` and ``Images_png/`` (SPEC section 3).

Layout (Yan et al., CVPR 2018; the NIH release)::

    DeepLesion/
        DL_info.csv                      one row per lesion, 18 official columns
        Images_png/<patient>_<study>_<series>/<slice:03d>.png

* PNGs are 16-bit single channel; HU = stored value - 32768.
* ``File_name`` of a row is ``<patient>_<study>_<series>_<slice>.png``: the key slice of the
  lesion; its neighbours are the other PNGs of the same series folder, numbered by slice.
* ``Spacing_mm_px_`` is "row_mm, col_mm, slice_interval_mm"; ``Bounding_boxes`` is
  "x1, y1, x2, y2" in pixels (x = column); ``Measurement_coordinates`` holds the RECIST
  long-axis endpoints then the short-axis endpoints (x, y pairs, pixels).
* ``Train_Val_Test`` is 1 / 2 / 3 for train / val / test.

Pixel coordinates are taken as continuous with pixel (i, j) covering [i, i+1) x [j, j+1), so boxes
scale by the resize factor of an image without offsets (SPEC section 10).
"""

from __future__ import annotations

import csv
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ctlesion.choices import SPLITS
from ctlesion.errors import CtlesionError
from ctlesion.preprocess import (
    REF_INTERVAL_MM,
    SlicePlan,
    neighbour_offsets,
    network_interval_mm,
    plan_window,
    volume_window,
)
from ctlesion.volume import Volume, hu_int16

logger = logging.getLogger(__name__)


#: The 18 columns of the official DL_info.csv, in order.
DL_INFO_COLUMNS: tuple[str, ...] = (
    "File_name",
    "Patient_index",
    "Study_index",
    "Series_ID",
    "Key_slice_index",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Normalized_lesion_location",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "DICOM_windows",
    "Patient_gender",
    "Patient_age",
    "Train_Val_Test",
)

#: Columns ``read_dl_info`` needs; a row with any of them empty is skipped.
REQUIRED_COLUMNS: tuple[str, ...] = (
    "File_name",
    "Measurement_coordinates",
    "Bounding_boxes",
    "Lesion_diameters_Pixel_",
    "Coarse_lesion_type",
    "Possibly_noisy",
    "Slice_range",
    "Spacing_mm_px_",
    "Image_size",
    "Train_Val_Test",
)

#: Offset between stored PNG values and HU.
PNG_HU_OFFSET = 32768

#: DeepLesion's box margin: a row's ``Bounding_boxes`` is the extent of its four RECIST endpoints
#: widened by 5 pixels on every side (every row of ``../shared/data/deeplesion_sample`` holds it
#: exactly, as does the dataset's own description of the column).
BOX_PADDING_PX = 5.0

_FILE_NAME_RE = re.compile(r"^(\d+_\d+_\d+)_(\d+)\.png$")


@dataclass(frozen=True, eq=False)
class KeySlice:
    """One annotated key-slice image of DeepLesion and all of its lesions (M >= 1 rows).

    Attributes:
        file_name: e.g. ``000001_01_01_109.png``.
        series_dir: series folder under ``Images_png``, e.g. ``000001_01_01``.
        slice_index: the key slice's file number (109 -> ``109.png``).
        spacing_yx_mm: (row_mm, col_mm) pixel spacing.
        slice_interval_mm: distance between consecutive slices of the series, mm.
        split: 1 train, 2 val, 3 test.
        boxes_px: (M, 4) float64 boxes (x1, y1, x2, y2), source pixels.
        recist_px: (M, 8) float64 RECIST endpoints, source pixels: long axis (x, y, x, y) then
            short axis (x, y, x, y).
        diameters_px: (M, 2) float64 long and short diameters, pixels.
        lesion_types: (M,) int64 ``Coarse_lesion_type`` (1-8, -1 unknown).
        noisy: (M,) bool ``Possibly_noisy``.
        slice_range: (2,) int64 first and last slice numbers of the annotated range.
        image_size: (2,) int64 ``Image_size`` as in the table (rows, columns; 512, 512).
        age: patient age in years, or None when unknown.
        gender: ``"M"``, ``"F"`` or ``""`` when unknown.
    """

    file_name: str
    series_dir: str
    slice_index: int
    spacing_yx_mm: tuple[float, float]
    slice_interval_mm: float
    split: int
    boxes_px: np.ndarray
    recist_px: np.ndarray
    diameters_px: np.ndarray
    lesion_types: np.ndarray
    noisy: np.ndarray
    slice_range: np.ndarray
    image_size: np.ndarray
    age: float | None
    gender: str

    @property
    def num_lesions(self) -> int:
        """Number of lesions M annotated on this key slice."""
        return int(self.boxes_px.shape[0])

    def png_path(self, images_dir: Path) -> Path:
        """Path of the key slice's PNG under ``images_dir`` (the ``Images_png`` folder)."""
        return Path(images_dir) / self.series_dir / f"{self.slice_index:03d}.png"


def _parse_numbers(text: str, count: int, column: str, line: int, csv_path: Path) -> list[float]:
    """Parse "a, b, c" into exactly ``count`` finite floats or raise a CtlesionError."""
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise CtlesionError(f"line {line}, column {column}: cannot parse {text!r} as numbers", csv_path) from None
    if len(values) != count or not all(np.isfinite(values)):
        raise CtlesionError(
            f"line {line}, column {column}: expected {count} finite numbers, got {text!r}", csv_path
        )
    return values


def _parse_int(text: str, column: str, line: int, csv_path: Path) -> int:
    """Parse an integer column ("3" or "3.0") or raise a CtlesionError."""
    value = _parse_numbers(text, 1, column, line, csv_path)[0]
    if value != int(value):
        raise CtlesionError(f"line {line}, column {column}: expected an integer, got {text!r}", csv_path)
    return int(value)


@dataclass
class _Lesion:
    """One parsed DL_info row (internal)."""

    file_name: str
    series_dir: str
    slice_index: int
    box: list[float]
    recist: list[float]
    diameters: list[float]
    lesion_type: int
    noisy: bool
    slice_range: list[int]
    spacing: list[float]
    image_size: list[int]
    split: int
    age: float | None
    gender: str


def _parse_row(row: Mapping[str, str], line: int, csv_path: Path) -> _Lesion:
    """Parse one DL_info row; raises CtlesionError naming the line on malformed values."""
    file_name = row["File_name"].strip()
    match = _FILE_NAME_RE.match(file_name)
    if match is None:
        raise CtlesionError(
            f"line {line}, column File_name: {file_name!r} is not <patient>_<study>_<series>_<slice>.png",
            csv_path,
        )
    spacing = _parse_numbers(row["Spacing_mm_px_"], 3, "Spacing_mm_px_", line, csv_path)
    if min(spacing) <= 0:
        raise CtlesionError(f"line {line}, column Spacing_mm_px_: spacings must be > 0, got {spacing}", csv_path)
    split = _parse_int(row["Train_Val_Test"], "Train_Val_Test", line, csv_path)
    if split not in SPLITS.values():
        raise CtlesionError(f"line {line}, column Train_Val_Test: expected 1, 2 or 3, got {split}", csv_path)
    age_text = (row.get("Patient_age") or "").strip()
    age = None
    if age_text and age_text.lower() != "nan":
        age = _parse_numbers(age_text, 1, "Patient_age", line, csv_path)[0]
    return _Lesion(
        file_name=file_name,
        series_dir=match.group(1),
        slice_index=int(match.group(2)),
        box=_parse_numbers(row["Bounding_boxes"], 4, "Bounding_boxes", line, csv_path),
        recist=_parse_numbers(row["Measurement_coordinates"], 8, "Measurement_coordinates", line, csv_path),
        diameters=_parse_numbers(row["Lesion_diameters_Pixel_"], 2, "Lesion_diameters_Pixel_", line, csv_path),
        lesion_type=_parse_int(row["Coarse_lesion_type"], "Coarse_lesion_type", line, csv_path),
        noisy=bool(_parse_int(row["Possibly_noisy"], "Possibly_noisy", line, csv_path)),
        slice_range=[int(v) for v in _parse_numbers(row["Slice_range"], 2, "Slice_range", line, csv_path)],
        spacing=spacing,
        image_size=[int(v) for v in _parse_numbers(row["Image_size"], 2, "Image_size", line, csv_path)],
        split=split,
        age=age,
        gender=(row.get("Patient_gender") or "").strip(),
    )


def _key_slice(lesions: Sequence[_Lesion]) -> KeySlice:
    """Group the lesions of one file name into a KeySlice (image-level fields from the first)."""
    first = lesions[0]
    return KeySlice(
        file_name=first.file_name,
        series_dir=first.series_dir,
        slice_index=first.slice_index,
        spacing_yx_mm=(first.spacing[0], first.spacing[1]),
        slice_interval_mm=first.spacing[2],
        split=first.split,
        boxes_px=np.array([les.box for les in lesions], dtype=np.float64).reshape(-1, 4),
        recist_px=np.array([les.recist for les in lesions], dtype=np.float64).reshape(-1, 8),
        diameters_px=np.array([les.diameters for les in lesions], dtype=np.float64).reshape(-1, 2),
        lesion_types=np.array([les.lesion_type for les in lesions], dtype=np.int64),
        noisy=np.array([les.noisy for les in lesions], dtype=bool),
        slice_range=np.array(first.slice_range, dtype=np.int64),
        image_size=np.array(first.image_size, dtype=np.int64),
        age=first.age,
        gender=first.gender,
    )


def split_code(split: int | str) -> int:
    """Map a split name (``train``/``val``/``test``) or code (1/2/3) to its code.

    Raises:
        CtlesionError: for an unknown name or code.
    """
    if isinstance(split, str):
        if split not in SPLITS:
            raise CtlesionError(f"unknown split {split!r}; expected one of {sorted(SPLITS)}")
        return SPLITS[split]
    if split not in SPLITS.values():
        raise CtlesionError(f"unknown split code {split!r}; expected 1, 2 or 3")
    return int(split)


def recist_box(recist_px: Sequence[float], padding_px: float = BOX_PADDING_PX) -> list[float]:
    """DeepLesion's ``Bounding_boxes`` of a lesion from its ``Measurement_coordinates``.

    Args:
        recist_px: the 8 RECIST endpoint coordinates (long axis, then short axis; x, y pairs;
            pixels, x = column), in DL_info's frame.
        padding_px: margin added on every side (DeepLesion: :data:`BOX_PADDING_PX`).

    Returns:
        ``[x1, y1, x2, y2]`` floats, pixels: the endpoints' extent widened by ``padding_px``
        (not clipped to the image).

    Raises:
        ValueError: when ``recist_px`` does not hold 8 finite numbers.
    """
    points = np.asarray(recist_px, dtype=np.float64)
    if points.shape != (8,) or not np.all(np.isfinite(points)):
        raise ValueError(f"RECIST endpoints must be 8 finite numbers, got {list(recist_px)}")
    xs, ys = points[0::2], points[1::2]
    return [float(xs.min() - padding_px), float(ys.min() - padding_px),
            float(xs.max() + padding_px), float(ys.max() + padding_px)]


def read_dl_info(
    csv_path: Path, *, split: int | str | None = None, drop_noisy: bool = True
) -> list[KeySlice]:
    """Read a DeepLesion ``DL_info.csv`` into key slices, lesions grouped per ``File_name``.

    Key slices come in the order of the first appearance of their file name. Extra columns
    (e.g. ``Nifti_ct_name``, ``Image_path``) are ignored. Rows with an empty required field
    (see :data:`REQUIRED_COLUMNS`) are skipped with one logged warning giving their count.

    Args:
        csv_path: the table.
        split: keep only this split (``"train"``/``"val"``/``"test"`` or 1/2/3); None or ``"all"``
            keeps all.
        drop_noisy: drop lesions marked ``Possibly_noisy`` (SPEC section 7); key slices left
            without lesions are dropped.

    Returns:
        The key slices, each with M >= 1 lesions.

    Raises:
        CtlesionError: if the file is missing or unreadable, lacks a required column, or a
            row holds a malformed value (the message names the line and column).
    """
    csv_path = Path(csv_path)
    wanted = None if split is None or split == "all" else split_code(split)
    if not csv_path.is_file():
        raise CtlesionError("DL_info table not found", csv_path)
    groups: dict[str, list[_Lesion]] = {}
    skipped: list[int] = []
    try:
        with csv_path.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CtlesionError(f"missing DL_info column(s) {', '.join(missing)}", csv_path)
            for row in reader:
                line = reader.line_num
                if any(not (row.get(c) or "").strip() for c in REQUIRED_COLUMNS):
                    skipped.append(line)
                    continue
                lesion = _parse_row(row, line, csv_path)
                groups.setdefault(lesion.file_name, []).append(lesion)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CtlesionError(f"cannot read DL_info table: {exc}", csv_path) from exc
    if skipped:
        logger.warning(
            "%s: skipped %d row(s) with empty required fields (lines %s)",
            csv_path,
            len(skipped),
            ", ".join(str(n) for n in skipped[:10]) + (", ..." if len(skipped) > 10 else ""),
        )
    keys = []
    for lesions in groups.values():
        if drop_noisy:
            lesions = [les for les in lesions if not les.noisy]
        if lesions and (wanted is None or lesions[0].split == wanted):
            keys.append(_key_slice(lesions))
    return keys


def _format_value(value: object) -> str:
    """Format a DL_info cell: sequences as "a, b, c", floats with 6 significant digits."""
    if isinstance(value, str):
        return value
    if isinstance(value, np.ndarray) or (isinstance(value, Iterable) and not isinstance(value, (bytes, Mapping))):
        return ", ".join(_format_value(v) for v in np.asarray(value).ravel().tolist())
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    raise TypeError(f"cannot format DL_info value {value!r}")


def write_dl_info(csv_path: Path, rows: Iterable[Mapping[str, object]]) -> None:
    """Write a DL_info.csv with the official 18-column header (one row per lesion).

    Values may be strings, numbers, or sequences of numbers (written as "a, b, c", the
    official style); floats keep 6 significant digits.

    Args:
        csv_path: output file (parent folders are created).
        rows: mappings holding every column of :data:`DL_INFO_COLUMNS`.

    Raises:
        KeyError: if a row lacks a column (a programming error).
        CtlesionError: if the file cannot be written.
    """
    csv_path = Path(csv_path)
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with csv_path.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(DL_INFO_COLUMNS)
            for row in rows:
                writer.writerow([_format_value(row[c]) for c in DL_INFO_COLUMNS])
    except OSError as exc:
        raise CtlesionError(f"cannot write DL_info table: {exc}", csv_path) from exc


def read_png_hu(path: Path) -> np.ndarray:
    """Read a DeepLesion 16-bit PNG slice as HU (HU = stored - 32768).

    Args:
        path: the PNG file.

    Returns:
        (Y, X) int16 array of HU.

    Raises:
        CtlesionError: if the file is missing, cannot be decoded, or is not 16-bit grey.
    """
    path = Path(path)
    if not path.is_file():
        raise CtlesionError("PNG slice not found", path)
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise CtlesionError("cannot decode PNG slice (corrupt or not a PNG)", path)
    if image.dtype != np.uint16 or image.ndim != 2:
        raise CtlesionError(
            f"expected a 16-bit single-channel PNG, got {image.dtype} with shape {image.shape}", path
        )
    return (image.astype(np.int32) - PNG_HU_OFFSET).astype(np.int16)


def write_png_hu(path: Path, hu: np.ndarray) -> None:
    """Write a (Y, X) HU slice as a DeepLesion 16-bit PNG (stored = :func:`~ctlesion.volume.hu_int16` + 32768).

    Raises:
        CtlesionError: if the file cannot be written.
    """
    path = Path(path)
    stored = (hu_int16(hu).astype(np.int32) + PNG_HU_OFFSET).astype(np.uint16)
    if stored.ndim != 2:
        raise ValueError(f"write_png_hu expects a (Y, X) slice, got shape {stored.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), stored):
        raise CtlesionError("cannot write PNG slice", path)


def series_slice_indices(series_dir: Path) -> list[int]:
    """Sorted slice numbers of the PNGs (``<number>.png``) present in a series folder.

    Raises:
        CtlesionError: if the folder does not exist.
    """
    series_dir = Path(series_dir)
    if not series_dir.is_dir():
        raise CtlesionError("DeepLesion series folder not found", series_dir)
    return sorted(int(p.stem) for p in series_dir.iterdir() if p.suffix == ".png" and p.stem.isdigit())


@dataclass(frozen=True)
class KeySliceWindowPlan:
    """Which PNGs of its series folder a key slice's window reads, and how they are blended.

    Attributes:
        first: slice number of the plan's source index 0 (the series' first slice).
        last: slice number of the series' last slice (the plan's source indices are 0..last - first).
        plan: interpolation plan over slice numbers ``first + index``
            (:func:`ctlesion.preprocess.plan_window`; zero-weight partners are not read, so they
            need not exist).
        present: slice numbers of the PNGs present in the folder (ascending).
        wanted: slice numbers the plan needs (ascending), the key slice among them.
        beyond_series_ends: the window reaches past the series' first or last slice, where the
            edge slice is replicated (the protocol's rule, SPEC section 4).
    """

    first: int
    last: int
    plan: SlicePlan
    present: tuple[int, ...]
    wanted: tuple[int, ...]
    beyond_series_ends: bool

    def source_number(self, number: int) -> int:
        """The slice number read for ``number``: itself when its PNG is present, else the nearest present one."""
        if number in self.present:
            return number
        present = np.array(self.present)
        return int(present[np.argmin(np.abs(present - number))])

    def absent(self, key_index: int) -> list[int]:
        """Neighbour slice numbers (not ``key_index``) the window needs whose PNG is absent."""
        return [n for n in self.wanted if n != key_index and n not in self.present]

    def single_slice(self, key_index: int) -> bool:
        """Every slice read is the key slice itself (neighbours absent or the series is one slice), though D > 1."""
        neighbours = len(self.plan.lo) > 1
        return neighbours and {self.source_number(n) for n in self.wanted} == {key_index}


def plan_key_slice_window(key: KeySlice, available: Sequence[int], num_slices: int,
                          ref_interval_mm: float = REF_INTERVAL_MM, resample_thick: bool = False) -> KeySliceWindowPlan:
    """Plan the window of a key slice over its series folder's PNGs, without reading pixels.

    Follows SPEC section 4 (AlignShift paper, section 3): for a thin series (s < r) the j-th
    neighbour lies j * r mm from the key slice, interpolated linearly between source slices
    floor(j r / s) and ceil(j r / s) away; for a thick series it is the j-th adjacent slice.
    Positions are in slice-number units over the series' extent (``Slice_range``, the PNGs
    present and the key slice); beyond it the edge slice is replicated.

    Args:
        key: the key slice.
        available: slice numbers of the PNGs in its series folder (the key slice is added).
        num_slices: window depth D (odd).
        ref_interval_mm: reference interval r (paper: 2 mm).
        resample_thick: neighbours r apart for thick series too (TSM and 2.5D baselines).

    Returns:
        The :class:`KeySliceWindowPlan`.
    """
    present = tuple(sorted(set(available) | {key.slice_index}))
    first = min(present[0], int(key.slice_range[0]), key.slice_index)
    last = max(present[-1], int(key.slice_range[1]), key.slice_index)
    plan = plan_window(key.slice_index - first, last - first + 1, num_slices, key.slice_interval_mm, ref_interval_mm,
                       resample_thick)
    positions = key.slice_index - first + neighbour_offsets(num_slices, key.slice_interval_mm, ref_interval_mm,
                                                            resample_thick)
    beyond = bool(np.any(positions < -1e-9) or np.any(positions > last - first + 1e-9))
    return KeySliceWindowPlan(first=first, last=last, plan=plan, present=present,
                              wanted=tuple(first + i for i in plan.needed), beyond_series_ends=beyond)


class PngSeriesSlices:
    """The slices ``first``..``last`` of a DeepLesion series folder as a lazily read (Z, Y, X) HU
    array: ``[i]`` reads the PNG of slice number ``first + i``, or the nearest present one when it
    is absent (the rule of :class:`KeySliceWindowPlan`), each PNG once; ``read`` holds the slice
    numbers read so far. Enough of an array for :class:`~ctlesion.volume.Volume` and
    :func:`~ctlesion.preprocess.volume_window` (``ndim``, ``shape``, integer indexing)."""

    ndim = 3

    def __init__(self, series_dir: Path, window_plan: KeySliceWindowPlan, shape_yx: tuple[int, int]):
        self.series_dir = Path(series_dir)
        self.plan = window_plan
        self.shape = (window_plan.last - window_plan.first + 1, *shape_yx)
        self.read: dict[int, np.ndarray] = {}

    def __getitem__(self, index: int) -> np.ndarray:
        number = self.plan.source_number(self.plan.first + int(index))
        if number not in self.read:
            self.read[number] = read_png_hu(self.series_dir / f"{number:03d}.png")
        return self.read[number]


def load_key_slice_window(
    images_dir: Path, key: KeySlice, num_slices: int, ref_interval_mm: float = REF_INTERVAL_MM,
    resample_thick: bool = False,
) -> tuple[np.ndarray, float]:
    """Read the key slice and its neighbours as the (D, Y, X) HU window the network sees.

    The series folder is a :class:`~ctlesion.volume.Volume` read lazily (:class:`PngSeriesSlices`),
    and the window is :func:`ctlesion.preprocess.volume_window`'s, as for every other source; the
    PNGs it reads are those of :func:`plan_key_slice_window`. A needed PNG that is absent from
    the folder is replaced by the nearest present one, with one warning; when that leaves
    only the key slice (as in key-slice-only extracts) the warning says "single-slice
    context: neighbours replicated". Each PNG is read once.

    Args:
        images_dir: the ``Images_png`` folder.
        key: the key slice.
        num_slices: window depth D (odd).
        ref_interval_mm: reference interval r (paper: 2 mm).
        resample_thick: neighbours r apart for thick series too (TSM and 2.5D baselines).

    Returns:
        The (D, Y, X) float32 HU window (key slice at D // 2) and the slice interval the
        network sees (``network_interval_mm``: r for thin series (and every series with
        ``resample_thick``), s otherwise).

    Raises:
        CtlesionError: if the series folder or the key slice's PNG is missing or unreadable.
    """
    series_dir = Path(images_dir) / key.series_dir
    available = series_slice_indices(series_dir)
    if key.slice_index not in available:
        raise CtlesionError("key slice PNG not found", key.png_path(images_dir))
    window_plan = plan_key_slice_window(key, available, num_slices, ref_interval_mm, resample_thick)
    key_hu = read_png_hu(series_dir / f"{key.slice_index:03d}.png")
    slices = PngSeriesSlices(series_dir, window_plan, key_hu.shape)
    slices.read[key.slice_index] = key_hu
    volume = Volume(hu=slices, spacing_zyx_mm=(key.slice_interval_mm, *key.spacing_yx_mm), source=str(series_dir))
    window = volume_window(volume, key.slice_index - window_plan.first, num_slices, ref_interval_mm, resample_thick)
    absent = window_plan.absent(key.slice_index)
    neighbours = [n for n in window_plan.wanted if n != key.slice_index]
    if neighbours and set(slices.read) == {key.slice_index}:
        logger.warning("%s: single-slice context: neighbours replicated", key.file_name)
    elif absent:
        logger.warning(
            "%s: %d of %d neighbour slice(s) absent; nearest present slices used", key.file_name, len(absent),
            len(neighbours),
        )
    return window, network_interval_mm(key.slice_interval_mm, ref_interval_mm, resample_thick)
