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

Crops (``ctlesion train --crop-size PX``, :class:`CropConfig`): instead of the whole slice, the
network sees a PX x PX piece of the key-slice window at the model's native pixel scale, i.e.
cut from the image :func:`ctlesion.preprocess.fit_in_plane` makes for the whole slice (after
the augmentation above), so lesions keep the size they have at inference, where the network
(fully convolutional, anchors in network pixels) still runs on whole slices. A crop is drawn
(:func:`draw_crop`) from its own generator, after the augmentation, by these rules:

* with probability ``negative_fraction`` (or when the slice has no lesion) a **negative crop**:
  a pixel drawn uniformly from the body (:func:`ctlesion.body.body_mask` of the key slice, carried through
  the augmentation and the resize) becomes the crop's centre (the crop is then moved inside
  the image); lesions that happen to lie in it are kept by the rule below. With
  ``hard_negative_fraction`` > 0 and hard negatives known for the slice (boxes where an earlier
  model fired on no lesion, :mod:`ctlesion.data.hard_negatives`), a negative crop is a **hard
  negative crop** with that probability: the centre is drawn uniformly from the union of those
  boxes instead (carried through the augmentation and the resize like the body), so the network
  sees again, as background, what it mistook for a lesion (hard negative mining, e.g. Shrivastava
  et al., "Training Region-based Object Detectors with Online Hard Example Mining", CVPR 2016,
  here offline and at the crop level);
* otherwise a **lesion crop**: one of the slice's lesions drawn uniformly; along each axis the
  crop's integer position is drawn uniformly among those that hold the lesion's box wholly
  and stay inside the image (a crop centred on the lesion, jittered by up to half the room
  left, ``(PX - side) / 2``, either way). A box wider than the crop gets a crop lying wholly
  within the box's extent instead; in the rare case where no integer position exists (a box
  within 1 px of PX wide) the crop is centred on the box;
* boxes and masks are shifted by the crop's offset and clipped to it (:func:`crop_item`); a
  lesion is kept when at least ``min_visible_fraction`` of its box area lies in the crop (and
  at least one pixel centre, and a non-empty mask), except that the lesion a crop was drawn
  around is always kept (it is wholly inside when it fits).

