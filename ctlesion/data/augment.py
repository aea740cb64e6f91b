"""Training augmentation: shift / scale / rotate and horizontal flip (SPEC section 7).

The released AlignShift recipe augments each training window with a random shift (up to
4 % of the image side), scale (up to +/- 20 %) and rotation (up to +/- 15 degrees), applied
together with probability 0.8, and a horizontal flip with probability 0.5; nothing at test
time. Here the draw becomes **one** affine map (OpenCV's ``getRotationMatrix2D`` about the
image centre, the shift, then the flip), applied with ``cv2.warpAffine`` to every slice of the
window (bilinear, outside filled with 0, which is air after :func:`ctlesion.preprocess.normalize_hu`;
the released code reflected the border instead), to the lesions' masks (nearest neighbour) and
to their boxes.

Boxes (continuous pixel coordinates, pixel i covering [i, i+1)):

* without rotation (shift, scale and flip only) a box maps to a box: its corners are
  transformed exactly;
* with rotation the rotated corners would over-estimate the lesion, so the box is the
  bounding box of the transformed lesion outline, grown by the margins the annotation box
  had around that outline (carried to the side they turn to, scaled with the image). The
  outline is the lesion's mask when masks are given (the bounding box of its warped pixels),
  else the RECIST quadrilateral (its four transformed corners, exact), else the box itself.
  DeepLesion boxes are the RECIST extent plus about 5 px, so the margins keep augmented
  boxes the same kind of box as the unaugmented ones (a 20 px lesion's tight box has
  IoU 0.44 with its padded one, below the 0.5 of the FROC criterion). When the box is tight
  around its mask (no margins) the box is exactly the bounding box of the warped mask.

Boxes are clipped to the image. A lesion is dropped when no pixel centre of its clipped box
is left in the image or, with masks, when its warped mask is empty. If every lesion leaves,
the item is returned without the shift / scale / rotation (the flip, which never moves a
lesion out of the image, is kept).

Draws come from a caller-supplied :class:`numpy.random.Generator` (the dataset seeds it from
(seed, index, epoch), so the same item gets the same augmentation whatever the number of
DataLoader workers).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ctlesion.data.masks import box_pixel_range

#: Directions of the box sides in image coordinates (x right, y down): left, top, right, bottom.
_SIDE_DIRECTIONS = np.array([[-1.0, 0.0], [0.0, -1.0], [1.0, 0.0], [0.0, 1.0]])


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges and probabilities of the training augmentation (defaults: SPEC section 7).

    Attributes:
        shift_frac: largest shift, fraction of the image width (x) and height (y).
        scale_frac: the scale factor is drawn from [1 - scale_frac, 1 + scale_frac].
        rotate_deg: the angle is drawn from [-rotate_deg, rotate_deg] degrees.
        p_affine: probability of applying the shift / scale / rotation.
        flip_p: probability of a horizontal (left-right) flip.

    Raises:
        ValueError: for a negative range, ``scale_frac`` >= 1 or a probability outside [0, 1].
    """

    shift_frac: float = 0.04
    scale_frac: float = 0.2
    rotate_deg: float = 15.0
    p_affine: float = 0.8
    flip_p: float = 0.5

    def __post_init__(self) -> None:
        if min(self.shift_frac, self.scale_frac, self.rotate_deg) < 0 or self.scale_frac >= 1:
            raise ValueError(f"augmentation ranges must be >= 0 (scale_frac < 1): {self}")
        if not (0.0 <= self.p_affine <= 1.0 and 0.0 <= self.flip_p <= 1.0):
            raise ValueError(f"augmentation probabilities must lie in [0, 1]: {self}")

    @classmethod
    def flip_only(cls, flip_p: float) -> AugmentConfig:
        """Horizontal flips with probability ``flip_p`` and nothing else."""
        return cls(shift_frac=0.0, scale_frac=0.0, rotate_deg=0.0, p_affine=0.0, flip_p=flip_p)


