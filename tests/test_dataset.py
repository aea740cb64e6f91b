"""Tests of GrabCut pseudo-masks (ctlesion.data.masks) and the training dataset (ctlesion.data.dataset)."""

from __future__ import annotations

import csv
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ctlesion.data.augment import AugmentConfig
from ctlesion.data.dataset import DeepLesionDataset, collate_detection, flip_boxes_x
from ctlesion.data.masks import recist_polygon_mask, recist_pseudo_mask, window_to_uint8
from ctlesion.data.simulate import read_key_slice_masks, simulate_from_volumes
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import read_dl_info, read_png_hu
from ctlesion.preprocess import fit_in_plane, normalize_hu
from ctlesion.volume import Volume

# --------------------------------------------------------------------------- pseudo-masks


def _ellipse_scene(seed: int = 0):
    """A bright rotated ellipse (+100 HU) on a textured, noisy soft-tissue background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:160, 0:200] + 0.5
    background = 40 + 25 * np.sin(xx / 7) * np.cos(yy / 11) + rng.normal(0, 15, yy.shape)
    cx, cy, a, b, theta = 97.3, 81.6, 30.0, 18.0, np.deg2rad(30)
    cos, sin = np.cos(theta), np.sin(theta)
    u = (xx - cx) * cos + (yy - cy) * sin
    v = -(xx - cx) * sin + (yy - cy) * cos
    truth = (u / a) ** 2 + (v / b) ** 2 <= 1
    image = background + 100 * truth
    rows, cols = np.nonzero(truth)
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float64)
    recist = np.array([cx - a * cos, cy - a * sin, cx + a * cos, cy + a * sin,
                       cx + b * sin, cy - b * cos, cx - b * sin, cy + b * cos])
    return image, truth, box, recist


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_grabcut_recovers_the_ellipse() -> None:
    image, truth, box, recist = _ellipse_scene()
    mask = recist_pseudo_mask(image, box, recist)
    assert mask.dtype == bool and mask.shape == truth.shape
    assert _iou(mask, truth) > 0.8
    # GrabCut does better than its RECIST-quadrilateral initialisation (IoU ~ 0.64).
    polygon = recist_polygon_mask(truth.shape, recist)
    assert _iou(polygon, truth) < 0.7 < _iou(mask, truth)
    # Deterministic, and nothing outside the box.
    np.testing.assert_array_equal(mask, recist_pseudo_mask(image, box, recist))
    x1, y1, x2, y2 = box.astype(int)
    outside = mask.copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()


def test_grabcut_uses_a_correct_window_not_wrapped_uint8() -> None:
    # A dark (-100 HU) lesion in 60 HU liver: wrapping negative values into uint8 would make
    # the lesion brighter than the liver; a clipped window keeps it darker.
    image, truth, box, recist = _ellipse_scene(seed=1)
    image = np.where(truth, -100.0, 60.0) + np.random.default_rng(2).normal(0, 8, truth.shape)
    windowed = window_to_uint8(image)
    assert windowed[truth].mean() < windowed[~truth].mean()
    np.testing.assert_array_equal(window_to_uint8(np.array([-2000.0, -175.0, 50.0, 275.0, 3000.0])),
                                  [0, 0, 128, 255, 255])
    assert _iou(recist_pseudo_mask(image, box, recist), truth) > 0.8


def test_grabcut_fallbacks() -> None:
    image, truth, box, recist = _ellipse_scene()
    # A box covering the whole image leaves GrabCut no background: the RECIST polygon is used.
    whole = np.array([0.0, 0.0, 200.0, 160.0])
    np.testing.assert_array_equal(recist_pseudo_mask(image, whole, recist), recist_polygon_mask(truth.shape, recist))
    # ... and without RECIST (missing measurement), the ellipse inscribed in the box.
    ellipse = recist_pseudo_mask(image, whole, np.full(8, np.nan))
    yy, xx = np.mgrid[0:160, 0:200] + 0.5
    inscribed = ((xx - 100) / 100) ** 2 + ((yy - 80) / 80) ** 2 <= 1
    assert _iou(ellipse, inscribed) > 0.97


def test_masks_stay_inside_the_box() -> None:
    # RECIST endpoints exactly on the box edges (as for a tight box): no pixel outside it.
    image, truth, box, recist = _ellipse_scene()
    box = np.array([recist[0::2].min(), recist[1::2].min(), recist[0::2].max(), recist[1::2].max()])
    mask = recist_pseudo_mask(image, box, recist)
    ys, xs = np.nonzero(mask)
    assert box[0] <= xs.min() + 0.5 and xs.max() + 0.5 <= box[2]
    assert box[1] <= ys.min() + 0.5 and ys.max() + 0.5 <= box[3]


# --------------------------------------------------------------------------- dataset


def _phantom() -> Volume:
    yy, xx = np.mgrid[:96, :96] + 0.5
    body = (yy - 48) ** 2 + (xx - 48) ** 2 <= 44**2
    texture = 15 * np.sin(xx / 5) * np.cos(yy / 7)
    hu = np.where(body, 40 + texture, -1000.0)[None].repeat(30, axis=0)
    return Volume(hu=hu.astype(np.float32), spacing_zyx_mm=(2.0, 3.5, 3.5), source="phantom")


@pytest.fixture(scope="module")
def sim_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sim_dataset")
    simulate_from_volumes(root, [_phantom()], num_series=6, image_size_px=128, seed=11)
    return root


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_simulated_items(sim_root: Path, split: str) -> None:
    dataset = DeepLesionDataset(sim_root, split, num_slices=3, image_size_px=96)
    keys = read_dl_info(sim_root / "DL_info.csv", split=split)
    assert len(dataset) == len(keys) > 0
    for index, key in enumerate(keys):
        image, interval_mm, target = dataset[index]
        assert image.shape == (1, 3, 96, 96) and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
        assert interval_mm == (2.0 if key.slice_interval_mm == 1.0 else 5.0)
        assert target["slice_interval_src_mm"] == key.slice_interval_mm
        assert target["key"] == key.file_name
        assert target["scale"] == pytest.approx(0.75)
        np.testing.assert_allclose(target["boxes"].numpy(), key.boxes_px * 0.75, rtol=1e-6)
        assert target["boxes"].dtype == torch.float32
        assert target["boxes_src_px"].dtype == torch.float64
        np.testing.assert_array_equal(target["boxes_src_px"].numpy(), key.boxes_px)
        assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == [1] * key.num_lesions
        # The middle slice is the key slice, normalised and resized.
        key_hu = read_png_hu(key.png_path(sim_root / "Images_png"))
        expected, _ = fit_in_plane(normalize_hu(key_hu[None]), 96)
        np.testing.assert_allclose(image[0, 1].numpy(), expected[0], atol=1e-6)
        masks = target["masks"]
        assert masks.shape == (key.num_lesions, 96, 96) and masks.dtype == torch.uint8
        for mask, box in zip(masks.numpy(), target["boxes"].numpy()):
            ys, xs = np.nonzero(mask)
            assert len(ys) > 0
            assert box[0] - 1 <= xs.min() and xs.max() + 0.5 <= box[2] + 1
            assert box[1] - 1 <= ys.min() and ys.max() + 0.5 <= box[3] + 1


def test_true_masks_are_the_lesions(sim_root: Path) -> None:
    # The simulator's true key-slice masks reach the targets unchanged (same pixel grid here),
    # one per DL_info row, each inside its box; mask_source="grabcut" ignores them.
    dataset = DeepLesionDataset(sim_root, "train", num_slices=1, image_size_px=128)
    assert dataset.use_true_masks
    grabcut = DeepLesionDataset(sim_root, "train", num_slices=1, image_size_px=128, mask_source="grabcut")
    assert not grabcut.use_true_masks
    compared = 0
    for index, key in enumerate(dataset.keys):
        _, _, target = dataset[index]
        truth = read_key_slice_masks(sim_root, key.file_name)
        np.testing.assert_array_equal(target["masks"].numpy().astype(bool), truth)
        for mask, box in zip(truth, key.boxes_px):
            ys, xs = np.nonzero(mask)
            assert box[0] - 1 <= xs.min() and xs.max() + 0.5 <= box[2] + 1
            assert box[1] - 1 <= ys.min() and ys.max() + 0.5 <= box[3] + 1
            compared += 1
        _, _, target_g = grabcut[index]
        assert target_g["masks"].shape == target["masks"].shape
    assert compared >= 3


def test_flip_moves_boxes_and_masks(sim_root: Path) -> None:
    plain = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=96)
    flipped = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=96, augment=AugmentConfig.flip_only(1.0))
    for index in range(len(plain)):
        image, _, target = plain[index]
        image_f, _, target_f = flipped[index]
        width_src = 128
        expected_src = target["boxes_src_px"].numpy().copy()
        expected_src[:, [0, 2]] = width_src - expected_src[:, [2, 0]]
        np.testing.assert_allclose(target_f["boxes_src_px"].numpy(), expected_src)
        np.testing.assert_allclose(target_f["boxes"].numpy(), expected_src * 0.75, rtol=1e-6)
        np.testing.assert_allclose(image_f.numpy(), image.numpy()[..., ::-1], atol=1e-5)
        for mask, box in zip(target_f["masks"].numpy(), target_f["boxes"].numpy()):
            ys, xs = np.nonzero(mask)
            if xs.size:  # (a lesion of 1-2 source pixels can vanish at 0.75 scale)
                assert box[0] - 1 <= xs.min() and xs.max() + 0.5 <= box[2] + 1
        # Nearest-neighbour resampling of a flipped mask may gain or lose a pixel per row at an edge.
        tolerance = max(0.1 * float(target["masks"].sum()), 2.0 * len(target["masks"]))
        assert abs(float(target_f["masks"].sum()) - float(target["masks"].sum())) <= tolerance
    # Half-probability flips are seeded by (seed, index, epoch): repeatable, varying by epoch.
    half = DeepLesionDataset(sim_root, "train", num_slices=1, image_size_px=96, augment=AugmentConfig.flip_only(0.5),
                             with_masks=False)
    draws = []
    for epoch in range(6):
        half.set_epoch(epoch)
        draws.append([bool(half[i][2]["boxes_src_px"][0, 0] != plain[i][2]["boxes_src_px"][0, 0])
                      for i in range(len(half))])
    half.set_epoch(0)
    assert draws[0] == [bool(half[i][2]["boxes_src_px"][0, 0] != plain[i][2]["boxes_src_px"][0, 0])
                        for i in range(len(half))]
    assert any(draws[0] != d for d in draws[1:])
    assert "masks" not in half[0][2]


def test_flip_boxes_x() -> None:
    np.testing.assert_array_equal(flip_boxes_x(np.array([[10.0, 5.0, 30.0, 9.0]]), 100), [[70.0, 5.0, 90.0, 9.0]])


def test_collate(sim_root: Path) -> None:
    dataset = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=64, with_masks=False)
    batch = [dataset[0], dataset[1]]
    images, intervals, targets = collate_detection(batch)
    assert images.shape == (2, 1, 3, 64, 64)
    assert intervals.dtype == torch.float32
    assert intervals.tolist() == [batch[0][1], batch[1][1]]
    assert [t["key"] for t in targets] == [dataset.keys[0].file_name, dataset.keys[1].file_name]


def test_dataset_errors(sim_root: Path, tmp_path: Path) -> None:
    with pytest.raises(CtlesionError, match="Images_png"):
        DeepLesionDataset(tmp_path, "train")
    with pytest.raises(CtlesionError, match="unknown split"):
        DeepLesionDataset(sim_root, "training")


def test_real_sample(shared_data: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = shared_data / "deeplesion_sample"
    cache = tmp_path / "masks"  # never write into the shared data
    for split in ("test", "val"):
        dataset = DeepLesionDataset(root, split, num_slices=3, image_size_px=512, mask_cache_dir=cache)
        keys = read_dl_info(root / "DL_info.csv", split=split)
        assert len(dataset) == len(keys) > 0
        warned = 0
        for index, key in enumerate(keys):
            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="ctlesion.io.deeplesion"):
                image, interval_mm, target = dataset[index]
            # Only key slices are present, so the window replicates the key slice and says so;
            # where a neighbour happens to be another key slice of the series, it is used.
            replicated = torch.equal(image[0, 0], image[0, 1]) and torch.equal(image[0, 1], image[0, 2])
            assert replicated == ("single-slice context: neighbours replicated" in caplog.text)
            assert replicated or "nearest present slices used" in caplog.text
            warned += replicated
            assert interval_mm == max(2.0, key.slice_interval_mm)
            np.testing.assert_allclose(target["boxes"].numpy(), key.boxes_px, rtol=1e-6)
            for mask, box, recist, diameters in zip(target["masks"].numpy().astype(bool), key.boxes_px,
                                                    key.recist_px, key.diameters_px):
                # The pseudo-mask holds the RECIST quadrilateral and has about the area of the
                # ellipse on the two diameters (DeepLesion boxes carry ~5 px of padding).
                polygon = recist_polygon_mask(mask.shape, recist)
                assert (mask & polygon).sum() >= 0.95 * polygon.sum()
                ellipse_area = np.pi / 4 * diameters[0] * diameters[1]
                assert 0.7 * ellipse_area <= mask.sum() <= 2.5 * ellipse_area + 4, key.file_name
                ys, xs = np.nonzero(mask)
                assert box[0] <= xs.min() + 0.5 and xs.max() + 0.5 <= box[2]
                assert box[1] <= ys.min() + 0.5 and ys.max() + 0.5 <= box[3]
        assert warned >= len(keys) // 2
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ctlesion.data.dataset"):
        assert len(DeepLesionDataset(root, "train", mask_cache_dir=cache)) == 0
    assert "no annotated key slice in split 'train'" in caplog.text


# --------------------------------------------------------------------------- bad input


def _copy_dataset(sim_root: Path, tmp_path: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(sim_root, root, ignore=shutil.ignore_patterns("ctlesion_cache"))
    return root


def test_missing_key_slice_pngs_are_skipped_with_one_warning(
    sim_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_dataset(sim_root, tmp_path)
    keys = read_dl_info(root / "DL_info.csv", split="train")
    missing = keys[1].png_path(root / "Images_png")
    missing.unlink()
    with caplog.at_level(logging.WARNING, logger="ctlesion.data.dataset"):
        dataset = DeepLesionDataset(root, "train", num_slices=3, image_size_px=64, with_masks=False)
    assert [k.file_name for k in dataset.keys] == [k.file_name for k in keys if k is not keys[1]]
    assert len(caplog.records) == 1
    assert f"skipped 1 of {len(keys)} key slice(s) whose PNG is missing" in caplog.text and str(missing) in caplog.text
    with pytest.raises(CtlesionError, match=f"{missing}: key slice PNG not found"):
        DeepLesionDataset(root, "train", with_masks=False, skip_unreadable=False)


def test_corrupt_png_mid_epoch_is_replaced_by_the_next_key_slice(
    sim_root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = _copy_dataset(sim_root, tmp_path)
    dataset = DeepLesionDataset(root, "train", num_slices=3, image_size_px=64, mask_cache_dir=tmp_path / "masks")
    keys = dataset.keys
    assert len(dataset) >= 3
    # A key slice followed by one of another series (whose window cannot read the corrupted PNG).
    bad_index = next(i for i in range(len(keys) - 1) if keys[i].series_dir != keys[i + 1].series_dir)
    expected = dataset[bad_index + 1]
    bad = keys[bad_index].png_path(root / "Images_png")
    bad.write_bytes(bad.read_bytes()[:100])  # truncated after construction, as if corrupted on disk
    with caplog.at_level(logging.WARNING, logger="ctlesion.data.dataset"):
        image, interval_mm, target = dataset[bad_index]
    assert f"{bad}: cannot decode PNG slice" in caplog.text
    assert target["key"] == keys[bad_index + 1].file_name == expected[2]["key"]
    assert torch.equal(image, expected[0]) and interval_mm == expected[1]
    assert torch.equal(target["masks"], expected[2]["masks"])
    # The other items are untouched; a full pass does not stop.
    other = next(i for i in range(len(keys)) if keys[i].series_dir != keys[bad_index].series_dir)
    assert dataset[other][2]["key"] == keys[other].file_name
    assert len([dataset[i] for i in range(len(dataset))]) == len(dataset)
    strict = DeepLesionDataset(root, "train", num_slices=3, image_size_px=64, with_masks=False,
                               skip_unreadable=False)
    with pytest.raises(CtlesionError, match="cannot decode PNG slice"):
        strict[bad_index]


def test_dl_info_without_a_column(sim_root: Path, tmp_path: Path) -> None:
    root = _copy_dataset(sim_root, tmp_path)
    table = root / "DL_info.csv"
    lines = table.read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("Spacing_mm_px_")
    # Drop the column from the header and every row (values are quoted "a, b, c" fields).
    rows = list(csv.reader(lines))
    with table.open("w", newline="") as handle:
        csv.writer(handle).writerows([row[:column] + row[column + 1:] for row in rows])
    with pytest.raises(CtlesionError, match=r"DL_info.csv: missing DL_info column\(s\) Spacing_mm_px_"):
        DeepLesionDataset(root, "train", with_masks=False)


def test_nothing_accumulates_per_item(sim_root: Path) -> None:
    dataset = DeepLesionDataset(sim_root, "train", num_slices=3, image_size_px=64)
    dataset[0]
    before = len(pickle.dumps(dataset))
    for index in range(len(dataset)):
        dataset[index]
    assert len(pickle.dumps(dataset)) == before
    # Plain iteration ends (IndexError past the end, not a wrap-around to the first item).
    assert [target["key"] for _, _, target in dataset] == [key.file_name for key in dataset.keys]
    assert dataset[-1][2]["key"] == dataset.keys[-1].file_name
