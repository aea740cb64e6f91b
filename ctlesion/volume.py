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

Non-finite voxels (:func:`finite_hu`, the one rule every reader applies before it builds its
Volume): NaN and +/-inf HU (stored as such in a float NIfTI, or made by NIfTI ``scl_slope`` /
``scl_inter`` scaling or a DICOM rescale that leaves the float32 range) are set to air
(:data:`AIR_HU`) with a warning that counts them; a volume without any finite voxel is refused.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ctlesion.errors import CtlesionError

logger = logging.getLogger(__name__)

#: HU of air: written for padding (DICOM PixelPaddingValue), where a tilt correction has no data,
#: and for non-finite voxels (:func:`finite_hu`).
AIR_HU = -1024
#: Slice names listed in a non-finite warning before "and N more".
_MAX_NAMED_SLICES = 3


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

    def with_array(self, hu: np.ndarray, spacing_zyx_mm: tuple[float, float, float] | None = None) -> Volume:
        """Return a copy with a new array (and optionally spacing), keeping origin and direction."""
        return replace(self, hu=hu, spacing_zyx_mm=spacing_zyx_mm or self.spacing_zyx_mm)


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """HU rounded to the nearest integer and clipped to the int16 range, the HU of integer files.

    The one rounding rule of ctlesion's HU writers (16-bit DeepLesion PNGs, int16 NIfTI), so that
    a value is stored the same in every format.

    Args:
        hu: HU array of any shape and real dtype, finite.

    Returns:
        int16 array of the same shape: ``clip(rint(hu), -32768, 32767)``.
    """
    info = np.iinfo(np.int16)
    return np.clip(np.rint(np.asarray(hu, dtype=np.float64)), info.min, info.max).astype(np.int16)


def describe_non_finite(hu: np.ndarray, slice_names: list[str] | None = None) -> tuple[str | None, str | None]:
    """What :func:`finite_hu` would say about an HU array, without changing it.

    Args:
        hu: (Z, Y, X) HU array, any real dtype (integer arrays are always finite).
        slice_names: per z index, a name for messages (e.g. the DICOM file); None: z indices.

    Returns:
        (warning, refusal): the one-line warning when some voxels are NaN or +/-inf (their count
        by kind and the slices they lie on), else None; the one-line reason to refuse the volume
        when no voxel is finite (it then has no warning), else None.
    """
    if hu.dtype.kind != "f" or hu.size == 0:
        return None, None
    finite = np.isfinite(hu)
    count = hu.size - int(np.count_nonzero(finite))
    if count == 0:
        return None, None
    if count == hu.size:
        return None, f"has no finite voxel (all {hu.size} voxels are NaN or infinite)"
    bad = ~finite
    nan = int(np.count_nonzero(np.isnan(hu)))
    kinds = [(nan, "NaN"), (int(np.count_nonzero(bad & (hu > 0))), "+inf"), (int(np.count_nonzero(bad & (hu < 0))), "-inf")]
    slices = np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))
    if slice_names is None:
        where = f"z = {slices[0]}" if len(slices) == 1 else f"z = {slices[0]} to {slices[-1]}"
    else:
        names = [slice_names[z] for z in slices[:_MAX_NAMED_SLICES]]
        where = ", ".join(names) + (f" and {len(slices) - len(names)} more" if len(slices) > len(names) else "")
    return (
        f"{count} voxels are not finite ({', '.join(f'{n} {kind}' for n, kind in kinds if n)}) on "
        f"{len(slices)} slice{'s' if len(slices) > 1 else ''} ({where}); they are set to air ({AIR_HU} HU)"
    ), None


def finite_hu(hu: np.ndarray, source: str | Path, warnings: list[str], slice_names: list[str] | None = None) -> np.ndarray:
    """Apply the non-finite rule to a reader's HU array before it becomes a :class:`Volume`.

    NaN and +/-inf voxels are set to air (:data:`AIR_HU`); the warning
    (:func:`describe_non_finite`) is appended to ``warnings`` (the volume's ``meta["warnings"]``,
    which ``results.json`` and ``ctlesion info`` show) and logged with ``source``.

    Args:
        hu: (Z, Y, X) HU array, any real dtype; left unchanged (a copy is changed).
        source: the file or folder read, for messages.
        warnings: the reader's warning list, appended to.
        slice_names: per z index, a name for the warning (e.g. the DICOM file); None: z indices.

    Returns:
        ``hu`` itself when every voxel is finite, else a finite copy of the same dtype and shape.

    Raises:
        CtlesionError: (naming ``source``) no voxel is finite.
    """
    warning, refusal = describe_non_finite(hu, slice_names)
    if refusal:
        raise CtlesionError(refusal, source)
    if warning is None:
        return hu
    logger.warning("%s: %s", source, warning)
    warnings.append(warning)
    return np.where(np.isfinite(hu), hu, hu.dtype.type(AIR_HU))
