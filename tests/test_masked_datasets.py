"""Reading datasets of volumes with lesion label maps: nnU-Net v2 raw and nnDetection layouts."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from ctlesion.errors import CtlesionError
from ctlesion.io.masked_datasets import connected_components, open_masked_dataset, read_case
from ctlesion.io.nifti import write_nifti
from masked_data import case_volume, write_nndetection, write_nnunet


def _labels(shape=(6, 64, 64)) -> np.ndarray:
    """Liver (1) everywhere in the body; two tumours (2): a 3-slice cube and a 1-voxel speck;
    a third tumour touching the first only by a corner (26-connected: the same lesion)."""
    labels = np.zeros(shape, np.uint8)
    labels[:, 10:-10, 10:-10] = 1
    labels[1:4, 20:26, 20:26] = 2
    labels[4, 26, 26] = 2  # corner contact with the cube (z 3, y 25, x 25): same component
    labels[5, 40, 40] = 2  # one voxel, far away
    return labels


def test_nnunet_layout_lesions_are_connected_components_of_the_label(tmp_path):
    volume = case_volume()
    root = write_nnunet(tmp_path / "Dataset001_Test", {"c1": (volume, _labels())},
                        {"background": 0, "liver": 1, "tumor": 2})
    dataset = open_masked_dataset(root)
    assert dataset.layout == "nnunet" and [c.case_id for c in dataset.cases("all")] == ["c1"]
    assert dataset.lesion_value("tumor") == 2 and dataset.lesion_value("2") == 2
    case = read_case(dataset.cases("train")[0], 2, layout="nnunet")
    assert case.num_lesions == 2
    assert (case.lesions_zyx == 1).sum() == 3 * 36 + 1 and (case.lesions_zyx == 2).sum() == 1
    assert case.volume.spacing_zyx_mm == pytest.approx((5.0, 0.8, 0.8))
    np.testing.assert_array_equal(case.volume.hu, volume.hu)
    small_dropped = read_case(dataset.cases("train")[0], 2, layout="nnunet", min_lesion_voxels=2)
    assert small_dropped.num_lesions == 1 and (small_dropped.lesions_zyx == 1).sum() == 109
    for bad, message in (("background", "background"), ("spleen", "no label 'spleen'"), ("7", "no label '7'")):
        with pytest.raises(CtlesionError, match=message):
            dataset.lesion_value(bad)


def test_connected_components_use_26_connectivity_in_raster_order():
    mask = np.zeros((3, 4, 4), bool)
    mask[2, 0, 0] = True  # raster order is (z, y, x): this voxel comes after those of z = 0 and 1
    mask[0, 3, 3] = mask[1, 2, 2] = True  # diagonal neighbours: one component, starting at z = 0
    components, count = connected_components(mask)
    assert count == 2 and components[0, 3, 3] == components[1, 2, 2] == 1 and components[2, 0, 0] == 2


def test_splits_from_nnunet_splits_file_val_fraction_and_test_folder(tmp_path):
    volume = case_volume(shape_zyx=(3, 32, 32))
    labels = np.zeros((3, 32, 32), np.uint8)
    labels[1, 10:14, 10:14] = 1
    cases = {f"c{i}": (volume, labels) for i in range(5)}
    root = write_nnunet(tmp_path / "a", cases, {"background": 0, "lesion": 1}, test_cases={"t0": (volume, labels)},
                        folds=[{"train": ["c0", "c1", "c2"], "val": ["c3", "c4"]}, {"train": [], "val": []}])
    dataset = open_masked_dataset(root)
    ids = {split: [c.case_id for c in dataset.cases(split)] for split in ("train", "val", "test", "all")}
    assert ids == {"train": ["c0", "c1", "c2"], "val": ["c3", "c4"], "test": ["t0"],
                   "all": ["c0", "c1", "c2", "c3", "c4", "t0"]}
    assert dataset.split_source == "splits_final.json fold 0"
    (root / "splits_final.json").unlink()
    assert [c.case_id for c in open_masked_dataset(root).cases("train")] == [f"c{i}" for i in range(5)]
    drawn = open_masked_dataset(root, val_fraction=0.4, seed=3)
    assert len(drawn.cases("val")) == 2 and len(drawn.cases("train")) == 3
    assert drawn.cases("val") == open_masked_dataset(root, val_fraction=0.4, seed=3).cases("val")  # seeded
    (root / "splits.json").write_text(json.dumps([{"train": ["c0", "zz"], "val": []}]))
    with pytest.raises(CtlesionError, match="zz"):
        open_masked_dataset(root)


def test_nndetection_layout_lesions_are_the_instances_of_one_class(tmp_path):
    volume = case_volume()
    instances = np.zeros((6, 64, 64), np.uint8)
    instances[1:3, 10:14, 10:14] = 1  # class 0 (lesion)
    instances[3:5, 30:34, 30:34] = 2  # class 1 (other)
    instances[0, 50:52, 50:52] = 3  # class 0
    instances[5, 50:52, 50:52] = 3  # same instance, not connected: still one lesion
    root = write_nndetection(tmp_path / "Task000_Test", {"c1": (volume, instances, {1: 0, 2: 1, 3: 0})},
                             {0: "lesion", 1: "other"})
    dataset = open_masked_dataset(root)
    assert dataset.layout == "nndetection" and dataset.lesion_value("lesion") == 0
    case = read_case(dataset.cases("all")[0], dataset.lesion_value("lesion"), layout="nndetection")
    assert case.num_lesions == 2
    assert (case.lesions_zyx == 1).sum() == 8 and (case.lesions_zyx == 2).sum() == 32  # numbered by first voxel
    assert case.lesions_zyx[0, 50, 50] == 1 and case.lesions_zyx[5, 50, 50] == 1 and case.lesions_zyx[1, 10, 10] == 2
    assert (case.lesions_zyx[3:5, 30:34, 30:34] == 0).all()


def test_bad_datasets_name_the_file_and_the_problem(tmp_path):
    volume = case_volume()
    root = write_nnunet(tmp_path / "d", {"c1": (volume, _labels())}, {"background": 0, "tumor": 2})
    # A label map off its image's grid.
    shifted = replace(volume, origin_lps_mm=(-25.0, -25.0, 101.0))
    write_nifti(_labels(), shifted, root / "labelsTr" / "c1.nii.gz")
    with pytest.raises(CtlesionError, match=r"c1\.nii\.gz.*not on its image's grid: origin"):
        read_case(open_masked_dataset(root).cases("all")[0], 2, layout="nnunet")
    write_nifti(_labels()[:5], replace(volume, hu=volume.hu[:5]), root / "labelsTr" / "c1.nii.gz")
    with pytest.raises(CtlesionError, match="shape"):
        read_case(open_masked_dataset(root).cases("all")[0], 2, layout="nnunet")
    # An image without its label map, a label map without its image.
    (root / "labelsTr" / "c1.nii.gz").rename(root / "labelsTr" / "c9.nii.gz")
    with pytest.raises(CtlesionError, match="case c1 has no label file c1.nii.gz"):
        open_masked_dataset(root)
    (root / "imagesTr" / "c1_0000.nii.gz").unlink()
    with pytest.raises(CtlesionError, match="without an image"):
        open_masked_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(CtlesionError, match="dataset.json"):
        open_masked_dataset(root)
    with pytest.raises(CtlesionError, match="not an nnU-Net or nnDetection dataset"):
        open_masked_dataset(tmp_path)
