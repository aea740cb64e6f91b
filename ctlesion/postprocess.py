"""From per-slice detections to 3D lesions: linking, input geometry, RECIST axes, LPS boxes.

The detector sees the volume at network spacing (thin inputs were resampled to 2 mm along z,
thick ones kept, SPEC section 4) and returns boxes, scores and masks per slice. This module:

* links boxes of adjacent detector slices into chains (:func:`link_detections`; a plain greedy
  heuristic, not part of the AlignShift paper, which evaluates key slices only);
* maps each chain back onto the slices of the INPUT volume, giving every input slice the mask
  of the nearest detector slice;
* measures RECIST-style diameters on the key slice (:func:`recist_axes`: lengths and end
  points) and the volume;
* converts voxel boxes to LPS millimetres (:func:`box_lps_mm`).

Coordinates: in-plane boxes are continuous pixel coordinates (x = column): pixel i spans
[i, i + 1), so its centre, which is voxel index i of the :class:`~ctlesion.volume.Volume`, lies
at i + 0.5. Slice indices z are voxel indices (slice centres).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from ctlesion.volume import Volume

logger = logging.getLogger(__name__)

#: RECIST short axis: longest chord within this many degrees of perpendicular to the long axis.
PERPENDICULAR_TOLERANCE_DEG = 5.0
_ANGLE_STEP_DEG = 0.25


@dataclass(frozen=True, eq=False)  # array fields: compare by identity
class SliceDetections:
    """The detector's output on one slice of the (possibly resampled) detector volume.

    Attributes:
        slice_index: z index in the detector's volume (network spacing: thin inputs were
            resampled to 2 mm).
        boxes_px: (N, 4) float32 (x1, y1, x2, y2), continuous pixel coordinates of the (Y, X)
            slice at the input's in-plane size.
        scores: (N,) float32 detection scores.
        masks: (N, Y, X) float32 mask probabilities in [0, 1] at the slice's size.
    """

    slice_index: int
    boxes_px: np.ndarray
    scores: np.ndarray
    masks: np.ndarray


@dataclass(eq=False)  # array fields: compare by identity
class Lesion:
    """One 3D lesion in the geometry of the INPUT volume.

    Attributes:
        score: maximum detection score over its slices.
        box_vox: (x1, y1, z1, x2, y2, z2): x, y continuous pixel coordinates (union of the
            linked boxes), z1, z2 first and last input slice index (inclusive).
        key_slice: input slice index of the highest-scoring detection.
        long_axis_mm: RECIST long axis on the key slice (maximum Feret diameter of the mask).
        short_axis_mm: longest chord within +/-5 degrees of perpendicular to the long axis.
        volume_ml: mask voxel count x input voxel volume / 1000.
        mask_zyx: (dz, dy, dx) bool mask cropped to its bounding box (may be empty).
        mask_offset_zyx: input voxel index (z, y, x) of ``mask_zyx[0, 0, 0]``.
        long_axis_px, short_axis_px: end points ((x0, y0), (x1, y1)) of the two RECIST axes on
            the key slice, continuous pixel coordinates of the input slice; None for an empty
            mask or when not measured.
    """

    score: float
    box_vox: tuple[float, ...]
    key_slice: int
    long_axis_mm: float
    short_axis_mm: float
    volume_ml: float
    mask_zyx: np.ndarray
    mask_offset_zyx: tuple[int, int, int]
    long_axis_px: tuple[tuple[float, float], tuple[float, float]] | None = None
    short_axis_px: tuple[tuple[float, float], tuple[float, float]] | None = None

    def paint(self, label_map_zyx: np.ndarray, label: int) -> None:
        """Write ``label`` into an input-geometry (Z, Y, X) label map where the mask is on.

        Raises:
            ValueError: if the mask does not fit inside ``label_map_zyx``.
        """
        z0, y0, x0 = self.mask_offset_zyx
        dz, dy, dx = self.mask_zyx.shape
        if min(z0, y0, x0) < 0 or any(
            o + d > n for o, d, n in zip((z0, y0, x0), (dz, dy, dx), label_map_zyx.shape)
        ):
            raise ValueError(
                f"lesion mask at offset {self.mask_offset_zyx} with shape {self.mask_zyx.shape} does "
                f"not fit a label map of shape {label_map_zyx.shape}"
            )
        label_map_zyx[z0 : z0 + dz, y0 : y0 + dy, x0 : x0 + dx][self.mask_zyx] = label

    def slice_mask(self, z: int, shape_yx: tuple[int, int]) -> np.ndarray:
        """The lesion's (Y, X) bool mask on input slice ``z`` (all False off the lesion)."""
        out = np.zeros(shape_yx, dtype=bool)
        z0, y0, x0 = self.mask_offset_zyx
        dz, dy, dx = self.mask_zyx.shape
        if z0 <= z < z0 + dz:
            out[y0 : y0 + dy, x0 : x0 + dx] = self.mask_zyx[z - z0]
        return out


