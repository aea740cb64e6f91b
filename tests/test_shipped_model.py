"""The shipped demo model: it loads, and its model card's figures are re-derived.

The card's figures come from models/evaluate_demo.sh (models/ctlesion_demo_sim_eval/):

* the default score threshold (the sidecar's ``operating_point``) is chosen again from the
  saved validation predictions and the evaluation data's table;
* the simulated test split's FROC (evaluation.json), without and with test-time augmentation
  (``tta/test``: flip), is scored again from the saved predictions
  (``ctlesion evaluate --predictions``), and so are the paired differences of the augmented runs;
* the FROC on the real DeepLesion key slices not used in training, without and with test-time
  augmentation, is recomputed by running the model (needs ../shared/data);
* slow: the evaluation data is simulated again (same table) and the test split's predictions
  are recomputed by the model.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from ctlesion.checkpoint import load_detector, read_checkpoint_info, recommended_score_threshold
from ctlesion.detect import DEFAULT_WEIGHTS
from ctlesion.evaluate.run import EvaluateOptions, evaluate_model, run_evaluation
from ctlesion.predict import TestTimeAugmentation as Augmentation  # not a test class

REPO = Path(__file__).resolve().parents[1]
CARD = REPO / "models" / "ctlesion_demo_sim_eval"


def _models_script(name: str):
    """The script models/NAME.py as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "models" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def shipped():
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped model at {DEFAULT_WEIGHTS}")
    return load_detector(DEFAULT_WEIGHTS)


def _same_summary(again: dict, card: dict, abs_tol: float = 0.015) -> None:
    for subset, figures in card.items():
        if not isinstance(figures, dict):
            continue
        assert again[subset]["num_images"] == figures["num_images"], subset
        assert again[subset]["num_lesions"] == figures["num_lesions"], subset
        assert again[subset]["sensitivity"] == pytest.approx(figures["sensitivity"], abs=abs_tol), subset
        assert again[subset]["avg_0.5_4"] == pytest.approx(figures["avg_0.5_4"], abs=abs_tol), subset


def test_shipped_model_is_small_and_described(shipped):
    model, info = shipped
    assert DEFAULT_WEIGHTS.stat().st_size < 60 * 2**20
    assert "not DeepLesion" in info["training"]["description"]
    assert info["config"]["context"] == "alignshift"
    point = info["operating_point"]
    assert 0.0 < point["score_threshold"] < 1.0
    assert recommended_score_threshold(info) == point["score_threshold"]


def test_default_threshold_is_rederived_from_the_validation_predictions():
    info = read_checkpoint_info(DEFAULT_WEIGHTS)
    stored = info["operating_point"]
    again = _models_script("demo_card").choose_threshold(
        CARD / "sim_eval", "val", CARD / "sim_eval" / "val_predictions.json", stored["max_fp_per_image"],
        [CARD / "sim_eval" / f"{name}.json" for name in stored["normal_studies"]],
        stored["max_lesions_per_normal_study"])
    assert again == stored


#: The card's folders of test-time augmented runs (models/evaluate_demo.sh) and what each ran with
#: (the zoom's, ``zoom/``, are not in the card for the shipped weights: models/README.md (g)).
AUGMENTED = {"tta": Augmentation(flip=True)}


@pytest.mark.parametrize("folder", [".", *(f"{name}/test" for name in AUGMENTED)])
def test_simulated_test_figures_are_rescored_from_their_predictions(folder, tmp_path):
    card = json.loads((CARD / folder / "evaluation.json").read_text())
    evaluation = run_evaluation(CARD / "sim_eval", tmp_path / "rescored", EvaluateOptions(split="test", resamples=0),
                                predictions_path=CARD / folder / "predictions.json", progress=False)
    _same_summary(evaluation["summary"], card["summary"], abs_tol=1e-9)
    expected = AUGMENTED[folder.split("/")[0]] if folder != "." else Augmentation()
    assert card.get("test_time_augmentation", "none") == expected.name


@pytest.mark.parametrize(("split", "predictions", "figures"), [
    ("val", "sim_eval/val_predictions.json", "sim_eval/val_lesion_kinds.json"),
    ("test", "predictions.json", "lesion_kinds.json")])
def test_sensitivity_by_lesion_kind_is_rederived(split, predictions, figures, tmp_path):
    """Figure (a) by the simulation's lesion kind, from the stored kind of each lesion row; the
    kinds partition the split's lesions, so together they give its own sensitivity."""
    stored = json.loads((CARD / figures).read_text())
    again = _models_script("demo_card").kind_sensitivity(CARD / "sim_eval", split, CARD / predictions, stored["kinds"])
    assert again == stored["sensitivity"]
    whole = run_evaluation(CARD / "sim_eval", tmp_path / "rescored", EvaluateOptions(split=split, resamples=0),
                           predictions_path=CARD / predictions, progress=False)["summary"]["all"]
    lesions = sum(kind["lesions"] for kind in again.values())
    assert lesions == whole["num_lesions"]
    for rate, expected in zip((0.5, 1, 2, 4, 8, 16), whole["sensitivity"]):
        found = sum(kind[f"at_{rate:g}_fp"] * kind["lesions"] for kind in again.values())
        assert found / lesions == pytest.approx(expected, abs=1e-12)


