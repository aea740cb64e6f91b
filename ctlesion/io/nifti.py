"""Read and write NIfTI volumes (nibabel), converting between NIfTI's RAS world and LPS.

NIfTI world coordinates are RAS (x to the patient's Right -> Left is negative, ...); ctlesion
keeps LPS inside (SPEC section 3), so the affine's x and y rows are negated at this edge:
``affine_lps = diag(-1, -1, 1, 1) @ affine_ras`` (the same matrix converts back).

On reading, the array is reoriented (axis permutation and flips, with the affine changed to
match, so every voxel keeps its exact LPS position) to the DICOM-like orientation: array axes
(z, y, x) with x increasing towards the patient's Left, y towards Posterior and z towards
Superior, z being the voxel axis closest to the superior-inferior direction. Slices then look
like DICOM axial images (anterior at the top, the patient's right on the image's left), which
is what the detector was trained on.
"""

from __future__ import annotations

import gzip
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from ctlesion.atomic import atomic_write_bytes
from ctlesion.errors import CtlesionError
from ctlesion.io.series import Discovery, SeriesInfo
from ctlesion.volume import Volume, describe_non_finite, finite_hu

logger = logging.getLogger(__name__)

#: Converts an affine between RAS and LPS world coordinates (it is its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Largest difference (mm, per affine element) between sform and qform that is not reported.
FORM_TOLERANCE_MM = 1e-3
#: Voxel axis directions of the array ``read_nifti`` returns, as nibabel axis codes (x, y, z).
_LPS_AXCODES = ("L", "P", "S")


def is_nifti_path(path: Path) -> bool:
    """True when the file name ends in ``.nii`` or ``.nii.gz`` (case-insensitive)."""
    name = Path(path).name.lower()
    return name.endswith((".nii", ".nii.gz"))


def read_nifti(path: Path) -> Volume:
    """Read a 3-D NIfTI CT volume (values taken as HU) in LPS, array axes (z, y, x).

    The scaled data (``scl_slope`` / ``scl_inter`` applied by nibabel) are reoriented to the
    DICOM-like axis order (x -> Left, y -> Posterior, z -> Superior; see the module docstring);
    the affine is permuted/flipped with the data, so ``Volume.voxel_to_lps`` of a reoriented voxel
    equals ``diag(-1, -1, 1) @ (affine_ras @ ijk)`` of the same voxel in the file. The affine is
    nibabel's choice (sform if its code is set, else qform, else the pixdim fallback).
    Trailing singleton dimensions (X, Y, Z, 1) are dropped. Non-finite values (NaN, +/-inf, also
    those the scaling makes beyond the float32 range) are set to air (-1024 HU) with a warning
    (:func:`~ctlesion.volume.finite_hu`).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.

    Returns:
        Volume with ``hu`` (Z, Y, X) int16 when the values are integers within the int16 range
        (any integer width or integral floats), else float32; ``spacing_zyx_mm`` from the affine's
        column norms; ``meta``: ``slice_thickness_mm`` None (NIfTI has no thickness),
        ``modality`` None, ``warnings`` (list[str]: sform and qform disagree, no sform/qform,
        non-finite voxels set to air),
        ``skipped`` [], ``nifti_dtype`` (the stored data type), ``orientation_in_file`` (nibabel
        axis codes of the file, e.g. "RAS").

    Raises:
        CtlesionError: (naming the file) it does not exist or cannot be read, is not NIfTI, is not
            3-D (e.g. 4-D), has an unsupported data type or a degenerate affine, or has no finite
            voxel.
    """
    path = Path(path)
    image, shape, warnings = _open(path)
    transform, affine_lps, spacing_xyz_mm = _lps_geometry(image, shape, path)
    hu = finite_hu(_hu_zyx(image, shape, transform, path), path, warnings)

    volume = Volume(
        hu=hu,
        spacing_zyx_mm=tuple(spacing_xyz_mm[::-1]),
        origin_lps_mm=tuple(affine_lps[:3, 3]),
        direction_lps=affine_lps[:3, :3] / spacing_xyz_mm,
        source=str(path),
        meta={
            "slice_thickness_mm": None,
            "modality": None,
            "warnings": warnings,
            "skipped": [],
            "nifti_dtype": str(image.get_data_dtype()),
            "orientation_in_file": "".join(nib.aff2axcodes(image.affine)),
        },
    )
    logger.info(
        "%s: read %d x %d x %d voxels (z, y, x), spacing %s mm, %s (file orientation %s)",
        path,
        *volume.shape_zyx,
        tuple(round(s, 3) for s in volume.spacing_zyx_mm),
        volume.hu.dtype,
        volume.meta["orientation_in_file"],
    )
    return volume