The crop never leaves the padded S x S image, so with a source that does not fill it (non-square
slices) a crop can include padding, as whole slices do.
"""

from __future__ import annotations

from collections.abc import Callable
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



# --------------------------------------------------------------------------- crops


@dataclass(frozen=True)
class CropConfig:
    """Training on crops at the model's native pixel scale (module doc, "Crops").

    Attributes:
        size_px: side PX of the square crop, network pixels: a multiple of 32 (the network's
            stride), at most the model's ``image_size_px``.
        negative_fraction: probability of a negative crop (anywhere in the body) instead of a
            crop around a lesion.
        min_visible_fraction: a lesion cut by the crop's border is kept when at least this
            fraction of its box area lies inside the crop (else it is dropped from the targets).
        hard_negative_fraction: probability that a negative crop is centred in the slice's hard
            negatives (when it has any) instead of anywhere in the body; 0 (default) draws exactly
            as before hard negatives existed.

    Raises:
        ValueError: for a size that is not a positive multiple of 32, or a fraction outside [0, 1].
    """

    size_px: int
    negative_fraction: float = 0.25
    min_visible_fraction: float = 0.5
    hard_negative_fraction: float = 0.0

    def __post_init__(self) -> None:
        if int(self.size_px) != self.size_px or self.size_px < 32 or self.size_px % 32:
            raise ValueError(f"crop size must be a positive multiple of 32 px, got {self.size_px}")
        fractions = (self.negative_fraction, self.min_visible_fraction, self.hard_negative_fraction)
        if not all(0.0 <= value <= 1.0 for value in fractions):
            raise ValueError(f"crop fractions must lie in [0, 1]: {self}")


@dataclass(frozen=True)
class CropDraw:
    """One drawn crop.

    Attributes:
        offset_xy_px: (x0, y0) network pixels: the crop holds columns x0 .. x0 + PX - 1 and
            rows y0 .. y0 + PX - 1 of the fitted (S, S) image; crop coordinate = image
            coordinate - offset.
        size_px: PX.
        lesion: index of the lesion the crop was drawn around; None for a negative crop.
        hard: whether a negative crop was centred in the slice's hard negatives.
    """

    offset_xy_px: tuple[int, int]
    size_px: int
    lesion: int | None
    hard: bool = False

    @property
    def negative(self) -> bool:
        """Whether the crop was drawn anywhere in the body rather than around a lesion."""
        return self.lesion is None


def apply_draw_to_masks(masks: np.ndarray, draw: AugmentDraw) -> np.ndarray:
    """(N, Y, X) masks moved by a draw exactly as :func:`augment_item` moves lesion masks; returns bool.

    Pass the draw :func:`augment_item` actually applied (``AugmentedItem.draw``).
    """
    masks = np.asarray(masks, dtype=bool)
    if draw.has_affine:
        return warp_masks(masks, affine_matrix(draw, masks.shape[1:]))
    return np.ascontiguousarray(masks[:, :, ::-1]) if draw.flip else masks


def _lesion_offset(rng: np.random.Generator, low: float, high: float, image_px: int, crop_px: int) -> int:
    """Integer crop start along one axis for a box [low, high): uniform over the starts that hold
    the box wholly (or, for a box longer than the crop, lie within it), inside [0, image - crop]."""
    a, b = sorted((low, high - crop_px))
    first, last = max(int(np.ceil(a - 1e-9)), 0), min(int(np.floor(b + 1e-9)), image_px - crop_px)
    if first > last:  # no integer position: centre on the box
        return int(np.clip(round((low + high - crop_px) / 2), 0, image_px - crop_px))
    return int(rng.integers(first, last + 1))


def draw_crop(
    config: CropConfig,
    rng: np.random.Generator,
    boxes_px: np.ndarray,
    image_size_px: int,
    body: Callable[[], np.ndarray | None] | None = None,
    hard: Callable[[], np.ndarray | None] | None = None,
) -> CropDraw:
    """Draw one crop of an (S, S) network image by the rules of the module doc.

    Draw order: one number deciding negative or not, then the lesion and the x and y starts
    (lesion crops), or (negative crops) one number deciding hard or not (only with
    ``config.hard_negative_fraction`` > 0 and ``hard`` given) and the centre pixel.

    Args:
        config: the crop settings.
        rng: the generator (the dataset seeds it from (seed, index, epoch)).
        boxes_px: (N, 4) lesion boxes (x1, y1, x2, y2) in the image, network pixels.
        image_size_px: S; must be >= ``config.size_px``.
        body: returns the (S, S) bool body mask of the image, called only for a negative
            crop; None (or an empty mask) places negative crops uniformly in the image.
        hard: returns the (S, S) bool mask of the image's hard negatives, called only for a
            negative crop drawn as hard; None, or an empty mask, falls back to ``body``.

    Raises:
        ValueError: if the crop is larger than the image.
    """
    size = config.size_px
    room = image_size_px - size
    if room < 0:
        raise ValueError(f"crop of {size} px larger than the {image_size_px} px image")
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    negative = bool(rng.random() < config.negative_fraction) or len(boxes) == 0
    if not negative:
        lesion = int(rng.integers(len(boxes)))
        x1, y1, x2, y2 = boxes[lesion]
        x0 = _lesion_offset(rng, x1, x2, image_size_px, size)
        y0 = _lesion_offset(rng, y1, y2, image_size_px, size)
        return CropDraw((x0, y0), size, lesion)
    mask = None
    if config.hard_negative_fraction > 0 and hard is not None and rng.random() < config.hard_negative_fraction:
        mask = hard()
    is_hard = mask is not None and bool(np.any(mask))
    if not is_hard:
        mask = None if body is None else body()
    pixels = np.empty(0, dtype=np.int64) if mask is None else np.flatnonzero(mask)
    if pixels.size == 0:
        x0, y0 = (int(v) for v in rng.integers(0, room + 1, 2))
        return CropDraw((x0, y0), size, None)
    row, col = divmod(int(pixels[rng.integers(pixels.size)]), image_size_px)
    # Pixel (row, col) at the crop's centre (pixel PX / 2), the crop then moved inside the image.
    x0, y0 = (int(np.clip(v - size // 2, 0, room)) for v in (col, row))
    return CropDraw((x0, y0), size, None, hard=is_hard)


@dataclass(frozen=True)
class CroppedItem:
    """A network image, boxes and masks after a crop.

    Attributes:
        image: (D, PX, PX) float32.
        boxes_px: (N', 4) float64 boxes in crop pixels, clipped to the crop.
        masks: (N', PX, PX) masks (the input's dtype), or None when none were given.
        kept: (N',) int64 indices of the input lesions that remain.
        draw: the crop.
    """

    image: np.ndarray
    boxes_px: np.ndarray
    masks: np.ndarray | None
    kept: np.ndarray
    draw: CropDraw


def crop_item(
    image: np.ndarray,
    boxes_px: np.ndarray,
    draw: CropDraw,
    *,
    masks: np.ndarray | None = None,
    min_visible_fraction: float = 0.5,
) -> CroppedItem:
    """Cut a drawn crop from a network image with its lesions' boxes and masks (module doc).

    Args:
        image: (D, S, S) network image (after :func:`ctlesion.preprocess.fit_in_plane`).
        boxes_px: (N, 4) boxes (x1, y1, x2, y2), network pixels of the image.
        draw: from :func:`draw_crop`.
        masks: optional (N, S, S) masks (any dtype; nonzero = lesion).
        min_visible_fraction: keep a lesion with at least this fraction of its box area in the
            crop (the lesion the crop was drawn around is always kept).

    Returns:
        The :class:`CroppedItem`: pixels, boxes and masks shifted by exactly ``-offset``.
    """
    x0, y0 = draw.offset_xy_px
    size = draw.size_px
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    moved = boxes - np.array([x0, y0, x0, y0], dtype=np.float64)
    clipped = clip_boxes(moved, (size, size))
    cut = None if masks is None else masks[:, y0 : y0 + size, x0 : x0 + size]
    keep = []
    for n in range(len(boxes)):
        area = float(np.prod(moved[n, 2:] - moved[n, :2]))
        shown = float(np.prod(np.maximum(clipped[n, 2:] - clipped[n, :2], 0.0)))
        enough = n == draw.lesion or (area > 0 and shown >= min_visible_fraction * area)
        if enough and _visible(clipped[n], (size, size)) and (cut is None or cut[n].any()):
            keep.append(n)
    kept = np.array(keep, dtype=np.int64)
    return CroppedItem(
        image=np.ascontiguousarray(image[:, y0 : y0 + size, x0 : x0 + size]),
        boxes_px=clipped[kept].reshape(-1, 4),
        masks=None if cut is None else np.ascontiguousarray(cut[kept]),
        kept=kept,
        draw=draw,
    )
