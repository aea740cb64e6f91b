"""GrabCut pseudo-masks from RECIST diameters (SPEC section 7).

DeepLesion has boxes and RECIST diameters but no masks. Following the released AlignShift /
MULAN training code, a lesion's mask is estimated with GrabCut (Rother et al., SIGGRAPH
2004, as implemented in OpenCV) initialised from the annotation:

* outside the box: definite background (``GC_BGD``);
* inside the box: probable foreground (``GC_PR_FGD``);
* the RECIST quadrilateral (long1, short1, long2, short2): definite foreground (``GC_FGD``);
* 3 iterations.

GrabCut runs on the image windowed to the DeepLesion display window (-175, 275) HU, clipped
before conversion to uint8 (the released code lets negative values wrap around), on a crop
around the box. If GrabCut fails or finds nothing, the filled RECIST quadrilateral (or, for a
degenerate one, the ellipse inscribed in the box) is returned.

Pixel coordinates are continuous with pixel (i, j) covering [i, i+1) x [j, j+1).
"""

from __future__ import annotations

import logging
import math

import cv2
import numpy as np

logger = logging.getLogger(__name__)

#: Display window of DeepLesion (``DICOM_windows`` "-175, 275").
DEFAULT_WINDOW_HU = (-175.0, 275.0)
#: GrabCut iterations of the released recipe (SPEC section 7).
GRABCUT_ITERATIONS = 3
#: Fixed-point bits for sub-pixel polygon and ellipse drawing in OpenCV.
_SHIFT_BITS = 4


def window_to_uint8(image_hu: np.ndarray, window_hu: tuple[float, float] = DEFAULT_WINDOW_HU) -> np.ndarray:
    """Clip HU to ``window_hu`` and scale linearly to 0..255 uint8 (no wrap-around).

    Args:
        image_hu: array of HU, any shape.
        window_hu: (low, high) HU; low maps to 0, high to 255.

    Returns:
        uint8 array of the same shape.
    """
    low, high = float(window_hu[0]), float(window_hu[1])
    if not high > low:
        raise ValueError(f"window_hu must be (low, high) with high > low, got {window_hu}")
    scaled = (np.clip(np.asarray(image_hu, dtype=np.float32), low, high) - low) * (255.0 / (high - low))
    return np.rint(scaled).astype(np.uint8)


def _fixed_point(points_px: np.ndarray) -> np.ndarray:
    """Continuous pixel coordinates -> OpenCV fixed-point coordinates (pixel centres at integers)."""
    return np.rint((np.asarray(points_px, dtype=np.float64) - 0.5) * (1 << _SHIFT_BITS)).astype(np.int32)


def recist_polygon_mask(shape_yx: tuple[int, int], recist_px: np.ndarray) -> np.ndarray:
    """Fill the RECIST quadrilateral long1, short1, long2, short2.

    Args:
        shape_yx: (Y, X) of the output.
        recist_px: (8,) long-axis endpoints (x, y, x, y) then short-axis endpoints, pixels.

    Returns:
        (Y, X) bool mask of the pixels whose centres lie inside the quadrilateral.
    """
    p = np.asarray(recist_px, dtype=np.float64).reshape(4, 2)
    polygon = p[[0, 2, 1, 3]]
    mask = np.zeros(shape_yx, dtype=np.uint8)
    cv2.fillPoly(mask, [_fixed_point(polygon)], 1, lineType=cv2.LINE_8, shift=_SHIFT_BITS)
    return mask.astype(bool)


def box_ellipse_mask(shape_yx: tuple[int, int], box_px: np.ndarray) -> np.ndarray:
    """Fill the axis-aligned ellipse inscribed in a box (x1, y1, x2, y2), pixels.

    Returns:
        (Y, X) bool mask; at least the pixel holding the box centre is set when it is inside.
    """
    x1, y1, x2, y2 = (float(v) for v in box_px)
    mask = np.zeros(shape_yx, dtype=np.uint8)
    centre = _fixed_point(np.array([(x1 + x2) / 2, (y1 + y2) / 2]))
    axes = np.rint(np.array([max(x2 - x1, 1.0), max(y2 - y1, 1.0)]) / 2 * (1 << _SHIFT_BITS)).astype(np.int32)
    cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])), 0, 0, 360, 1, -1,
                cv2.LINE_8, _SHIFT_BITS)
    return mask.astype(bool)


def box_pixel_range(box_px: np.ndarray, shape_yx: tuple[int, int]) -> tuple[int, int, int, int]:
    """Index range (x1, y1, x2, y2), end exclusive, of the pixels whose centres lie in a box.

    Pixel i covers [i, i+1), so its centre i + 0.5 is inside [x1, x2] for
    ceil(x1 - 0.5) <= i <= floor(x2 - 0.5). The range is clipped to the image.
    """
    x1, y1, x2, y2 = (float(v) for v in box_px)
    height, width = shape_yx
    return (
        min(width, max(0, math.ceil(x1 - 0.5))),
        min(height, max(0, math.ceil(y1 - 0.5))),
        min(width, max(0, math.floor(x2 - 0.5) + 1)),
        min(height, max(0, math.floor(y2 - 0.5) + 1)),
    )


