"""Where the patient's body is in a CT slice: the one body rule of training and ``detect``.

The body (:func:`body_mask`) is the largest 4-connected region above :data:`BODY_THRESHOLD_HU`
with its holes filled (the lungs and bowel gas put back inside); the table, clothing and air
outside are left out. Training draws negative crops inside it (:mod:`ctlesion.data.augment`) and
keeps negative key slices that hold enough of it (:mod:`ctlesion.data.volume_dataset`).
``detect`` skips windows whose key slice holds nothing above the threshold, crops the
network's input (:func:`ctlesion.preprocess.body_crop`) to :func:`body_box_px`: the body and
every other large region (arms, the other leg), so that nothing that may hold a lesion is cut,
and drops detections centred outside those regions (:func:`body_parts_mask`: in the air, on the
table).
"""

from __future__ import annotations

import cv2
import numpy as np

#: HU above which a pixel counts as body (air is -1000, lung ~ -850, fat ~ -100); the lungs are
#: added back by filling holes.
BODY_THRESHOLD_HU = -500.0
#: Regions apart from the body kept in ``detect``'s crop: at least this share of the body's area
#: (an arm beside a chest is about a tenth of it; a scanner table's thin slab often less).
MIN_PART_SHARE = 0.02


def _regions(slice_hu: np.ndarray, threshold_hu: float) -> tuple[int, np.ndarray, np.ndarray]:
    """The 4-connected regions above ``threshold_hu``: (count with the background, (Y, X) int32 labels,
    OpenCV's per-label stats)."""
    above = (np.asarray(slice_hu) > threshold_hu).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=4)
    return count, labels, stats


def body_mask(slice_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """(Y, X) bool body of a CT slice: its largest 4-connected region above ``threshold_hu``, holes filled.

    Filling the holes puts the lungs and bowel gas back inside the body. A slice with nothing
    above the threshold gives an empty mask.

    Args:
        slice_hu: (Y, X) HU, any real dtype.
        threshold_hu: body threshold, HU.
    """
    count, labels, stats = _regions(slice_hu, threshold_hu)
    if count <= 1:
        return np.zeros(labels.shape, dtype=bool)
    return _fill_holes(labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA])))


def _parts(stats: np.ndarray, min_share: float) -> np.ndarray:
    """Labels (1-based) of the regions of at least ``min_share`` of the largest one's area."""
    areas = stats[1:, cv2.CC_STAT_AREA]
    return 1 + np.flatnonzero(areas >= min_share * areas.max())


def _fill_holes(region: np.ndarray) -> np.ndarray:
    """(Y, X) bool region with every hole (what the border cannot reach from outside it) filled."""
    outside = np.pad((~region).astype(np.uint8), 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)  # everything not in the region that reaches the border
    return region | (outside[1:-1, 1:-1] == 1)


def body_parts_mask(slice_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU,
                    min_share: float = MIN_PART_SHARE) -> np.ndarray:
    """(Y, X) bool: everywhere on a slice a lesion may lie: the regions of :func:`body_box_px` (the
    body and each other region above ``threshold_hu`` of at least ``min_share`` of its area), holes
    filled (lungs, bowel gas). Air and the small parts of a scanner table, clothing or a blanket
    are outside. A slice with nothing above the threshold gives an empty mask.

    Args:
        slice_hu: (Y, X) HU, any real dtype.
        threshold_hu: body threshold, HU.
        min_share: least area of another region, as a share of the largest one's.
    """
    count, labels, stats = _regions(slice_hu, threshold_hu)
    if count <= 1:
        return np.zeros(labels.shape, dtype=bool)
    return _fill_holes(np.isin(labels, _parts(stats, min_share)))


def body_box_px(slice_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU,
                min_share: float = MIN_PART_SHARE) -> tuple[int, int, int, int] | None:
    """The bounding box of everything on a slice that may hold a lesion: the body and each other
    region above ``threshold_hu`` of at least ``min_share`` of its area (the arms beside the
    trunk, the other leg), so that nothing the network could report is cut off. A table larger
    than that share is included (it costs time, not findings).

    Args:
        slice_hu: (Y, X) HU, any real dtype.
        threshold_hu: body threshold, HU.
        min_share: least area of another region, as a share of the largest one's.

    Returns:
        (y0, x0, y1, x1) source pixels, end-exclusive, or None when nothing on the slice is above
        the threshold.
    """
    count, _, stats = _regions(slice_hu, threshold_hu)
    if count <= 1:
        return None
    parts = stats[_parts(stats, min_share)]
    x0, y0 = parts[:, cv2.CC_STAT_LEFT].min(), parts[:, cv2.CC_STAT_TOP].min()
    x1 = (parts[:, cv2.CC_STAT_LEFT] + parts[:, cv2.CC_STAT_WIDTH]).max()
    y1 = (parts[:, cv2.CC_STAT_TOP] + parts[:, cv2.CC_STAT_HEIGHT]).max()
    return int(y0), int(x0), int(y1), int(x1)


def centred_inside(boxes_px: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(N,) bool: whether each box's centre falls on a pixel of ``mask``.

    Args:
        boxes_px: (N, 4) (x1, y1, x2, y2) continuous pixel coordinates of the mask's grid (pixel
            i covers [i, i + 1)).
        mask: (Y, X) bool, e.g. :func:`body_parts_mask`.
    """
    boxes = np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4)
    columns = np.clip(np.floor((boxes[:, 0] + boxes[:, 2]) / 2), 0, mask.shape[1] - 1).astype(np.intp)
    rows = np.clip(np.floor((boxes[:, 1] + boxes[:, 3]) / 2), 0, mask.shape[0] - 1).astype(np.intp)
    return mask[rows, columns]
