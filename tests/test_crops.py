"""Tests of crop training (ctlesion.data.augment crops, DeepLesionDataset ``crop``) and of true masks
(``masks/`` files, ctlesion.data.mask_cache) on a tiny hand-made DeepLesion-layout dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_deeplesion import build_tiny_deeplesion
from typer.testing import CliRunner

import ctlesion.data.mask_cache as mask_cache
from ctlesion.cli.app import app
from ctlesion.data.augment import (
    AugmentConfig,
    CropConfig,
    CropDraw,
    augment_item,
    crop_item,
    draw_augmentation,
    draw_crop,
)
from ctlesion.data.dataset import DeepLesionDataset
from ctlesion.data.mask_cache import MASK_SOURCES, prepare_mask_cache, read_true_masks, true_masks_path
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import load_key_slice_window, read_dl_info
from ctlesion.preprocess import InputMapping, air_input_value, fit_in_plane, network_input

HU_WINDOW = (-175.0, 275.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """128 x 128 slices with their true masks in masks/ (first lesion of multi-lesion slices noisy)."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    truths = build_tiny_deeplesion(root, noisy_first=True)
    return root, truths


def _no_grabcut(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args, **kwargs):
        raise AssertionError("GrabCut ran although the dataset has true masks")

    monkeypatch.setattr(mask_cache, "recist_pseudo_mask", fail)


# --------------------------------------------------------------------------- draws


def test_lesion_crops_hold_their_lesion_and_spread_over_the_room() -> None:
    config = CropConfig(64, negative_fraction=0.0)
    boxes = np.array([[10.3, 100.0, 30.7, 126.5], [70.0, 20.0, 95.0, 40.0]])
    starts = {0: [], 1: []}
    for seed in range(400):
        draw = draw_crop(config, np.random.default_rng(seed), boxes, 128)
        assert not draw.negative and draw.size_px == 64
        x0, y0 = draw.offset_xy_px
        assert 0 <= x0 <= 64 and 0 <= y0 <= 64  # inside the image
        x1, y1, x2, y2 = boxes[draw.lesion]
        assert x0 <= x1 and x2 <= x0 + 64 and y0 <= y1 and y2 <= y0 + 64  # the lesion wholly inside
        starts[draw.lesion].append((x0, y0))
    # Both lesions drawn; every start that holds the lesion occurs (uniform over the room).
    assert 150 < len(starts[0]) < 250
    xs, ys = zip(*starts[0])
    assert (min(xs), max(xs)) == (0, 10) and (min(ys), max(ys)) == (63, 64)  # ceil(126.5 - 64) = 63, room 64
    xs, ys = zip(*starts[1])
    assert (min(xs), max(xs)) == (31, 64) and (min(ys), max(ys)) == (0, 20)


def test_a_lesion_larger_than_the_crop_gets_a_crop_within_it() -> None:
    config = CropConfig(32, negative_fraction=0.0)
    box = np.array([[20.0, 30.0, 80.0, 50.0]])  # 60 px wide (> 32), 20 px high (fits)
    for seed in range(50):
        x0, y0 = draw_crop(config, np.random.default_rng(seed), box, 128).offset_xy_px
        assert 20 <= x0 and x0 + 32 <= 80
        assert y0 <= 30 and 50 <= y0 + 32


def test_negative_crops_come_at_the_configured_rate_and_centre_in_the_body() -> None:
    yy, xx = np.mgrid[:256, :256]
    body = (yy - 150) ** 2 + (xx - 100) ** 2 <= 60**2
    boxes = np.array([[120.0, 140.0, 140.0, 160.0]])
    for fraction in (0.25, 0.6):
        config = CropConfig(64, negative_fraction=fraction)
        draws = [draw_crop(config, np.random.default_rng([7, i]), boxes, 256, lambda: body) for i in range(2000)]
        negatives = [d for d in draws if d.negative]
        # Binomial standard deviation at n = 2000 is < 0.011: 3.5 of them.
        assert abs(len(negatives) / 2000 - fraction) < 0.04
        for draw in negatives:
            x0, y0 = draw.offset_xy_px
            assert 0 <= x0 <= 192 and 0 <= y0 <= 192
            centre_in_body = body[y0 + 32, x0 + 32]
            assert centre_in_body or x0 in (0, 192) or y0 in (0, 192)  # else moved inside the image
        centres = np.array([d.offset_xy_px for d in negatives]) + 32
        assert np.abs(centres.mean(axis=0) - (100, 150)).max() < 6  # spread over the body disc
    # A slice without lesions gives a negative crop whatever the fraction; no body: anywhere.
    draw = draw_crop(CropConfig(64, negative_fraction=0.0), np.random.default_rng(0), np.zeros((0, 4)), 256)
    assert draw.negative and draw.lesion is None


