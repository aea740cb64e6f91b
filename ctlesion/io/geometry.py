"""Geometry of a stack of parallel slices: positions, slice interval, gaps, gantry tilt, regridding.

Shared by series discovery (headers only) and the DICOM reader (pixels), so that ``ctlesion
info`` and ``detect`` describe and do exactly the same thing (SPEC section 3):

* positions are ImagePositionPatient projected on the slice normal (row cosine x column cosine);
  the **slice interval** is the median step between consecutive distinct positions;
* a step that differs from the median by more than 5 % (missing slices, varying steps) makes
  the stack irregular: it is resampled onto a regular grid at the median interval by linear
  interpolation along the normal (:func:`plan_regular_grid`, :func:`interpolate_stack`). Gaps
  wider than :data:`MAX_INTERPOLATED_GAP_INTERVALS` intervals are not bridged: the stack is split
  there into blocks and the block covering the most anatomy is kept, the others are named in the
  warning;
* **gantry tilt**: the slices are parallel planes, but their ImagePositionPatient also moves
  in-plane from slice to slice (the table moves along the patient axis, not along the tilted
  normal). The tilt angle is that of the least-squares line through the positions against the
  normal (GantryDetectorTilt is informative only). :func:`untilt_stack` shifts every slice in
  its own plane to its true position with SimpleITK (``sitk.Resample``, linear), giving an
  orthogonal grid (x = row cosine, y = column cosine, z = normal) whose in-plane extent grows to
  hold every slice whole;
* SliceThickness (nominal) is summarised separately from the interval; varying values warn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ctlesion.preprocess import plan_slices

#: Two slices whose positions along the normal differ by less than this are at the same place.
SAME_POSITION_TOLERANCE_MM = 0.01
#: Relative deviation of a step from the median step that makes a stack irregular (SPEC section 3).
STEP_RTOL = 0.05
#: Gaps up to this many median intervals (up to 2 missing slices) are filled by interpolation;
#: wider gaps split the stack into blocks.
MAX_INTERPOLATED_GAP_INTERVALS = 3.0
#: In-plane drift of the slice positions (in pixels, over the whole stack) below which the stack
#: counts as untilted; above it the tilt must be corrected or refused.
TILT_DRIFT_TOLERANCE_PX = 0.1
#: SliceThickness values that differ by more than this (mm) are reported as mixed.
THICKNESS_TOLERANCE_MM = 1e-3


def unit(vector: np.ndarray) -> np.ndarray:
    """The vector divided by its Euclidean norm (float64)."""
    vector = np.asarray(vector, dtype=np.float64)
    return vector / np.linalg.norm(vector)


def slice_normal(orientation: np.ndarray) -> np.ndarray:
    """Unit slice normal = row cosine x column cosine (LPS), from ImageOrientationPatient (6,)."""
    orientation = np.asarray(orientation, dtype=np.float64)
    return unit(np.cross(unit(orientation[:3]), unit(orientation[3:])))


def positions_along_normal_mm(positions_lps_mm: np.ndarray, normal: np.ndarray) -> np.ndarray:
    """ImagePositionPatient (N, 3) LPS mm projected on the unit normal (3,): (N,) mm."""
    return np.asarray(positions_lps_mm, dtype=np.float64).reshape(-1, 3) @ np.asarray(normal, dtype=np.float64)


def median_interval_mm(positions_mm: np.ndarray) -> float:
    """Median step between sorted distinct positions (N >= 2), mm: the slice interval."""
    return float(np.median(np.diff(positions_mm)))


# --------------------------------------------------------------------------- gaps / varying steps


@dataclass(frozen=True)
class RegularGrid:
    """How an irregular stack is put onto a regular grid at the median interval.

    Attributes:
        interval_mm: the median interval, spacing of the new grid.
        block: (first, stop) source slice indices kept (all of them unless a wide gap split
            the stack).
        positions_mm: (M,) target positions along the normal, ``p[first] + k * interval``.
        num_interpolated: target slices that do not coincide with a source slice.
        message: what was found and done, one line (used as a warning).
    """

    interval_mm: float
    block: tuple[int, int]
    positions_mm: np.ndarray
    num_interpolated: int
    message: str


def plan_regular_grid(positions_mm: np.ndarray) -> RegularGrid | None:
    """The regular grid an irregular stack is resampled to, or None when the steps are regular.

    A stack is irregular when a step differs from the median step s by more than 5 % of s. The
    grid keeps s and starts at the first slice: positions ``p0 + k * s`` up to the last slice
    (no extrapolation). Gaps wider than :data:`MAX_INTERPOLATED_GAP_INTERVALS` * s are not
    bridged: the stack is split at them and the block with the largest extent (then the most
    slices, then the first) is kept.

    Args:
        positions_mm: (N,) sorted distinct positions along the normal, N >= 2.

    Returns:
        The :class:`RegularGrid`, or None when every step is within 5 % of the median.
    """
    positions_mm = np.asarray(positions_mm, dtype=np.float64)
    steps = np.diff(positions_mm)
    interval = float(np.median(steps))
    irregular = np.flatnonzero(np.abs(steps - interval) > STEP_RTOL * interval)
    if irregular.size == 0:
        return None
    found = (
        f"slice steps vary by more than {STEP_RTOL:.0%} of the median interval {interval:.3f} mm (steps "
        f"{steps.min():.3f} to {steps.max():.3f} mm; missing slices?) at {_steps_text(positions_mm, irregular)}"
    )
    wide = np.flatnonzero(steps > MAX_INTERPOLATED_GAP_INTERVALS * interval * (1 + STEP_RTOL))
    starts = np.concatenate([[0], wide + 1])
    stops = np.concatenate([wide + 1, [len(positions_mm)]])
    extents = positions_mm[stops - 1] - positions_mm[starts]
    best = max(range(len(starts)), key=lambda b: (extents[b], stops[b] - starts[b], -b))
    first, stop = int(starts[best]), int(stops[best])
    block = positions_mm[first:stop]
    count = int(np.floor((block[-1] - block[0]) / interval + 1e-6)) + 1
    target = block[0] + interval * np.arange(count)
    coincide = np.min(np.abs(target[:, None] - block[None, :]), axis=1) < SAME_POSITION_TOLERANCE_MM
    num_interpolated = int(np.count_nonzero(~coincide))
    done = (
        f"resampled onto a regular {interval:.3f} mm grid by linear interpolation along the slice normal "
        f"({count} slices from {block[0]:.2f} to {target[-1]:.2f} mm, {num_interpolated} of them interpolated)"
    )
    if len(starts) > 1:
        left_out = [f"{positions_mm[a]:.2f} to {positions_mm[b - 1]:.2f} mm ({b - a} slices)"
                    for a, b in zip(starts, stops) if a != first]
        done = (
            f"gaps wider than {MAX_INTERPOLATED_GAP_INTERVALS:g} intervals at "
            f"{_steps_text(positions_mm, wide)} split the stack; only the block covering the most anatomy is "
            f"kept, the rest is left out ({'; '.join(left_out)}); it is {done}"
        )
    return RegularGrid(interval, (first, stop), target, num_interpolated, f"{found}; {done}")


def _steps_text(positions_mm: np.ndarray, indices: np.ndarray, limit: int = 5) -> str:
    text = ", ".join(f"{positions_mm[i]:.2f} -> {positions_mm[i + 1]:.2f} mm" for i in indices[:limit])
    return text + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def interpolate_stack(stack: np.ndarray, positions_mm: np.ndarray, grid: RegularGrid) -> np.ndarray:
    """Resample slices at irregular positions onto ``grid`` by linear interpolation along z.

    Target slice at position t lies between the source slices i, i + 1 with
    ``p[i] <= t <= p[i + 1]``: ``(1 - w) * S[i] + w * S[i + 1]``, ``w = (t - p[i]) / (p[i + 1] - p[i])``;
    a target that coincides with a source slice copies it exactly.

    Args:
        stack: (N, Y, X) slices sorted by position, any real dtype.
        positions_mm: (N,) their positions along the normal.
        grid: from :func:`plan_regular_grid` for these positions.

    Returns:
        (M, Y, X) float32.
    """
    first, stop = grid.block
    source = np.asarray(positions_mm[first:stop], dtype=np.float64)
    fractional_index = np.interp(grid.positions_mm, source, np.arange(len(source), dtype=np.float64))
    plan = plan_slices(fractional_index, len(source))
    out = np.empty((len(grid.positions_mm), *stack.shape[1:]), dtype=np.float32)
    for k, (lo, hi, weight) in enumerate(zip(plan.lo.tolist(), plan.hi.tolist(), plan.weight_hi.tolist())):
        low = stack[first + lo].astype(np.float32)
        out[k] = low if weight == 0.0 else (1.0 - weight) * low + weight * stack[first + hi].astype(np.float32)
    return out


# --------------------------------------------------------------------------- gantry tilt


@dataclass(frozen=True)
class Tilt:
    """In-plane drift of slice positions along the stack (gantry tilt).

    Attributes:
        angle_deg: angle between the least-squares line through the positions and the normal.
        offsets_mm: (N, 2) in-plane offset of each slice's ImagePositionPatient from the first
            slice's, along the row cosine and the column cosine (mm).
        max_drift_mm: largest in-plane offset (Euclidean), mm.
        significant: the drift exceeds :data:`TILT_DRIFT_TOLERANCE_PX` of the smaller pixel
            spacing, so ignoring it would misplace slices.
    """

    angle_deg: float
    offsets_mm: np.ndarray
    max_drift_mm: float
    significant: bool

    def describe(self) -> str:
        """One line: the angle and the drift."""
        return (
            f"gantry tilt of {self.angle_deg:.2f} deg (slice positions drift up to {self.max_drift_mm:.2f} mm "
            "in-plane instead of moving along the slice normal)"
        )


def measure_tilt(
    positions_lps_mm: np.ndarray, orientation: np.ndarray, pixel_spacing_mm: tuple[float, float]
) -> Tilt:
    """Gantry tilt of a stack of parallel slices from their ImagePositionPatient.

    Args:
        positions_lps_mm: (N, 3) ImagePositionPatient of the slices, sorted along the normal, N >= 1.
        orientation: (6,) ImageOrientationPatient shared by the slices.
        pixel_spacing_mm: (between rows, between columns), for the significance threshold.

    Returns:
        The :class:`Tilt` (angle 0 for a single slice).
    """
    positions = np.asarray(positions_lps_mm, dtype=np.float64).reshape(-1, 3)
    row, column, normal = unit(orientation[:3]), unit(orientation[3:]), slice_normal(orientation)
    relative = positions - positions[0]
    offsets = np.column_stack([relative @ row, relative @ column])
    along = relative @ normal
    angle_deg = 0.0
    if len(positions) > 1 and np.ptp(along) > 0:
        centred = along - along.mean()
        slope = (centred @ (offsets - offsets.mean(axis=0))) / (centred @ centred)  # in-plane mm per mm
        angle_deg = float(np.degrees(np.arctan(np.linalg.norm(slope))))
    drift = float(np.max(np.linalg.norm(offsets, axis=1)))
    significant = drift > TILT_DRIFT_TOLERANCE_PX * min(pixel_spacing_mm)
    return Tilt(angle_deg, offsets, drift, significant)


def untilt_stack(
    stack: np.ndarray, offsets_mm: np.ndarray, pixel_spacing_mm: tuple[float, float], fill_value: float
) -> tuple[np.ndarray, tuple[float, float]]:
    """Shift every slice in its plane to its true position, onto one orthogonal grid (SimpleITK).

    Slice k's first pixel lies ``offsets_mm[k]`` (along row cosine, along column cosine) from the
    first slice's. The output grid has the input's pixel spacing and is aligned with slice 0's
    pixel grid (so slices with whole-pixel offsets are copied exactly, others interpolated
    linearly by ``sitk.Resample``); it is enlarged so every slice fits whole; pixels no slice
    covers get ``fill_value``.

    Args:
        stack: (N, Y, X) slices, any real dtype.
        offsets_mm: (N, 2) in-plane offsets (row-cosine, column-cosine direction), mm.
        pixel_spacing_mm: (between rows, between columns), mm.
        fill_value: value of uncovered pixels (HU of air).

    Returns:
        (N, Y', X') float32 stack and the (along row cosine, along column cosine) offset (mm) of
        its first pixel from slice 0's first pixel (<= 0).
    """
    dy, dx = pixel_spacing_mm
    num, rows, columns = stack.shape
    offsets = np.asarray(offsets_mm, dtype=np.float64).reshape(num, 2)
    low = np.floor(np.minimum(offsets.min(axis=0), 0.0) / (dx, dy) + 1e-6).astype(int)  # in pixels (x, y)
    high = np.ceil(np.maximum(offsets.max(axis=0), 0.0) / (dx, dy) - 1e-6).astype(int)
    size_xy = (columns + int(high[0] - low[0]), rows + int(high[1] - low[1]))
    origin_xy = (float(low[0] * dx), float(low[1] * dy))
    out = np.empty((num, size_xy[1], size_xy[0]), dtype=np.float32)
    for k in range(num):
        image = sitk.GetImageFromArray(np.asarray(stack[k], dtype=np.float32))
        image.SetSpacing((dx, dy))
        image.SetOrigin(tuple(float(v) for v in offsets[k]))
        resampled = sitk.Resample(
            image, size_xy, sitk.Transform(), sitk.sitkLinear, origin_xy, (dx, dy), (1.0, 0.0, 0.0, 1.0),
            float(fill_value), sitk.sitkFloat32,
        )
        out[k] = sitk.GetArrayViewFromImage(resampled)
    return out, origin_xy


# --------------------------------------------------------------------------- thickness


def summarize_thickness(values_mm: list[float]) -> tuple[float | None, str | None]:
    """Median SliceThickness and a warning when the values vary within the series.

    Args:
        values_mm: the SliceThickness of each slice that has one (mm).

    Returns:
        (median thickness or None when no slice has one, warning text or None).
    """
    if not values_mm:
        return None, None
    low, high = min(values_mm), max(values_mm)
    warning = None
    if high - low > THICKNESS_TOLERANCE_MM:
        counts = {}
        for value in values_mm:
            counts[round(value, 3)] = counts.get(round(value, 3), 0) + 1
        listing = ", ".join(f"{count} x {value:g} mm" for value, count in sorted(counts.items()))
        warning = f"SliceThickness varies within the series ({listing}); the median is reported"
    return float(np.median(values_mm)), warning


def round_or_none(value: float | None, decimals: int) -> float | None:
    """``round(value, decimals)``, keeping None and turning non-finite values into None."""
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), decimals)
