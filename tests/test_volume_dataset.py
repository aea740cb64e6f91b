"""Training items from volumes with lesion label maps (ctlesion.data.volume_dataset)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from masked_data import case_volume, write_nndetection, write_nnunet

from ctlesion.data.augment import AugmentConfig, CropConfig
from ctlesion.data.volume_dataset import VolumeKeySliceDataset, cache_case, choose_key_slices
from ctlesion.errors import CtlesionError
from ctlesion.io.masked_datasets import cross_section_areas, open_masked_dataset
from ctlesion.io.nifti import write_nifti
from ctlesion.preprocess import volume_window


def _lesion_case(interval_mm: float = 5.0):
    """A 10-slice block with a 'tumor' (label 2) spanning slices 3-6, largest on slice 5 (10 x 12 px),
    and a second one on slices 1-2; label 1 (an organ) elsewhere."""
    volume = case_volume((10, 64, 64), interval_mm)
    labels = np.zeros((10, 64, 64), np.uint8)
    labels[:, 10:20, 10:20] = 1
    labels[3, 30:34, 30:34] = 2
    labels[4, 28:36, 29:37] = 2
    labels[5, 27:37, 28:40] = 2
    labels[6, 31:33, 31:33] = 2
    labels[1:3, 45:52, 45:50] = 2
    return volume, labels


@pytest.fixture
def dataset(tmp_path):
    return open_masked_dataset(write_nnunet(tmp_path / "Dataset001_Test", {"case_a": _lesion_case()},
                                            {"background": 0, "organ": 1, "tumor": 2}))


def test_items_hold_the_label_maps_boxes_masks_and_window(dataset):
    items = VolumeKeySliceDataset(dataset, "train", 2, num_slices=3, image_size_px=64, hu_window=(-1000, 1000),
                                  other_slices_per_lesion=0, negative_fraction=0)
    assert items.names == ["case_a:1", "case_a:5"]  # each lesion's largest cross-section (first on ties)
    image, interval, target = items[1]
    assert interval == 5.0 and target["slice_interval_src_mm"] == 5.0 and target["key"] == "case_a:5"
    # slice 5: the large lesion (10 x 12 px) is a target; the other lesion is absent there
    np.testing.assert_array_equal(target["boxes"].numpy(), [[28, 27, 40, 37]])
    assert target["masks"].shape == (1, 64, 64) and int(target["masks"].sum()) == 120
    volume, _ = _lesion_case()
    expected = np.clip((volume_window(volume, 5, 3) + 1000) / 2000, 0, 1)
    np.testing.assert_allclose(image[0].numpy(), expected, atol=1e-6)
    assert items.mask_sources() == {"true": 2, "grabcut": 0}


def test_targets_skip_lesion_tips():
    lesions = np.zeros((10, 16, 16), np.uint16)
    lesions[2, 2:10, 2:10] = 1  # 64 px: largest
    lesions[3, 2:6, 2:6] = 1  # 16 px = 1/4 of the largest: kept as another slice of the lesion
    lesions[4, 2:4, 2:4] = 1  # 4 px: a tip
    hu = np.full((10, 16, 16), 40, np.int16)
    rng = np.random.default_rng(0)
    positive, negative = choose_key_slices(cross_section_areas(lesions, 1), hu, other_slices_per_lesion=5,
                                           negative_fraction=0.5, rng=rng)
    assert positive == [2, 3]
    assert len(negative) == 1 and negative[0] not in (2, 3, 4)


def test_thin_volumes_see_two_mm_neighbours(tmp_path):
    volume, labels = _lesion_case(interval_mm=1.0)
    data = open_masked_dataset(write_nnunet(tmp_path / "Dataset002_Thin", {"thin": (volume, labels)},
                                            {"background": 0, "tumor": 2}))
    items = VolumeKeySliceDataset(data, "train", 2, num_slices=3, image_size_px=64, hu_window=(-1000, 1000),
                                  other_slices_per_lesion=0, negative_fraction=0)
    image, interval, target = items[items.names.index("thin:5")]
    assert interval == 2.0 and target["slice_interval_src_mm"] == 1.0
    hu = volume.hu.astype(np.float32)
    np.testing.assert_allclose(image[0, 0].numpy(), np.clip((hu[3] + 1000) / 2000, 0, 1), atol=1e-6)
    np.testing.assert_allclose(image[0, 2].numpy(), np.clip((hu[7] + 1000) / 2000, 0, 1), atol=1e-6)


def test_augmented_and_cropped_items_keep_boxes_on_their_masks(dataset):
    items = VolumeKeySliceDataset(dataset, "train", 2, num_slices=3, image_size_px=64, hu_window=(-1000, 1000),
                                  augment=AugmentConfig(), crop=CropConfig(size_px=32, negative_fraction=0.0),
                                  other_slices_per_lesion=2, negative_fraction=1.0, seed=3)
    assert items.num_negative >= 1
    for epoch in range(3):
        items.set_epoch(epoch)
        for index in range(len(items)):
            image, _, target = items[index]
            assert image.shape == (1, 3, 32, 32)
            for box, mask in zip(target["boxes"].numpy(), target["masks"].numpy()):
                ys, xs = np.nonzero(mask)
                assert len(ys)
                assert box[0] <= xs.min() + 1 and xs.max() <= box[2] + 1
                assert box[1] <= ys.min() + 1 and ys.max() <= box[3] + 1


def test_cases_are_cached_once_and_refreshed_when_changed(dataset, tmp_path, monkeypatch):
    case = dataset.cases("train")[0]
    cache = tmp_path / "cache"
    first = cache_case(case, 2, layout="nnunet", min_lesion_voxels=1, cache_dir=cache)
    calls = []
    import ctlesion.data.volume_dataset as module

    monkeypatch.setattr(module, "read_case", lambda *a, **k: calls.append(1) or pytest.fail("read again"))
    again = cache_case(case, 2, layout="nnunet", min_lesion_voxels=1, cache_dir=cache)
    assert again.hu_path == first.hu_path and not calls
    assert np.load(first.lesions_path).max() == 2 and list(first.largest_area_px) == [35, 120]
    # another minimum lesion size is another cache entry
    monkeypatch.undo()
    other = cache_case(case, 2, layout="nnunet", min_lesion_voxels=100, cache_dir=cache)
    assert other.hu_path != first.hu_path and list(other.largest_area_px) == [120]


def test_nndetection_instances_and_bad_grids(tmp_path):
    volume, labels = _lesion_case()
    instances = np.zeros_like(labels)
    instances[labels == 2] = 1
    instances[1:3] = 0
    instances[1:3, 45:52, 45:50] = 2
    data = open_masked_dataset(write_nndetection(tmp_path / "Task001", {"c": (volume, instances, {1: 0, 2: 0})},
                                                 {0: "lesion"}))
    items = VolumeKeySliceDataset(data, "train", 0, num_slices=3, image_size_px=64, other_slices_per_lesion=0,
                                  negative_fraction=0)
    assert items.names == ["c:1", "c:5"]
    assert isinstance(items[0][0], torch.Tensor)
    root = write_nndetection(tmp_path / "Task002", {"bad": (volume, instances, {1: 0, 2: 0})}, {0: "lesion"})
    shifted = replace(volume, origin_lps_mm=(0.0, 0.0, 0.0))  # the label map off its image's grid
    write_nifti(instances, shifted, root / "raw_splitted" / "labelsTr" / "bad.nii.gz")
    bad = open_masked_dataset(root)
    with pytest.raises(CtlesionError, match="bad.nii.gz"):
        VolumeKeySliceDataset(bad, "train", 0, num_slices=3, image_size_px=64)


def test_training_items_and_detect_see_the_same_windows_and_predictions(dataset):
    """One window pipeline: a volume item's window and detections equal what `detect` computes for that slice."""
    from ctlesion.detect import DetectOptions, detect_slices
    from ctlesion.evaluate.run import predict_items
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
    from ctlesion.preprocess import fit_in_plane, network_input, volume_window

    torch.manual_seed(0)
    config = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32, hu_window=(-1000, 1000))
    model = AlignShiftDetector(config).eval()
    items = VolumeKeySliceDataset.for_detector(dataset, "train", 2, config, with_masks=False,
                                               other_slices_per_lesion=0, negative_fraction=0)
    volume, _ = _lesion_case()  # thick (5 mm): detect keeps it as it is
    image, _, _ = items[1]
    expected, _ = fit_in_plane(network_input(volume_window(volume, 5, 3), config), 64)
    np.testing.assert_array_equal(image[0].numpy(), expected)
    predicted = {p["key"]: p["detections"] for p in predict_items(model, items, progress=False)}["case_a:5"]
    detected = detect_slices(model, volume, options=DetectOptions(score_threshold=0.0, drop_outside_body=False))[5]
    assert len(predicted) == len(detected.scores) > 0
    np.testing.assert_allclose(predicted[:, 4], detected.scores, rtol=1e-6)
    inside = (predicted[:, :4] >= 0).all(axis=1) & (predicted[:, [0, 2]] <= 64).all(axis=1) & \
        (predicted[:, [1, 3]] <= 64).all(axis=1)  # detect clips boxes to the image, evaluate does not
    np.testing.assert_allclose(predicted[inside, :4], detected.boxes_px[inside], atol=1e-4)
