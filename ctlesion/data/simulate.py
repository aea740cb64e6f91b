"""A simulated DeepLesion-style dataset: synthetic lesions inserted into real CT backgrounds.

What is simulated
-----------------
For each series, one real CT background (a :class:`~ctlesion.volume.Volume`, e.g. the
repository's ``sample_data/abdomen_ct_dicom``) is

1. cropped in-plane to a random square field of view (70-100 % of the smaller side, random
   position), optionally mirrored left-right, and resampled to ``image_size_px`` square
   (bilinear, OpenCV);
2. resampled along z to a 1 mm grid by linear interpolation over a random contiguous block
   (``ctlesion.preprocess.plan_slices``), so that series differ in content and position;
3. given 1-3 **lesions**: solid ellipsoids (long diameter 5-40 mm, short 55-100 % of it,
   z extent 60-120 % of it, random in-plane orientation) placed wholly inside the body
   (HU > -500, largest connected region per slice), at least 90 % in soft tissue
   (-150..250 HU) and clear of the other objects by half their size, with a
   contrast of +/- 20-80 HU against the median of the tissue they replace (hypo- and
   hyper-dense), homogeneous but keeping the scan's fine noise texture, and a Gaussian edge
   blur (sigma 0.5-1.5 mm);
4. given 1-2 **tube-shaped look-alikes**: elliptic cylinders of the same cross-sections and
   contrasts running through every slice of the series with a slow in-plane drift, like
   vessels. On one slice they look like lesions; only the 3-D context tells them apart.
   They are not lesions and get no DL_info row.

Each series is then written either **thin** (1 mm interval: the 1 mm slices) or **thick**
(5 mm: each slice the mean of 5 consecutive 1 mm slices, as scanners reconstruct thick
slices), half of the series each, as 16-bit PNGs in the DeepLesion layout (1-based slice
numbers), with DL_info rows (all 18 official columns). A lesion's key slice is the written
slice with its largest cross-section. Key slices are annotated completely: each gets a row
for its own lesion and for every other lesion whose section there is at least half its
largest (smaller caps of other lesions stay unannotated). On a thick slice a lesion's
annotated outline is the region covered on at least 3 of its 5 thin slices; for an
ellipsoid that is again an ellipse (a scaled copy of the central section), from which the
RECIST axes, diameters and the tight bounding box (pixels whose centres lie inside, pixel i
covering [i, i+1)) are computed exactly.
Patients (one or two studies, one series each) are assigned wholly to train / val / test
(about 70 / 15 / 15 %, at least one series each when there are >= 3 series).
``simulation.json`` beside ``DL_info.csv`` records the parameters of every series.

Limits
------
Lesions are homogeneous ellipsoids without anatomy-aware placement (they may straddle organ
boundaries), look-alikes are straight-ish cylinders, and the backgrounds are few and, where
they are thicker than 1 mm, interpolated (so thin series are smoother along z than a real
1 mm scan). ``Coarse_lesion_type`` is 7 (soft tissue) for every lesion and the z of
``Normalized_lesion_location`` is the relative position within the background scan, not
DeepLesion's body-part regression score. The data suits pipeline tests, demos and
thin-vs-thick sanity checks, not claims about clinical performance.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from ctlesion.errors import CtlesionError
from ctlesion.io import read_volume
from ctlesion.io.deeplesion import write_dl_info, write_png_hu
from ctlesion.preprocess import apply_plan, plan_slices
from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

#: The repository's own real CT background (present in a source checkout).
SAMPLE_BACKGROUND = Path(__file__).resolve().parents[2] / "sample_data" / "abdomen_ct_dicom"

THIN_INTERVAL_MM = 1.0
THICK_INTERVAL_MM = 5.0
_THIN_PER_THICK = 5
BODY_THRESHOLD_HU = -500.0
SOFT_TISSUE_HU = (-150.0, 250.0)
LESION_DIAMETER_MM = (5.0, 40.0)
TUBE_DIAMETER_MM = (5.0, 25.0)
CONTRAST_HU = (20.0, 80.0)
EDGE_SIGMA_MM = (0.5, 1.5)
_TEXTURE_SIGMA_PX = 1.5
LESION_TYPE_SOFT_TISSUE = 7
_MIN_DIAMETER_PX = 4.0
_PLACEMENT_TRIES = 40
_CLEARANCE = 1.5  # objects keep this multiple of their own size clear of earlier ones
_ANNOTATE_SCALE = 0.5  # other lesions on a key slice are annotated from this section scale on
_SOFT_FRACTION = 0.9  # least fraction of an object's voxels in the soft-tissue HU range


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid (or, with ``tube``, an elliptic cylinder along z) in the 1 mm grid.

    In-plane coordinates are output pixels (continuous, pixel i covering [i, i+1)); z is the
    1 mm slice index. ``drift_px_per_mm`` moves a tube's centre per mm of z.
    """

    centre_xyz: tuple[float, float, float]
    semi_axes_px: tuple[float, float]
    semi_axis_z_mm: float
    angle_rad: float
    tube: bool = False
    drift_px_per_mm: tuple[float, float] = (0.0, 0.0)

    def rho2(self, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
        """Squared normalised radius at voxel centres (broadcast z, y, x); <= 1 inside."""
        cx = self.centre_xyz[0] + self.drift_px_per_mm[0] * (z - self.centre_xyz[2])
        cy = self.centre_xyz[1] + self.drift_px_per_mm[1] * (z - self.centre_xyz[2])
        dx, dy = x + 0.5 - cx, y + 0.5 - cy
        cos, sin = math.cos(self.angle_rad), math.sin(self.angle_rad)
        u = (dx * cos + dy * sin) / self.semi_axes_px[0]
        v = (-dx * sin + dy * cos) / self.semi_axes_px[1]
        rho2 = u * u + v * v
        if not self.tube:
            rho2 = rho2 + ((z - self.centre_xyz[2]) / self.semi_axis_z_mm) ** 2
        return rho2

    def section_scale(self, z_mm: np.ndarray) -> np.ndarray:
        """Scale of the cross-section at slice positions z relative to the central one (0..1)."""
        t2 = 1.0 - ((np.asarray(z_mm, dtype=np.float64) - self.centre_xyz[2]) / self.semi_axis_z_mm) ** 2
        return np.sqrt(np.clip(t2, 0.0, None))


@dataclass(frozen=True)
class _SeriesPlan:
    """Random choices of one series (recorded in ``simulation.json``)."""

    patient: int
    study: int
    series: int
    split: int
    thick: bool
    background: str
    z0_mm: float
    num_thin_slices: int
    crop_xy_px: tuple[float, float]
    crop_side_mm: float
    flip: bool
    age: int
    gender: str


def _gaussian_kernel(sigma: float) -> np.ndarray:
    """Normalised 1-D Gaussian weights over +/- ceil(3 sigma) samples."""
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 * (x / max(sigma, 1e-6)) ** 2)
    return (w / w.sum()).astype(np.float32)


