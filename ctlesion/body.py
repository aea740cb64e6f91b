"""Where the patient's body is in a CT slice: the one body rule of training and ``detect``.

The body is the largest 4-connected region above :data:`BODY_THRESHOLD_HU` with its holes
filled (the lungs and bowel gas put back inside); the table, clothing and air outside are
left out. Training draws negative crops inside it (:mod:`ctlesion.data.augment`) and keeps
negative key slices that hold enough of it (:mod:`ctlesion.data.volume_dataset`); ``detect``
skips windows whose key slice holds none and crops the network's input to its bounding box
(:func:`ctlesion.preprocess.body_crop`).
"""

from __future__ import annotations

import cv2
import numpy as np

#: HU above which a pixel counts as body (air is -1000, lung ~ -850, fat ~ -100); the lungs are
#: added back by filling holes.
BODY_THRESHOLD_HU = -500.0


def body_mask(slice_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> np.ndarray:
    """(Y, X) bool body of a CT slice: its largest 4-connected region above ``threshold_hu``, holes filled.

    Filling the holes puts the lungs and bowel gas back inside the body. A slice with nothing
    above the threshold gives an empty mask.

    Args:
        slice_hu: (Y, X) HU, any real dtype.
        threshold_hu: body threshold, HU.
    """
    above = (np.asarray(slice_hu) > threshold_hu).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=4)
    if count <= 1:
        return np.zeros(above.shape, dtype=bool)
    body = labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    outside = np.pad((~body).astype(np.uint8), 1, constant_values=1)
    cv2.floodFill(outside, None, (0, 0), 2)  # everything not body that reaches the border
    return body | (outside[1:-1, 1:-1] == 1)


def body_box_px(slice_hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU) -> tuple[int, int, int, int] | None:
    """The bounding box of a slice's body (:func:`body_mask`; holes need no filling for a box).

    Args:
        slice_hu: (Y, X) HU, any real dtype.
        threshold_hu: body threshold, HU.

    Returns:
        (y0, x0, y1, x1) source pixels, end-exclusive, or None when the slice holds no body.
    """
    above = (np.asarray(slice_hu) > threshold_hu).astype(np.uint8)
    count, _, stats, _ = cv2.connectedComponentsWithStats(above, connectivity=4)
    if count <= 1:
        return None
    largest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0, width, height = (int(v) for v in stats[largest, :4])
    return y0, x0, y0 + height, x0 + width
