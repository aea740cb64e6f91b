"""A DeepLesion series folder (``Images_png/<patient>_<study>_<series>/``) as a :class:`Volume`.

DeepLesion ships each series as 16-bit PNG slices named by slice number (HU = value - 32768)
and gives the geometry only in ``DL_info.csv``: ``Spacing_mm_px_`` = (row mm, column mm, slice
interval mm). The patient position is not published, so the volume's origin is placed at the
first slice's number times the interval along z, with the identity direction (standard axial
orientation in LPS); a warning says so. Slice numbers must be consecutive: when the folder holds
several runs of slices, the longest run is read and a warning names the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import read_dl_info, read_png_hu, series_slice_indices
from ctlesion.io.series import Discovery, SeriesInfo
from ctlesion.volume import Volume

logger = logging.getLogger(__name__)


def find_dl_info(series_dir: Path) -> Path | None:
    """``DL_info.csv`` of the dataset a series folder belongs to (``<root>/Images_png/<series>``), or None."""
    for candidate in (Path(series_dir).parent.parent / "DL_info.csv", Path(series_dir).parent / "DL_info.csv"):
        if candidate.is_file():
            return candidate
    return None


def is_deeplesion_series(folder: Path) -> bool:
    """True for a folder of ``<number>.png`` slices that has a DL_info.csv above it."""
    folder = Path(folder)
    return find_dl_info(folder) is not None and any(
        p.suffix == ".png" and p.stem.isdigit() for p in folder.iterdir()
    )


def _longest_run(numbers: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
    """The longest run of consecutive numbers and the (first, last) of the other runs."""
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][-1] + 1:
            runs[-1].append(n)
        else:
            runs.append([n])
    best = max(runs, key=len)
    return best, [(r[0], r[-1]) for r in runs if r is not best]


def _series_geometry(series_dir: Path) -> tuple[tuple[float, float, float], Path]:
    """(interval, row, column) spacing in mm of a series from its dataset's DL_info.csv."""
    dl_info = find_dl_info(series_dir)
    if dl_info is None:
        raise CtlesionError("no DL_info.csv found above the DeepLesion series folder (it gives the spacing)",
                            series_dir)
    for key in read_dl_info(dl_info, drop_noisy=False):
        if key.series_dir == Path(series_dir).name:
            row_mm, col_mm = key.spacing_yx_mm
            return (float(key.slice_interval_mm), float(row_mm), float(col_mm)), dl_info
    raise CtlesionError(f"series {Path(series_dir).name} has no row in {dl_info}", series_dir)


def read_deeplesion_series(series_dir: Path) -> Volume:
    """Read a DeepLesion series folder as a Volume (HU int16, spacing from DL_info.csv).

    Args:
        series_dir: ``Images_png/<patient>_<study>_<series>`` folder of ``NNN.png`` slices.

    Returns:
        Volume with ``hu`` (Z, Y, X) int16, ``spacing_zyx_mm`` = (interval, row, column) from
        ``Spacing_mm_px_``, origin (0, 0, first slice number x interval) and identity direction
        (positions are not published); ``meta["first_slice_number"]`` maps z to file numbers.

    Raises:
        CtlesionError: no PNG slices, no DL_info.csv or no row for the series, unreadable PNG,
            or slices of different sizes.
    """
    series_dir = Path(series_dir)
    numbers = series_slice_indices(series_dir)
    if not numbers:
        raise CtlesionError("no <number>.png slices in the DeepLesion series folder", series_dir)
    spacing_zyx_mm, dl_info = _series_geometry(series_dir)
    run, others = _longest_run(numbers)
    warnings = [("DeepLesion PNG series: patient position not published; origin and direction assumed "
                 "(identity LPS axes, z from the slice numbers)")]
    if others:
        warnings.append(f"slice numbers are not consecutive: read {run[0]}-{run[-1]}, left out "
                        + ", ".join(f"{a}-{b}" for a, b in others))
    slices = [read_png_hu(series_dir / f"{n:03d}.png") for n in run]
    if len({s.shape for s in slices}) != 1:
        raise CtlesionError("PNG slices of different sizes in one series", series_dir)
    for warning in warnings[1:]:
        logger.warning("%s: %s", series_dir, warning)
    return Volume(
        hu=np.stack(slices),
        spacing_zyx_mm=spacing_zyx_mm,
        origin_lps_mm=(0.0, 0.0, run[0] * spacing_zyx_mm[0]),
        source=str(series_dir),
        meta={"modality": "CT", "description": series_dir.name, "series_uid": "", "slice_thickness_mm": None,
              "warnings": warnings, "skipped": [], "first_slice_number": run[0], "dl_info": str(dl_info)},
    )


def describe_deeplesion_series(series_dir: Path) -> Discovery:
    """A one-series Discovery of a DeepLesion series folder (reads one PNG for the matrix size)."""
    series_dir = Path(series_dir)
    numbers = series_slice_indices(series_dir)
    spacing_zyx_mm, _ = _series_geometry(series_dir)
    run, others = _longest_run(numbers)
    rows, columns = read_png_hu(series_dir / f"{run[0]:03d}.png").shape
    warnings = ("DeepLesion PNG series: patient position not published",) + (
        (f"slice numbers not consecutive: {run[0]}-{run[-1]} is read",) if others else ())
    info = SeriesInfo(
        index=0, series_uid="", series_number=None, description=series_dir.name, modality="CT", image_type=(),
        num_slices=len(run), num_images=len(numbers), rows=rows, columns=columns,
        pixel_spacing_mm=(spacing_zyx_mm[1], spacing_zyx_mm[2]),
        slice_interval_mm=spacing_zyx_mm[0] if len(run) > 1 else None, slice_thickness_mm=None,
        z_extent_mm=(len(run) - 1) * spacing_zyx_mm[0], gantry_tilt_deg=0.0, warnings=warnings,
        unreadable=None, selectable=True, selected=True, selection="a DeepLesion series folder holds one volume",
        folder=str(series_dir),
    )
    return Discovery(path=str(series_dir), series=(info,), skipped=(), warnings=(), num_files=len(numbers))