def _blur_3d(block: np.ndarray, sigma_z: float, sigma_yx: float) -> np.ndarray:
    """Separable Gaussian blur of a (Z, Y, X) float32 block (edges replicated)."""
    out = np.stack([cv2.GaussianBlur(s, (0, 0), sigma_yx, borderType=cv2.BORDER_REPLICATE) for s in block])
    kernel = _gaussian_kernel(sigma_z)
    radius = len(kernel) // 2
    padded = np.pad(out, ((radius, radius), (0, 0), (0, 0)), mode="edge")
    return sum(w * padded[k : k + block.shape[0]] for k, w in enumerate(kernel)).astype(np.float32)


def _body_mask(hu: np.ndarray) -> np.ndarray:
    """(Z, Y, X) bool: per slice, the largest connected region with HU > -500."""
    body = np.zeros(hu.shape, dtype=bool)
    for k, s in enumerate(hu):
        count, labels, stats, _ = cv2.connectedComponentsWithStats((s > BODY_THRESHOLD_HU).astype(np.uint8), 4)
        if count > 1:
            largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            body[k] = labels == largest
    return body


def _inplane_resampler(volume: Volume, plan: _SeriesPlan, size_px: int):
    """Function mapping a background slice index to its (S, S) float32 crop (bilinear)."""
    _, row_mm, col_mm = volume.spacing_zyx_mm
    step_x, step_y = plan.crop_side_mm / col_mm / size_px, plan.crop_side_mm / row_mm / size_px
    x0, y0 = plan.crop_xy_px
    # Inverse map: output pixel centre (u + 0.5) -> source pixel centre coordinates.
    if plan.flip:
        matrix = np.array([[-step_x, 0, x0 + plan.crop_side_mm / col_mm - 0.5 * step_x - 0.5],
                           [0, step_y, y0 + 0.5 * step_y - 0.5]])
    else:
        matrix = np.array([[step_x, 0, x0 + 0.5 * step_x - 0.5], [0, step_y, y0 + 0.5 * step_y - 0.5]])

    def resample(index: int) -> np.ndarray:
        src = np.asarray(volume.hu[index], dtype=np.float32)
        return cv2.warpAffine(src, matrix, (size_px, size_px), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REPLICATE)

    return resample