def _inside_box(mask: np.ndarray, box_px: np.ndarray) -> np.ndarray:
    """``mask`` with everything outside the box's pixels cleared (a new array)."""
    x1, y1, x2, y2 = box_pixel_range(box_px, mask.shape)
    out = np.zeros_like(mask)
    out[y1:y2, x1:x2] = mask[y1:y2, x1:x2]
    return out


def _fallback(shape_yx: tuple[int, int], box_px: np.ndarray, recist_px: np.ndarray) -> np.ndarray:
    """Filled RECIST quadrilateral within the box, or the box's inscribed ellipse if that is empty."""
    if np.all(np.isfinite(recist_px)):
        polygon = _inside_box(recist_polygon_mask(shape_yx, recist_px), box_px)
        if polygon.any():
            return polygon
    return box_ellipse_mask(shape_yx, box_px)


def recist_pseudo_mask(
    image_hu: np.ndarray,
    box_px: np.ndarray,
    recist_px: np.ndarray,
    *,
    window_hu: tuple[float, float] = DEFAULT_WINDOW_HU,
    iterations: int = GRABCUT_ITERATIONS,
    rng_seed: int = 0,
) -> np.ndarray:
    """GrabCut pseudo-mask of one lesion from its box and RECIST diameters (SPEC section 7).

    GrabCut runs on a crop around the box (margin: half the box size, at least 16 px) of the
    windowed uint8 image replicated to 3 channels; outside the box is definite background,
    the box probable foreground and the RECIST quadrilateral definite foreground. GrabCut
    initialises its colour models with k-means++ drawn from OpenCV's (thread-local) RNG, so the
    RNG is seeded with ``cv2.setRNGSeed(rng_seed)`` right before the call: the same inputs
    and seed give the same mask, whatever ran before in the thread.

    Args:
        image_hu: (Y, X) key slice in HU, any real dtype.
        box_px: (4,) box (x1, y1, x2, y2) in pixels (x = column).
        recist_px: (8,) RECIST endpoints: long axis (x, y, x, y) then short axis, pixels.
        window_hu: (low, high) HU window for the uint8 image.
        iterations: GrabCut iterations (paper recipe: 3).
        rng_seed: seed of OpenCV's RNG for this mask (the disk cache derives it from the
            lesion, :func:`ctlesion.data.mask_cache.lesion_rng_seed`).

    Returns:
        (Y, X) bool mask within the box (pixel centres inside), non-empty whenever the box
        overlaps the image. Falls back to the filled RECIST quadrilateral (or the box's
        inscribed ellipse) when GrabCut fails or returns nothing.
    """
    image_hu = np.asarray(image_hu)
    if image_hu.ndim != 2:
        raise ValueError(f"image_hu must be (Y, X), got shape {image_hu.shape}")
    height, width = image_hu.shape
    box = np.asarray(box_px, dtype=np.float64).reshape(4)
    recist = np.asarray(recist_px, dtype=np.float64).reshape(8)
    full = np.zeros((height, width), dtype=bool)
    if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        logger.debug("degenerate box %s: using the RECIST polygon", box.tolist())
        return recist_polygon_mask((height, width), recist) if np.all(np.isfinite(recist)) else full

    margin = max(16, int(math.ceil(0.5 * max(box[2] - box[0], box[3] - box[1]))))
    cx1, cy1 = max(0, int(math.floor(box[0])) - margin), max(0, int(math.floor(box[1])) - margin)
    cx2, cy2 = min(width, int(math.ceil(box[2])) + margin), min(height, int(math.ceil(box[3])) + margin)
    if cx2 <= cx1 or cy2 <= cy1:
        return full
    crop_shape = (cy2 - cy1, cx2 - cx1)
    offset = np.array([cx1, cy1], dtype=np.float64)
    box_crop = box - np.tile(offset, 2)
    recist_crop = recist - np.tile(offset, 4)

    # Pixels whose centres lie inside the box are probable foreground, the RECIST
    # quadrilateral (within the box) foreground, the rest background.
    gc_mask = np.full(crop_shape, cv2.GC_BGD, dtype=np.uint8)
    bx1, by1, bx2, by2 = box_pixel_range(box_crop, crop_shape)
    gc_mask[by1:by2, bx1:bx2] = cv2.GC_PR_FGD
    if np.all(np.isfinite(recist)):
        gc_mask[_inside_box(recist_polygon_mask(crop_shape, recist_crop), box_crop)] = cv2.GC_FGD

    result = None
    if (gc_mask == cv2.GC_BGD).any() and (gc_mask != cv2.GC_BGD).any():
        crop_u8 = window_to_uint8(image_hu[cy1:cy2, cx1:cx2], window_hu)
        image_bgr = cv2.merge([crop_u8, crop_u8, crop_u8])
        bgd_model = np.zeros((1, 65), dtype=np.float64)
        fgd_model = np.zeros((1, 65), dtype=np.float64)
        try:
            cv2.setRNGSeed(int(rng_seed))
            cv2.grabCut(image_bgr, gc_mask, None, bgd_model, fgd_model, iterations, cv2.GC_INIT_WITH_MASK)
            result = (gc_mask == cv2.GC_FGD) | (gc_mask == cv2.GC_PR_FGD)
        except cv2.error as exc:
            logger.debug("GrabCut failed (%s): using the RECIST polygon", exc)
    if result is None or not result.any():
        return _fallback((height, width), box, recist)
    full[cy1:cy2, cx1:cx2] = result
    return full
