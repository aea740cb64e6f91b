"""A simulated DeepLesion-style dataset: realistic synthetic lesions inserted into real CT.

What is simulated
-----------------
Backgrounds are real CT volumes (:mod:`ctlesion.data.backgrounds`: by default every real CT of
``../shared/data``, split by patient into train / val / test; the shipped sample series alone
without it). Each background gets a tissue map (:mod:`ctlesion.data.anatomy`: organ masks where
they exist, HU and connectivity rules elsewhere). For each series, the chosen background is

1. **cropped and resampled in-plane** to ``image_size_px`` square (bilinear; the tissue map by
   nearest neighbour): a random square field of view of 75-100 % of the background's smaller
   side or, where the body lies wholly within the background's image, a field of view of
   320-480 mm (DeepLesion's: 512 pixels of 0.6-0.95 mm) centred on it with air around, turned
   by a small rotation (uniform within +/- :data:`ROTATION_DEG` degrees) about its
   centre. The anatomy is **never mirrored** (the patient's right stays on the image's left,
   the liver on the image's left for a standard axial scan). A random **scale** s in
   :data:`SCALE_RANGE` makes the patient s times larger: the written pixel spacing is the
   source field of view x s / size and each 1 mm step of the series is 1/s mm of the
   background;
2. **resampled along z** to a 1 mm grid by linear interpolation over a random contiguous block
   (48-96 mm thin, 50-100 mm thick), clear of any z range the background asks to avoid (a
   block in which no lesion fits is drawn again, up to 10 times);
3. given 1-4 **lesions** (:mod:`ctlesion.data.lesion_synthesis`): a coarse type among those
   whose placement region (:func:`ctlesion.data.anatomy.lesion_regions`) the block holds, drawn
   with DeepLesion's type frequencies divided by the fraction of the dataset's series whose
   background offers the type (so that, over the dataset, the mix comes near DeepLesion's even
   though only a few backgrounds have a liver mask or a pelvis; ``type_weights`` in
   ``simulation.json``); a kind, long diameter, deformed shape and appearance of
   that type. A lesion is **placed** with its centre in its type's region and wholly inside its
   type's compartment (:func:`ctlesion.data.anatomy.lesion_compartments`: the organ for bone,
   liver, lung and kidney lesions, loose tissue for nodes and masses: fat inside the muscle wall
   and unlabelled soft tissue thinner than 8 mm, never subcutaneous fat nor the bulk soft
   tissue of an unlabelled organ, muscle, bowel loop or large vessel,
   :mod:`ctlesion.data.anatomy`): every voxel within 1 mm
   of its surface lies in the compartment (the compartment eroded by the lesion, checked voxel
   by voxel on its actual shape), so it never straddles an organ's border and keeps clear of
   vessels, gas, other organs and bone (all outside the compartments); lymph nodes and masses
   of types 2, 3 and
   8 also replace at least 30 % fat (they sit in fat); lesions keep 3 mm from each other and
   from the block's edges. Up to 40 positions and 3 sizes are tried (the third 0.6 x its draw),
   so tight regions get smaller lesions: the drawn sizes follow DeepLesion's distribution, the
   placed ones are smaller (median about 14 mm instead of 19 mm over the default set; each
   lesion's ``drawn_long_mm`` in ``simulation.json`` is the size it was placed with). The host HU is the median of the
   tissue the lesion replaces;
4. **blended** into the 1 mm block: inside a lesion the background is replaced by its level map
   (texture included) plus the scanner's own noise, taken from the same block (the high-pass
   residual ``hu - blur(hu)`` of a homogeneous soft-tissue patch of the same slices; synthetic
   correlated noise of the same standard deviation where no patch is large enough); ground
   glass is added to the lung instead. Where the background is coarser than the 1 mm grid or
   the output pixels (its slices thicker than 1 mm, its pixels larger), the lesion's edges and
   texture are blurred to the background's resolution (Gaussian, FWHM = the background's slice
   interval along z and pixel size in-plane), so a lesion is as sharp as the anatomy around it.

Each series is then written **thin** (1 mm interval: the 1 mm slices) or **thick** (5 mm: each
slice the mean of 5 consecutive 1 mm slices, as scanners reconstruct thick slices, which gives
the partial-volume blur of thick slices), as 16-bit PNGs in the DeepLesion layout (1-based slice
numbers) or as NIfTI volumes in the nnU-Net layout (below). Backgrounds take turns (the first
turns go to one background of each split, so even a few series cover train, val and test), and
each one's series alternate thin and thick.

Annotations
-----------
A lesion's **true mask** on a written slice is where its (resolution-blurred) occupancy is at
least 0.5 (on a thick slice: its mean over the 5 thin slices). Its key slice is the written
slice with the largest mask; a lesion whose largest mask is under 7 mm2 (a 3 mm disc: a small
lesion averaged into a thick slice) is not inserted at all. Key slices are annotated
completely: besides the lesion whose
largest section it holds, every other lesion whose section there is at least half its largest
(in linear size) gets a row too. Each row (all 18 DL_info columns) is measured on the mask:
``Measurement_coordinates`` and ``Lesion_diameters_Pixel_`` are the RECIST long axis (maximum
Feret diameter) and the longest perpendicular chord (:func:`ctlesion.postprocess.recist_axes`),
``Bounding_boxes`` is DeepLesion's box of those endpoints (their extent widened by 5 pixels on
every side, :func:`ctlesion.io.deeplesion.recist_box`; earlier sets held the mask's tight box,
which taught models boxes about 10 pixels narrower than DeepLesion's, so that a real 15 mm
lesion found at the right place scored IoU < 0.5), ``Coarse_lesion_type`` the lesion's type,
``DICOM_windows`` the type's usual window (lung and bone: -1500, 500).

**Mask files.** Beside ``Images_png/``, ``masks/<patient>_<study>_<series>/<slice:03d>.npz``
holds each key slice's true masks: a compressed NumPy archive with one array ``masks`` of
shape (N, Y, X), dtype bool, N = the DL_info rows of that key slice in their order in the CSV
(``File_name`` ``<series>_<slice:03d>.png``). They can replace GrabCut pseudo-masks in training.

nnU-Net layout
--------------
With ``layout="nnunet"`` the same series (same seed, same slices and lesions) are written as an
nnU-Net v2 raw dataset instead (:mod:`ctlesion.io.nnunet_raw`; read by
:mod:`ctlesion.io.masked_datasets`): each series is a case whose id is its DeepLesion folder name
``<patient>_<study>_<series>``, with ``imagesTr/<case>_0000.nii.gz`` (HU, int16, the written
slices: 1 mm thin or 5 mm thick) and ``labelsTr/<case>.nii.gz`` (uint8, 1 = lesion) on exactly its
grid for the train and val series, ``imagesTs/`` and ``labelsTs/`` for the test series. The label
map holds every lesion's **3D true mask**: a voxel is lesion where the lesion's occupancy is at
least 0.5, on a thick slice its mean over the slab's 5 thin slices (the rule of the key-slice
masks, applied to every slice). Lesions keep 3 mm from each other, so each is normally its own
3D connected component (26-connectivity); a series whose lesions touch on its grid (possible
with coarse pixels or thick slices) is recorded with ``lesions_apart`` false and a warning.
``dataset.json`` (labels ``background`` 0, ``lesion`` 1; name, description with the seed and
the backgrounds; ``numTest``, ``seed``, ``backgrounds``, ``slice_intervals_mm``, ``label_rule``
besides nnU-Net's keys), ``splits_final.json`` (one fold: the train series' cases in ``train``,
the val series' in ``val``; nnU-Net reads it from its preprocessed folder, so copy it there) and
``simulation.json`` (with ``"layout": "nnunet"`` and, per series, ``case_id`` and
``lesions_apart``) are written beside them. Geometry: spacing (interval, pixel, pixel) mm; axes
those of the background (LPS; the small rotation and the scale are the synthetic patient's pose
and size, not the grid's); the first slice's centre pixel lies at the background's LPS position
of the field of view's centre at that slice (the slab's centre for a thick series), so positions
away from it are the synthetic patient's, not the background's.

Splits: patients (backgrounds of one patient) go wholly to train / val / test
(:func:`ctlesion.data.backgrounds.assign_splits`); each series of a patient is a study of it.
With fewer than 3 patients (e.g. the sample series alone) synthetic patients are split instead
(one or two series each, about 70 / 15 / 15 %), so the splits then share the background's
anatomy (a warning says so). ``simulation.json`` beside ``DL_info.csv`` records the background
set with its patients and splits, and every series' choices and lesions.

The dataset is written into a hidden staging folder inside the output folder and moved into
place only when all of it is written (:func:`ctlesion.atomic.staged_outputs`): a failed or
interrupted run leaves nothing half-written, and a dataset being replaced (``overwrite``) is
removed only then.

Limits
------
The anatomy is that of the few backgrounds; liver and kidney lesions need organ masks; no mass
effect (tissue around a lesion is not displaced) and no contrast phase dynamics (the lesion's
level is set relative to the host's HU); the z of ``Normalized_lesion_location`` is the
relative position within the background scan, not DeepLesion's body-part score.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import math
import multiprocessing
import shutil
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ctlesion.atomic import staged_outputs
from ctlesion.choices import SIMULATION_LAYOUTS, SPLITS
from ctlesion.data import anatomy
from ctlesion.data.anatomy import (
    NODE_TYPES,
    TissueMap,
    align_labels,
    lesion_compartments,
    lesion_regions,
    tissue_map,
)
from ctlesion.data.backgrounds import (
    ALL_TYPES,
    SAMPLE_BACKGROUND,
    BackgroundSource,
    assign_splits,
    backgrounds_in_folder,
    read_background_list,
    default_backgrounds,
    describe,
    round_robin,
    with_conventional_masks,
    with_masks,
)
from ctlesion.data.lesion_synthesis import (
    DICOM_WINDOWS,
    LONG_DIAMETER_RANGE_MM,
    TYPE_COUNTS,
    Appearance,
    LesionShape,
    RenderedLesion,
    correlated_noise,
    draw_appearance,
    draw_kind,
    draw_long_diameter_mm,
    draw_shape,
    draw_type,
    gaussian_blur_z,
    lesion_box,
    offsets_mm,
    render_lesion,
)
from ctlesion.data.mask_cache import TRUE_MASKS_DIRNAME
from ctlesion.errors import CtlesionError
from ctlesion.io import read_volume
from ctlesion.io.deeplesion import recist_box, write_dl_info, write_png_hu
from ctlesion.io.masked_datasets import connected_components
from ctlesion.io.nnunet_raw import write_case, write_dataset_json, write_splits_final
from ctlesion.postprocess import recist_axes
from ctlesion.preprocess import apply_plan, plan_slices
from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

__all__ = ["MASKS_DIR", "NNUNET_LABELS", "SAMPLE_BACKGROUND", "default_backgrounds", "read_key_slice_masks",
           "simulate_dataset", "simulate_from_volumes"]

THIN_INTERVAL_MM = 1.0
THICK_INTERVAL_MM = 5.0
_THIN_PER_THICK = 5
THIN_SLICES = (48, 96)
THICK_SLICES = (10, 20)
FOV_FRACTION = (0.75, 1.0)
FOV_MM = (320.0, 480.0)
AIR_HU = -1024.0
ROTATION_DEG = 5.0
SCALE_RANGE = (0.9, 1.1)
LESIONS_PER_SERIES = (1, 4)
NODE_FAT_FRACTION = 0.3
#: Folder of the true key-slice masks, beside Images_png (the name the training reader looks for).
MASKS_DIR = TRUE_MASKS_DIRNAME
_FOOTPRINT_MM = 1.0  # every voxel within this distance of the surface lies in the region
_CLEARANCE_MM = 3.0  # lesions keep this far from each other
_POSITION_TRIES = 40
_SIZE_TRIES = 3
_LAST_SIZE_FACTOR = 0.6  # the last size tried is 0.6 x a fresh draw
_ANNOTATE_SCALE = 0.5
_MIN_KEY_AREA_PX = 3
_MIN_KEY_AREA_MM2 = 7.0  # a 3 mm disc: DeepLesion's smallest lesions (5th percentile of lung: 3.2 mm)
_HIGH_PASS_SIGMA_PX = 1.5
_FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))
_NOISE_TISSUES = (anatomy.SOFT, anatomy.BULK, anatomy.LIVER, anatomy.SPLEEN)
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)
_SERIES_TRIES = 10  # fields of view tried per series until a lesion fits
#: Labels of the nnU-Net layout's label maps.
NNUNET_LABELS = {"background": 0, "lesion": 1}
# Per layout: what it writes into the output folder (replaced with ``overwrite``) ...
_LAYOUT_OUTPUTS = {"deeplesion": ("Images_png", MASKS_DIR),
                   "nnunet": ("dataset.json", "imagesTr", "labelsTr", "imagesTs", "labelsTs")}
# ... and what marks a dataset of that layout (never replaced by the other layout).
_LAYOUT_MARKERS = {"deeplesion": ("DL_info.csv", "Images_png"), "nnunet": ("dataset.json", "imagesTr")}


class _NothingFits(Exception):
    """No lesion could be placed in a series' block (another field of view is tried)."""


