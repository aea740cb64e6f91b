"""Which images and lesions an evaluation scores: one split of a DeepLesion ``DL_info.csv``.

The released evaluation code of 3DCE, MULAN and AlignShift (``load_split_index``) keeps the
lesions of the split whose ``Possibly_noisy`` flag is 0, groups them by ``File_name`` (one
image per key slice) and orders the images by file name (``np.unique``). Ground truth, slice
intervals, lesion types and diameters all come from the table, never from a predictions file.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import KeySlice, read_dl_info, split_code

logger = logging.getLogger(__name__)

DL_INFO_NAME = "DL_info.csv"


@dataclass(frozen=True, eq=False)
class EvaluationSet:
    """The key slices of one split that are scored, ordered by file name.

    Attributes:
        csv_path: the ``DL_info.csv`` they come from.
        split: ``"train"``, ``"val"`` or ``"test"``.
        key_slices: the key slices, each with its non-noisy lesions (M >= 1).
        left_out: file names of the split's key slices left out by a key-slice list.
    """

    csv_path: Path
    split: str
    key_slices: tuple[KeySlice, ...]
    left_out: frozenset[str] = frozenset()

    @property
    def keys(self) -> list[str]:
        """File names of the images, in scoring order."""
        return [key.file_name for key in self.key_slices]

    @property
    def ground_truth(self) -> list[np.ndarray]:
        """One (M_i, 4) float64 array of boxes (x1, y1, x2, y2) per image, source pixels."""
        return [key.boxes_px for key in self.key_slices]

    @property
    def slice_interval_mm(self) -> np.ndarray:
        """(num_images,) float64 slice interval of each image's series, mm."""
        return np.array([key.slice_interval_mm for key in self.key_slices], dtype=np.float64)

    @property
    def num_lesions(self) -> int:
        """Total number of lesions G."""
        return sum(key.num_lesions for key in self.key_slices)

    @property
    def lesion_types(self) -> np.ndarray:
        """(G,) int64 ``Coarse_lesion_type`` of each lesion, images concatenated in order."""
        return np.concatenate([key.lesion_types for key in self.key_slices])

    @property
    def long_diameter_mm(self) -> np.ndarray:
        """(G,) float64 long RECIST diameter of each lesion, mm.

        First value of ``Lesion_diameters_Pixel_`` times the row pixel spacing of
        ``Spacing_mm_px_`` (DeepLesion pixels are square).
        """
        return np.concatenate([key.diameters_px[:, 0] * key.spacing_yx_mm[0] for key in self.key_slices])


def read_key_list(path: Path) -> list[tuple[int, str]]:
    """Read a list of key-slice file names: one per line, or a CSV with a ``File_name`` column.

    Blank lines and lines starting with ``#`` are ignored in the one-per-line form.

    Returns:
        ``(line number, file name)`` pairs in file order (duplicates kept).

    Raises:
        CtlesionError: if the file cannot be read or names no key slice.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise CtlesionError(f"cannot read key-slice list: {exc}", path) from exc
    header = next(([c.strip() for c in row] for row in csv.reader(lines) if row), [])
    if "File_name" in header:
        column = header.index("File_name")
        rows = list(csv.reader(lines))
        start = next(i for i, row in enumerate(rows) if row)
        names = [(i + 1, row[column].strip()) for i, row in enumerate(rows) if i > start and len(row) > column]
    else:
        names = [(i + 1, line.strip()) for i, line in enumerate(lines)]
    names = [(line, name) for line, name in names if name and not name.startswith("#")]
    if not names:
        raise CtlesionError("key-slice list names no key slice", path)
    return names


def load_evaluation_set(data_dir: Path, split: str, key_list: Path | None = None) -> EvaluationSet:
    """The key slices and lesions of one split (``Train_Val_Test``), optionally restricted.

    Lesions marked ``Possibly_noisy`` are excluded, as in the released evaluation code; a key
    slice left without lesions is not an image of the split.

    Args:
        data_dir: folder holding ``DL_info.csv`` (``Images_png`` is not needed to score).
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"`` (every key slice of the table).
        key_list: optional file of key-slice names (:func:`read_key_list`) to restrict to.

    Returns:
        The :class:`EvaluationSet`, images ordered by file name.

    Raises:
        CtlesionError: if the table is missing or malformed (missing column, bad value), the
            split holds no lesion, or the key list names a file that is not a key slice with
            lesions in the split (the message names the list's line).
    """
    csv_path = Path(data_dir) / DL_INFO_NAME
    if split != "all":
        split_code(split)
    keys = sorted(read_dl_info(csv_path, split=split, drop_noisy=True), key=lambda k: k.file_name)
    if not keys:
        raise CtlesionError(f"split {split!r} holds no lesions (Possibly_noisy lesions excluded)", csv_path)
    if key_list is None:
        return EvaluationSet(csv_path=csv_path, split=split, key_slices=tuple(keys))
    by_name = {key.file_name: key for key in keys}
    wanted: set[str] = set()
    for line, name in read_key_list(key_list):
        if name not in by_name:
            raise CtlesionError(
                f"line {line}: {name} is not a key slice with lesions in the {split} split of {csv_path}", key_list
            )
        wanted.add(name)
    chosen = tuple(key for key in keys if key.file_name in wanted)
    logger.info("%s: scoring %d of the %d key slices of the %s split", key_list, len(chosen), len(keys), split)
    return EvaluationSet(csv_path=csv_path, split=split, key_slices=chosen,
                         left_out=frozenset(by_name) - wanted)