@dataclass(frozen=True)
class AugmentDraw:
    """One drawn augmentation.

    Attributes:
        flip: mirror left-right (after the affine part).
        angle_deg: rotation about the image centre, degrees, counter-clockwise as displayed
            (OpenCV's ``getRotationMatrix2D`` convention).
        scale: scale factor about the image centre.
        shift_frac_xy: shift as fractions of the image width and height.
    """

    flip: bool = False
    angle_deg: float = 0.0
    scale: float = 1.0
    shift_frac_xy: tuple[float, float] = (0.0, 0.0)

    @property
    def has_affine(self) -> bool:
        """Whether the draw shifts, scales or rotates (not just flips)."""
        return self.angle_deg != 0.0 or self.scale != 1.0 or self.shift_frac_xy != (0.0, 0.0)

    def without_affine(self) -> AugmentDraw:
        """The same draw with the shift, scale and rotation removed (the flip kept)."""
        return AugmentDraw(flip=self.flip)


def draw_augmentation(config: AugmentConfig, rng: np.random.Generator) -> AugmentDraw:
    """Draw one augmentation: flip with ``flip_p``, then the affine part with ``p_affine``.

    The first number drawn decides the flip (``rng.random() < flip_p``), as the dataset's
    earlier flip-only augmentation did, so flip-only draws are unchanged.
    """
    flip = bool(rng.random() < config.flip_p)
    if not rng.random() < config.p_affine:
        return AugmentDraw(flip=flip)
    angle = float(rng.uniform(-config.rotate_deg, config.rotate_deg))
    scale = float(1.0 + rng.uniform(-config.scale_frac, config.scale_frac))
    shift = rng.uniform(-config.shift_frac, config.shift_frac, 2)
    return AugmentDraw(flip=flip, angle_deg=angle, scale=scale, shift_frac_xy=(float(shift[0]), float(shift[1])))