@dataclass(frozen=True)
class SeriesPlan:
    """Random choices of one series (recorded in ``simulation.json``).

    In-plane, ``crop_centre_xy_px`` is the centre of the field of view in the background's
    continuous pixel coordinates and ``crop_side_mm`` its side in the background's millimetres;
    ``z0_mm`` is the first thin slice's distance from the background's first slice (background
    mm); ``pixel_mm`` the written pixel spacing (``crop_side_mm * scale / size``).
    """

    patient: int
    study: int
    series: int
    split: int
    thick: bool
    background: str
    z0_mm: float
    num_thin_slices: int
    crop_centre_xy_px: tuple[float, float]
    crop_side_mm: float
    rotation_deg: float
    scale: float
    pixel_mm: float
    age: int
    gender: str

    @property
    def name(self) -> str:
        return f"{self.patient:06d}_{self.study:02d}_{self.series:02d}"

    @property
    def num_written(self) -> int:
        return self.num_thin_slices // (_THIN_PER_THICK if self.thick else 1)


@dataclass
class _Background:
    """A background in memory: its volume, aligned organ labels and (lazily) its tissue map."""

    name: str
    volume: Volume
    labels: np.ndarray | None
    lesion_types: tuple[int, ...]
    avoid_z_lps_mm: tuple[tuple[float, float], ...] = ()
    _tissue: TissueMap | None = field(default=None, repr=False)

    @property
    def tissue(self) -> TissueMap:
        if self._tissue is None:
            self._tissue = tissue_map(self.volume, self.labels)
        return self._tissue

    @property
    def air_bordered(self) -> bool:
        """Whether the body lies within the image (its border is outside on >= 98 % of the
        pixels of the middle slice), so that a wider field of view only adds air."""
        codes = self.tissue.codes[self.volume.shape_zyx[0] // 2] & 0x0F
        border = np.concatenate([codes[0], codes[-1], codes[:, 0], codes[:, -1]])
        return bool(np.mean(border == anatomy.OUTSIDE) >= 0.98)


@dataclass
class _Lesion:
    """A lesion inserted into a series: what it is and its occupancy on the 1 mm block."""

    coarse_type: int
    kind: str
    drawn_long_mm: float
    centre_zyx: tuple[float, float, float]
    shape: LesionShape
    appearance: Appearance
    box: tuple[slice, slice, slice]
    occupancy: np.ndarray  # resolution-blurred, on box
    areas: np.ndarray = field(default_factory=lambda: np.zeros(0))  # per written slice, px
    key_index: int = -1

    def written(self, index: int, thick: bool, size: int) -> np.ndarray:
        """(S, S) float32 occupancy on written slice ``index``."""
        zs, ys, xs = self.box
        out = np.zeros((size, size), dtype=np.float32)
        if thick:
            thin = range(index * _THIN_PER_THICK, (index + 1) * _THIN_PER_THICK)
            parts = [self.occupancy[z - zs.start] for z in thin if zs.start <= z < zs.stop]
            if parts:
                out[ys, xs] = np.sum(parts, axis=0) / _THIN_PER_THICK
        elif zs.start <= index < zs.stop:
            out[ys, xs] = self.occupancy[index - zs.start]
        return out

    def mask(self, index: int, thick: bool, size: int) -> np.ndarray:
        return self.written(index, thick, size) >= 0.5

    def record(self) -> dict[str, object]:
        a, b, c = self.shape.semi_axes_mm
        return {"coarse_type": self.coarse_type, "kind": self.kind, "drawn_long_mm": round(self.drawn_long_mm, 3),
                "centre_zyx": [round(v, 3) for v in self.centre_zyx],
                "semi_axes_mm": [round(a, 3), round(b, 3), round(c, 3)],
                "angle_rad": round(self.shape.angle_rad, 4), "lobes": len(self.shape.lobes),
                "spikes": len(self.shape.spikes), "appearance": self.appearance.record(),
                "key_slice": self.key_index + 1, "areas_px": [int(a) for a in self.areas]}


# ----------------------------------------------------------------------------- planning


def _assign_synthetic_patients(rng: np.random.Generator, num_series: int) -> list[tuple[int, int, int]]:
    """(patient, study, split) per series with synthetic patients (1-2 studies each), whole
    patients per split, about 70 / 15 / 15 %; every split present from 3 series on."""
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


def _slice_z_lps(volume: Volume, positions: np.ndarray) -> np.ndarray:
    """LPS z (mm) of continuous slice positions (index units)."""
    direction = np.asarray(volume.direction_lps)
    return volume.origin_lps_mm[2] + direction[2, 2] * volume.slice_interval_mm * np.asarray(positions)


def _plan_series(rng: np.random.Generator, background: _Background, owner: tuple[int, int, int], thick: bool,
                 size_px: int, age: int, gender: str) -> SeriesPlan:
    """Random field of view, rotation, scale and z block of one series (module doc)."""
    volume = background.volume
    num_z, height, width = volume.shape_zyx
    interval_mm, row_mm, col_mm = volume.spacing_zyx_mm
    scale = float(rng.uniform(*SCALE_RANGE))
    length_mm = (num_z - 1) * interval_mm
    available = int(math.floor(length_mm * scale / THIN_INTERVAL_MM + 1e-6)) + 1
    if thick:
        low, high = THICK_SLICES
        count = _THIN_PER_THICK * min(int(rng.integers(low, high + 1)), available // _THIN_PER_THICK)
    else:
        count = min(int(rng.integers(THIN_SLICES[0], THIN_SLICES[1] + 1)), available)
    span_mm = (count - 1) * THIN_INTERVAL_MM / scale
    z0_mm = None
    for _ in range(100):
        start = float(rng.uniform(0.0, max(0.0, length_mm - span_mm)))
        z_lps = _slice_z_lps(volume, np.array([start, start + span_mm]) / interval_mm)
        low_z, high_z = float(z_lps.min()), float(z_lps.max())
        if all(high_z < a or low_z > b for a, b in background.avoid_z_lps_mm):
            z0_mm = start
            break
    if z0_mm is None:
        raise CtlesionError(f"no z block of background {background.name} keeps clear of {background.avoid_z_lps_mm}")
    angle = float(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    turn = abs(math.cos(math.radians(angle))) + abs(math.sin(math.radians(angle)))
    side_mm = float(rng.uniform(*FOV_FRACTION) * min(height * row_mm, width * col_mm) / turn)
    fov_mm = float(rng.uniform(*FOV_MM))
    if background.air_bordered and fov_mm > side_mm:
        # The body lies within the image: widen to a DeepLesion-like field of view, air around.
        side_mm = fov_mm
        cx = float(0.5 * width + rng.uniform(-0.05, 0.05) * width)
        cy = float(0.5 * height + rng.uniform(-0.05, 0.05) * height)
    else:
        half_x, half_y = 0.5 * side_mm * turn / col_mm, 0.5 * side_mm * turn / row_mm
        cx = float(rng.uniform(half_x, max(half_x, width - half_x)))
        cy = float(rng.uniform(half_y, max(half_y, height - half_y)))
    return SeriesPlan(
        patient=owner[0], study=owner[1], series=1, split=owner[2], thick=thick, background=background.name,
        z0_mm=z0_mm, num_thin_slices=count, crop_centre_xy_px=(cx, cy), crop_side_mm=side_mm, rotation_deg=angle,
        scale=scale, pixel_mm=side_mm * scale / size_px, age=age, gender=gender,
    )


def _inplane_matrix(volume: Volume, plan: SeriesPlan, size_px: int) -> np.ndarray:
    """2x3 inverse map (cv2 WARP_INVERSE_MAP): output pixel index -> background pixel index."""
    _, row_mm, col_mm = volume.spacing_zyx_mm
    step = plan.crop_side_mm / size_px
    theta = math.radians(plan.rotation_deg)
    cos, sin = math.cos(theta), math.sin(theta)
    kx, ky = step / col_mm, step / row_mm
    offset = 0.5 - size_px / 2.0
    cx, cy = plan.crop_centre_xy_px[0] - 0.5, plan.crop_centre_xy_px[1] - 0.5
    return np.array([[kx * cos, -kx * sin, cx + kx * (cos - sin) * offset],
                     [ky * sin, ky * cos, cy + ky * (sin + cos) * offset]], dtype=np.float64)


def _block_positions(volume: Volume, plan: SeriesPlan) -> np.ndarray:
    """Background slice positions (index units) of the series' 1 mm slices."""
    return (plan.z0_mm + np.arange(plan.num_thin_slices) * THIN_INTERVAL_MM / plan.scale) / volume.slice_interval_mm


def _background_block(background: _Background, plan: SeriesPlan, size_px: int
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HU (N, S, S) float32, tissue codes (N, S, S) uint8 and body region (N,) of the series."""
    volume = background.volume
    matrix = _inplane_matrix(volume, plan, size_px)
    positions = _block_positions(volume, plan)
    border = cv2.BORDER_CONSTANT if background.air_bordered else cv2.BORDER_REPLICATE

    def resample(index: int) -> np.ndarray:
        return cv2.warpAffine(np.asarray(volume.hu[index], dtype=np.float32), matrix, (size_px, size_px),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=border,
                              borderValue=AIR_HU)

    hu = apply_plan(plan_slices(positions, volume.shape_zyx[0]), resample)
    tissue = background.tissue
    nearest = np.clip(np.rint(positions), 0, volume.shape_zyx[0] - 1).astype(int)
    codes = np.stack([cv2.warpAffine(tissue.codes[k], matrix, (size_px, size_px),
                                     flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                                     borderValue=0) for k in nearest.tolist()])
    return hu, codes, tissue.region_z[nearest]


# ---------------------------------------------------------------------------- placement


@dataclass
class _SeriesState:
    """Per-series arrays shared by the lesions of a series."""

    hu: np.ndarray
    codes: np.ndarray
    regions: dict[int, np.ndarray]
    compartments: dict[int, np.ndarray]
    pixel_mm: float
    blur_xy_px: float
    blur_z: float
    occupied: np.ndarray
    thick: bool
    num_written: int
    _distances: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    _areas: dict[int, np.ndarray] = field(default_factory=dict)

    def distance(self, coarse_type: int, z: int) -> np.ndarray:
        """In-plane distance (px) to the outside of a type's compartment on slice z."""
        key = (coarse_type, z)
        if key not in self._distances:
            region = np.pad(self.compartments[coarse_type][z].astype(np.uint8), 1)
            self._distances[key] = cv2.distanceTransform(region, cv2.DIST_L2, 5)[1:-1, 1:-1]
        return self._distances[key]

    def area(self, coarse_type: int) -> np.ndarray:
        """Compartment area (px) per slice, zero where the slice holds none of the region."""
        if coarse_type not in self._areas:
            holds = self.regions[coarse_type].any(axis=(1, 2))
            self._areas[coarse_type] = self.compartments[coarse_type].sum(axis=(1, 2)) * holds
        return self._areas[coarse_type]


def _resolution_blur(array: np.ndarray, state: _SeriesState) -> np.ndarray:
    """Blur a box array to the background's resolution (module doc, step 4)."""
    out = array.astype(np.float32, copy=False)
    if state.blur_xy_px > 0.3:
        out = np.stack([cv2.GaussianBlur(s, (0, 0), state.blur_xy_px, borderType=cv2.BORDER_REPLICATE) for s in out])
    if state.blur_z > 0.3:
        out = gaussian_blur_z(out, state.blur_z)
    return out


def _try_position(rng: np.random.Generator, state: _SeriesState, coarse_type: int, shape: LesionShape,
                  margin_mm: float):
    """A centre, box and signed distance field for the shape inside its region, or None."""
    region = state.compartments[coarse_type]
    centres = state.regions[coarse_type]
    num_z = region.shape[0]
    a, b, c = shape.semi_axes_mm
    reach_z = shape.max_extent_mm() * c / max(a, b, c) + _FOOTPRINT_MM + 1
    need_px = 0.8 * b / state.pixel_mm
    areas = state.area(coarse_type)
    z_ok = np.nonzero(areas >= math.pi * need_px**2)[0]
    z_ok = z_ok[(z_ok >= reach_z) & (z_ok <= num_z - 1 - reach_z)]
    if len(z_ok) == 0:
        return None
    surface = shape.surface_points_mm(_FOOTPRINT_MM)
    inner = shape.surface_points_mm(0.0, count=100)
    interior = np.concatenate([np.zeros((1, 3)), 0.35 * inner, 0.7 * inner, 0.95 * inner])
    for _ in range(_POSITION_TRIES):
        z = int(z_ok[rng.integers(len(z_ok))])
        dist = state.distance(coarse_type, z)
        ys, xs = np.nonzero((dist >= need_px) & centres[z])
        if len(ys) == 0:
            continue
        pick = int(rng.integers(len(ys)))
        centre = (z + float(rng.uniform(-0.5, 0.5)), ys[pick] + float(rng.uniform(0, 1)),
                  xs[pick] + float(rng.uniform(0, 1)))
        if not _samples_fit(state, coarse_type, centre, surface, interior):
            continue
        box = lesion_box(centre, shape, margin_mm, state.pixel_mm, region.shape)
        signed, _ = shape.fields(offsets_mm(box, centre, state.pixel_mm, THIN_INTERVAL_MM))
        footprint = signed <= _FOOTPRINT_MM
        if _touches_edge(footprint, box, region.shape):
            continue  # the lesion would be cut by the block's edge
        if not region[box][footprint].all() or state.occupied[box][footprint].any():
            continue
        inside = signed <= 0
        if inside.sum() < _MIN_KEY_AREA_PX:
            continue  # smaller than a few voxels on this grid
        if coarse_type in NODE_TYPES:
            fat = (state.codes[box] & 0x0F) == anatomy.FAT
            if fat[inside].mean() < NODE_FAT_FRACTION:
                continue
        return centre, box, signed
    return None


def _sample_index(state: _SeriesState, centre: tuple[float, float, float], points_mm: np.ndarray) -> np.ndarray | None:
    index = np.floor(np.array(centre) + points_mm / np.array([THIN_INTERVAL_MM, state.pixel_mm, state.pixel_mm])
                     ).astype(int)
    if (index < 0).any() or (index >= np.array(state.occupied.shape)).any():
        return None
    return index


def _samples_fit(state: _SeriesState, coarse_type: int, centre: tuple[float, float, float], surface_mm: np.ndarray,
                 interior_mm: np.ndarray) -> bool:
    """Cheap first check of a placement on sample points: the pushed-out surface and interior
    points in the compartment and unoccupied, enough fat inside for nodes."""
    region = state.compartments[coarse_type]
    for points in (surface_mm, interior_mm):
        index = _sample_index(state, centre, points)
        if index is None:
            return False
        z, y, x = index.T
        if not region[z, y, x].all() or state.occupied[z, y, x].any():
            return False
    if coarse_type in NODE_TYPES:
        fat = (state.codes[z, y, x] & 0x0F) == anatomy.FAT
        return bool(fat.mean() >= NODE_FAT_FRACTION)
    return True


def _touches_edge(footprint: np.ndarray, box: tuple[slice, slice, slice], shape: tuple[int, ...]) -> bool:
    """Whether a footprint on a box reaches the first or last index of the block along an axis."""
    for axis, (s, n) in enumerate(zip(box, shape)):
        if (s.start == 0 and np.take(footprint, 0, axis=axis).any()) or (
                s.stop == n and np.take(footprint, -1, axis=axis).any()):
            return True
    return False


def _scanner_noise(rng: np.random.Generator, state: _SeriesState, box: tuple[slice, slice, slice],
                   centre_z: int) -> np.ndarray:
    """The scan's own noise for a box: the high-pass residual of a homogeneous soft-tissue patch
    of the same slices (module doc, step 4), or synthetic noise of its standard deviation."""
    zs, ys, xs = box
    height, width = ys.stop - ys.start, xs.stop - xs.start
    tissue = state.codes[centre_z] & 0x0F
    soft = np.isin(tissue, _NOISE_TISSUES).astype(np.uint8)
    dist = cv2.distanceTransform(np.pad(soft, 1), cv2.DIST_L2, 5)[1:-1, 1:-1]
    need = 0.5 * math.hypot(height, width) + 2
    size = state.hu.shape[1]
    cy, cx = np.nonzero(dist >= need)
    ok = (cy - height // 2 >= 0) & (cy - height // 2 + height <= size) & (cx - width // 2 >= 0) & (
        cx - width // 2 + width <= size)
    cy, cx = cy[ok], cx[ok]
    if len(cy):
        pick = int(rng.integers(len(cy)))
        y0, x0 = int(cy[pick]) - height // 2, int(cx[pick]) - width // 2
        patch = state.hu[zs, y0:y0 + height, x0:x0 + width]
        return patch - _smooth_inplane(patch)
    # Fallback: the residual's robust spread in the series' soft tissue, as correlated noise.
    residual = state.hu[centre_z] - cv2.GaussianBlur(state.hu[centre_z], (0, 0), _HIGH_PASS_SIGMA_PX)
    values = residual[soft > 0] if soft.any() else residual.ravel()
    sd = 1.4826 * float(np.median(np.abs(values - np.median(values)))) if values.size else 10.0
    noise = correlated_noise(rng, (zs.stop - zs.start, height, width), (0.5, 0.7, 0.7))
    return (noise * sd).astype(np.float32)


def _smooth_inplane(block: np.ndarray) -> np.ndarray:
    return np.stack([cv2.GaussianBlur(s, (0, 0), _HIGH_PASS_SIGMA_PX, borderType=cv2.BORDER_REPLICATE)
                     for s in block])


def _insert_lesion(rng: np.random.Generator, state: _SeriesState, coarse_type: int) -> _Lesion | None:
    """Draw, place, render and blend one lesion of a type into the series; None if none fits."""
    kind = draw_kind(rng, coarse_type)
    # Box margin: the widest edge's logistic tail (3 x 2.2 mm) and the resolution blur's (3 sigma).
    margin_mm = 6.6 + 3.0 * max(state.blur_xy_px * state.pixel_mm, state.blur_z * THIN_INTERVAL_MM)
    for attempt in range(_SIZE_TRIES):
        drawn_mm = draw_long_diameter_mm(rng, coarse_type)
        if attempt == _SIZE_TRIES - 1:
            drawn_mm = max(LONG_DIAMETER_RANGE_MM[0], _LAST_SIZE_FACTOR * drawn_mm)
        shape = draw_shape(rng, kind, drawn_mm)
        found = _try_position(rng, state, coarse_type, shape, margin_mm)
        if found is not None:
            break
    else:
        return None
    centre, box, signed = found
    inside = signed <= 0
    host = state.compartments[coarse_type][box] & inside
    host_hu = float(np.median(state.hu[box][host])) if host.any() else float(np.median(state.hu[box][inside]))
    appearance = draw_appearance(rng, kind, host_hu, drawn_mm)
    rendered: RenderedLesion = render_lesion(rng, shape, appearance, centre, box, state.pixel_mm, THIN_INTERVAL_MM)
    occupancy = _resolution_blur(rendered.occupancy, state)
    lesion = _Lesion(coarse_type, kind, drawn_mm, centre, shape, appearance, box, occupancy)
    size = state.hu.shape[1]
    lesion.areas = np.array([lesion.mask(j, state.thick, size).sum() for j in range(state.num_written)])
    lesion.key_index = int(np.argmax(lesion.areas))
    if lesion.areas[lesion.key_index] < max(_MIN_KEY_AREA_PX, _MIN_KEY_AREA_MM2 / state.pixel_mm**2):
        return None  # too small to annotate on its key slice (partial volume of a thick slice)
    block = state.hu[box]
    smooth = _smooth_inplane(block)
    noise = _scanner_noise(rng, state, box, int(round(centre[0])))
    replace = rendered.replace
    delta = _resolution_blur(replace * (rendered.level - smooth), state)
    delta += _resolution_blur(replace, state) * (noise - (block - smooth))
    if rendered.added is not None:
        delta += _resolution_blur(rendered.added, state)
    state.hu[box] = block + delta
    state.occupied[box] |= signed <= _CLEARANCE_MM
    return lesion


# --------------------------------------------------------------------------- annotations


def _key_slice_rows(lesions: list[_Lesion], thick: bool, size: int
                    ) -> list[tuple[int, list[tuple[_Lesion, np.ndarray]]]]:
    """(key index, [(lesion, mask)...]) per key slice, rows complete (module doc)."""
    out = []
    for key_index in sorted({lesion.key_index for lesion in lesions}):
        shown = []
        for lesion in lesions:
            largest = float(lesion.areas.max())
            here = float(lesion.areas[key_index])
            if lesion.key_index != key_index and (here < _MIN_KEY_AREA_PX
                                                  or math.sqrt(here / largest) < _ANNOTATE_SCALE):
                continue
            shown.append((lesion, lesion.mask(key_index, thick, size)))
        out.append((key_index, shown))
    return out


def _row(key_index: int, lesion: _Lesion, mask: np.ndarray, plan: SeriesPlan, extent_mm: float,
         background: _Background) -> dict[str, object]:
    """The 18-column DL_info row of one lesion on one key slice, measured on its mask."""
    size = mask.shape[0]
    rows, cols = np.nonzero(mask)
    axes = recist_axes(mask, (plan.pixel_mm, plan.pixel_mm))
    (l0, l1), (s0, s1) = axes.long_px, axes.short_px
    recist = [*l0, *l1, *s0, *s1]
    interval = THICK_INTERVAL_MM if plan.thick else THIN_INTERVAL_MM
    per = _THIN_PER_THICK if plan.thick else 1
    thin_centre = key_index * per + 0.5 * (per - 1)
    key_z_mm = plan.z0_mm + thin_centre * THIN_INTERVAL_MM / plan.scale
    return {
        "File_name": f"{plan.name}_{key_index + 1:03d}.png",
        "Patient_index": plan.patient,
        "Study_index": plan.study,
        "Series_ID": plan.series,
        "Key_slice_index": key_index + 1,
        "Measurement_coordinates": recist,
        "Bounding_boxes": recist_box(recist),
        "Lesion_diameters_Pixel_": [axes.long_mm / plan.pixel_mm, axes.short_mm / plan.pixel_mm],
        "Normalized_lesion_location": [float(cols.mean() + 0.5) / size, float(rows.mean() + 0.5) / size,
                                       key_z_mm / extent_mm if extent_mm > 0 else 0.5],
        "Coarse_lesion_type": lesion.coarse_type,
        "Possibly_noisy": 0,
        "Slice_range": [1, plan.num_written],
        "Spacing_mm_px_": [plan.pixel_mm, plan.pixel_mm, interval],
        "Image_size": [size, size],
        "DICOM_windows": list(DICOM_WINDOWS[lesion.coarse_type]),
        "Patient_gender": plan.gender,
        "Patient_age": plan.age,
        "Train_Val_Test": plan.split,
    }


def _write_npz(path: Path, **arrays: np.ndarray) -> None:
    """A compressed .npz with fixed timestamps (same arrays, same bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, buffer.getvalue())


def read_key_slice_masks(root: Path, file_name: str) -> np.ndarray:
    """The true masks of a simulated key slice (module doc, "Mask files").

    Args:
        root: the dataset folder (holding ``DL_info.csv`` and ``masks/``).
        file_name: the key slice's DL_info ``File_name`` (``<series>_<slice:03d>.png``).

    Returns:
        (N, Y, X) bool, one mask per DL_info row of that key slice, in CSV order.

    Raises:
        CtlesionError: if the mask file is missing or unreadable.
    """
    series, _, number = file_name.rpartition("_")
    path = Path(root) / MASKS_DIR / series / f"{number[:-4]}.npz" if number.endswith(".png") else None
    if path is None or not path.is_file():
        raise CtlesionError("true key-slice mask file not found", path or file_name)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return archive["masks"].astype(bool)
    except (OSError, KeyError, ValueError) as exc:
        raise CtlesionError(f"cannot read true key-slice masks: {exc}", path) from exc


# ------------------------------------------------------------------------------ one series


def _build_series(rng: np.random.Generator, plan: SeriesPlan, background: _Background, size_px: int,
                  type_weights: dict[int, float] | None = None
                  ) -> tuple[np.ndarray, list[_Lesion], dict[str, object]]:
    """Build one series: its written slices (num_written, S, S) float32 HU (thick: 5 mm slab
    means), its lesions and its record; raises :class:`_NothingFits` when no lesion fits."""
    volume = background.volume
    hu, codes, region_z = _background_block(background, plan, size_px)
    regions = lesion_regions(codes, region_z)
    compartments = lesion_compartments(codes)
    interval_mm, row_mm, col_mm = volume.spacing_zyx_mm
    source_px = math.sqrt(row_mm * col_mm) / (plan.crop_side_mm / size_px)  # background pixel in output px
    state = _SeriesState(
        hu=hu, codes=codes, regions=regions, compartments=compartments, pixel_mm=plan.pixel_mm,
        blur_xy_px=_FWHM_TO_SIGMA * math.sqrt(max(0.0, source_px**2 - 1.0)),
        blur_z=_FWHM_TO_SIGMA * math.sqrt(max(0.0, (interval_mm * plan.scale / THIN_INTERVAL_MM) ** 2 - 1.0)),
        occupied=np.zeros(hu.shape, dtype=bool), thick=plan.thick, num_written=plan.num_written,
    )
    min_voxels = 50
    available = [t for t in background.lesion_types if regions[t].sum() >= min_voxels]
    lesions: list[_Lesion] = []
    wanted = int(rng.integers(LESIONS_PER_SERIES[0], LESIONS_PER_SERIES[1] + 1))
    attempts = 0
    while len(lesions) < wanted and available and attempts < 3 * wanted:
        attempts += 1
        # Diversity: a type already placed in this series is drawn half as often per lesion.
        base = type_weights or dict(TYPE_COUNTS)
        weights = {t: base[t] * 0.5 ** sum(lesion.coarse_type == t for lesion in lesions) for t in available}
        coarse_type = draw_type(rng, available, weights)
        lesion = _insert_lesion(rng, state, coarse_type)
        if lesion is None:
            # Nothing of this type fits this block: one lesion fewer (not one of another type,
            # which would favour the types that fit everywhere, such as lung nodules).
            available.remove(coarse_type)
            wanted = max(1, wanted - 1)
            continue
        lesions.append(lesion)
    if not lesions:
        raise _NothingFits
    if plan.thick:
        hu = hu.reshape(plan.num_written, _THIN_PER_THICK, size_px, size_px).mean(axis=1)
    record = dict(asdict(plan), lesions=[lesion.record() for lesion in lesions],
                  lesion_types_available=sorted(t for t in background.lesion_types if regions[t].sum() >= min_voxels))
    return hu, lesions, record


def _write_deeplesion_series(out_dir: Path, plan: SeriesPlan, background: _Background, hu: np.ndarray,
                             lesions: list[_Lesion]) -> list[dict[str, object]]:
    """Write a built series' PNG slices and key-slice masks (DeepLesion layout); returns its DL_info rows."""
    volume = background.volume
    series_dir = out_dir / "Images_png" / plan.name
    for k in range(plan.num_written):
        write_png_hu(series_dir / f"{k + 1:03d}.png", hu[k])
    extent_mm = (volume.shape_zyx[0] - 1) * volume.slice_interval_mm
    rows = []
    for key_index, shown in _key_slice_rows(lesions, plan.thick, hu.shape[1]):
        for lesion, mask in shown:
            rows.append(_row(key_index, lesion, mask, plan, extent_mm, background))
        _write_npz(out_dir / MASKS_DIR / plan.name / f"{key_index + 1:03d}.npz",
                   masks=np.stack([mask for _, mask in shown]))
    return rows


def _series_volume(hu: np.ndarray, plan: SeriesPlan, background: _Background) -> Volume:
    """A built series' written slices (N, S, S) as a Volume in LPS (module doc, "nnU-Net layout")."""
    volume = background.volume
    per = _THIN_PER_THICK if plan.thick else 1
    interval_mm = THICK_INTERVAL_MM if plan.thick else THIN_INTERVAL_MM
    first_z = float(np.mean(_block_positions(volume, plan)[:per]))  # background slice position, index units
    cx, cy = plan.crop_centre_xy_px
    centre_lps_mm = volume.voxel_to_lps(np.array([cx - 0.5, cy - 0.5, first_z]))
    middle_xyz = np.array([plan.pixel_mm, plan.pixel_mm, 0.0]) * (hu.shape[1] - 1) / 2.0
    origin_lps_mm = centre_lps_mm - volume.direction_lps @ middle_xyz
    return Volume(hu=hu, spacing_zyx_mm=(interval_mm, plan.pixel_mm, plan.pixel_mm),
                  origin_lps_mm=tuple(origin_lps_mm), direction_lps=volume.direction_lps, source=plan.name)


def _lesion_instances(lesions: Sequence[_Lesion], plan: SeriesPlan, size_px: int) -> np.ndarray:
    """(num_written, S, S) uint8: i on the true mask of the series' i-th lesion (1-based), 0 elsewhere."""
    instances = np.zeros((plan.num_written, size_px, size_px), dtype=np.uint8)
    for number, lesion in enumerate(lesions, start=1):
        for k in np.flatnonzero(lesion.areas).tolist():
            instances[k][lesion.mask(k, plan.thick, size_px)] = number
    return instances


def _lesions_apart(instances: np.ndarray, num_lesions: int) -> bool:
    """Whether each lesion of an instance map is exactly one 3D connected component (26-connectivity)
    of the lesion voxels, so that the semantic label map keeps the lesions apart."""
    components, num_components = connected_components(instances > 0)
    inside = instances > 0
    pairs = np.unique(np.stack([instances[inside], components[inside]]), axis=1)
    return num_components == num_lesions and pairs.shape[1] == num_lesions


def _write_nnunet_series(out_dir: Path, plan: SeriesPlan, background: _Background, hu: np.ndarray,
                         lesions: list[_Lesion]) -> dict[str, object]:
    """Write a built series as an nnU-Net case (CT and 3D label map); returns its record's extra keys."""
    instances = _lesion_instances(lesions, plan, hu.shape[1])
    apart = _lesions_apart(instances, len(lesions))
    if not apart:
        logger.warning("case %s: lesions touch in the label map (fewer 3D components than its %d lesions)",
                       plan.name, len(lesions))
    write_case(out_dir, plan.name, _series_volume(hu, plan, background), instances > 0,
               test=plan.split == SPLITS["test"])
    return {"case_id": plan.name, "lesions_apart": apart}


def _simulate_series(rng: np.random.Generator, plan: SeriesPlan, background: _Background, out_dir: Path,
                     size_px: int, type_weights: dict[int, float] | None = None, layout: str = "deeplesion"
                     ) -> tuple[list[dict[str, object]], dict[str, object]]:
    """Build, write and annotate one series in a layout; returns its DL_info rows (none for
    nnunet) and its record."""
    hu, lesions, record = _build_series(rng, plan, background, size_px, type_weights)
    if layout == "nnunet":
        record.update(_write_nnunet_series(out_dir, plan, background, hu, lesions))
        return [], record
    return _write_deeplesion_series(out_dir, plan, background, hu, lesions), record


# ------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class _SeriesItem:
    """What one series needs besides its background: its index, generator and owner."""

    index: int
    rng: np.random.Generator
    owner: tuple[int, int, int]
    thick: bool
    demography: tuple[int, str]


@dataclass(frozen=True)
class _Chunk:
    """Series of one background built together (a pool task: every field pickles)."""

    loader: Callable[[], _Background]
    tissue: TissueMap
    items: tuple[_SeriesItem, ...]
    out_dir: Path
    size_px: int
    type_weights: dict[int, float]
    layout: str


def _survey_background(loader: Callable[[], _Background]) -> tuple[TissueMap, set[int]]:
    """Pass 1 of a background: its tissue map and the lesion types it offers."""
    background = loader()
    return background.tissue, _offered_types(background)


def _build_chunk(chunk: _Chunk) -> dict[int, tuple[list[dict[str, object]], dict[str, object]]]:
    """Pass 2: build, write and annotate a chunk's series; {series index: (DL_info rows, record)}."""
    background = chunk.loader()
    background._tissue = chunk.tissue
    out = {}
    for item in chunk.items:
        for attempt in range(_SERIES_TRIES):
            plan = _plan_series(item.rng, background, item.owner, item.thick, chunk.size_px, *item.demography)
            try:
                out[item.index] = _simulate_series(item.rng, plan, background, chunk.out_dir, chunk.size_px,
                                                   chunk.type_weights, chunk.layout)
                break
            except _NothingFits:
                if attempt == _SERIES_TRIES - 1:
                    raise CtlesionError(f"could not place a lesion in background {background.name} in "
                                        f"{_SERIES_TRIES} fields of view (image too small?)") from None
    return out


def _init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process (the pool provides the parallelism)."""
    cv2.setNumThreads(1)


def _map_tasks(function: Callable, tasks: Sequence, workers: int) -> list:
    """``function`` over ``tasks`` in order: in this process (``workers=0``) or a spawn-started pool."""
    if workers == 0 or len(tasks) <= 1:
        return [function(task) for task in tasks]
    with multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)), initializer=_init_worker) as pool:
        return pool.map(function, tasks, chunksize=1)


def _check_out(out_dir: Path, overwrite: bool, layout: str) -> None:
    """Refuse an output folder that holds a dataset of the other layout (never replaced), or one of
    this layout without ``overwrite``."""
    for other, markers in _LAYOUT_MARKERS.items():
        found = [name for name in markers if (out_dir / name).exists()]
        if other != layout and found:
            raise CtlesionError(f"holds a dataset of the {other} layout ({found[0]}); write the {layout} layout "
                                "into another folder", out_dir)
    if overwrite:
        return
    for name in _LAYOUT_OUTPUTS[layout]:
        path = out_dir / name
        if path.is_file() or (path.is_dir() and any(path.iterdir())):
            article = "an" if name[0].lower() in "aeiou" else "a"
            kind = "file" if path.is_file() else "folder"
            raise CtlesionError(f"already holds {article} {name} {kind}; use an empty folder or overwrite", out_dir)


def _clear_out(out_dir: Path, layout: str) -> None:
    """Remove the folders of a dataset being replaced (checked by :func:`_check_out`), so that none
    of its files stays among the new ones."""
    for name in _LAYOUT_OUTPUTS[layout]:
        if (out_dir / name).is_dir():
            shutil.rmtree(out_dir / name)


def _offered_types(background: _Background) -> set[int]:
    """Lesion types whose region the background holds (on every 4th slice: a quick look)."""
    tissue = background.tissue
    regions = lesion_regions(tissue.codes[::4], tissue.region_z[::4])
    return {t for t in background.lesion_types if regions[t].sum() >= 50}


def _type_weights(offered_per_series: Sequence[set[int]]) -> dict[int, float]:
    """Type weights that bring the dataset's type mix towards DeepLesion's: each type's test-split
    count divided by the fraction of the series whose background offers it (a type that only a
    few backgrounds offer, such as liver or kidney, is drawn more often where it is offered)."""
    total = max(1, len(offered_per_series))
    weights = {}
    for coarse_type, count in TYPE_COUNTS.items():
        share = sum(coarse_type in offered for offered in offered_per_series) / total
        if share > 0:
            weights[coarse_type] = count / share
    return weights


def _simulate(out_dir: Path, loaders: Sequence, names: Sequence[str], patients: Sequence[str],
              fixed_splits: Mapping[str, int] | None, descriptions: list[dict[str, object]], *, num_series: int,
              image_size_px: int, seed: int, overwrite: bool, workers: int = 0, layout: str = "deeplesion") -> Path:
    """Plan every series, then build them in chunks of one background's series (in this process
    with ``workers=0``, else in a pool) into a staging folder, moved into ``out_dir`` when all is
    written; the bytes written do not depend on ``workers``."""
    out_dir = Path(out_dir)
    if num_series < 1 or image_size_px < 64:
        raise CtlesionError(f"need num_series >= 1 and image_size_px >= 64, got {num_series}, {image_size_px}")
    if not loaders:
        raise CtlesionError("no background CT volumes given for the simulation", out_dir)
    if workers < 0:
        raise CtlesionError(f"need workers >= 0, got {workers}")
    if layout not in SIMULATION_LAYOUTS:
        raise CtlesionError(f"unknown layout {layout!r} (expected one of {', '.join(SIMULATION_LAYOUTS)})")
    _check_out(out_dir, overwrite, layout)
    master = np.random.default_rng(seed)
    groups = [fixed_splits[p] for p in patients] if fixed_splits is not None else None
    assignment = round_robin(num_series, len(loaders), master, groups)
    patient_order = list(dict.fromkeys(patients))
    if fixed_splits is not None:
        studies: dict[str, int] = {}
        owners = []
        for index, _ in assignment:
            key = patients[index]
            studies[key] = studies.get(key, 0) + 1
            owners.append((patient_order.index(key) + 1, studies[key], fixed_splits[key]))
    else:
        logger.warning("fewer than 3 patients among the backgrounds: synthetic patients are split instead, "
                       "so train, val and test share the backgrounds' anatomy")
        owners = _assign_synthetic_patients(master, num_series)
    demography = {}
    for patient in sorted({o[0] for o in owners}):
        person = np.random.default_rng([seed, patient])
        demography[patient] = (int(person.integers(20, 86)), str(person.choice(["F", "M"])))
    series_rngs = [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(num_series)]
    used = sorted({b for b, _ in assignment})
    # Pass 1: the tissue map of every background used, and the lesion types it offers.
    surveyed = dict(zip(used, _map_tasks(_survey_background, [loaders[b] for b in used], workers)))
    type_weights = _type_weights([surveyed[b][1] for b, _ in assignment])
    split_by = "patient" if fixed_splits is not None else "synthetic patient"
    with staged_outputs(out_dir) as stage:
        # Pass 2: the series, in chunks of one background's series (each chunk one volume in memory).
        tasks = []
        for index in used:
            mine = [i for i, (b, _) in enumerate(assignment) if b == index]
            size = len(mine) if workers == 0 else max(1, math.ceil(num_series / (4 * workers)))
            for start in range(0, len(mine), size):
                items = [_SeriesItem(i, series_rngs[i], owners[i], assignment[i][1], demography[owners[i][0]])
                         for i in mine[start:start + size]]
                tasks.append(_Chunk(loaders[index], surveyed[index][0], tuple(items), stage, image_size_px,
                                    type_weights, layout))
        built: dict[int, tuple[list[dict[str, object]], dict[str, object]]] = {}
        for chunk_result in _map_tasks(_build_chunk, tasks, workers):
            built.update(chunk_result)
            logger.debug("simulated %d/%d series", len(built), num_series)
        rows = [row for i in range(num_series) for row in built[i][0]]
        records = [built[i][1] for i in range(num_series)]
        if layout == "nnunet":
            written = _write_nnunet_dataset(stage, records, seed=seed, descriptions=descriptions, split_by=split_by)
        else:
            written = stage / "DL_info.csv"
            write_dl_info(written, rows)
        manifest = {"seed": seed, "num_series": num_series, "image_size_px": image_size_px,
                    "backgrounds": descriptions,
                    "type_weights": {str(t): round(w, 3) for t, w in type_weights.items()},
                    "split_by": split_by, "series": records}
        if layout != "deeplesion":
            manifest = {"layout": layout, **manifest}
        (stage / "simulation.json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
        _clear_out(out_dir, layout)
    if layout == "nnunet":  # nnU-Net needs imagesTr/ and labelsTr/ even when every series is a test one
        for name in ("imagesTr", "labelsTr"):
            (out_dir / name).mkdir(exist_ok=True)
    logger.info("simulated %d series with %d lesions in %s (%s layout)", num_series,
                sum(len(record["lesions"]) for record in records), out_dir, layout)
    return out_dir / written.name


def _write_nnunet_dataset(root: Path, records: Sequence[dict[str, object]], *, seed: int,
                          descriptions: Sequence[dict[str, object]], split_by: str) -> Path:
    """``dataset.json`` and ``splits_final.json`` (fold 0: the train and val series) of the nnU-Net
    layout, from the series' records; returns the path of ``dataset.json``."""
    cases = {code: [r["case_id"] for r in records if r["split"] == code] for code in SPLITS.values()}
    write_splits_final(root, [(cases[SPLITS["train"]], cases[SPLITS["val"]])])
    names = ", ".join(str(d["name"]) for d in descriptions)
    description = (
        f"Simulated CT lesions (ctlesion simulate, seed {seed}): synthetic lesions inserted into the real CT "
        f"background(s) {names}; series split by {split_by} (train and val in imagesTr, fold 0 of "
        f"splits_final.json; test in imagesTs). Thin series 1 mm, thick series 5 mm (each slice the mean of five "
        f"1 mm slices). Label 1 (lesion): voxels where a lesion's occupancy, on a thick slice its mean over the "
        f"5 mm slab, is >= 0.5. Every series' choices and lesions are in simulation.json.")
    return write_dataset_json(
        root, labels=NNUNET_LABELS, num_training=len(cases[SPLITS["train"]]) + len(cases[SPLITS["val"]]),
        name="ctlesion simulated lesions", description=description,
        extra={"numTest": len(cases[SPLITS["test"]]), "seed": seed,
               "backgrounds": [str(d["name"]) for d in descriptions],
               "slice_intervals_mm": {"thin": THIN_INTERVAL_MM, "thick": THICK_INTERVAL_MM},
               "label_rule": "occupancy >= 0.5 (thick slices: mean occupancy over the 5 mm slab)"})


def _check_volume(volume: Volume) -> None:
    if (volume.shape_zyx[0] - 1) * volume.slice_interval_mm < _THIN_PER_THICK * THIN_INTERVAL_MM:
        raise CtlesionError("background CT is too short along z for the simulation (< 5 mm)", volume.source)


def simulate_from_volumes(
    out_dir: Path,
    volumes: Sequence[Volume],
    *,
    num_series: int,
    image_size_px: int = 512,
    seed: int = 0,
    overwrite: bool = False,
    organ_labels: Sequence[np.ndarray | None] | None = None,
    patients: Sequence[str] | None = None,
    splits: Sequence[int | None] | None = None,
    lesion_types: Sequence[Sequence[int]] | None = None,
    workers: int = 0,
    layout: str = "deeplesion",
) -> Path:
    """Write a simulated DeepLesion-style dataset from background volumes in memory (module doc).

    Args:
        out_dir: output folder; ``DL_info.csv``, ``simulation.json``, ``Images_png/`` and
            ``masks/`` are written (``layout="nnunet"``: ``dataset.json``, ``splits_final.json``,
            ``simulation.json``, ``imagesTr/``, ``labelsTr/``, ``imagesTs/``, ``labelsTs/``).
        volumes: real CT backgrounds (HU, LPS geometry), each at least 5 mm long along z.
        num_series: number of series (each with 1-4 lesions).
        image_size_px: side of the square output slices, pixels (>= 64).
        seed: random seed; the same seed and inputs give the same bytes.
        overwrite: replace an existing ``Images_png/`` and ``masks/`` in ``out_dir``.
        organ_labels: per volume, TotalSegmentator v2 labels on its grid
            (:func:`ctlesion.data.anatomy.align_labels`) or None.
        patients: per volume, its patient key (default: one patient per volume).
        splits: per volume, a fixed split (1/2/3) or None (seeded assignment).
        lesion_types: per volume, the coarse lesion types it may receive (default all 8).
        workers: worker processes (0: in this process); the output does not depend on it.
        layout: ``"deeplesion"`` or ``"nnunet"`` (module doc, "nnU-Net layout").

    Returns:
        Path of the written ``DL_info.csv`` (nnunet: ``dataset.json``).

    Raises:
        CtlesionError: for no or too-short backgrounds, a non-positive ``num_series``, an unknown
            layout, an existing dataset without ``overwrite`` (or one of the other layout), or a
            series in which no lesion fits.
    """
    volumes = list(volumes)
    for volume in volumes:
        _check_volume(volume)
    names = [BackgroundSource(Path(Path(v.source).name or f"background_{i}")).name for i, v in enumerate(volumes)]
    unique = [n if names.count(n) == 1 else f"{n}#{i + 1}" for i, n in enumerate(names)]
    sources = [BackgroundSource(Path(names[i]), patient=(patients[i] if patients else unique[i]),
                                split=(splits[i] if splits else None),
                                lesion_types=tuple(lesion_types[i]) if lesion_types else ALL_TYPES)
               for i in range(len(volumes))]
    split_of = assign_splits(sources, seed) if volumes else None
    loaders = [functools.partial(_Background, names[i], volumes[i], organ_labels[i] if organ_labels else None,
                                 sources[i].lesion_types) for i in range(len(volumes))]
    return _simulate(out_dir, loaders, names, [s.patient_key for s in sources], split_of,
                     describe(sources, split_of), num_series=num_series, image_size_px=image_size_px, seed=seed,
                     overwrite=overwrite, workers=workers, layout=layout)


def _load(source: BackgroundSource) -> _Background:
    volume = read_volume(Path(source.ct))
    _check_volume(volume)
    labels = None
    if source.masks is not None:
        labels = align_labels(read_volume(Path(source.masks)), volume)
        if (labels == anatomy.UNKNOWN_LABEL).all():
            raise CtlesionError(f"organ masks do not overlap background {source.ct}", source.masks)
    return _Background(source.name, volume, labels, source.lesion_types, source.avoid_z_lps_mm)


def resolve_backgrounds(backgrounds: Sequence[Path | BackgroundSource] | None = None,
                        folders: Sequence[Path] = (), organ_masks: Mapping[Path, Path] | None = None,
                        lists: Sequence[Path] = ()) -> list[BackgroundSource]:
    """The background set of a simulation: explicit backgrounds (paths get their conventional
    masks), every background of ``folders`` and of the JSON background ``lists``
    (:func:`ctlesion.data.backgrounds.read_background_list`), explicit mask pairs; the default
    set (:func:`ctlesion.data.backgrounds.default_backgrounds`) when none of these is given.

    Raises:
        CtlesionError: for a folder without backgrounds or masks paired with an unknown background.
    """
    sources: list[BackgroundSource] = []
    for item in backgrounds or []:
        sources.extend([item] if isinstance(item, BackgroundSource) else with_conventional_masks([Path(item)]))
    for folder in folders:
        sources.extend(backgrounds_in_folder(Path(folder)))
    for listing in lists:
        sources.extend(read_background_list(Path(listing)))
    if not sources:
        sources = default_backgrounds()
    return with_masks(sources, organ_masks or {})


def simulate_dataset(
    out_dir: Path,
    *,
    backgrounds: Sequence[Path | BackgroundSource] | None = None,
    num_series: int,
    image_size_px: int = 512,
    seed: int = 0,
    overwrite: bool = False,
    background_dirs: Sequence[Path] = (),
    organ_masks: Mapping[Path, Path] | None = None,
    background_lists: Sequence[Path] = (),
    workers: int = 0,
    splits: Sequence[int] = (),
    layout: str = "deeplesion",
) -> Path:
    """Read real CT backgrounds and write a simulated DeepLesion-style dataset (module doc).

    Backgrounds are read one at a time, when their series are built.

    Args:
        out_dir: output folder (``DL_info.csv``, ``simulation.json``, ``Images_png/``, ``masks/``;
            for the nnunet layout those of :func:`simulate_from_volumes`).
        backgrounds: DICOM series folders or NIfTI files of real CT (read with
            :func:`ctlesion.io.read_volume`), or :class:`BackgroundSource` entries; with neither
            these nor ``background_dirs``, the default set (module doc).
        num_series: number of series to write.
        image_size_px: side of the square output slices, pixels.
        seed: random seed (deterministic output).
        overwrite: replace an existing dataset in ``out_dir``.
        background_dirs: folders whose every CT is a background (masks by the ``NAME.seg.nii.gz``
            convention).
        organ_masks: {background path: TotalSegmentator label map} pairs.
        background_lists: JSON files declaring backgrounds with their patients and splits
            (:func:`ctlesion.data.backgrounds.read_background_list`).
        workers: worker processes (0: in this process); the output does not depend on it.
        splits: only the backgrounds of patients in these splits (1 train, 2 val, 3 test) are
            read and simulated (patients are split over the whole set first, so the splits stay
            those of the whole set); empty: all.
        layout: ``"deeplesion"`` or ``"nnunet"`` (module doc, "nnU-Net layout").

    Returns:
        Path of the written ``DL_info.csv`` (nnunet: ``dataset.json``).

    Raises:
        CtlesionError: if a background or mask cannot be read or is unsuitable, ``out_dir``
            already holds a dataset without ``overwrite`` (or one of the other layout), the
            layout is unknown, or ``splits`` leaves no background.
    """
    sources = resolve_backgrounds(backgrounds, background_dirs, organ_masks, background_lists)
    split_of = assign_splits(sources, seed)
    if splits:
        if split_of is None:
            raise CtlesionError("choosing splits needs backgrounds of at least 3 patients or fixed splits")
        sources = [s for s in sources if split_of[s.patient_key] in set(splits)]
        if not sources:
            raise CtlesionError(f"no background lies in split(s) {sorted(set(splits))}")
    for source in sources:
        if not Path(source.ct).exists():
            raise CtlesionError("background CT not found", source.ct)
    loaders = [functools.partial(_load, s) for s in sources]
    return _simulate(out_dir, loaders, [s.name for s in sources], [s.patient_key for s in sources], split_of,
                     describe(sources, split_of), num_series=num_series, image_size_px=image_size_px, seed=seed,
                     overwrite=overwrite, workers=workers, layout=layout)
