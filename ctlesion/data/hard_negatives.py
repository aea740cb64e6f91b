"""Hard negatives: where an earlier model fired on no lesion, for ``train --hard-negatives``.

A training run can centre part of its negative crops on the false positives of an earlier model
(:class:`~ctlesion.data.augment.CropConfig` ``hard_negative_fraction``, rules in
:mod:`ctlesion.data.augment`), so the network sees again, as background, the normal structures
it mistook for lesions (offline hard negative mining; Shrivastava et al., CVPR 2016, mine hard
RoIs online, Felzenszwalb et al., TPAMI 2010, mine hard negatives between training rounds as here).

The false positives come from a predictions file (:mod:`ctlesion.evaluate.predictions`), e.g.
``ctlesion evaluate --data DATA --split train --weights EARLIER.safetensors``: a detection of a
key slice is a hard negative when it scores at least ``min_score`` and its box shares no pixel
with any lesion box annotated on that key slice in ``DL_info.csv`` (all rows, Possibly_noisy
ones included, so a real but doubtful lesion never becomes background). Boxes stay in the
source pixels of the key slice PNG.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ctlesion.data.masks import box_pixel_range
from ctlesion.errors import CtlesionError
from ctlesion.evaluate.froc import inclusive_iou
from ctlesion.evaluate.predictions import read_predictions
from ctlesion.io.deeplesion import read_dl_info

logger = logging.getLogger(__name__)


def false_positive_boxes(detections: np.ndarray, lesion_boxes_px: np.ndarray, min_score: float) -> np.ndarray:
    """The boxes of one key slice's detections that score >= ``min_score`` and touch no lesion.

    Args:
        detections: (N, 5) float (x1, y1, x2, y2, score), source pixels of the key slice.
        lesion_boxes_px: (M, 4) float the key slice's annotated lesion boxes, same pixels.
        min_score: lowest score of a hard negative.

    Returns:
        (K, 4) float64 boxes, in the detections' order. "Touch" = a positive intersection in the
        DeepLesion protocol's inclusive-pixel convention (:func:`~ctlesion.evaluate.froc.inclusive_iou` > 0).
    """
    dets = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    lesions = np.asarray(lesion_boxes_px, dtype=np.float64).reshape(-1, 4)
    dets = dets[dets[:, 4] >= min_score]
    if len(lesions) and len(dets):
        pairs = inclusive_iou(np.repeat(dets[:, :4], len(lesions), axis=0), np.tile(lesions, (len(dets), 1)))
        dets = dets[~(pairs.reshape(len(dets), len(lesions)) > 0).any(axis=1)]
    return dets[:, :4].copy()


def read_hard_negatives(predictions_path: Path, dl_info_path: Path, min_score: float) -> dict[str, np.ndarray]:
    """Hard negatives of every key slice of a predictions file (module doc).

    Args:
        predictions_path: a predictions file (:func:`~ctlesion.evaluate.predictions.read_predictions`).
        dl_info_path: the dataset's ``DL_info.csv``, whose boxes (all rows) are the lesions.
        min_score: lowest score of a hard negative, in [0, 1].

    Returns:
        Key-slice file name -> (K, 4) float64 boxes (x1, y1, x2, y2), source pixels; key slices
        without a hard negative are left out.

    Raises:
        CtlesionError: an unreadable predictions file or table, or a predictions key that is not
            a key slice of the table (the file is of another dataset); the message names the file.
    """
    predictions = read_predictions(predictions_path)
    lesions = {key.file_name: key.boxes_px for key in read_dl_info(dl_info_path, drop_noisy=False)}
    unknown = [key for key in predictions if key not in lesions]
    if unknown:
        raise CtlesionError(f"key slice {unknown[0]} (and {len(unknown) - 1} more) is not in {dl_info_path}: "
                            "hard negatives must come from predictions on the training data", predictions_path)
    hard = {key: false_positive_boxes(dets, lesions[key], min_score) for key, dets in predictions.items()}
    hard = {key: boxes for key, boxes in hard.items() if len(boxes)}
    logger.info("%s: %d hard negative(s) scoring >= %.2f on %d of %d key slice(s)", predictions_path,
                sum(len(boxes) for boxes in hard.values()), min_score, len(hard), len(predictions))
    return hard


def box_region_mask(boxes_px: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """(Y, X) bool mask of the pixels whose centres lie in any of the (K, 4) boxes (x1, y1, x2, y2), pixels."""
    mask = np.zeros(shape_yx, dtype=bool)
    for box in np.asarray(boxes_px, dtype=np.float64).reshape(-1, 4):
        x1, y1, x2, y2 = box_pixel_range(box, shape_yx)
        mask[y1:y2, x1:x2] = True
    return mask