def test_same_generator_same_crop() -> None:
    config = CropConfig(64)
    boxes = np.array([[10.0, 10.0, 40.0, 30.0], [60.0, 80.0, 90.0, 110.0]])
    body = np.ones((128, 128), dtype=bool)
    first = [draw_crop(config, np.random.default_rng([3, i, 1]), boxes, 128, lambda: body) for i in range(30)]
    again = [draw_crop(config, np.random.default_rng([3, i, 1]), boxes, 128, lambda: body) for i in range(30)]
    other = [draw_crop(config, np.random.default_rng([3, i, 2]), boxes, 128, lambda: body) for i in range(30)]
    assert first == again and first != other


def test_crop_item_shifts_by_exactly_the_offset_and_applies_the_visibility_rule() -> None:
    rng = np.random.default_rng(0)
    image = rng.random((3, 128, 128)).astype(np.float32)
    boxes = np.array([
        [40.0, 40.0, 60.0, 50.0],  # the crop's lesion, wholly inside
        [20.0, 40.0, 40.0, 50.0],  # 12 of 20 px wide inside the crop (x0 = 28): 60 % kept
        [84.0, 40.0, 104.0, 50.0],  # 8 of 20 px inside (crop ends at 92): 40 % dropped
        [0.0, 0.0, 10.0, 10.0],  # outside
    ])
    masks = np.zeros((4, 128, 128), dtype=np.uint8)
    for n, (x1, y1, x2, y2) in enumerate(boxes.astype(int)):
        masks[n, y1:y2, x1:x2] = 1
    draw = CropDraw((28, 20), 64, lesion=0)
    cut = crop_item(image, boxes, draw, masks=masks, min_visible_fraction=0.5)
    np.testing.assert_array_equal(cut.image, image[:, 20:84, 28:92])
    assert cut.kept.tolist() == [0, 1]
    np.testing.assert_array_equal(cut.boxes_px, [[12.0, 20.0, 32.0, 30.0], [0.0, 20.0, 12.0, 30.0]])
    np.testing.assert_array_equal(cut.masks, masks[[0, 1], 20:84, 28:92])
    # The rule is the box area fraction: at 0.3 the 40 % lesion stays, clipped to the crop.
    cut = crop_item(image, boxes, draw, masks=masks, min_visible_fraction=0.3)
    assert cut.kept.tolist() == [0, 1, 2]
    np.testing.assert_array_equal(cut.boxes_px[2], [56.0, 20.0, 64.0, 30.0])
    # The lesion a crop is drawn around is kept however little of it shows.
    cut = crop_item(image, boxes, CropDraw((28, 20), 64, lesion=2), masks=masks, min_visible_fraction=0.9)
    assert cut.kept.tolist() == [0, 2]
    # Without masks the same boxes are kept; a negative crop keeps what is visible enough.
    assert crop_item(image, boxes, CropDraw((28, 20), 64, None)).kept.tolist() == [0, 1]


def test_crop_config_checks() -> None:
    for bad in ({"size_px": 48}, {"size_px": 0}, {"size_px": 64, "negative_fraction": 1.5},
                {"size_px": 64, "min_visible_fraction": -0.1}):
        with pytest.raises(ValueError):
            CropConfig(**bad)
    with pytest.raises(ValueError, match="larger than"):
        draw_crop(CropConfig(128), np.random.default_rng(0), np.zeros((0, 4)), 96)


# --------------------------------------------------------------------------- dataset