def describe_nifti(path: Path, *, scan_values: bool = False) -> Discovery:
    """Describe a NIfTI file as a one-series :class:`~ctlesion.io.series.Discovery` (header only,
    unless ``scan_values``).

    The geometry is that :func:`read_nifti` gives (after reorientation to z = slice axis): rows,
    columns and pixel spacing of the (Y, X) axes, the slice interval = z spacing, z extent =
    (Z - 1) * interval; the "gantry tilt" is the angle between the z axis and the normal of the
    x and y axes (0 unless the affine is sheared). NIfTI has no SliceThickness, modality or UIDs.

    Non-finite voxels are only known from the data: with ``scan_values`` (``ctlesion info``) the
    data block is read when its values can be non-finite (a float data type, or any type scaled
    by ``scl_slope`` / ``scl_inter``; plain integers cannot), and the series gets
    :func:`read_nifti`'s warning about them, or is marked unreadable when no voxel is finite.
    ``detect`` does not scan (it reads the data once, later, and applies the same rule).

    Args:
        path: a ``.nii`` or ``.nii.gz`` file.
        scan_values: read the data block (see above) to report non-finite voxels.

    Returns:
        Discovery with one series (description = the whole file name), selected unless the scan
        found no finite voxel, and nothing skipped.

    Raises:
        CtlesionError: as :func:`read_nifti`, except errors in the data block when it is not
            read (without ``scan_values``, or for a plain integer type).
    """
    path = Path(path)
    image, shape, warnings = _open(path)
    transform, affine_lps, spacing_xyz_mm = _lps_geometry(image, shape, path)
    unreadable = None
    if scan_values and _may_be_non_finite(image):
        warning, unreadable = describe_non_finite(_hu_zyx(image, shape, transform, path))
        if warning:
            logger.warning("%s: %s", path, warning)
            warnings.append(warning)
        if unreadable:
            warnings.append(unreadable)
    size_xyz = [0, 0, 0]
    for axis, new_axis in enumerate(transform[:, 0].astype(int)):  # file axis -> reoriented axis
        size_xyz[new_axis] = shape[axis]
    columns, rows, num_slices = size_xyz
    axes = affine_lps[:3, :3] / spacing_xyz_mm
    normal = np.cross(axes[:, 0], axes[:, 1])
    cos_tilt = abs(float(normal @ axes[:, 2])) / float(np.linalg.norm(normal))
    info = SeriesInfo(
        index=0,
        series_uid="",
        series_number=None,
        description=path.name,
        modality="",
        image_type=(),
        num_slices=num_slices,
        num_images=num_slices,
        rows=rows,
        columns=columns,
        pixel_spacing_mm=(float(spacing_xyz_mm[1]), float(spacing_xyz_mm[0])),
        slice_interval_mm=float(spacing_xyz_mm[2]),
        slice_thickness_mm=None,
        z_extent_mm=float((num_slices - 1) * spacing_xyz_mm[2]),
        gantry_tilt_deg=float(np.degrees(np.arccos(min(cos_tilt, 1.0)))),
        warnings=tuple(warnings),
        unreadable=unreadable,
        selectable=unreadable is None,
        selected=unreadable is None,
        selection="a NIfTI file holds one volume" if unreadable is None else f"not selectable: {unreadable}",
        folder=str(path.parent),
    )
    return Discovery(path=str(path), series=(info,), skipped=(), warnings=(), num_files=1)


