"""`ctlesion evaluate` end to end: saved predictions, a model on real DeepLesion key slices, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_evaluate import HAND_PREDICTIONS, A, B, D, write_context_layout, write_hand_split
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.io.deeplesion import read_dl_info


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def write_predictions_file(path: Path, predictions: dict, version: object = 1) -> Path:
    entries = [{"key": key, "detections": rows} for key, rows in predictions.items()]
    path.write_text(json.dumps({"version": version, "predictions": entries}))
    return path


@pytest.fixture
def hand_split(tmp_path) -> Path:
    return write_hand_split(tmp_path / "data")


def test_scores_saved_predictions_into_a_report_folder(hand_split, tmp_path):
    predictions = write_predictions_file(tmp_path / "p.json", HAND_PREDICTIONS)
    out = tmp_path / "report"
    result = invoke("evaluate", "--data", hand_split, "--split", "test", "--predictions", predictions, "--out", out,
                    "--bootstrap", 100)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "evaluation.md", "froc.png"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    summary = evaluation["summary"]
    np.testing.assert_allclose(summary["all"]["sensitivity"], [0.4, 0.6, 0.6, 0.6, 0.6, 0.6], atol=1e-15)
    assert summary["thin_minus_thick_avg_0.5_4"] == pytest.approx(0.875 - 1 / 3, abs=1e-15)
    assert evaluation["protocol"]["num_images"] == 4 and evaluation["protocol"]["num_lesions"] == 5
    assert evaluation["bootstrap"]["resamples"] == 100 and "ci95" in summary["all"]
    assert evaluation["weights"] is None and evaluation["predictions_file"] == str(predictions)
    report = (out / "evaluation.md").read_text()
    assert "| **this evaluation** | 40.0 [" in report and "| AlignShift x7 (paper) |" in report
    # Same seed, same figures; the summary is printed.
    again = invoke("evaluate", "--data", hand_split, "--predictions", predictions, "--out", tmp_path / "again",
                   "--bootstrap", 100)
    assert json.loads((tmp_path / "again" / "evaluation.json").read_text())["summary"] == summary
    assert "thin minus thick, avg[0.5-4]: +54.2 points" in again.output


def test_missing_key_slices_count_as_images_without_detections(hand_split, tmp_path):
    predictions = write_predictions_file(tmp_path / "p.json", {k: v for k, v in HAND_PREDICTIONS.items() if k != D})
    result = invoke("evaluate", "--data", hand_split, "--predictions", predictions, "--out", tmp_path / "r",
                    "--bootstrap", 0, "--criterion", "iobb", "--iou-threshold", 0.3)
    assert result.exit_code == 0, result.output
    assert "no predictions for 1 of 4 key slices" in " ".join(result.output.split())  # log lines wrap
    evaluation = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    # Without D's false positive at .95: ranked A-hit, C-hit, B-FP, dup, A-FP, C-FP, B-hit; 2 FPs allowed at 0.5.
    np.testing.assert_allclose(evaluation["summary"]["all"]["sensitivity"][:2], [0.4, 0.6], atol=1e-15)
    assert evaluation["protocol"]["criterion"] == "iobb" and evaluation["protocol"]["images_without_predictions"] == 1
    assert "IoBB >= 0.3, not IoU >= 0.5" in (tmp_path / "r" / "evaluation.md").read_text()


def test_key_slice_list_restricts_the_images(hand_split, tmp_path):
    predictions = write_predictions_file(tmp_path / "p.json", HAND_PREDICTIONS)
    (tmp_path / "keys.txt").write_text(f"{A}\n{B}\n")
    result = invoke("evaluate", "--data", hand_split, "--predictions", predictions, "--key-slices",
                    tmp_path / "keys.txt", "--out", tmp_path / "r", "--bootstrap", 0)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "r" / "evaluation.json").read_text())["summary"]
    np.testing.assert_allclose(summary["all"]["sensitivity"], [0.5, 1, 1, 1, 1, 1], atol=1e-15)  # thin A and B
    assert "thick_5mm" not in summary


BAD_ENTRY = [[5, 0, 1, 1, 0.5]]


@pytest.mark.parametrize(
    ("predictions", "split", "message"),
    [
        ({A: HAND_PREDICTIONS[A], "000009_01_01_090.png": []}, "test",
         r"p.json: predictions\[1\]: key 000009_01_01_090.png is not a key slice with lesions in the test split"),
        ({A: BAD_ENTRY}, "test", rf"p.json: predictions\[0\] \(key {A}\), detection 0: box has x2 < x1"),
        ({A: [[0, 0, 1, 1, "NaN"]]}, "test", r"detection 0: expected \[x1, y1, x2, y2, score\] numbers"),
        ({A: []}, "train", r"DL_info.csv: split 'train' holds no lesions"),
    ],
)
def test_bad_input_is_one_line_exit_1_and_leaves_nothing(hand_split, tmp_path, predictions, split, message):
    path = write_predictions_file(tmp_path / "p.json", predictions)
    out = tmp_path / "report"
    result = invoke("evaluate", "--data", hand_split, "--split", split, "--predictions", path, "--out", out)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    assert re.search(message, errors[0]), errors[0]
    assert not out.exists()


def test_nan_score_is_refused(hand_split, tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"version": 1, "predictions": [{"key": A, "detections": [[0, 0, 1, 1, float("nan")]]}]}))
    result = invoke("evaluate", "--data", hand_split, "--predictions", path, "--out", tmp_path / "r")
    assert result.exit_code == 1 and f"(key {A}), detection 0: score must be a finite number" in result.output


def test_missing_column_is_refused(tmp_path):
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "DL_info.csv").write_text("File_name,Bounding_boxes\n000001_01_01_010.png,\"1, 2, 3, 4\"\n")
    path = write_predictions_file(tmp_path / "p.json", {})
    result = invoke("evaluate", "--data", folder, "--predictions", path, "--out", tmp_path / "r")
    assert result.exit_code == 1 and "DL_info.csv: missing DL_info column(s) Measurement_coordinates" in result.output


@pytest.mark.parametrize(
    "options",
    [
        ["--split", "dev"],
        ["--criterion", "dice"],
        ["--iou-threshold", "0"],
        ["--weights", "w.safetensors"],  # together with --predictions
        ["--fast"],  # DeepLesion key slices, and saved predictions
        ["--tta"],  # saved predictions
        ["--tta-zoom", "1.5"],  # saved predictions
    ],
)
def test_usage_errors_exit_2(hand_split, tmp_path, options):
    path = write_predictions_file(tmp_path / "p.json", HAND_PREDICTIONS)
    result = invoke("evaluate", "--data", hand_split, "--predictions", path, "--out", tmp_path / "r", *options)
    assert result.exit_code == 2, result.output




def test_model_on_real_deeplesion_key_slices_then_rescored_from_its_predictions(shared_data, tiny_weights, tmp_path):
    data = shared_data / "deeplesion_sample"
    # Four thin and four thick key slices of the test split keep the CPU time down (the slow test below runs all).
    test_keys = read_dl_info(data / "DL_info.csv", split="test")
    chosen = ([k.file_name for k in test_keys if k.slice_interval_mm == 1.0][:4]
              + [k.file_name for k in test_keys if k.slice_interval_mm == 5.0][:4])
    (tmp_path / "keys.txt").write_text("\n".join(chosen) + "\n")
    out = tmp_path / "evaluation"
    result = invoke("evaluate", "--data", data, "--split", "test", "--weights", tiny_weights, "--out", out,
                    "--key-slices", tmp_path / "keys.txt", "--device", "cpu", "--bootstrap", 50)
    assert result.exit_code == 0, result.output
    assert "single-slice context: neighbours replicated" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["evaluation.json", "evaluation.md", "froc.png",
                                                     "predictions.json"]
    evaluation = json.loads((out / "evaluation.json").read_text())
    predictions = json.loads((out / "predictions.json").read_text())
    assert evaluation["weights"] == "tiny.safetensors" and evaluation["model_note"] is None
    assert sorted(entry["key"] for entry in predictions["predictions"]) == sorted(chosen)
    summary = evaluation["summary"]
    assert summary["all"]["num_images"] == 8 and summary["thin_le_2mm"]["num_images"] == 4
    assert summary["thick_5mm"]["num_lesions"] == 4
    assert all(len(entry["detections"]) > 0 for entry in predictions["predictions"])
    # The sample holds only key slices: every window missed neighbours, and the report says so.
    assert evaluation["neighbour_slices"]["images_with_absent_neighbours"] == 8
    assert "**8 of 8 images were scored with neighbour slices absent" in (out / "evaluation.md").read_text()
    assert evaluation["paper_comparison"]["comparable"] is False
    # The saved predictions score to the same figures without the model.
    rescored = invoke("evaluate", "--data", data, "--predictions", out / "predictions.json", "--key-slices",
                      tmp_path / "keys.txt", "--out", tmp_path / "again", "--bootstrap", 50)
    assert rescored.exit_code == 0, rescored.output
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    for part in ("summary", "lesion_types", "lesion_sizes"):
        assert again[part] == evaluation[part]


def test_report_states_neighbour_slices_detection_cap_and_comparability(tiny_weights, tmp_path, monkeypatch):
    """Two of four windows miss neighbour slices (one sees the key slice only); the report, the
    JSON and the plot title say what was scored, and the rescored predictions say what is known."""
    import ctlesion.evaluate.run as run_module

    titles = []
    render = run_module.froc_png
    monkeypatch.setattr(run_module, "froc_png", lambda curves, summary, title: titles.append(title) or render(
        curves, summary, title))
    data = write_context_layout(tmp_path / "data")
    out = tmp_path / "evaluation"
    result = invoke("evaluate", "--data", data, "--weights", tiny_weights, "--out", out, "--device", "cpu",
                    "--bootstrap", 0)
    assert result.exit_code == 0, result.output
    assert "2 of 4 images were scored with neighbour slices absent from their series folder" in result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["neighbour_slices"] == {"window_slices": 3, "images_with_absent_neighbours": 2,
                                              "images_single_slice_context": 1, "images_beyond_series_ends": 1}
    limits = evaluation["detections_per_image"]
    assert (limits["source"], limits["cap"], limits["score_threshold"], limits["nms_iou_threshold"]) == (
        "model", 50, 0.001, 0.5)
    predictions = json.loads((out / "predictions.json").read_text())["predictions"]
    found = [len(entry["detections"]) for entry in predictions]
    assert limits["max_found"] == max(found) <= 50 and limits["mean_found"] == pytest.approx(np.mean(found))
    comparison = evaluation["paper_comparison"]
    assert comparison["comparable"] is False and comparison["protocol_matches"] is True
    assert comparison["reasons"] == ["4 key slices with 4 lesions, not the official test split's 4,817 with 4,912",
                                     "2 of 4 images scored with neighbour slices absent from their series folder"]
    assert comparison["official_test_split"]["key_slices"] == 4831
    report = (out / "evaluation.md").read_text()
    assert "not comparable with the paper's rows" in report
    assert "**2 of 4 images were scored with neighbour slices absent from their series folder**" in report
    assert "1 of them with single-slice context" in report and "1 window reaches past its series' ends" in report
    assert "at most 50 per image, score >= 0.001" in report
    assert titles[-1].endswith("\nmodel tiny.safetensors (AlignShift x3)")
    assert evaluation["test_time_augmentation"] == "none" and "test-time augmentation" not in report
    flipped = invoke("evaluate", "--data", data, "--weights", tiny_weights, "--out", tmp_path / "tta", "--device", "cpu",
                     "--bootstrap", 0, "--tta", "--tta-zoom", "1.5")
    assert flipped.exit_code == 0, flipped.output
    assert json.loads((tmp_path / "tta" / "evaluation.json").read_text())["test_time_augmentation"] == "flip+zoom 1.5"
    report = (tmp_path / "tta" / "evaluation.md").read_text()
    assert "| test-time augmentation | left-right flipped slices too" in report
    assert "; the slices zoomed in x 1.5 too, merged with the plain scale's detections" in report
    assert titles[-1].endswith("\nmodel tiny.safetensors (AlignShift x3), test-time flip+zoom 1.5")
    fused = json.loads((tmp_path / "tta" / "predictions.json").read_text())["predictions"]
    assert [entry["detections"] for entry in fused] != [entry["detections"] for entry in predictions]

    rescored = invoke("evaluate", "--data", data, "--predictions", out / "predictions.json", "--out",
                      tmp_path / "again", "--bootstrap", 0)
    assert rescored.exit_code == 0, rescored.output
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    assert again["neighbour_slices"] is None
    assert again["detections_per_image"]["cap"] is None and again["detections_per_image"]["max_found"] == max(found)
    assert again["paper_comparison"]["reasons"] == comparison["reasons"][:1]
    report = (tmp_path / "again" / "evaluation.md").read_text()
    assert "| neighbour slices | not known: the detections come from a predictions file |" in report
    assert "not comparable with the paper's rows" in report
    assert titles[-1].endswith("\npredictions: predictions.json")


@pytest.mark.slow
def test_shipped_model_on_real_deeplesion_key_slices(shared_data, tmp_path):
    """The issue's command as written: the shipped demo model (minutes on 2 CPU cores)."""
    out = tmp_path / "evaluation"
    result = invoke("evaluate", "--data", shared_data / "deeplesion_sample", "--split", "test", "--out", out,
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "single-slice context: neighbours replicated" in result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["summary"]["all"]["num_images"] == 18 and evaluation["summary"]["thin_le_2mm"]["num_images"] == 9
    assert len(json.loads((out / "predictions.json").read_text())["predictions"]) == 18
    assert evaluation["weights"] == "ctlesion_demo_sim.safetensors" and "demo model" in evaluation["model_note"]
    report = (out / "evaluation.md").read_text()
    assert "demo model shipped with ctlesion" in report
    # The complaint: the report says what the 18 figures are not.
    assert "**18 of 18 images were scored with neighbour slices absent from their series folder**" in report
    assert "not comparable with the paper's rows" in report and "at most 50 per image, score >= 0.001" in report


def test_out_must_be_a_folder(hand_split, tmp_path):
    path = write_predictions_file(tmp_path / "p.json", HAND_PREDICTIONS)
    result = invoke("evaluate", "--data", hand_split, "--predictions", path, "--out", tmp_path / "evaluation.json")
    assert result.exit_code == 2 and "--out takes a folder" in result.output
    assert not (tmp_path / "evaluation.json").exists()


def test_unreadable_key_slice_fails_evaluation_but_not_training_validation(shared_data, tiny_weights, tmp_path):
    """`evaluate` scores every image or fails (one line); the per-epoch validation leaves the image out."""
    import shutil

    from ctlesion.checkpoint import load_detector
    from ctlesion.evaluate.run import evaluate_model

    data = tmp_path / "data"
    keys = read_dl_info(shared_data / "deeplesion_sample" / "DL_info.csv", split="test")[:3]
    rows = (shared_data / "deeplesion_sample" / "DL_info.csv").read_text().splitlines()
    data.mkdir()
    (data / "DL_info.csv").write_text("\n".join([rows[0], *(r for r in rows[1:] if r.split(",")[0] in
                                                           {k.file_name for k in keys})]) + "\n")
    for key in keys[1:]:  # the first key slice's PNG is missing
        target = key.png_path(data / "Images_png")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(key.png_path(shared_data / "deeplesion_sample" / "Images_png"), target)
    out = tmp_path / "evaluation"
    result = invoke("evaluate", "--data", data, "--split", "test", "--weights", tiny_weights, "--out", out,
                    "--device", "cpu", "--bootstrap", 0)
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert result.exit_code == 1 and len(errors) == 1 and "Traceback" not in result.output, result.output
    assert keys[0].series_dir in errors[0] and "PNG not found" in errors[0] and not out.exists()
    model, _ = load_detector(tiny_weights)
    validation = evaluate_model(model, data, "test", progress=False)
    assert validation["summary"]["all"]["num_images"] == 2
    assert sorted(p["key"] for p in validation["predictions"]) == sorted(k.file_name for k in keys[1:])


def test_split_all_scores_every_key_slice_of_the_table(hand_split, tmp_path):
    """--split all: the 4 test images (5 lesions) and the val image (1 lesion, no prediction: an
    image without detections); the test predictions hit 3 lesions at most, now of 6."""
    predictions = write_predictions_file(tmp_path / "p.json", HAND_PREDICTIONS)
    out = tmp_path / "all"
    result = invoke("evaluate", "--data", hand_split, "--split", "all", "--predictions", predictions, "--out", out,
                    "--bootstrap", 0)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["split"] == "all" and evaluation["protocol"]["split_code"] == [1, 2, 3]
    assert evaluation["protocol"]["num_images"] == 5 and evaluation["protocol"]["num_lesions"] == 6
    assert evaluation["summary"]["all"]["sensitivity"][-1] == pytest.approx(3 / 6)
    assert "Train_Val_Test = 1 or 2 or 3" in (out / "evaluation.md").read_text()
    assert "the all split, not test" in " ".join(evaluation["paper_comparison"]["reasons"])