def test_where_test_lesions_are_found_is_rederived(tmp_path):
    """Figure (a)'s misses (misses.json): each lesion's false positives per image before its first
    hit, from the saved predictions (the card keeps no images, so contrast is not recomputed); the
    lesions found at <= 4 FP/image are the FROC's sensitivity at 4."""
    stored = json.loads((CARD / "misses.json").read_text())
    again = _models_script("demo_card").lesion_misses(CARD / "sim_eval", "test", CARD / "predictions.json")
    assert "by_contrast_hu" not in again
    for lesion, kept in zip(again["lesions_found"], stored["lesions_found"], strict=True):
        assert {**lesion, "contrast_hu": kept["contrast_hu"]} == kept
    for name in ("lesions", "found_at_most_4_fp", "found_later", "never", "by_size_mm"):
        assert again[name] == stored[name], name
    assert sum(counts["lesions"] for counts in stored["by_contrast_hu"].values()) == stored["lesions"]
    whole = run_evaluation(CARD / "sim_eval", tmp_path / "rescored", EvaluateOptions(split="test", resamples=0),
                           predictions_path=CARD / "predictions.json", progress=False)["summary"]["all"]
    assert stored["found_at_most_4_fp"] / stored["lesions"] == pytest.approx(whole["sensitivity"][3], abs=1e-12)


@pytest.mark.parametrize("folder", [".", *AUGMENTED])
def test_real_key_slice_figures_are_reproduced(shipped, shared_data, tmp_path, folder):
    """Figure (b), and with test-time augmentation (f), (g): the real key slices of the DeepLesion
    sample's patients not used in training."""
    _models_script("mix_real_slices").heldout(shared_data / "deeplesion_sample", tmp_path / "heldout")
    model, info = shipped
    card = json.loads((CARD / folder / "deeplesion_sample_heldout" / "evaluation.json").read_text())
    options = EvaluateOptions(split="all", resamples=0, augmentation=AUGMENTED.get(folder, Augmentation()))
    result = run_evaluation(tmp_path / "heldout", tmp_path / "again", options, model=model, model_info=info,
                            progress=False)
    _same_summary(result["summary"], card["summary"])


# DL_info.csv columns of pixel positions and lengths: another machine's floating point may move a
# mask's edge by a pixel, and with it a box side or, between two equally long chords, the short axis.
PIXEL_COLUMNS = {"Measurement_coordinates": 2.0, "Bounding_boxes": 1.0, "Lesion_diameters_Pixel_": 1.0}


def _same_table(again: Path, card: Path) -> None:
    """The same key slices, lesions and labels; pixel positions within PIXEL_COLUMNS' tolerances."""
    with again.open() as a, card.open() as b:
        rows_again, rows_card = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert len(rows_again) == len(rows_card)
    for row_again, row_card in zip(rows_again, rows_card):
        assert row_again.keys() == row_card.keys()
        for column, value in row_card.items():
            if column in PIXEL_COLUMNS:
                numbers = [float(number) for number in value.split(",")]
                assert [float(number) for number in row_again[column].split(",")] == pytest.approx(
                    numbers, abs=PIXEL_COLUMNS[column]), (row_card["File_name"], column)
            else:
                assert row_again[column] == value, (row_card["File_name"], column)


@pytest.mark.slow
def test_simulated_test_split_is_reproduced(shipped, shared_data, tmp_path):
    from ctlesion.data.simulate import simulate_dataset

    model, _ = shipped
    data = simulate_dataset(tmp_path / "sim", splits=(2, 3), num_series=160, image_size_px=512, seed=0).parent
    _same_table(data / "DL_info.csv", CARD / "sim_eval" / "DL_info.csv")
    result = evaluate_model(model, data, "test", progress=False)
    card = json.loads((CARD / "evaluation.json").read_text())
    _same_summary(result["summary"], card["summary"])
    shutil.rmtree(data)



@pytest.mark.parametrize("folder", list(AUGMENTED))
@pytest.mark.parametrize(("split", "plain"), [("val", "sim_eval/val_predictions.json"), ("test", "predictions.json")])
def test_test_time_augmentation_differences_are_rederived(folder, split, plain, tmp_path):
    """Figures (f) and (g): the paired bootstrap of an augmented run against the plain model, from the
    saved predictions; its point differences are those of the two predictions' own figures."""
    augmented = f"{folder}/{split}/predictions.json"
    stored = json.loads((CARD / folder / f"paired_{split}.json").read_text())
    again = _models_script("demo_card").paired_difference(CARD / "sim_eval", split, CARD / plain, CARD / augmented)
    assert again["b_minus_a"] == stored["b_minus_a"]
    without, with_views = (run_evaluation(CARD / "sim_eval", tmp_path / name, EvaluateOptions(split=split, resamples=0),
                                          predictions_path=CARD / path, progress=False)["summary"]["all"]
                           for name, path in (("plain", plain), ("augmented", augmented)))
    differences = [again["b_minus_a"][f"at_{rate:g}_fp"]["difference"] for rate in (0.5, 1, 2, 4, 8, 16)]
    assert differences == pytest.approx(list(map(float.__sub__, with_views["sensitivity"], without["sensitivity"])),
                                        abs=1e-12)
    average = again["b_minus_a"]["avg_0.5_4"]
    assert average["difference"] == pytest.approx(with_views["avg_0.5_4"] - without["avg_0.5_4"], abs=1e-12)
    assert average["ci95"][0] <= average["difference"] <= average["ci95"][1]