def _open(path: Path) -> tuple[nib.Nifti1Image, tuple[int, int, int], list[str]]:
    """Load the header (data stays on disk): the image, its 3-D shape and sform/qform warnings."""
    if not path.is_file():
        raise CtlesionError("does not exist" if not path.exists() else "is not a file", path)
    try:
        image = nib.load(path)
    except Exception as error:  # nibabel raises many types on bad files
        raise CtlesionError(f"cannot read NIfTI file ({_one_line(error)})", path) from error
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise CtlesionError(f"not a NIfTI image ({type(image).__name__})", path)
    shape = _spatial_shape(image.shape, path)
    return image, shape, _affine_warnings(image, path)


def _lps_geometry(image: nib.Nifti1Image, shape: tuple[int, int, int], path: Path):
    """(orientation transform to L, P, S axes, reoriented LPS affine, voxel sizes (x, y, z) mm)."""
    affine_ras = image.affine
    if not np.all(np.isfinite(affine_ras)):
        raise CtlesionError("degenerate affine (not finite)", path)
    transform = ornt_transform(io_orientation(affine_ras), axcodes2ornt(_LPS_AXCODES))
    affine_lps = RAS_TO_LPS @ affine_ras @ inv_ornt_aff(transform, shape)
    spacing_xyz_mm = np.linalg.norm(affine_lps[:3, :3], axis=0)
    if not np.all(spacing_xyz_mm > 0):
        raise CtlesionError(f"degenerate affine (voxel sizes {spacing_xyz_mm.tolist()} mm)", path)
    return transform, affine_lps, spacing_xyz_mm


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3-D shape, accepting trailing singleton dimensions; anything else is an error."""
    if len(shape) < 3 or any(n != 1 for n in shape[3:]):
        raise CtlesionError(f"image has shape {tuple(shape)}; a 3-D CT volume is needed (not 2-D or 4-D)", path)
    return tuple(int(n) for n in shape[:3])  # type: ignore[return-value]


def _affine_warnings(image: nib.Nifti1Image, path: Path) -> list[str]:
    """Warnings about the header's spatial transforms (sform/qform)."""
    warnings = []
    sform, sform_code = image.header.get_sform(coded=True)
    qform, qform_code = image.header.get_qform(coded=True)
    if sform is not None and qform is not None:
        difference = float(np.max(np.abs(sform - qform)))
        if difference > FORM_TOLERANCE_MM:
            warnings.append(
                f"sform (code {int(sform_code)}) and qform (code {int(qform_code)}) disagree (largest affine "
                f"difference {difference:.3g}); the sform is used"
            )
    elif sform is None and qform is None:
        warnings.append("neither sform nor qform is set; the voxel-size-only fallback affine is used (orientation unknown)")
    for message in warnings:
        logger.warning("%s: %s", path, message)
    return warnings


def _may_be_non_finite(image: nib.Nifti1Image) -> bool:
    """A float data type, or values scaled by scl_slope / scl_inter (which may leave float32's range)."""
    slope, inter = getattr(image.dataobj, "slope", 1.0), getattr(image.dataobj, "inter", 0.0)
    return np.dtype(image.get_data_dtype()).kind not in "iub" or slope != 1.0 or inter != 0.0


def _hu_zyx(image: nib.Nifti1Image, shape: tuple[int, int, int], transform: np.ndarray, path: Path) -> np.ndarray:
    """The scaled data as a C-contiguous (Z, Y, X) HU array in the L, P, S axis order (see :func:`read_nifti`)."""
    try:
        data = np.asanyarray(image.dataobj).reshape(shape)
    except Exception as error:  # gzip/zlib/EOF errors on truncated files
        raise CtlesionError(f"cannot read the NIfTI data (truncated or corrupt file?): {_one_line(error)}", path) from error
    hu_xyz = apply_orientation(_hu_array(data, path), transform)
    return np.ascontiguousarray(hu_xyz.transpose(2, 1, 0))


