"""Write an nnU-Net v2 raw dataset: CT volumes with semantic label maps (the layout
:mod:`ctlesion.io.masked_datasets` reads).

Layout (Isensee et al., Nature Methods 2021; nnU-Net's ``dataset_format.md``)::

    DATASET/dataset.json                {"channel_names": {"0": "CT"}, "labels": {...}, "numTraining": N,
                                         "file_ending": ".nii.gz", ...}
    DATASET/imagesTr/CASE_0000.nii.gz   CT, int16 HU
    DATASET/labelsTr/CASE.nii.gz        uint8 label map on exactly the CT's grid
    DATASET/imagesTs/, labelsTs/        test cases, the same way
    DATASET/splits_final.json           [{"train": [...], "val": [...]}, ...] (nnU-Net reads it from its
                                        preprocessed folder: copy it there to train on these folds)

Each file is written atomically (:func:`ctlesion.atomic.atomic_write_bytes`); write a whole
dataset inside :func:`ctlesion.atomic.staged_outputs` so that no half-written dataset is left.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ctlesion.atomic import atomic_write_text
from ctlesion.io.masked_datasets import CT_CHANNEL
from ctlesion.io.nifti import write_nifti
from ctlesion.volume import Volume, hu_int16

#: The file ending of the cases (gzip-compressed NIfTI-1).
FILE_ENDING = ".nii.gz"


def case_paths(root: Path, case_id: str, *, test: bool) -> tuple[Path, Path]:
    """(CT, label map) paths of a case: ``imagesTr/CASE_0000.nii.gz``, ``labelsTr/CASE.nii.gz``
    (``imagesTs/``, ``labelsTs/`` for a test case)."""
    group = "Ts" if test else "Tr"
    return (Path(root) / f"images{group}" / f"{case_id}{CT_CHANNEL}{FILE_ENDING}",
            Path(root) / f"labels{group}" / f"{case_id}{FILE_ENDING}")


def write_case(root: Path, case_id: str, volume: Volume, labels_zyx: np.ndarray, *, test: bool) -> tuple[Path, Path]:
    """Write a case's CT and its label map on the same grid (folders created as needed).

    Args:
        root: the dataset folder.
        case_id: nnU-Net case identifier (file name without channel and ending).
        volume: the CT: ``hu`` (Z, Y, X) HU, any real dtype (stored as int16,
            :func:`ctlesion.volume.hu_int16`), and its LPS geometry, which both files get.
        labels_zyx: (Z, Y, X) integer or bool label map, values 0..255 (stored as uint8).
        test: write into ``imagesTs/`` and ``labelsTs/`` instead of ``imagesTr/`` and ``labelsTr/``.

    Returns:
        (CT path, label map path).

    Raises:
        ValueError: the label map's shape differs from the CT's, or its values lie outside 0..255.
        CtlesionError: (naming the file) a file cannot be written.
    """
    labels = np.asarray(labels_zyx)
    if labels.shape != volume.shape_zyx:
        raise ValueError(f"label map shape {labels.shape} differs from the CT's {volume.shape_zyx}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit in uint8")
    image_path, label_path = case_paths(root, case_id, test=test)
    for path in (image_path, label_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(hu_int16(volume.hu), volume, image_path)
    write_nifti(labels.astype(np.uint8), volume, label_path)
    return image_path, label_path


def write_dataset_json(root: Path, *, labels: Mapping[str, int], num_training: int, name: str, description: str,
                       extra: Mapping[str, object] | None = None) -> Path:
    """Write ``dataset.json`` of a one-channel CT dataset (channel 0: "CT", file ending .nii.gz).

    Args:
        root: the dataset folder.
        labels: label name -> value, ``background`` 0 included.
        num_training: the number of cases in ``imagesTr/``.
        name: the dataset's name.
        description: free text.
        extra: further keys, after nnU-Net's (nnU-Net ignores keys it does not know).

    Returns:
        The path of the written file.
    """
    content = {"channel_names": {"0": "CT"}, "labels": dict(labels), "numTraining": int(num_training),
               "file_ending": FILE_ENDING, "name": name, "description": description, **(extra or {})}
    path = Path(root) / "dataset.json"
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")
    return path


def write_splits_final(root: Path, folds: Sequence[tuple[Sequence[str], Sequence[str]]]) -> Path:
    """Write ``splits_final.json``: nnU-Net's folds ``[{"train": [...], "val": [...]}, ...]``.

    Args:
        root: the dataset folder.
        folds: per fold, (training case ids, validation case ids), each written sorted.

    Returns:
        The path of the written file.
    """
    content = [{"train": sorted(train), "val": sorted(val)} for train, val in folds]
    path = Path(root) / "splits_final.json"
    atomic_write_text(path, json.dumps(content, indent=1) + "\n")
    return path
