"""Writers of tiny nnU-Net and nnDetection datasets for the tests (volumes with lesion label maps)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ctlesion.io.nifti import write_nifti
from ctlesion.io.nnunet_raw import write_case, write_dataset_json, write_splits_final
from ctlesion.volume import Volume


def case_volume(shape_zyx=(6, 64, 64), interval_mm: float = 5.0, seed: int = 0) -> Volume:
    """A soft-tissue block in air with noise: (Z, Y, X) int16 HU, spacing (interval, 0.8, 0.8) mm."""
    rng = np.random.default_rng(seed)
    hu = np.full(shape_zyx, -1000, np.int16)
    hu[:, 8:-8, 8:-8] = 40
    hu += rng.integers(-20, 20, shape_zyx).astype(np.int16)
    return Volume(hu=hu, spacing_zyx_mm=(interval_mm, 0.8, 0.8), origin_lps_mm=(-25.0, -25.0, 100.0))


def write_nnunet(root: Path, cases: dict[str, tuple[Volume, np.ndarray]], labels: dict[str, int],
                 test_cases: dict[str, tuple[Volume, np.ndarray]] | None = None,
                 folds: list[dict] | None = None) -> Path:
    """nnU-Net v2 raw layout (ctlesion.io.nnunet_raw): dataset.json, imagesTr/CASE_0000.nii.gz,
    labelsTr/CASE.nii.gz (+ imagesTs/labelsTs, splits_final.json)."""
    root.mkdir(parents=True)
    write_dataset_json(root, labels=labels, num_training=len(cases), name="test", description="test data")
    for test, group in ((False, cases), (True, test_cases or {})):
        for case_id, (volume, label_map) in group.items():
            write_case(root, case_id, volume, label_map, test=test)
    if folds is not None:
        write_splits_final(root, [(fold["train"], fold["val"]) for fold in folds])
    return root


def write_nndetection(root: Path, cases: dict[str, tuple[Volume, np.ndarray, dict[int, int]]],
                      classes: dict[int, str]) -> Path:
    """nnDetection layout: dataset.json + raw_splitted/imagesTr, labelsTr (instance maps + CASE.json)."""
    (root / "raw_splitted" / "imagesTr").mkdir(parents=True)
    (root / "raw_splitted" / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"task": "Task000_Test", "dim": 3,
                                                   "labels": {str(k): v for k, v in classes.items()}}))
    for case_id, (volume, instances, instance_classes) in cases.items():
        write_nifti(volume.hu, volume, root / "raw_splitted" / "imagesTr" / f"{case_id}_0000.nii.gz")
        write_nifti(instances.astype(np.uint8), volume, root / "raw_splitted" / "labelsTr" / f"{case_id}.nii.gz")
        (root / "raw_splitted" / "labelsTr" / f"{case_id}.json").write_text(
            json.dumps({"instances": {str(k): v for k, v in instance_classes.items()}}))
    return root
