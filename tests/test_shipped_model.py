"""The shipped demo model: it loads, and its model card's FROC figures are reproduced.

The card's figures (models/ctlesion_demo_sim_eval/evaluation.json, written by `ctlesion evaluate`
in models/train_demo.sh) are recomputed here: the simulated dataset is regenerated with the
card's command (deterministic for its seed) and the test split is scored again.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctlesion.checkpoint import load_detector
from ctlesion.data.simulate import simulate_dataset
from ctlesion.detect import DEFAULT_WEIGHTS
from ctlesion.evaluate.run import evaluate_model

REPO = Path(__file__).resolve().parents[1]
CARD_FIGURES = REPO / "models" / "ctlesion_demo_sim_eval" / "evaluation.json"


@pytest.fixture(scope="module")
def shipped():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped model at {DEFAULT_WEIGHTS}")
    return load_detector(DEFAULT_WEIGHTS)


def test_shipped_model_is_small_and_described(shipped):
    model, info = shipped
    assert DEFAULT_WEIGHTS.stat().st_size < 60 * 2**20
    assert "not DeepLesion" in info["training"]["description"]
    assert info["config"]["context"] == "alignshift"


def test_model_card_figures_are_reproduced(shipped, shared_data, tmp_path):
    model, _ = shipped
    card = json.loads(CARD_FIGURES.read_text())
    data = simulate_dataset(
        tmp_path / "sim", num_series=160, image_size_px=256, seed=0,
        backgrounds=[REPO / "sample_data" / "abdomen_ct_dicom",
                     shared_data / "totalseg_example" / "example_ct.nii.gz"],
    ).parent
    result = evaluate_model(model, data, "test", progress=False)
    for subset, figures in card["summary"].items():
        if not isinstance(figures, dict):
            continue
        again = result["summary"][subset]
        assert again["num_images"] == figures["num_images"] and again["num_lesions"] == figures["num_lesions"]
        assert again["sensitivity"] == pytest.approx(figures["sensitivity"], abs=0.015), subset