def _whole_slice_reference(root: Path, dataset: DeepLesionDataset, index: int, masks_src: np.ndarray):
    """The whole-slice item as the dataset made it before crops: window, augmentation, fit."""
    key = dataset.keys[index]
    mapping = InputMapping(HU_WINDOW)
    window_hu, _ = load_key_slice_window(root / "Images_png", key, dataset.num_slices)
    window, boxes = network_input(window_hu, mapping), key.boxes_px.astype(np.float64)
    air = air_input_value(mapping)
    if dataset.augment is not None:
        draw = draw_augmentation(dataset.augment, np.random.default_rng([dataset.seed, index, dataset.epoch]))
        item = augment_item(window, boxes, draw, recist_px=key.recist_px, masks=masks_src, fill=air)
        window, boxes, masks_src = item.window, item.boxes_px, item.masks
    image, transform = fit_in_plane(window, dataset.image_size_px, air)
    return image, (boxes * transform.scale).astype(np.float32), transform.masks_to_network(masks_src)


def test_whole_slices_are_unchanged_when_crops_are_off(tiny, monkeypatch) -> None:
    root, truths = tiny
    _no_grabcut(monkeypatch)
    dataset = DeepLesionDataset(root, "train", num_slices=3, image_size_px=96, hu_window=HU_WINDOW,
                                augment=AugmentConfig(), seed=5)
    all_rows = {k.file_name: k for k in read_dl_info(root / "DL_info.csv", drop_noisy=False)}
    for epoch in (0, 1):
        dataset.set_epoch(epoch)
        for index, key in enumerate(dataset.keys):
            image, _, target = dataset[index]
            rows = np.flatnonzero(~all_rows[key.file_name].noisy)
            expected_image, expected_boxes, expected_masks = _whole_slice_reference(
                root, dataset, index, truths[key.file_name][rows])
            assert "crop_xy_px" not in target and image.shape == (1, 3, 96, 96)
            np.testing.assert_array_equal(image[0].numpy(), expected_image)
            np.testing.assert_array_equal(target["boxes"].numpy(), expected_boxes)
            np.testing.assert_array_equal(target["masks"].numpy(), expected_masks)


@pytest.mark.parametrize("augment", [None, AugmentConfig()])
def test_crops_are_cut_from_the_whole_slice_item(tiny, augment, monkeypatch) -> None:
    root, _ = tiny
    _no_grabcut(monkeypatch)
    common = {"num_slices": 3, "image_size_px": 128, "hu_window": HU_WINDOW, "augment": augment, "seed": 2}
    whole = DeepLesionDataset(root, "train", **common)
    crops = DeepLesionDataset(root, "train", crop=CropConfig(64, negative_fraction=0.3), **common)
    lesion_crops = 0
    for epoch in range(4):
        whole.set_epoch(epoch)
        crops.set_epoch(epoch)
        for index in range(len(whole)):
            image, interval, target = whole[index]
            cut, cut_interval, cut_target = crops[index]
            x0, y0 = cut_target["crop_xy_px"]
            assert cut.shape == (1, 3, 64, 64) and cut_interval == interval
            # The same augmentation, then exactly the crop's pixels, boxes and masks.
            np.testing.assert_array_equal(cut.numpy(), image.numpy()[..., y0 : y0 + 64, x0 : x0 + 64])
            boxes = target["boxes"].numpy().astype(np.float64) - (x0, y0, x0, y0)
            clipped = np.clip(boxes, 0, 64)
            visible = np.prod(clipped[:, 2:] - clipped[:, :2], axis=1) / np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
            # Every lesion here fits in 64 px, so the crop's own lesion is wholly inside (visible 1)
            # and the kept lesions are exactly those with >= 50 % of their box in the crop.
            kept = np.flatnonzero(visible >= 0.5)
            got = cut_target["boxes"].numpy()
            np.testing.assert_allclose(got, clipped[kept], atol=1e-4)
            np.testing.assert_array_equal(cut_target["masks"].numpy(),
                                          target["masks"].numpy()[kept, y0 : y0 + 64, x0 : x0 + 64])
            assert cut_target["labels"].tolist() == [1] * len(kept)
            lesion_crops += bool((visible == 1).any())
            # Source-pixel boxes are the crop boxes put back into the slice.
            np.testing.assert_allclose(cut_target["boxes_src_px"].numpy(),
                                       (got.astype(np.float64) + (x0, y0, x0, y0)) / cut_target["scale"], atol=1e-4)
    assert lesion_crops >= 0.5 * 4 * len(whole)  # most crops hold a whole lesion (70 % are drawn around one)