def _hu_array(data: np.ndarray, path: Path) -> np.ndarray:
    """int16 when the values are integers in the int16 range, else float32 (values beyond its range
    become +/-inf, which the reader's non-finite rule then handles)."""
    int16 = np.iinfo(np.int16)
    if data.dtype.kind in "iu":
        if data.size == 0 or (int16.min <= data.min() and data.max() <= int16.max):
            return data.astype(np.int16, copy=False)
        return data.astype(np.float32)
    if data.dtype.kind == "f":
        if (
            np.all(np.isfinite(data))
            and int16.min <= data.min()
            and data.max() <= int16.max
            and np.array_equal(data, np.round(data))
        ):
            return data.astype(np.int16)
        with np.errstate(over="ignore"):  # beyond float32: inf, reported by finite_hu
            return data.astype(np.float32, copy=False)
    raise CtlesionError(f"unsupported NIfTI data type {data.dtype} for a CT volume", path)


def write_nifti(array_zyx: np.ndarray, reference: Volume, path: Path) -> None:
    """Write an array with exactly the reference volume's geometry as a NIfTI-1 file.

    The RAS affine is ``diag(-1, -1, 1, 1) @ reference.affine_lps`` (array axis x -> NIfTI i,
    y -> j, z -> k), stored in both sform and qform with code 1 (scanner). The data type is kept
    (uint8, uint16, int16, int32, float32, float64); bool is written as uint8, and int64/uint64 as
    the smallest of int16/int32 that holds the values. The file is gzip-compressed when the name
    ends in ``.nii.gz``, and written atomically (temporary file in the same folder, then
    ``os.replace``). Used for label maps (one integer label per lesion) and volume exports.

    Args:
        array_zyx: (Z, Y, X) array, the shape of ``reference.hu``.
        reference: volume whose geometry (``affine_lps``) the file gets.
        path: output file, ``.nii`` or ``.nii.gz``.

    Raises:
        ValueError: the array shape differs from the reference's, or int64 values do not fit
            in int32.
        CtlesionError: (naming the file) the name does not end in .nii/.nii.gz, the folder does
            not exist, or the file cannot be written.
    """
    path = Path(path)
    array = np.asarray(array_zyx)
    if array.shape != reference.shape_zyx:
        raise ValueError(f"array shape {array.shape} differs from the reference volume's {reference.shape_zyx}")
    if not is_nifti_path(path):
        raise CtlesionError("output name must end in .nii or .nii.gz", path)
    if not path.parent.is_dir():
        raise CtlesionError(f"output folder {path.parent} does not exist", path)

    array = _storable(array)
    affine_ras = RAS_TO_LPS @ reference.affine_lps
    image = nib.Nifti1Image(array.transpose(2, 1, 0), affine_ras)
    image.header.set_data_dtype(array.dtype)
    image.header.set_xyzt_units("mm")
    image.set_sform(affine_ras, code="scanner")
    image.set_qform(affine_ras, code="scanner")

    data = image.to_bytes()
    if path.name.lower().endswith(".nii.gz"):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    try:
        atomic_write_bytes(path, data)
    except OSError as error:
        raise CtlesionError(f"cannot write NIfTI file ({error.strerror or error})", path) from error
    logger.debug("%s: wrote %d x %d x %d voxels (z, y, x), %s", path, *array.shape, array.dtype)


def _storable(array: np.ndarray) -> np.ndarray:
    """The array in a NIfTI-1 data type that every viewer reads (bool and 64-bit ints narrowed)."""
    if array.dtype == np.bool_:
        return array.astype(np.uint8)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        for dtype in (np.int16, np.int32):
            info = np.iinfo(dtype)
            if array.size == 0 or (info.min <= array.min() and array.max() <= info.max):
                return array.astype(dtype)
        raise ValueError(f"{array.dtype} values from {array.min()} to {array.max()} do not fit in int32")
    return array
