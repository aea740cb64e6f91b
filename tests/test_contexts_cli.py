"""`ctlesion train --context tsm|2.5d` (and --pretrained) run like alignshift; detect rebuilds the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.models import densenet121
from typer.testing import CliRunner

from ctlesion.checkpoint import load_detector
from ctlesion.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "abdomen_ct_dicom"
TINY_MODEL = ["--image-size", "64", "--fpn-channels", "32", "--fc-channels", "64"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    assert invoke("simulate", "--out", out, "--num-series", 4, "--image-size", 64, "--seed", 5).exit_code == 0
    return out


def _train(dataset: Path, out: Path, *extra) -> Path:
    result = invoke("train", "--data", dataset, "--out", out, "--epochs", 1, "--batch-size", 2,
                    "--max-iters-per-epoch", 1, "--workers", 0, "--warmup-iters", 1, *TINY_MODEL, *extra)
    assert result.exit_code == 0, result.output
    return out / "epoch_001.safetensors"


@pytest.mark.parametrize("context, slices", [("tsm", 3), ("2.5d", 7)])
def test_train_and_detect_with_a_baseline_context(dataset, tmp_path, context, slices):
    weights = _train(dataset, tmp_path / "run", "--context", context, "--slices", slices)
    model, _ = load_detector(weights, "cpu")
    assert (model.config.context, model.config.num_slices) == (context, slices)
    results = tmp_path / "results.json"
    detected = invoke("detect", SAMPLE, "--out", results, "--weights", weights, "--context", context,
                      "--slices", slices, "--score-threshold", 0.9)
    assert detected.exit_code == 0, detected.output
    assert json.loads(results.read_text())["studies"][0]["slice_interval_mm"] > 0
    wrong = invoke("detect", SAMPLE, "--out", tmp_path / "other.json", "--weights", weights, "--context", "alignshift")
    assert wrong.exit_code == 1 and "not alignshift" in wrong.output
    assert not (tmp_path / "other.json").exists()


def test_train_from_pretrained_2d_weights(dataset, tmp_path):
    torch.manual_seed(3)
    source = densenet121(weights=None)
    pretrained = tmp_path / "densenet121_2d.pth"
    torch.save(source.state_dict(), pretrained)
    run = tmp_path / "run"
    weights = _train(dataset, run, "--slices", 3, "--pretrained", pretrained, "--epochs", 1)
    assert json.loads((run / "config.json").read_text())["pretrained"] == str(pretrained)
    missing = invoke("train", "--data", dataset, "--out", tmp_path / "run2", "--pretrained", tmp_path / "nope.pth",
                     *TINY_MODEL)
    assert missing.exit_code == 1 and "nope.pth" in missing.output
    # One step at the warmup lr (~1e-4) moves weights by < 4e-3; random init would be ~0.05 away.
    model, _ = load_detector(weights, "cpu")
    ours = model.backbone.block2.layers[3].conv2.conv.weight[:, :, 0].float()
    theirs = source.features.denseblock2.denselayer4.conv2.weight
    torch.testing.assert_close(ours, theirs, rtol=0, atol=4e-3)
    assert (ours - theirs).abs().max() < 0.1 * theirs.abs().max()