def _background_block(volume: Volume, plan: _SeriesPlan, size_px: int) -> np.ndarray:
    """The (N, S, S) float32 HU block on the 1 mm grid starting ``z0_mm`` into the background."""
    positions = (plan.z0_mm + np.arange(plan.num_thin_slices) * THIN_INTERVAL_MM) / volume.slice_interval_mm
    slice_plan = plan_slices(positions, volume.shape_zyx[0])
    return apply_plan(slice_plan, _inplane_resampler(volume, plan, size_px))


def _object_bounds(obj: _Ellipsoid, sigma_px: float, sigma_z: float, shape: tuple[int, int, int]):
    """Index slices of the block holding the object and its blurred edge."""
    num_z, height, width = shape
    if obj.tube:
        z1, z2 = 0, num_z
        drift = max(abs(obj.drift_px_per_mm[0]), abs(obj.drift_px_per_mm[1])) * num_z
    else:
        pad_z = obj.semi_axis_z_mm + 3 * sigma_z + 1
        z1, z2 = max(0, int(obj.centre_xyz[2] - pad_z)), min(num_z, int(math.ceil(obj.centre_xyz[2] + pad_z)) + 1)
        drift = 0.0
    pad = max(obj.semi_axes_px) + 3 * sigma_px + 2 + drift
    x1, x2 = max(0, int(obj.centre_xyz[0] - pad)), min(width, int(math.ceil(obj.centre_xyz[0] + pad)))
    y1, y2 = max(0, int(obj.centre_xyz[1] - pad)), min(height, int(math.ceil(obj.centre_xyz[1] + pad)))
    return slice(z1, z2), slice(y1, y2), slice(x1, x2)


def _object_mask(obj: _Ellipsoid, bounds, scale: float = 1.0) -> np.ndarray:
    """Binary mask of the object (enlarged by ``scale``) over its bounds (voxel centres inside)."""
    zs, ys, xs = bounds
    z = np.arange(zs.start, zs.stop, dtype=np.float64)[:, None, None]
    y = np.arange(ys.start, ys.stop, dtype=np.float64)[None, :, None]
    x = np.arange(xs.start, xs.stop, dtype=np.float64)[None, None, :]
    return obj.rho2(z, y, x) <= scale * scale


def _fits(obj: _Ellipsoid, body: np.ndarray, soft: np.ndarray, occupied: np.ndarray, bounds) -> bool:
    """Whether the object lies in the body, mostly (90 %) in soft tissue, away from earlier
    objects, and is not cut by the block's edges."""
    inside = _object_mask(obj, bounds)
    if not inside.any():
        return False
    if inside[:, 0].any() or inside[:, -1].any() or inside[:, :, 0].any() or inside[:, :, -1].any():
        return False
    if not obj.tube and (inside[0].any() or inside[-1].any()):
        return False
    near = _object_mask(obj, bounds, _CLEARANCE)
    return (
        bool(body[bounds][inside].all())
        and soft[bounds][inside].mean() >= _SOFT_FRACTION
        and not occupied[bounds][near].any()
    )


def _insert(hu: np.ndarray, obj: _Ellipsoid, bounds, contrast_hu: float, sigma_px: float, sigma_z: float) -> None:
    """Blend the object into ``hu`` in place with a soft edge.

    Interior: a constant level (median HU of the tissue it replaces + contrast) plus the
    background's fine texture (the in-plane high-pass ``hu - blur(hu)``, sigma 1.5 px), so the
    object is homogeneous but keeps the scan's noise.
    """
    inside = _object_mask(obj, bounds)
    block = hu[bounds]
    level_hu = float(np.median(block[inside])) + contrast_hu
    soft = _blur_3d(inside.astype(np.float32), sigma_z, sigma_px)
    texture = block - np.stack([cv2.GaussianBlur(s, (0, 0), _TEXTURE_SIGMA_PX) for s in block])
    interior = level_hu + texture
    hu[bounds] = block + soft * (interior - block)