def _continuous_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one (4,) box with (K, 4) boxes, continuous coordinates (width = x2 - x1)."""
    iw = np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0])
    ih = np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1])
    inter = np.maximum(iw, 0.0) * np.maximum(ih, 0.0)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area + areas - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _check_slices(per_slice: Sequence[SliceDetections]) -> tuple[int, int] | None:
    """Validate shapes; return the common (Y, X) of the masks (None if no detections)."""
    shape_yx: tuple[int, int] | None = None
    seen: set[int] = set()
    for sd in per_slice:
        k = int(sd.slice_index)
        if k in seen:
            raise ValueError(f"detector slice {k} appears twice in per_slice")
        seen.add(k)
        n = int(np.size(sd.scores))
        if n == 0 and np.size(sd.boxes_px) == 0:
            continue
        if np.shape(sd.scores) != (n,) or np.shape(sd.boxes_px) != (n, 4):
            raise ValueError(
                f"slice {k}: boxes_px must be (N, 4) and scores (N,), got {np.shape(sd.boxes_px)} "
                f"and {np.shape(sd.scores)}"
            )
        if np.ndim(sd.masks) != 3 or np.shape(sd.masks)[0] != n:
            raise ValueError(f"slice {k}: masks must be (N, Y, X) with N = {n}, got {np.shape(sd.masks)}")
        if shape_yx is not None and np.shape(sd.masks)[1:] != shape_yx:
            raise ValueError(f"slice {k}: masks are {np.shape(sd.masks)[1:]}, other slices {shape_yx}")
        shape_yx = tuple(np.shape(sd.masks)[1:])  # type: ignore[assignment]
    return shape_yx


def _link_chains(
    slice_of: np.ndarray, boxes: np.ndarray, scores: np.ndarray, iou_threshold: float
) -> list[list[int]]:
    """Greedy chains of detections on consecutive slices (indices into the flat arrays).

    Seeds are taken in descending score; a chain grows upwards and then downwards one slice at
    a time, each step taking the unassigned box of the next slice with the highest IoU with the
    chain's current end box (ties: higher score) if that IoU >= ``iou_threshold``.
    """
    order = np.lexsort((np.arange(len(scores)), -scores))  # descending score, stable
    by_slice: dict[int, np.ndarray] = {int(k): np.flatnonzero(slice_of == k) for k in np.unique(slice_of)}
    assigned = np.zeros(len(scores), dtype=bool)
    chains: list[list[int]] = []
    for seed in order:
        if assigned[seed]:
            continue
        assigned[seed] = True
        chain = [int(seed)]
        for step in (1, -1):
            end = seed
            while True:
                cands = by_slice.get(int(slice_of[end]) + step, np.zeros(0, dtype=np.int64))
                cands = cands[~assigned[cands]]
                if len(cands) == 0:
                    break
                ious = _continuous_iou(boxes[end], boxes[cands])
                pick = np.lexsort((-scores[cands], -ious))[0]
                if ious[pick] < iou_threshold:
                    break
                best = cands[pick]
                assigned[best] = True
                chain.append(int(best))
                end = best
        chains.append(sorted(chain, key=lambda i: slice_of[i]))
    return chains


def link_detections(
    per_slice: Sequence[SliceDetections],
    *,
    detector_interval_mm: float,
    input_interval_mm: float,
    spacing_yx_mm: tuple[float, float],
    num_input_slices: int,
    num_detector_slices: int | None = None,
    score_threshold: float = 0.5,
    iou_threshold: float = 0.3,
    mask_threshold: float = 0.5,
) -> list[Lesion]:
    """Link per-slice detections into 3D lesions in the input volume's geometry.

    A plain heuristic (not from the AlignShift paper):

    1. Keep detections with score >= ``score_threshold``.
    2. Greedy linking: take the highest-scoring unassigned detection as a new chain's seed and
       grow it slice by slice in both directions; on each adjacent detector slice the unassigned
       box with the highest 2D IoU (continuous coordinates) with the chain's end box joins if
       that IoU >= ``iou_threshold``. A box joins at most one chain; a chain stops at the first
       slice without a match (it only spans consecutive slices).
    3. Detector slice k lies at input slice position k * detector_interval_mm /
       input_interval_mm (they differ only for thin inputs that were resampled). Input slice z
       belongs to a chain spanning detector slices [ka, kb] if round(z * input_interval_mm /
       detector_interval_mm) (halves rounded up; with ``num_detector_slices``, clipped to the
       last detector slice) is in [ka, kb]; it gets that nearest detector slice's mask
       (probability >= ``mask_threshold``). The clip matters at the far end: input slices past
       the last detector slice (a resampled volume that stops short of the input's last slice,
       or ``detect --fast`` with an even count of network slices) join the last detector
       slice's chains instead of no lesion.
    4. The key slice is the input slice nearest the highest-scoring detection (or, where the
       mask is off there, the slice of its largest cross-section); the in-plane box is the
       union of the chain's boxes; RECIST axes come from the key slice's mask
       (:func:`recist_axes`); the volume counts mask voxels.
    5. Chains that overlap in 3D become one lesion and every voxel belongs to at most one
       lesion (:func:`disjoint_lesions`: 3D non-maximum suppression by mask overlap over the
       smaller mask, the highest score kept; partial overlaps stay with the higher score).

    Args:
        per_slice: detections per detector slice (slices without detections may be omitted).
        detector_interval_mm: slice interval of the detector volume, mm (>= the input's).
        input_interval_mm: slice interval of the input volume, mm.
        spacing_yx_mm: in-plane (row, column) spacing of the input volume, mm.
        num_input_slices: number of slices Z of the input volume.
        num_detector_slices: number of detector slices K (slices 0..K-1, with or without
            detections); None: unknown, input slices past the last one are in no lesion.
        score_threshold: minimum detection score kept.
        iou_threshold: minimum IoU to link boxes of adjacent slices.
        mask_threshold: mask probability at and above which a pixel is lesion.

    Returns:
        Disjoint lesions with at least one mask voxel each, sorted by descending score.

    Raises:
        ValueError: inconsistent shapes, duplicate slice indices, non-positive intervals or a
            detector interval smaller than the input's, or a detector slice that maps outside
            the input volume.
    """
    if not (detector_interval_mm > 0 and input_interval_mm > 0):
        raise ValueError(f"intervals must be > 0, got {detector_interval_mm} and {input_interval_mm} mm")
    ratio = float(detector_interval_mm) / float(input_interval_mm)
    if ratio < 1.0 - 1e-6:
        raise ValueError(
            f"detector interval {detector_interval_mm} mm is smaller than the input interval "
            f"{input_interval_mm} mm: only thin inputs are resampled, and only to a larger interval"
        )
    shape_yx = _check_slices(per_slice)
    if shape_yx is None:
        return []

    slice_of, boxes, scores, masks = [], [], [], []
    for sd in per_slice:
        keep = np.flatnonzero(np.asarray(sd.scores) >= score_threshold)
        slice_of.extend([int(sd.slice_index)] * len(keep))
        boxes.extend(np.asarray(sd.boxes_px, dtype=np.float64)[keep])
        scores.extend(np.asarray(sd.scores, dtype=np.float64)[keep])
        masks.extend(np.asarray(sd.masks)[keep] >= mask_threshold)
    if not scores:
        return []
    slice_arr, box_arr, score_arr = np.array(slice_of), np.array(boxes), np.array(scores)
    bad = [int(k) for k in np.unique(slice_arr) if k < 0 or np.floor(k * ratio + 0.5) > num_input_slices - 1
           or (num_detector_slices is not None and k >= num_detector_slices)]
    if bad:
        raise ValueError(
            f"detector slices {bad} map outside the input volume of {num_input_slices} slices "
            f"(ratio {ratio:g}) or lie past the {num_detector_slices} detector slices"
        )

    nearest_k = np.floor(np.arange(num_input_slices) / ratio + 0.5).astype(np.int64)  # per input slice
    if num_detector_slices is not None:
        nearest_k = np.minimum(nearest_k, num_detector_slices - 1)
    spacing_zyx_mm = (float(input_interval_mm), float(spacing_yx_mm[0]), float(spacing_yx_mm[1]))
    chains = [
        _chain_to_lesion(chain, slice_arr, box_arr, score_arr, masks, ratio, nearest_k, spacing_zyx_mm)
        for chain in _link_chains(slice_arr, box_arr, score_arr, iou_threshold)
    ]
    lesions = disjoint_lesions(chains, spacing_zyx_mm)
    logger.debug("linked %d detections into %d chains, %d disjoint lesions", len(score_arr), len(chains),
                 len(lesions))
    return lesions


def _chain_to_lesion(
    chain: list[int],
    slice_of: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    masks: list[np.ndarray],
    ratio: float,
    nearest_k: np.ndarray,
    spacing_zyx_mm: tuple[float, float, float],
) -> Lesion:
    """Map one chain (detector slices ascending) onto the input slices; ``nearest_k``: (Z,) the detector
    slice of every input slice (step 3 of link_detections)."""
    det_slices = slice_of[chain]
    ka, kb = int(det_slices[0]), int(det_slices[-1])
    z_all = np.arange(len(nearest_k))
    z_in = z_all[(nearest_k >= ka) & (nearest_k <= kb)]
    by_k = {int(slice_of[i]): i for i in chain}
    stack = np.stack([masks[by_k[int(nearest_k[z])]] for z in z_in])  # (nz, Y, X) bool

    key = chain[int(np.argmax(scores[chain]))]
    key_z = int(np.clip(np.floor(slice_of[key] * ratio + 0.5), z_in[0], z_in[-1]))
    chain_boxes = boxes[chain]
    box_vox = (
        float(chain_boxes[:, 0].min()), float(chain_boxes[:, 1].min()), float(z_in[0]),
        float(chain_boxes[:, 2].max()), float(chain_boxes[:, 3].max()), float(z_in[-1]),
    )
    return _measured_lesion(float(scores[key]), box_vox, key_z, stack, (int(z_in[0]), 0, 0), spacing_zyx_mm)


def _measured_lesion(score: float, box_vox: tuple[float, ...], key_slice: int, mask_zyx: np.ndarray,
                     offset_zyx: tuple[int, int, int], spacing_zyx_mm: tuple[float, float, float]) -> Lesion:
    """A lesion whose mask, volume, key slice and RECIST axes all come from ``mask_zyx``.

    The mask (bool, at input voxel ``offset_zyx``) is cropped to its bounding box. The key slice
    stays ``key_slice`` when the mask is on there; otherwise it moves to the slice with the
    largest mask area (ties: the nearest to ``key_slice``), so the axes are measured on the
    lesion's own voxels. The volume is the voxel count x the voxel volume.
    """
    areas = mask_zyx.sum(axis=(1, 2))
    z0 = offset_zyx[0]
    if len(areas) and areas.any() and not (0 <= key_slice - z0 < len(areas) and areas[key_slice - z0]):
        candidates = np.flatnonzero(areas == areas.max())
        key_slice = int(z0 + candidates[np.argmin(np.abs(z0 + candidates - key_slice))])
    on_z, on_y, on_x = (np.flatnonzero(mask_zyx.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    if len(on_z):
        crop = (slice(on_z[0], on_z[-1] + 1), slice(on_y[0], on_y[-1] + 1), slice(on_x[0], on_x[-1] + 1))
        offset = tuple(int(o + c.start) for o, c in zip(offset_zyx, crop))
    else:
        crop, offset = (slice(0, 0),) * 3, tuple(int(o) for o in offset_zyx)
    mask = np.ascontiguousarray(mask_zyx[crop])
    key_index = key_slice - offset[0]
    key_mask = mask[key_index] if 0 <= key_index < mask.shape[0] else np.zeros(mask.shape[1:], bool)
    axes = recist_axes(key_mask, spacing_zyx_mm[1:])
    long_px, short_px = (None if ends is None else tuple((x + offset[2], y + offset[1]) for x, y in ends)
                         for ends in (axes.long_px, axes.short_px))
    voxel_ml = float(np.prod(spacing_zyx_mm)) / 1000.0
    return Lesion(
        score=score,
        box_vox=box_vox,
        key_slice=int(key_slice),
        long_axis_mm=axes.long_mm,
        short_axis_mm=axes.short_mm,
        volume_ml=float(mask.sum()) * voxel_ml,
        mask_zyx=mask,
        mask_offset_zyx=offset,  # type: ignore[arg-type]
        long_axis_px=long_px,  # type: ignore[arg-type]
        short_axis_px=short_px,  # type: ignore[arg-type]
    )


#: 3D non-maximum suppression of linked lesions (:func:`disjoint_lesions`): a lesion that shares
#: at least this fraction of the smaller mask's voxels with a higher-scoring lesion is a
#: duplicate of it.
DUPLICATE_OVERLAP = 0.5


def _overlap_region(a: Lesion, b: Lesion) -> tuple[tuple[slice, ...], tuple[slice, ...]] | None:
    """Index slices into ``a.mask_zyx`` and ``b.mask_zyx`` of their bounding boxes' overlap (None if disjoint)."""
    lows = [max(oa, ob) for oa, ob in zip(a.mask_offset_zyx, b.mask_offset_zyx)]
    highs = [min(oa + na, ob + nb) for oa, na, ob, nb in
             zip(a.mask_offset_zyx, a.mask_zyx.shape, b.mask_offset_zyx, b.mask_zyx.shape)]
    if any(lo >= hi for lo, hi in zip(lows, highs)):
        return None
    return (tuple(slice(lo - o, hi - o) for lo, hi, o in zip(lows, highs, a.mask_offset_zyx)),
            tuple(slice(lo - o, hi - o) for lo, hi, o in zip(lows, highs, b.mask_offset_zyx)))


def disjoint_lesions(lesions: Sequence[Lesion], spacing_zyx_mm: tuple[float, float, float], *,
                     duplicate_overlap: float = DUPLICATE_OVERLAP) -> list[Lesion]:
    """Make lesions disjoint 3D objects: one lesion per finding, each voxel in at most one lesion.

    Overlapping detections of one spot (a box nested in a larger one, which the detector's 2D
    IoU NMS lets through, each linked into its own chain) would otherwise be reported as
    several lesions whose masks share voxels, and a label map, SEG or SR could not hold them
    all. The rule (a 3D non-maximum suppression on the linked masks, not from the AlignShift
    paper), in descending score (ties: input order):

    1. A lesion without a mask voxel is dropped: no label map, SEG or SR can show it.
    2. A lesion that shares at least ``duplicate_overlap`` of the smaller mask's voxels
       (intersection over the smaller) with a lesion already kept is a duplicate of that
       finding and is dropped; the higher-scoring lesion stands for it.
    3. Voxels it shares with kept lesions below that (a partial overlap) stay with them: its
       mask is cut to its own voxels, and its volume, key slice (moved to its largest cross
       section if its key slice lost every voxel) and RECIST axes are measured again on that
       mask; it is dropped if no voxel remains.

    Afterwards every kept lesion's ``volume_ml``, ``key_slice`` and axes are those of its own
    voxels, so a label map painted from them (:func:`ctlesion.report.results.label_map`) holds
    each lesion whole.

    Args:
        lesions: lesions in the input geometry (any order), as :func:`link_detections` makes them.
        spacing_zyx_mm: the input volume's voxel spacing (slice interval, row, column), mm.
        duplicate_overlap: fraction in (0, 1] of the smaller mask above which two lesions are one.

    Returns:
        The kept lesions, sorted by descending score.

    Raises:
        ValueError: if ``duplicate_overlap`` is not in (0, 1].
    """
    if not 0.0 < duplicate_overlap <= 1.0:
        raise ValueError(f"duplicate_overlap must be in (0, 1], got {duplicate_overlap}")
    order = sorted(range(len(lesions)), key=lambda i: (-lesions[i].score, i))
    kept: list[tuple[Lesion, int]] = []  # with their voxel counts, counted once
    for lesion in (lesions[i] for i in order):
        size = int(lesion.mask_zyx.sum())
        own = lesion.mask_zyx.copy()
        duplicate = size == 0
        for other, other_size in kept:
            region = _overlap_region(lesion, other) if not duplicate else None
            if region is None:
                continue
            shared = own[region[0]] & other.mask_zyx[region[1]]
            count = int(shared.sum())
            if count and count >= duplicate_overlap * min(size, other_size):
                duplicate = True
            own[region[0]] &= ~shared
        own_size = int(own.sum())
        if duplicate or own_size == 0:
            logger.debug("dropped a lesion of score %.3f at %s: %s", lesion.score, lesion.mask_offset_zyx,
                         "no voxel" if size == 0 else "duplicate of a higher-scoring lesion")
            continue
        kept.append((lesion if own_size == size else
                     _measured_lesion(lesion.score, lesion.box_vox, lesion.key_slice, own, lesion.mask_offset_zyx,
                                      spacing_zyx_mm), own_size))
    return [lesion for lesion, _ in kept]


def _mask_hull_mm(mask_yx: np.ndarray, spacing_yx_mm: tuple[float, float]) -> np.ndarray:
    """Convex hull (H, 2) in mm (x, y) of the pixel squares of a mask (pixel i spans [i, i+1))."""
    contours, _ = cv2.findContours(mask_yx.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    centres = np.concatenate([c.reshape(-1, 2) for c in contours]).astype(np.float32)
    corners = (centres[:, None, :] + np.array([[0, 0], [1, 0], [0, 1], [1, 1]], np.float32)).reshape(-1, 2)
    hull = cv2.convexHull(corners).reshape(-1, 2).astype(np.float64)
    return hull * np.array([spacing_yx_mm[1], spacing_yx_mm[0]], dtype=np.float64)


def _max_chord(hull_mm: np.ndarray, direction: np.ndarray) -> tuple[float, np.ndarray]:
    """Longest chord of a convex polygon along a unit direction: its length (mm) and its two end
    points ((2, 2) array of (x, y) mm).

    The chord length across a convex polygon is a concave function of the line's offset, so
    its maximum lies on a line through a vertex: evaluate the chord on each vertex's line.
    """
    perpendicular = np.array([-direction[1], direction[0]])
    along = hull_mm @ direction
    across = hull_mm @ perpendicular
    a0, a1 = along, np.roll(along, -1)
    b0, b1 = across, np.roll(across, -1)
    level = across[:, None]  # (levels, 1) against (edges,)
    db = b1 - b0
    t = np.divide(level - b0, db, out=np.full((len(level), len(db)), np.nan), where=db != 0)
    on_edge = (t >= 0) & (t <= 1)
    a_hit = np.where(on_edge, a0 + np.nan_to_num(t) * (a1 - a0), np.nan)
    # Vertices on the level (covers edges parallel to the direction).
    a_vert = np.where(np.isclose(across[None, :], level, rtol=0, atol=1e-9), along[None, :], np.nan)
    a_all = np.concatenate([a_hit, a_vert], axis=1)
    low, high = np.nanmin(a_all, axis=1), np.nanmax(a_all, axis=1)
    best = int(np.nanargmax(high - low))
    ends = np.array([low[best], high[best]])[:, None] * direction + across[best] * perpendicular
    return float(high[best] - low[best]), ends


@dataclass(frozen=True)
class RecistAxes:
    """RECIST-style axes of a 2D mask (:func:`recist_axes`).

    Attributes:
        long_mm, short_mm: the long and short axis lengths, mm.
        long_px, short_px: their end points ((x0, y0), (x1, y1)), continuous pixel coordinates
            of the mask (pixel i spans [i, i + 1)); None for an empty mask.
    """

    long_mm: float
    short_mm: float
    long_px: tuple[tuple[float, float], tuple[float, float]] | None
    short_px: tuple[tuple[float, float], tuple[float, float]] | None


def recist_axes(mask_yx: np.ndarray, spacing_yx_mm: tuple[float, float]) -> RecistAxes:
    """RECIST-style long and short axes of a 2D mask: lengths in mm and end points in pixels.

    The mask is taken as the union of its pixel squares (the ImageJ Feret convention):
    OpenCV's outer contours give the boundary pixels, their corners are scaled to mm and their
    convex hull is formed. Long axis = maximum Feret diameter (largest distance between hull
    vertices). Short axis = longest chord of the hull whose direction is within +/-5 degrees of
    perpendicular to the long axis (RECIST 1.1 practice, Eisenhauer et al. 2009, measures the
    short axis perpendicular to the long one; the tolerance absorbs pixel discretisation),
    capped at the long axis. For non-convex masks the chords run across the hull. A rasterised
    disc of diameter D measures within about one pixel of D (corners of the boundary pixels
    stick out by up to half a pixel diagonal).

    Args:
        mask_yx: (Y, X) mask, bool or numeric (non-zero = lesion).
        spacing_yx_mm: (row, column) pixel spacing in mm; anisotropic spacing is handled.

    Returns:
        :class:`RecistAxes`; lengths (0.0, 0.0) and no end points for an empty mask.

    Raises:
        ValueError: if the mask is not 2-D or a spacing is not positive.
    """
    mask = np.asarray(mask_yx)
    if mask.ndim != 2:
        raise ValueError(f"mask_yx must be 2-D (Y, X), got shape {mask.shape}")
    if not all(np.isfinite(s) and s > 0 for s in spacing_yx_mm):
        raise ValueError(f"spacing_yx_mm must be positive, got {spacing_yx_mm}")
    if not mask.any():
        return RecistAxes(0.0, 0.0, None, None)
    hull = _mask_hull_mm(mask != 0, spacing_yx_mm)
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    long_mm = float(dist[i, j])
    theta = np.arctan2(diff[i, j, 1], diff[i, j, 0]) + np.pi / 2
    tol = np.deg2rad(PERPENDICULAR_TOLERANCE_DEG)
    angles = theta + np.arange(-tol, tol + 1e-12, np.deg2rad(_ANGLE_STEP_DEG))
    short_mm, short_ends = max((_max_chord(hull, np.array([np.cos(a), np.sin(a)])) for a in angles),
                               key=lambda chord: chord[0])
    to_px = 1.0 / np.array([spacing_yx_mm[1], spacing_yx_mm[0]], dtype=np.float64)  # (x, y) mm -> px
    return RecistAxes(long_mm, min(short_mm, long_mm), _ends(np.stack([hull[j], hull[i]]) * to_px),
                      _ends(short_ends * to_px))


def _ends(points: np.ndarray) -> tuple[tuple[float, float], tuple[float, float]]:
    """((x0, y0), (x1, y1)) Python floats from a (2, 2) array."""
    return (float(points[0, 0]), float(points[0, 1])), (float(points[1, 0]), float(points[1, 1]))


def recist_axes_mm(mask_yx: np.ndarray, spacing_yx_mm: tuple[float, float]) -> tuple[float, float]:
    """``(long_axis_mm, short_axis_mm)`` of :func:`recist_axes`; (0.0, 0.0) for an empty mask.

    Raises:
        ValueError: as :func:`recist_axes`.
    """
    axes = recist_axes(mask_yx, spacing_yx_mm)
    return axes.long_mm, axes.short_mm


def box_lps_mm(box_vox: Sequence[float], volume: Volume) -> list[float]:
    """Axis-aligned LPS bounds (mm) of a voxel box (x1, y1, z1, x2, y2, z2).

    The box is taken as the physical region it covers: x, y are continuous pixel coordinates
    (pixel i spans [i, i + 1), its centre is voxel index i, so index = coordinate - 0.5);
    z1, z2 are inclusive slice indices whose slabs span [z - 0.5, z + 0.5]. The 8 corners are
    mapped with :meth:`Volume.voxel_to_lps` and their per-axis minimum and maximum taken.

    Args:
        box_vox: (x1, y1, z1, x2, y2, z2) as in :class:`Lesion`.
        volume: the input volume (its origin, spacing and direction).

    Returns:
        ``[x_min, y_min, z_min, x_max, y_max, z_max]`` in LPS mm (Python floats).

    Raises:
        ValueError: if ``box_vox`` does not have 6 values.
    """
    if len(box_vox) != 6:
        raise ValueError(f"box_vox must be (x1, y1, z1, x2, y2, z2), got {box_vox}")
    x1, y1, z1, x2, y2, z2 = (float(v) for v in box_vox)
    xs, ys, zs = (x1 - 0.5, x2 - 0.5), (y1 - 0.5, y2 - 0.5), (z1 - 0.5, z2 + 0.5)
    corners = np.array([(x, y, z) for x in xs for y in ys for z in zs])
    lps = volume.voxel_to_lps(corners)
    return [float(v) for v in (*lps.min(axis=0), *lps.max(axis=0))]
