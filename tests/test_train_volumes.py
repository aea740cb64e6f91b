"""`ctlesion train` on CT volumes with lesion masks (nnU-Net v2 raw / nnDetection layouts)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from ctlesion.checkpoint import load_detector, save_checkpoint
from ctlesion.cli.app import app
from ctlesion.training import read_run_options
from masked_data import case_volume, write_nnunet

CLI_TINY = ["--slices", "3", "--image-size", "64", "--fpn-channels", "32", "--fc-channels", "64"]
STEPS = ["--epochs", "1", "--max-iters-per-epoch", "4", "--workers", "0", "--warmup-iters", "2", "--device", "cpu"]


def _case(seed: int):
    """A 12-slice 5 mm block with one bright 'tumor' (label 2) per case and an 'organ' (label 1)."""
    volume = case_volume((12, 64, 64), 5.0, seed=seed)
    labels = np.zeros((12, 64, 64), np.uint8)
    labels[:, 10:20, 10:20] = 1
    rng = np.random.default_rng(seed)
    y, x = rng.integers(24, 40, 2)
    labels[4:8, y - 5 : y + 5, x - 6 : x + 6] = 2
    volume.hu[labels == 2] = 120
    return volume, labels


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vol") / "Dataset010_Tumors"
    return write_nnunet(root, {f"case_{i}": _case(i) for i in range(4)}, {"background": 0, "organ": 1, "tumor": 2},
                        folds=[{"train": ["case_0", "case_1", "case_2"], "val": ["case_3"]}])


def test_trains_on_volumes_with_validation_and_fine_tunes_a_checkpoint(volumes, tmp_path):
    run = tmp_path / "run"
    base = ["train", "--data", str(volumes), "--lesion-label", "tumor", "--batch-size", "2", *STEPS, *CLI_TINY]
    result = CliRunner().invoke(app, [*base, "--out", str(run)])
    assert result.exit_code == 0, result.output
    options = read_run_options(run)
    assert options.lesion_label == "tumor" and options.min_lesion_voxels == 1
    epoch = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"val"' in line]
    val = epoch[0]["val"]["all"]  # the val case's largest tumour cross-section, scored per slice
    assert val["num_images"] == 1 and val["num_lesions"] == 1 and len(val["sensitivity"]) == 6
    assert (volumes / "ctlesion_cache" / "volumes").is_dir()  # the cases were cached as arrays
    # --init-from fine-tunes that checkpoint on the same volumes (architecture taken from it).
    start = save_checkpoint(load_detector(run / "epoch_001.safetensors")[0], tmp_path / "start.safetensors")
    tuned = tmp_path / "tuned"
    result = CliRunner().invoke(app, ["train", "--data", str(volumes), "--lesion-label", "2", "--batch-size", "2",
                                      *STEPS, "--init-from", str(start), "--lr", "0.002", "--out", str(tuned)])
    assert result.exit_code == 0, result.output
    tuned_options = read_run_options(tuned)
    assert tuned_options.init_from == str(start) and tuned_options.base_lr == 0.002


@pytest.mark.parametrize("extra, message", [
    ([], "--lesion-label is required"),
    (["--lesion-label", "tumor", "--mask-source", "grabcut"], "--keep-noisy and --hard-negatives"),
    (["--lesion-label", "tumor", "--crop-size", "32", "--hard-negatives", "mined.json"],
     "--keep-noisy and --hard-negatives"),
    (["--lesion-label", "nerve"], "no label 'nerve'"),
])
def test_bad_volume_options_are_one_line_errors(volumes, tmp_path, extra, message):
    result = CliRunner().invoke(app, ["train", "--data", str(volumes), "--out", str(tmp_path / "r"), *STEPS,
                                      *CLI_TINY, *extra])
    assert result.exit_code in (1, 2) and message in result.output, result.output
    assert "Traceback" not in result.output


def test_deeplesion_datasets_refuse_volume_options(tmp_path):
    (tmp_path / "dl").mkdir()
    (tmp_path / "dl" / "DL_info.csv").write_text("File_name\n")
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "dl"), "--lesion-label", "tumor"])
    assert result.exit_code == 2 and "for datasets of volumes" in result.output
    result = CliRunner().invoke(app, ["train", "--data", str(tmp_path)])
    assert result.exit_code == 1 and "neither a DeepLesion-layout dataset" in result.output


def test_a_resnet_backbone_trains_from_the_command_line(volumes, tmp_path):
    run = tmp_path / "resnet"
    result = CliRunner().invoke(app, ["train", "--data", str(volumes), "--lesion-label", "tumor", "--batch-size", "2",
                                      "--backbone", "resnet18", "--out", str(run), *STEPS, *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert read_run_options(run).detector.backbone == "resnet18"
    model, info = load_detector(run / "epoch_001.safetensors")
    assert info["config"]["backbone"] == "resnet18" and type(model.backbone).__name__ == "AlignShiftResNet"


def test_a_model_in_the_authors_conventions_fine_tunes_on_volumes(volumes, tmp_path):
    """What `import-weights` makes (mmdetection-1 box geometry, [0, 255] - 50 input, no reduction bias) trains too."""
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig

    config = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=32, fc_channels=64, padding="keep",
                            input_scaling="mmdet", box_convention="mmdet1", reduction_bias=False)
    start = save_checkpoint(AlignShiftDetector(config), tmp_path / "imported.safetensors")
    run = tmp_path / "tuned"
    result = CliRunner().invoke(app, ["train", "--data", str(volumes), "--lesion-label", "tumor", "--batch-size", "2",
                                      "--init-from", str(start), "--lr", "0.002", "--out", str(run), *STEPS])
    assert result.exit_code == 0, result.output
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert load_detector(run / "epoch_001.safetensors")[0].config == config
