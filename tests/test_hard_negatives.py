"""Tests of hard negative crops (``train --hard-negatives``): reading an earlier model's false
positives (ctlesion.data.hard_negatives), drawing crops centred on them (ctlesion.data.augment),
the dataset carrying them through augmentation, and the command line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tiny_deeplesion import build_tiny_deeplesion
from typer.testing import CliRunner

import ctlesion.training as train_module
from ctlesion.cli.app import app
from ctlesion.data.augment import AugmentConfig, CropConfig, draw_crop
from ctlesion.data.dataset import DeepLesionDataset
from ctlesion.data.hard_negatives import box_region_mask, false_positive_boxes, read_hard_negatives
from ctlesion.errors import CtlesionError
from ctlesion.evaluate.predictions import write_predictions
from ctlesion.io.deeplesion import read_dl_info

HU_WINDOW = (-175.0, 275.0)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """128 x 128 slices with true masks (first lesion of multi-lesion slices Possibly_noisy)."""
    root = tmp_path_factory.mktemp("tiny") / "data"
    build_tiny_deeplesion(root, noisy_first=True)
    return root


# --------------------------------------------------------------------------- false positives


def test_false_positives_score_high_enough_and_touch_no_lesion() -> None:
    lesions = np.array([[10.0, 10.0, 20.0, 20.0], [50.0, 50.0, 70.0, 60.0]])
    detections = np.array([
        [12.0, 12.0, 18.0, 18.0, 0.9],  # on the first lesion
        [21.0, 21.0, 30.0, 30.0, 0.9],  # one pixel apart: inclusive boxes 10..20 and 21..30 do not meet
        [20.0, 5.0, 25.0, 9.0, 0.8],  # shares column 20 but not a row: apart
        [69.0, 59.0, 80.0, 80.0, 0.8],  # shares pixel (69..70, 59..60) with the second lesion
        [90.0, 90.0, 100.0, 100.0, 0.49],  # apart but scores too low
        [90.0, 90.0, 100.0, 100.0, 0.5],  # apart, at the lowest score
    ])
    got = false_positive_boxes(detections, lesions, 0.5)
    np.testing.assert_array_equal(got, detections[[1, 2, 5], :4])
    assert false_positive_boxes(detections, np.zeros((0, 4)), 0.5).shape == (5, 4)
    assert false_positive_boxes(np.zeros((0, 5)), lesions, 0.5).shape == (0, 4)


def test_read_hard_negatives_counts_noisy_lesions_as_lesions(tiny, tmp_path) -> None:
    keys = read_dl_info(tiny / "DL_info.csv", drop_noisy=False)
    noisy = next(key for key in keys if key.noisy.any())
    clean = next(key for key in keys if not key.noisy.any())
    on_noisy = [*noisy.boxes_px[np.flatnonzero(noisy.noisy)[0]], 0.95]
    far = [0.0, 0.0, 6.0, 6.0, 0.9]  # the corner of the image, outside the body, off every lesion
    path = tmp_path / "predictions.json"
    low = on_noisy[:4] + [0.2]  # scores below the minimum: never a hard negative
    write_predictions(path, {noisy.file_name: np.array([on_noisy, far]), clean.file_name: np.array([low]),
                             keys[-1].file_name: np.zeros((0, 5))})
    hard = read_hard_negatives(path, tiny / "DL_info.csv", 0.5)
    assert list(hard) == [noisy.file_name]  # the others hold none: left out
    np.testing.assert_array_equal(hard[noisy.file_name], [far[:4]])
    write_predictions(path, {"999999_01_01_001.png": np.array([far])})
    with pytest.raises(CtlesionError, match="999999_01_01_001.png.*not in"):
        read_hard_negatives(path, tiny / "DL_info.csv", 0.5)


def test_box_region_mask_covers_the_pixel_centres_inside_boxes() -> None:
    mask = box_region_mask(np.array([[1.0, 2.0, 4.0, 3.0], [6.2, 0.0, 6.8, 1.0]]), (5, 8))
    expected = np.zeros((5, 8), dtype=bool)
    expected[2, 1:4] = True  # pixel centres 1.5, 2.5, 3.5 in [1, 4]; 2.5 in [2, 3]
    expected[0, 6] = True  # 6.5 in [6.2, 6.8]; 0.5 in [0, 1]
    np.testing.assert_array_equal(mask, expected)


# --------------------------------------------------------------------------- draws


def test_hard_negative_crops_centre_in_the_hard_region_at_their_rate() -> None:
    yy, xx = np.mgrid[:256, :256]
    body = (yy - 150) ** 2 + (xx - 100) ** 2 <= 60**2
    hard = np.zeros((256, 256), dtype=bool)
    hard[40:50, 180:200] = True
    boxes = np.array([[120.0, 140.0, 140.0, 160.0]])
    config = CropConfig(64, negative_fraction=1.0, hard_negative_fraction=0.3)
    draws = [draw_crop(config, np.random.default_rng([7, i]), boxes, 256, lambda: body, lambda: hard)
             for i in range(2000)]
    assert abs(sum(d.hard for d in draws) / 2000 - 0.3) < 0.04  # binomial sd 0.010
    for draw in draws:
        x0, y0 = draw.offset_xy_px
        assert draw.negative and (hard if draw.hard else body)[y0 + 32, x0 + 32]  # no region needs moving in
    # Slices without hard negatives (None or an empty region) get body crops.
    for missing in (lambda: None, lambda: np.zeros_like(hard)):
        for i in range(50):
            draw = draw_crop(config, np.random.default_rng([8, i]), boxes, 256, lambda: body, missing)
            assert not draw.hard and body[draw.offset_xy_px[1] + 32, draw.offset_xy_px[0] + 32]


def test_without_a_hard_negative_fraction_crops_are_drawn_as_before() -> None:
    body = np.ones((128, 128), dtype=bool)
    hard = np.zeros((128, 128), dtype=bool)
    hard[:8, :8] = True
    boxes = np.array([[10.0, 10.0, 40.0, 30.0]])
    config = CropConfig(64, negative_fraction=0.5)
    with_hard = [draw_crop(config, np.random.default_rng([3, i]), boxes, 128, lambda: body, lambda: hard)
                 for i in range(100)]
    without = [draw_crop(config, np.random.default_rng([3, i]), boxes, 128, lambda: body) for i in range(100)]
    assert with_hard == without and not any(d.hard for d in with_hard)
    with pytest.raises(ValueError, match="fractions"):
        CropConfig(64, hard_negative_fraction=1.5)


# --------------------------------------------------------------------------- dataset


@pytest.mark.parametrize("augment", [None, AugmentConfig.flip_only(1.0)])
def test_dataset_centres_negative_crops_on_the_hard_negatives_moved_with_the_slice(tiny, augment) -> None:
    keys = DeepLesionDataset(tiny, "train", num_slices=1, with_masks=False).keys
    box = np.array([[20.0, 90.0, 30.0, 100.0]])  # in the body, 10 x 10 source pixels
    hard = {key.file_name: box for key in keys[::2]}
    dataset = DeepLesionDataset(tiny, "train", num_slices=1, image_size_px=128, hu_window=HU_WINDOW, with_masks=False,
                                augment=augment, crop=CropConfig(32, negative_fraction=1.0, hard_negative_fraction=1.0),
                                hard_negatives=hard)
    # The flip mirrors the region: columns 20..30 become 98..108 of the 128-px slice.
    x1, y1, x2, y2 = box[0] if augment is None else (98.0, 90.0, 108.0, 100.0)
    body_centres = set()
    for epoch in range(3):
        dataset.set_epoch(epoch)
        for index, key in enumerate(dataset.keys):
            x0, y0 = dataset[index][2]["crop_xy_px"]
            centre_x, centre_y = x0 + 16.5, y0 + 16.5  # the centre pixel's centre (source = network px here)
            inside = x1 <= centre_x <= x2 and y1 <= centre_y <= y2
            if key.file_name in hard:
                assert inside, (key.file_name, x0, y0)
            else:
                body_centres.add((x0, y0))
    assert len(body_centres) > 3  # slices without hard negatives still spread over the body


# --------------------------------------------------------------------------- command line


def test_train_options_and_bad_files_on_the_command_line(tiny, tmp_path, monkeypatch) -> None:
    seen = []
    monkeypatch.setattr(train_module, "train", lambda options, **kwargs: seen.append(options) or Path("last"))
    key = read_dl_info(tiny / "DL_info.csv", split="train")[0]
    predictions = tmp_path / "predictions.json"
    write_predictions(predictions, {key.file_name: np.array([[0.0, 0.0, 6.0, 6.0, 0.9]])})
    run = tmp_path / "run"
    base = ["train", "--data", str(tiny), "--out", str(run), "--slices", "3", "--image-size", "64"]
    result = CliRunner().invoke(app, [*base, "--crop-size", "32", "--hard-negatives", str(predictions),
                                      "--hard-negative-fraction", "0.7", "--hard-negative-min-score", "0.6"])
    assert result.exit_code == 0, result.output
    options = seen[-1]
    assert options.crop == CropConfig(32, hard_negative_fraction=0.7)
    assert options.hard_negatives == predictions and options.hard_negative_min_score == 0.6
    hard = train_module.train_dataset(options).hard_negatives
    assert list(hard) == [key.file_name]
    # Without --hard-negatives the crops draw exactly as before (no hard fraction).
    result = CliRunner().invoke(app, [*base, "--crop-size", "32"])
    assert result.exit_code == 0 and seen[-1].crop == CropConfig(32) and seen[-1].hard_negatives is None
    calls = len(seen)
    result = CliRunner().invoke(app, [*base, "--hard-negatives", str(predictions)])
    assert result.exit_code == 2 and "needs --crop-size" in result.output
    write_predictions(predictions, {"999999_01_01_001.png": np.zeros((0, 5))})
    result = CliRunner().invoke(app, [*base, "--crop-size", "32", "--hard-negatives", str(predictions)])
    assert result.exit_code == 1 and "999999_01_01_001.png" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, [*base, "--crop-size", "32", "--hard-negatives", str(tmp_path / "none.json")])
    assert result.exit_code == 1 and "not found" in result.output
    assert len(seen) == calls and not run.exists()  # stopped before the run folder is made