def _place(
    rng: np.random.Generator,
    candidates: np.ndarray,
    body: np.ndarray,
    soft: np.ndarray,
    occupied: np.ndarray,
    pixel_mm: float,
    tube: bool,
) -> _Ellipsoid | None:
    """Draw an object that fits (shrinking after failures); None if none fits."""
    num_z = body.shape[0]
    low, high = TUBE_DIAMETER_MM if tube else LESION_DIAMETER_MM
    low = max(low, _MIN_DIAMETER_PX * pixel_mm)
    high = max(high, low)
    shrink = 1.0
    for attempt in range(_PLACEMENT_TRIES):
        if attempt and attempt % 10 == 0:
            shrink *= 0.75
        long_mm = max(low, rng.uniform(low, high) * shrink)
        short_mm = long_mm * rng.uniform(0.55, 1.0)
        z_mm = min(max(long_mm * rng.uniform(0.6, 1.2), 6.0), num_z - 4.0)
        cz, cy, cx = candidates[rng.integers(len(candidates))] + rng.uniform(-0.5, 0.5, 3)
        if not tube:
            cz = float(np.clip(cz, z_mm / 2 + 1, num_z - 2 - z_mm / 2))
        drift = tuple(rng.uniform(-0.25, 0.25, 2) / pixel_mm) if tube else (0.0, 0.0)
        obj = _Ellipsoid(
            centre_xyz=(float(cx), float(cy), float(cz)),
            semi_axes_px=(long_mm / 2 / pixel_mm, short_mm / 2 / pixel_mm),
            semi_axis_z_mm=z_mm / 2,
            angle_rad=float(rng.uniform(0, math.pi)),
            tube=tube,
            drift_px_per_mm=drift,
        )
        # Bounds wide enough for the clearance zone (3 sigma = (clearance - 1) x semi-axis).
        margin = (_CLEARANCE - 1.0) / 3.0
        bounds = _object_bounds(obj, margin * max(obj.semi_axes_px), margin * obj.semi_axis_z_mm, body.shape)
        if _fits(obj, body, soft, occupied, bounds):
            return obj
    return None


def _section_scales(obj: _Ellipsoid, thick: bool, num_written: int) -> np.ndarray:
    """(num_written,) scale of a lesion's section on each written slice, relative to its centre.

    Thin: the ellipsoid's section at the slice. Thick: the region covered on >= 3 of the
    slice's 5 thin slices, which for an ellipsoid is the central ellipse scaled by the median
    of the 5 thin sections' scales.
    """
    if not thick:
        return obj.section_scale(np.arange(num_written, dtype=np.float64))
    thin = obj.section_scale(np.arange(num_written * _THIN_PER_THICK, dtype=np.float64))
    return np.median(thin.reshape(num_written, _THIN_PER_THICK), axis=1)