def affine_matrix(draw: AugmentDraw, shape_yx: tuple[int, int]) -> np.ndarray:
    """The (2, 3) float64 map ``p' = M[:, :2] @ p + M[:, 2]`` of a draw, continuous pixel coordinates.

    Rotation and scale about the image centre (W / 2, H / 2) (``cv2.getRotationMatrix2D``),
    then the shift (``shift_frac_xy`` times W and H), then the flip x -> W - x.
    """
    height, width = shape_yx
    matrix = cv2.getRotationMatrix2D((width / 2.0, height / 2.0), draw.angle_deg, draw.scale).astype(np.float64)
    matrix[:, 2] += (draw.shift_frac_xy[0] * width, draw.shift_frac_xy[1] * height)
    if draw.flip:
        matrix = np.array([[-1.0, 0.0, width], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    return matrix


def index_matrix(matrix: np.ndarray) -> np.ndarray:
    """Convert a continuous-coordinate affine map to OpenCV's pixel-index one (centres at integers).

    With c = i + 0.5: i' = A i + (t + A (0.5, 0.5) - (0.5, 0.5)).
    """
    out = np.array(matrix, dtype=np.float64)
    out[:, 2] += out[:, :2] @ np.array([0.5, 0.5]) - 0.5
    return out


def transform_points(matrix: np.ndarray, points_xy: np.ndarray) -> np.ndarray:
    """Apply a (2, 3) affine map to (..., 2) points (x, y)."""
    points = np.asarray(points_xy, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp_window(window: np.ndarray, matrix: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """Warp every slice of a (D, Y, X) window with one affine map (bilinear, constant ``fill`` outside).

    Args:
        window: (D, Y, X) float32 slices (e.g. normalised to [0, 1]).
        matrix: (2, 3) continuous-coordinate map (:func:`affine_matrix`).
        fill: value outside the source image (0 = air after normalisation).

    Returns:
        (D, Y, X) float32 array.
    """
    height, width = window.shape[1:]
    m = index_matrix(matrix)
    return np.stack([
        cv2.warpAffine(np.ascontiguousarray(s, dtype=np.float32), m, (width, height), flags=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT, borderValue=float(fill))
        for s in window
    ])


def warp_masks(masks: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp (N, Y, X) masks with nearest neighbour; returns (N, Y, X) bool."""
    height, width = masks.shape[1:]
    m = index_matrix(matrix)
    out = np.zeros(masks.shape, dtype=bool)
    for n, mask in enumerate(masks):
        out[n] = cv2.warpAffine(mask.astype(np.uint8), m, (width, height), flags=cv2.INTER_NEAREST,
                                borderMode=cv2.BORDER_CONSTANT, borderValue=0) > 0
    return out


def mask_box(mask: np.ndarray) -> np.ndarray | None:
    """Bounding box (x1, y1, x2, y2) float64 of a (Y, X) mask, continuous coordinates; None if empty.

    Pixel i covers [i, i+1), so the box of pixels x0..x1 is [x0, x1 + 1).
    """
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return np.array([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=np.float64)


def flip_boxes_x(boxes_px: np.ndarray, width_px: float) -> np.ndarray:
    """Mirror (N, 4) boxes (x1, y1, x2, y2) left-right in an image ``width_px`` wide.

    With pixel i covering [i, i+1), column i goes to width - 1 - i, so x -> width - x.
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).copy()
    boxes[:, [0, 2]] = width_px - boxes[:, [2, 0]]
    return boxes


def _bounds(points_xy: np.ndarray) -> np.ndarray:
    """(x1, y1, x2, y2) of a (K, 2) point set."""
    return np.concatenate([points_xy.min(axis=0), points_xy.max(axis=0)])


def _box_corners(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    return np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], dtype=np.float64)


def carry_margins(margins: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Move box margins (left, top, right, bottom) to the sides they face after a linear map.

    Each side's outward direction is mapped by the linear part of ``matrix`` and snapped to
    the nearest axis direction; its margin goes there, multiplied by the length of the mapped
    direction (the scale). Exact for quarter turns, flips and uniform margins.
    """
    out = np.zeros(4, dtype=np.float64)
    linear = matrix[:, :2]
    for margin, direction in zip(margins, _SIDE_DIRECTIONS):
        mapped = linear @ direction
        side = int(np.argmax(_SIDE_DIRECTIONS @ mapped))
        out[side] = margin * float(np.hypot(*mapped))
    return out


def _outline(box: np.ndarray, recist: np.ndarray | None, mask: np.ndarray | None):
    """The lesion outline used for rotated boxes: ('mask', mask) or ('points', (K, 2) points)."""
    if mask is not None and mask.any():
        return "mask", mask
    if recist is not None and np.all(np.isfinite(recist)):
        return "points", np.asarray(recist, dtype=np.float64).reshape(4, 2)
    return "points", _box_corners(box)


def transform_boxes(
    boxes_px: np.ndarray,
    matrix: np.ndarray,
    *,
    recist_px: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    warped_masks: np.ndarray | None = None,
) -> np.ndarray:
    """Boxes of the lesions after an affine map (module doc: exact corners, or outline + margins).

    Args:
        boxes_px: (N, 4) boxes (x1, y1, x2, y2), continuous pixel coordinates.
        matrix: (2, 3) continuous-coordinate map (:func:`affine_matrix`).
        recist_px: optional (N, 8) RECIST endpoints (long axis then short axis, x, y pairs).
        masks: optional (N, Y, X) masks before the map.
        warped_masks: the same masks after the map (:func:`warp_masks`), needed with ``masks``.

    Returns:
        (N, 4) float64 boxes, not clipped; a row is NaN when its outline mask left the image.
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    linear = matrix[:, :2]
    if abs(linear[0, 1]) < 1e-12 and abs(linear[1, 0]) < 1e-12:
        # Shift, scale and flip keep boxes axis-aligned: map the corners.
        return np.array([_bounds(transform_points(matrix, _box_corners(b))) for b in boxes]).reshape(-1, 4)
    out = np.full(boxes.shape, np.nan)
    for n, box in enumerate(boxes):
        kind, outline = _outline(box, None if recist_px is None else recist_px[n],
                                 None if masks is None else masks[n])
        if kind == "mask":
            before, after = mask_box(outline), mask_box(warped_masks[n])
            if after is None:
                continue
        else:
            before, after = _bounds(outline), _bounds(transform_points(matrix, outline))
        margins = np.array([before[0] - box[0], before[1] - box[1], box[2] - before[2], box[3] - before[3]])
        left, top, right, bottom = carry_margins(margins, matrix)
        out[n] = after + np.array([-left, -top, right, bottom])
    return out


def clip_boxes(boxes_px: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Clip (N, 4) boxes to an image of ``shape_yx`` (x in [0, X], y in [0, Y])."""
    boxes = np.asarray(boxes_px, dtype=np.float64).copy()
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0.0, shape_yx[1])
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0.0, shape_yx[0])
    return boxes


def _visible(box: np.ndarray, shape_yx: tuple[int, int]) -> bool:
    """Whether at least one pixel centre of the (clipped) box lies in the image."""
    if not np.all(np.isfinite(box)):
        return False
    x1, y1, x2, y2 = box_pixel_range(box, shape_yx)
    return x2 > x1 and y2 > y1


@dataclass(frozen=True)
class AugmentedItem:
    """A window, boxes and masks after augmentation.

    Attributes:
        window: (D, Y, X) float32.
        boxes_px: (N', 4) float64 boxes, continuous pixels, clipped to the image.
        masks: (N', Y, X) bool masks, or None when none were given.
        kept: (N',) int64 indices of the input lesions that remain.
        draw: the augmentation actually applied (the affine part is removed by the fallback).
    """

    window: np.ndarray
    boxes_px: np.ndarray
    masks: np.ndarray | None
    kept: np.ndarray
    draw: AugmentDraw


def _flip_only(window: np.ndarray, boxes: np.ndarray, masks: np.ndarray | None, draw: AugmentDraw) -> AugmentedItem:
    """Apply just the flip of a draw by mirroring arrays (exact, no resampling)."""
    kept = np.arange(len(boxes), dtype=np.int64)
    if not draw.flip:
        return AugmentedItem(window, boxes.copy(), masks, kept, draw)
    flipped_masks = None if masks is None else np.ascontiguousarray(masks[:, :, ::-1])
    return AugmentedItem(np.ascontiguousarray(window[:, :, ::-1]), flip_boxes_x(boxes, window.shape[2]),
                         flipped_masks, kept, draw)


def augment_item(
    window: np.ndarray,
    boxes_px: np.ndarray,
    draw: AugmentDraw,
    *,
    recist_px: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    fill: float = 0.0,
) -> AugmentedItem:
    """Apply one drawn augmentation to a window, its lesions' boxes and (optionally) masks.

    Args:
        window: (D, Y, X) float32 window (normalised; ``fill`` is written outside the source).
        boxes_px: (N, 4) boxes (x1, y1, x2, y2), continuous pixels of the window.
        draw: from :func:`draw_augmentation`.
        recist_px: optional (N, 8) RECIST endpoints, used for rotated boxes without masks.
        masks: optional (N, Y, X) bool masks.
        fill: image value outside the source after the warp.

    Returns:
        The :class:`AugmentedItem`; lesions that left the image are dropped, and if all of
        them did, the affine part is skipped (module doc).
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    if not draw.has_affine:
        return _flip_only(window, boxes, masks, draw)
    shape_yx = window.shape[1:]
    matrix = affine_matrix(draw, shape_yx)
    warped = None if masks is None else warp_masks(masks, matrix)
    moved = clip_boxes(transform_boxes(boxes, matrix, recist_px=recist_px, masks=masks, warped_masks=warped),
                       shape_yx)
    keep = [n for n in range(len(boxes)) if _visible(moved[n], shape_yx) and (warped is None or warped[n].any())]
    if len(boxes) and not keep:
        return _flip_only(window, boxes, masks, draw.without_affine())
    kept = np.array(keep, dtype=np.int64)
    return AugmentedItem(
        window=warp_window(window, matrix, fill),
        boxes_px=moved[kept].reshape(-1, 4),
        masks=None if warped is None else warped[kept],
        kept=kept,
        draw=draw,
    )