def test_crops_repeat_by_seed_index_and_epoch(tiny, monkeypatch) -> None:
    root, _ = tiny
    _no_grabcut(monkeypatch)
    common = {"num_slices": 1, "image_size_px": 128, "hu_window": HU_WINDOW, "augment": AugmentConfig(),
                  "crop": CropConfig(64)}
    a, b = DeepLesionDataset(root, "train", seed=1, **common), DeepLesionDataset(root, "train", seed=1, **common)
    offsets = []
    for epoch in range(3):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        items = [(a[i], b[i]) for i in range(len(a))]
        for (image, _, target), (image_b, _, target_b) in items:
            assert target["crop_xy_px"] == target_b["crop_xy_px"] and torch.equal(image, image_b)
            assert torch.equal(target["boxes"], target_b["boxes"]) and torch.equal(target["masks"], target_b["masks"])
        offsets.append([target["crop_xy_px"] for (_, _, target), _ in items])
    assert offsets[0] != offsets[1] != offsets[2]
    # Reading the items in another order (another worker split) gives the same crops.
    a.set_epoch(1)
    assert [a[i][2]["crop_xy_px"] for i in reversed(range(len(a)))] == offsets[1][::-1]


def test_lesion_crops_hold_their_lesion_on_the_dataset(tiny, monkeypatch) -> None:
    root, _ = tiny
    _no_grabcut(monkeypatch)
    dataset = DeepLesionDataset(root, "train", num_slices=1, image_size_px=128, hu_window=HU_WINDOW,
                                crop=CropConfig(64, negative_fraction=0.0))
    for epoch in range(5):
        dataset.set_epoch(epoch)
        for index, key in enumerate(dataset.keys):
            _, _, target = dataset[index]
            x0, y0 = target["crop_xy_px"]
            inside = [(b[0] >= x0 and b[1] >= y0 and b[2] <= x0 + 64 and b[3] <= y0 + 64) for b in key.boxes_px]
            assert any(inside)  # the drawn lesion (every lesion here fits in 64 px)
            # A lesion wholly inside keeps its exact box, shifted by the offset.
            for box in key.boxes_px[inside]:
                assert any(np.allclose(box - (x0, y0, x0, y0), got, atol=1e-5) for got in target["boxes"].numpy())


# --------------------------------------------------------------------------- true masks


def test_true_masks_are_used_when_present_and_follow_the_crop(tiny, monkeypatch) -> None:
    root, truths = tiny
    _no_grabcut(monkeypatch)
    plain = DeepLesionDataset(root, "train", num_slices=1, image_size_px=128, hu_window=HU_WINDOW)
    assert plain.mask_sources() == {"true": len(plain), "grabcut": 0}
    assert not (root / "ctlesion_cache" / "pseudo_masks").exists() or not list(
        (root / "ctlesion_cache" / "pseudo_masks").rglob("*.npz"))
    all_rows = {k.file_name: k for k in read_dl_info(root / "DL_info.csv", drop_noisy=False)}
    noisy_seen = 0
    for index, key in enumerate(plain.keys):
        _, _, target = plain[index]
        rows = np.flatnonzero(~all_rows[key.file_name].noisy)
        noisy_seen += len(rows) < all_rows[key.file_name].num_lesions
        np.testing.assert_array_equal(target["masks"].numpy().astype(bool), truths[key.file_name][rows])
    assert noisy_seen >= 1  # the row order survives dropping Possibly_noisy lesions
    keep = DeepLesionDataset(root, "train", num_slices=1, image_size_px=128, drop_noisy=False)
    for index, key in enumerate(keep.keys):
        np.testing.assert_array_equal(keep.true_masks(index, (128, 128)), truths[key.file_name])
    cropped = DeepLesionDataset(root, "train", num_slices=1, image_size_px=128, hu_window=HU_WINDOW,
                                crop=CropConfig(64, negative_fraction=0.0), drop_noisy=False)
    for index, key in enumerate(cropped.keys):
        _, _, target = cropped[index]
        x0, y0 = target["crop_xy_px"]
        truth = truths[key.file_name][:, y0 : y0 + 64, x0 : x0 + 64]
        got = target["masks"].numpy().astype(bool)
        assert len(got) and all(any(np.array_equal(g, t) for t in truth) for g in got)


