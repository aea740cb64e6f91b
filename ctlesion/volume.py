"""The `Volume`: the one type that every reader returns and every later stage consumes.

Frames and conventions (SPEC section 2-3):

* ``hu`` is indexed ``(z, y, x)``: z = slice, y = row, x = column.
* Geometry is in the DICOM patient frame **LPS** (x to the patient's Left, y to Posterior,
  z to Superior), in millimetres. ``origin_lps_mm`` is the centre of voxel ``(x, y, z) = (0, 0, 0)``.
* ``direction_lps`` is a (3, 3) matrix whose **columns** are the unit vectors of the x (column),
  y (row) and z (slice) index axes in LPS (the SimpleITK/ITK convention), so that

      p_lps = origin_lps_mm + direction_lps @ (spacing_xyz_mm * [i, j, k])

  for the voxel at column i, row j, slice k.
* ``spacing_zyx_mm[0]`` is the **slice interval** (distance between consecutive slice
  positions along the slice normal), not the nominal SliceThickness.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units with its LPS geometry.

    Attributes:
        hu: (Z, Y, X) array of HU, float32 or int16.
        spacing_zyx_mm: (slice interval, row spacing, column spacing) in mm, all > 0.
        origin_lps_mm: LPS position (mm) of the centre of the first voxel (x=0, y=0, z=0).
        direction_lps: (3, 3) float64; columns are the x, y, z index axes as LPS unit vectors.
        source: where the volume was read from (path as text), for messages and reports.
        meta: free-form source metadata: ``slice_thickness_mm``, ``modality``, ``series_uid``,
            ``description``, ``warnings`` (list of str) and similar keys.
    """

    hu: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_lps_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction_lps: np.ndarray = field(default_factory=lambda: np.eye(3))
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.hu.ndim != 3:
            raise ValueError(f"Volume.hu must be 3-D (z, y, x), got shape {self.hu.shape}")
        spacing = tuple(float(s) for s in self.spacing_zyx_mm)
        if len(spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"spacing_zyx_mm must be three positive numbers, got {self.spacing_zyx_mm}")
        object.__setattr__(self, "spacing_zyx_mm", spacing)
        object.__setattr__(self, "origin_lps_mm", tuple(float(v) for v in self.origin_lps_mm))
        direction = np.asarray(self.direction_lps, dtype=np.float64).reshape(3, 3)
        object.__setattr__(self, "direction_lps", direction)

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        """Array shape (Z, Y, X) in voxels."""
        return tuple(int(n) for n in self.hu.shape)  # type: ignore[return-value]

    @property
    def slice_interval_mm(self) -> float:
        """Distance between consecutive slice centres along the slice normal, in mm."""
        return self.spacing_zyx_mm[0]

    @property
    def affine_lps(self) -> np.ndarray:
        """(4, 4) float64 matrix mapping homogeneous voxel indices (x, y, z, 1) to LPS mm."""
        spacing_xyz = np.array(self.spacing_zyx_mm[::-1])
        affine = np.eye(4)
        affine[:3, :3] = self.direction_lps * spacing_xyz[None, :]
        affine[:3, 3] = self.origin_lps_mm
        return affine

    def voxel_to_lps(self, xyz_vox: np.ndarray) -> np.ndarray:
        """Map continuous voxel coordinates to LPS millimetres.

        Args:
            xyz_vox: (..., 3) array of (x, y, z) voxel coordinates (voxel centres at integers).

        Returns:
            (..., 3) float64 array of LPS positions in mm.
        """
        xyz = np.asarray(xyz_vox, dtype=np.float64)
        affine = self.affine_lps
        return xyz @ affine[:3, :3].T + affine[:3, 3]

    def with_array(self, hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float] | None = None) -> "Volume":
        """Return a copy with a new array (and optionally spacing), keeping origin and direction."""
        return replace(self, hu=hu, spacing_zyx_mm=spacing_zyx_mm or self.spacing_zyx_mm)
