"""Saved detections on DeepLesion key slices: the predictions file that ``evaluate`` scores.

Schema (version 1), a JSON object::

    {
      "format": "ctlesion-predictions",        (optional when reading)
      "version": 1,                            (required)
      "predictions": [                         (required; one entry per key slice)
        {"key": "000001_01_01_109.png",        File_name of the key slice in DL_info.csv
         "detections": [[x1, y1, x2, y2, score], ...]},    may be empty
        ...
      ],
      ...                                      any other fields (split, weights, ...) are kept
    }                                          for the reader and ignored by the scoring

Boxes are in pixels of the key slice's source PNG, in the coordinates of DL_info's
``Bounding_boxes`` (x = column, y = row); the protocol's IoU counts pixels inclusively
(width = x2 - x1 + 1). Scores are any finite numbers, higher = more confident; only their
order matters. Key slices of the split without an entry are scored as images without
detections. Any detector can write this file and be scored under the same protocol.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ctlesion.atomic import atomic_write_text
from ctlesion.errors import CtlesionError

logger = logging.getLogger(__name__)

PREDICTIONS_FORMAT = "ctlesion-predictions"
PREDICTIONS_VERSION = 1
COORDINATES = ("source pixels of the key slice PNG, rows [x1, y1, x2, y2, score] in the coordinates of "
               "DL_info Bounding_boxes; the protocol's IoU counts pixels inclusively (width = x2 - x1 + 1)")


def to_file_precision(detections: np.ndarray) -> np.ndarray:
    """Round (N, 5) detections to what a predictions file keeps, so scores can be reproduced.

    Boxes keep 0.01 px; scores keep float32 precision (the detector's), written as the
    shortest decimal that reads back to the same float32, so their order never changes.

    Returns:
        (N, 5) float64 detections that survive a JSON round trip unchanged.
    """
    dets = np.asarray(detections, dtype=np.float64).reshape(-1, 5)
    scores = dets[:, 4].astype(np.float32).astype(str).astype(np.float64)
    return np.column_stack([np.round(dets[:, :4], 2), scores])


def write_predictions(path: Path, detections_by_key: Mapping[str, np.ndarray], **fields: object) -> None:
    """Write a predictions file (module docstring) atomically.

    Args:
        path: the JSON file.
        detections_by_key: key-slice file name -> (N, 5) float64 detections (x1, y1, x2, y2,
            score), source pixels; written at :func:`to_file_precision`.
        **fields: extra JSON-ready top-level fields (e.g. ``split``, ``weights``).
    """
    document = {
        "format": PREDICTIONS_FORMAT,
        "version": PREDICTIONS_VERSION,
        "coordinates": COORDINATES,
        **fields,
        "predictions": [{"key": key, "detections": to_file_precision(dets).tolist()}
                        for key, dets in detections_by_key.items()],
    }
    atomic_write_text(path, json.dumps(document) + "\n")


def _entry_detections(entry: object, index: int, path: Path) -> tuple[str, np.ndarray]:
    """Validate one ``predictions`` entry; errors name the entry, its key and the detection."""
    if not isinstance(entry, dict) or not isinstance(entry.get("key"), str):
        raise CtlesionError(f"predictions[{index}] must be an object with a string \"key\"", path)
    key = entry["key"]
    where = f"predictions[{index}] (key {key})"
    rows = entry.get("detections")
    if not isinstance(rows, list):
        raise CtlesionError(f"{where}: \"detections\" must be a list of [x1, y1, x2, y2, score] rows", path)
    for j, row in enumerate(rows):
        if (not isinstance(row, list) or len(row) != 5
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in row)):
            raise CtlesionError(f"{where}, detection {j}: expected [x1, y1, x2, y2, score] numbers, got {row!r}", path)
        if not all(math.isfinite(v) for v in row[:4]):
            raise CtlesionError(f"{where}, detection {j}: box coordinates must be finite, got {row[:4]}", path)
        if not math.isfinite(row[4]):
            raise CtlesionError(f"{where}, detection {j}: score must be a finite number, got {row[4]}", path)
        if row[2] < row[0] or row[3] < row[1]:
            raise CtlesionError(f"{where}, detection {j}: box has x2 < x1 or y2 < y1: {row[:4]}", path)
    return key, np.array(rows, dtype=np.float64).reshape(-1, 5)


def read_predictions(path: Path) -> dict[str, np.ndarray]:
    """Read and validate a predictions file (module docstring).

    Args:
        path: the JSON file.

    Returns:
        Key-slice file name -> (N, 5) float64 detections (x1, y1, x2, y2, score), in file order.

    Raises:
        CtlesionError: if the file is missing, not JSON, not version 1 of the schema, or an
            entry is malformed: not an object with a string key, a duplicate key, a detection
            that is not five numbers, a NaN or infinite value, a box with x2 < x1 or y2 < y1
            (the message names the entry, its key and the detection).
    """
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CtlesionError("predictions file not found", path) from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CtlesionError(f"cannot read predictions file: {exc}", path) from exc
    if not isinstance(document, dict):
        raise CtlesionError("a predictions file is a JSON object with \"version\" and \"predictions\"", path)
    if document.get("format", PREDICTIONS_FORMAT) != PREDICTIONS_FORMAT:
        raise CtlesionError(f"format is {document['format']!r}, expected {PREDICTIONS_FORMAT!r}", path)
    if document.get("version") != PREDICTIONS_VERSION:
        raise CtlesionError(f"unsupported predictions version {document.get('version')!r} "
                            f"(this ctlesion reads version {PREDICTIONS_VERSION})", path)
    entries = document.get("predictions")
    if not isinstance(entries, list):
        raise CtlesionError("\"predictions\" must be a list of {\"key\", \"detections\"} objects", path)
    result: dict[str, np.ndarray] = {}
    for index, entry in enumerate(entries):
        key, dets = _entry_detections(entry, index, path)
        if key in result:
            raise CtlesionError(f"predictions[{index}]: key {key} appears twice", path)
        result[key] = dets
    return result


def align_predictions(
    predictions: Mapping[str, np.ndarray], keys: list[str], path: Path, *, left_out: frozenset[str] = frozenset(),
    split_description: str = "the split",
) -> list[np.ndarray]:
    """Detections in the order of the evaluated images; missing images get none.

    Args:
        predictions: from :func:`read_predictions`.
        keys: file names of the evaluated images, in scoring order.
        path: the predictions file (for messages).
        left_out: key slices of the split deliberately not scored (a key-slice list): their
            predictions are ignored (logged).
        split_description: how messages name the split, e.g. "the test split of DL_info.csv".

    Returns:
        One (N_i, 5) float64 array per key, in ``keys`` order.

    Raises:
        CtlesionError: naming the first prediction whose key is not an image of the split.
    """
    wanted = set(keys)
    for index, key in enumerate(predictions):
        if key not in wanted and key not in left_out:
            raise CtlesionError(f"predictions[{index}]: key {key} is not a key slice with lesions in "
                                f"{split_description}", path)
    ignored = sum(1 for key in predictions if key in left_out)
    if ignored:
        logger.info("%s: ignored predictions for %d key slice(s) outside the key-slice list", path, ignored)
    missing = sum(1 for key in keys if key not in predictions)
    if missing:
        logger.warning("%s: no predictions for %d of %d key slices; scored as images without detections",
                       path, missing, len(keys))
    empty = np.zeros((0, 5), dtype=np.float64)
    return [predictions.get(key, empty) for key in keys]