def test_without_masks_folder_or_with_grabcut_the_pseudo_masks_are_used(tiny, tmp_path) -> None:
    root, truths = tiny
    grabcut = DeepLesionDataset(root, "train", num_slices=1, image_size_px=128, mask_source="grabcut",
                                mask_cache_dir=tmp_path / "cache")
    assert grabcut.mask_sources() == {"true": 0, "grabcut": len(grabcut)}
    key = grabcut.keys[0]
    masks = grabcut[0][2]["masks"].numpy().astype(bool)
    assert (tmp_path / "cache" / key.series_dir / "003.npz").is_file()  # GrabCut's, cached
    truth = truths[key.file_name][-len(masks):]
    assert not np.array_equal(masks, truth) and (masks & truth).sum() > 0.5 * truth.sum()
    bare = tmp_path / "bare"
    shutil.copytree(root, bare, ignore=shutil.ignore_patterns("masks", "ctlesion_cache"))
    dataset = DeepLesionDataset(bare, "train", num_slices=1, image_size_px=128)
    assert dataset.mask_sources() == {"true": 0, "grabcut": len(dataset)}
    np.testing.assert_array_equal(dataset[0][2]["masks"].numpy().astype(bool), masks)
    with pytest.raises(ValueError, match="mask_source"):
        DeepLesionDataset(root, "train", mask_source="truth")
    assert MASK_SOURCES == ("auto", "grabcut")


def test_malformed_true_mask_files_name_the_file(tiny, tmp_path, caplog) -> None:
    root, _ = tiny
    data = tmp_path / "data"
    shutil.copytree(root, data, ignore=shutil.ignore_patterns("ctlesion_cache"))
    keys = read_dl_info(data / "DL_info.csv", split="train", drop_noisy=False)
    path = true_masks_path(data, keys[0])
    assert path == data / "masks" / keys[0].series_dir / "003.npz"
    np.savez_compressed(path, masks=np.ones((keys[0].num_lesions + 1, 128, 128), dtype=bool))
    strict = DeepLesionDataset(data, "train", num_slices=1, image_size_px=128, skip_unreadable=False,
                               drop_noisy=False)
    with pytest.raises(CtlesionError, match=rf"{path}: true-mask file holds bool \({keys[0].num_lesions + 1}, "):
        strict[0]
    np.savez_compressed(path, other=np.zeros(3))
    with pytest.raises(CtlesionError, match="no 'masks' array"):
        strict[0]
    empty = np.zeros((keys[0].num_lesions, 128, 128), dtype=np.uint8)
    np.savez_compressed(path, masks=empty)
    with pytest.raises(CtlesionError, match=r"empty mask for lesion\(s\) \[0"):
        read_true_masks(path, (128, 128), keys[0].num_lesions)
    path.write_bytes(b"not a zip")
    with pytest.raises(CtlesionError, match="unreadable true-mask file"):
        strict[0]
    assert read_true_masks(tmp_path / "absent.npz", (128, 128), 1) is None
    # Training skips the key slice with a warning naming the file.
    lenient = DeepLesionDataset(data, "train", num_slices=1, image_size_px=128, drop_noisy=False)
    assert lenient[0][2]["key"] == lenient.keys[1].file_name
    assert str(path) in caplog.text


def test_prepare_skips_key_slices_with_true_masks(tiny, tmp_path) -> None:
    root, _ = tiny
    total = len(read_dl_info(root / "DL_info.csv", drop_noisy=False))
    report = prepare_mask_cache(root, cache_dir=tmp_path / "a", workers=0, progress=False)
    assert (report.true_masks, report.computed, report.total) == (total, 0, total)
    assert not list((tmp_path / "a").rglob("*.npz"))
    result = CliRunner().invoke(app, ["prepare", "--data", str(root), "--mask-cache", str(tmp_path / "b"),
                                      "--workers", "0", "--mask-source", "grabcut"])
    assert result.exit_code == 0, result.output
    summary = result.output.strip().splitlines()[-1]
    assert summary.endswith(f"{total} computed, 0 already cached, 0 failed")  # the pre-true-masks line
    result = CliRunner().invoke(app, ["prepare", "--data", str(root), "--mask-cache", str(tmp_path / "a"),
                                      "--workers", "0"])
    assert result.output.strip().splitlines()[-1].endswith(f"0 failed, {total} with true masks (skipped)")
    assert len(list((tmp_path / "b").rglob("*.npz"))) == total