def _annotation(obj: _Ellipsoid, scale: float, size_px: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Tight box (4,), RECIST endpoints (8,) and diameters (2,) of the scaled section, pixels."""
    a, b = obj.semi_axes_px[0] * scale, obj.semi_axes_px[1] * scale
    cx, cy = obj.centre_xyz[0], obj.centre_xyz[1]
    cos, sin = math.cos(obj.angle_rad), math.sin(obj.angle_rad)
    section = _Ellipsoid((cx, cy, 0.0), (a, b), 1.0, obj.angle_rad, tube=True)
    r = int(math.ceil(a)) + 2
    ys = np.arange(max(0, int(cy) - r), min(size_px, int(cy) + r + 1))
    xs = np.arange(max(0, int(cx) - r), min(size_px, int(cx) + r + 1))
    inside = section.rho2(np.zeros(1)[:, None, None], ys[None, :, None], xs[None, None, :])[0] <= 1.0
    if inside.sum() < 2:
        return None
    rows, cols = np.nonzero(inside)
    box = np.array([xs[cols.min()], ys[rows.min()], xs[cols.max()] + 1, ys[rows.max()] + 1], dtype=np.float64)
    recist = np.array([cx - a * cos, cy - a * sin, cx + a * cos, cy + a * sin,
                       cx + b * sin, cy - b * cos, cx - b * sin, cy + b * cos])
    return box, recist, np.array([2 * a, 2 * b])


def _assign_patients(rng: np.random.Generator, num_series: int) -> list[tuple[int, int, int]]:
    """(patient, study, split) per series: 1-2 studies per patient, whole patients per split.

    About 70 / 15 / 15 % of the patients go to train / val / test; with >= 3 patients (that
    is, >= 3 series) every split gets at least one.
    """
    num_patients = num_series if num_series <= 3 else max(3, int(math.ceil(num_series / 1.5)))
    owners = list(range(num_patients)) + rng.integers(0, num_patients, num_series - num_patients).tolist()
    order = rng.permutation(num_patients)
    num_val = num_test = max(1, int(round(0.15 * num_patients))) if num_patients >= 3 else 0
    split_of = {}
    for rank, patient in enumerate(order.tolist()):
        split_of[patient] = 2 if rank < num_val else 3 if rank < num_val + num_test else 1
    studies: dict[int, int] = {}
    out = []
    for patient in owners:
        studies[patient] = studies.get(patient, 0) + 1
        out.append((patient + 1, studies[patient], split_of[patient]))
    return out


def _plan_series(
    rng: np.random.Generator, volumes: list[Volume], names: list[str], owner: tuple[int, int, int], thick: bool
) -> tuple[_SeriesPlan, Volume]:
    """Random background, crop, flip, z-block and patient data of one series."""
    index = int(rng.integers(len(volumes)))
    volume = volumes[index]
    num_z, height, width = volume.shape_zyx
    interval_mm, row_mm, col_mm = volume.spacing_zyx_mm
    available = int(math.floor((num_z - 1) * interval_mm / THIN_INTERVAL_MM + 1e-6)) + 1
    if thick:
        num_thin = _THIN_PER_THICK * min(int(rng.integers(7, 13)), available // _THIN_PER_THICK)
    else:
        num_thin = min(int(rng.integers(32, 65)), available)
    z0_mm = float(rng.uniform(0.0, (available - num_thin) * THIN_INTERVAL_MM))
    side_mm = float(rng.uniform(0.7, 1.0) * min(height * row_mm, width * col_mm))
    x0 = float(rng.uniform(0.0, width - side_mm / col_mm))
    y0 = float(rng.uniform(0.0, height - side_mm / row_mm))
    plan = _SeriesPlan(
        patient=owner[0], study=owner[1], series=1, split=owner[2], thick=thick, background=names[index],
        z0_mm=z0_mm, num_thin_slices=num_thin, crop_xy_px=(x0, y0), crop_side_mm=side_mm,
        flip=bool(rng.random() < 0.5), age=int(rng.integers(20, 86)), gender=str(rng.choice(["F", "M"])),
    )
    return plan, volume


@dataclass(frozen=True)
class _Lesion:
    """An inserted lesion, its section scale per written slice and its key slice (0-based)."""

    shape: _Ellipsoid
    scales: np.ndarray
    key_index: int


def _object_record(obj: _Ellipsoid, contrast_hu: float, sigma_mm: float) -> dict[str, object]:
    """JSON-ready description of an inserted object (for ``simulation.json``)."""
    return dict(asdict(obj), kind="tube" if obj.tube else "lesion", contrast_hu=contrast_hu, edge_sigma_mm=sigma_mm)


def _insert_objects(
    rng: np.random.Generator, hu: np.ndarray, plan: _SeriesPlan, num_written: int, pixel_mm: float
) -> tuple[list[_Lesion], list[dict[str, object]]]:
    """Place and blend tubes (1-2) then lesions (1-3) into the 1 mm block ``hu`` in place."""
    size_px = hu.shape[-1]
    body = _body_mask(hu)
    soft = body & (hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1])
    candidates = np.argwhere(soft[:, ::4, ::4]) * np.array([1, 4, 4]) + np.array([0, 0.5, 0.5])
    if len(candidates) == 0:
        raise CtlesionError(f"no soft tissue in the chosen block of background {plan.background}")
    occupied = np.zeros(hu.shape, dtype=bool)
    lesions, records = [], []
    for tube in [True] * int(rng.integers(1, 3)) + [False] * int(rng.integers(1, 4)):
        obj = _place(rng, candidates, body, soft, occupied, pixel_mm, tube)
        if obj is None:
            continue
        if not tube:
            scales = _section_scales(obj, plan.thick, num_written)
            key_index = int(np.argmax(scales))
            if _annotation(obj, float(scales[key_index]), size_px) is None:
                continue
            lesions.append(_Lesion(obj, scales, key_index))
        sigma_mm = float(rng.uniform(*EDGE_SIGMA_MM))
        contrast_hu = float(rng.choice([-1.0, 1.0]) * rng.uniform(*CONTRAST_HU))
        bounds = _object_bounds(obj, sigma_mm / pixel_mm, sigma_mm, hu.shape)
        _insert(hu, obj, bounds, contrast_hu, sigma_mm / pixel_mm, sigma_mm)
        occupied[bounds] |= _object_mask(obj, bounds)
        records.append(_object_record(obj, contrast_hu, sigma_mm))
    if not lesions:
        raise CtlesionError(f"could not place a lesion in background {plan.background} (body too small?)")
    return lesions, records


def _key_slice_annotations(lesions: list[_Lesion], size_px: int) -> list[tuple[int, _Lesion, tuple]]:
    """(key index, lesion, (box, recist, diameters)) for every lesion shown on every key slice.

    A key slice is annotated completely: besides the lesion whose largest section it holds,
    every other lesion whose section there is at least half its largest one gets a row too.
    """
    out = []
    for key_index in sorted({lesion.key_index for lesion in lesions}):
        for lesion in lesions:
            scale = float(lesion.scales[key_index])
            if lesion.key_index != key_index and scale < _ANNOTATE_SCALE * float(lesion.scales.max()):
                continue
            annotation = _annotation(lesion.shape, scale, size_px)
            if annotation is not None:
                out.append((key_index, lesion, annotation))
    return out


def _lesion_row(
    key_index: int, lesion: _Lesion, annotation: tuple, plan: _SeriesPlan, series_name: str, num_written: int,
    pixel_mm: float, size_px: int, background_extent_mm: float,
) -> dict[str, object]:
    """The 18-column DL_info row of one simulated lesion on one key slice."""
    box, recist, diameters = annotation
    interval = THICK_INTERVAL_MM if plan.thick else THIN_INTERVAL_MM
    # Centre of the key slice's thin slices, mm from the background's first slice.
    key_z_mm = plan.z0_mm + (key_index + 0.5) * interval - 0.5 * THIN_INTERVAL_MM
    return {
        "File_name": f"{series_name}_{key_index + 1:03d}.png",
        "Patient_index": plan.patient,
        "Study_index": plan.study,
        "Series_ID": plan.series,
        "Key_slice_index": key_index + 1,
        "Measurement_coordinates": recist,
        "Bounding_boxes": box,
        "Lesion_diameters_Pixel_": diameters,
        "Normalized_lesion_location": [lesion.shape.centre_xyz[0] / size_px, lesion.shape.centre_xyz[1] / size_px,
                                       key_z_mm / background_extent_mm],
        "Coarse_lesion_type": LESION_TYPE_SOFT_TISSUE,
        "Possibly_noisy": 0,
        "Slice_range": [1, num_written],
        "Spacing_mm_px_": [pixel_mm, pixel_mm, interval],
        "Image_size": [size_px, size_px],
        "DICOM_windows": [-175, 275],
        "Patient_gender": plan.gender,
        "Patient_age": plan.age,
        "Train_Val_Test": plan.split,
    }


def _simulate_series(
    rng: np.random.Generator, plan: _SeriesPlan, volume: Volume, images_dir: Path, size_px: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Build, write and annotate one series; returns its DL_info rows and object records."""
    pixel_mm = plan.crop_side_mm / size_px
    num_written = plan.num_thin_slices // (_THIN_PER_THICK if plan.thick else 1)
    hu = _background_block(volume, plan, size_px)
    lesions, records = _insert_objects(rng, hu, plan, num_written, pixel_mm)
    if plan.thick:
        hu = hu.reshape(num_written, _THIN_PER_THICK, size_px, size_px).mean(axis=1)
    series_dir = images_dir / f"{plan.patient:06d}_{plan.study:02d}_{plan.series:02d}"
    for k in range(num_written):
        write_png_hu(series_dir / f"{k + 1:03d}.png", hu[k])
    extent_mm = (volume.shape_zyx[0] - 1) * volume.slice_interval_mm
    rows = [
        _lesion_row(key_index, lesion, annotation, plan, series_dir.name, num_written, pixel_mm, size_px, extent_mm)
        for key_index, lesion, annotation in _key_slice_annotations(lesions, size_px)
    ]
    return rows, records


def simulate_from_volumes(
    out_dir: Path,
    volumes: list[Volume],
    *,
    num_series: int,
    image_size_px: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a simulated DeepLesion-style dataset from background volumes (see module doc).

    Args:
        out_dir: output folder; ``DL_info.csv``, ``simulation.json`` and ``Images_png/`` are
            written.
        volumes: real CT backgrounds (HU), each at least 5 mm long along z.
        num_series: number of series (each with 1-3 lesions).
        image_size_px: side of the square output slices, pixels (>= 64).
        seed: random seed; the same seed and inputs give the same bytes.
        overwrite: replace an existing ``Images_png/`` in ``out_dir`` (stale slices left in
            it would otherwise become neighbours of the new ones).

    Returns:
        Path of the written ``DL_info.csv``.

    Raises:
        CtlesionError: for no or too-short backgrounds, a non-positive ``num_series``, or an
            existing ``Images_png/`` without ``overwrite``.
    """
    out_dir = Path(out_dir)
    images_dir = out_dir / "Images_png"
    if images_dir.exists() and any(images_dir.iterdir()):
        if not overwrite:
            raise CtlesionError("already holds an Images_png folder; use an empty folder or overwrite", out_dir)
        shutil.rmtree(images_dir)
    if not volumes:
        raise CtlesionError("no background CT volumes given for the simulation", out_dir)
    if num_series < 1 or image_size_px < 64:
        raise CtlesionError(f"need num_series >= 1 and image_size_px >= 64, got {num_series}, {image_size_px}")
    for volume in volumes:
        if (volume.shape_zyx[0] - 1) * volume.slice_interval_mm < _THIN_PER_THICK * THIN_INTERVAL_MM:
            raise CtlesionError("background CT is too short along z for the simulation (< 5 mm)", volume.source)
    names = [Path(v.source).name or f"background_{i}" for i, v in enumerate(volumes)]
    master = np.random.default_rng(seed)
    owners = _assign_patients(master, num_series)
    thick_flags = master.permutation(np.arange(num_series) % 2 == 1).tolist()
    series_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_series)]
    rows, plans = [], []
    for i in range(num_series):
        plan, volume = _plan_series(series_rngs[i], volumes, names, owners[i], bool(thick_flags[i]))
        series_rows, records = _simulate_series(series_rngs[i], plan, volume, images_dir, image_size_px)
        rows.extend(series_rows)
        plans.append(dict(asdict(plan), objects=records))
        logger.debug("simulated series %d/%d (%s)", i + 1, num_series, plan.background)
    csv_path = out_dir / "DL_info.csv"
    write_dl_info(csv_path, rows)
    manifest = {"seed": seed, "num_series": num_series, "image_size_px": image_size_px,
                "backgrounds": names, "series": plans}
    (out_dir / "simulation.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    logger.info("simulated %d series with %d lesion annotations in %s", num_series, len(rows), out_dir)
    return csv_path


def simulate_dataset(
    out_dir: Path,
    *,
    backgrounds: list[Path],
    num_series: int,
    image_size_px: int = 512,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Read real CT backgrounds and write a simulated DeepLesion-style dataset (module doc).

    Args:
        out_dir: output folder (``DL_info.csv``, ``simulation.json``, ``Images_png/``).
        backgrounds: DICOM series folders or NIfTI files of real CT (read with
            :func:`ctlesion.io.read_volume`); :data:`SAMPLE_BACKGROUND` is the repository's own.
        num_series: number of series to write.
        image_size_px: side of the square output slices, pixels.
        seed: random seed (deterministic output).
        overwrite: replace an existing ``Images_png/`` in ``out_dir``.

    Returns:
        Path of the written ``DL_info.csv``.

    Raises:
        CtlesionError: if a background cannot be read or is unsuitable, or ``out_dir`` already
            holds ``Images_png/`` without ``overwrite``.
    """
    volumes = [read_volume(Path(p)) for p in backgrounds]
    return simulate_from_volumes(
        out_dir, volumes, num_series=num_series, image_size_px=image_size_px, seed=seed, overwrite=overwrite
    )
