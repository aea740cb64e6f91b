"""The four commands run for real on tiny data (CPU), and bad input fails cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.io import read_volume

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "abdomen_ct_dicom"
TINY_MODEL = ["--slices", "3", "--image-size", "64", "--fpn-channels", "32", "--fc-channels", "64"]


def invoke(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    result = invoke("simulate", "--out", out, "--num-series", 6, "--image-size", 64, "--seed", 3)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def run_dir(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "run"
    prepared = invoke("prepare", "--data", dataset, "--workers", 0)  # the pipeline: prepare, train, resume, evaluate
    assert prepared.exit_code == 0 and " 0 already cached, 0 failed" in prepared.output, prepared.output
    cache = sorted((dataset / "ctlesion_cache" / "pseudo_masks").rglob("*.npz"))
    stamps = [p.stat().st_mtime_ns for p in cache]
    result = invoke("train", "--data", dataset, "--out", run, "--epochs", 1, "--batch-size", 2,
                    "--max-iters-per-epoch", 2, "--workers", 0, "--warmup-iters", 2, *TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert [p.stat().st_mtime_ns for p in cache] == stamps  # training read the prepared masks
    return run


def test_simulate_writes_a_deeplesion_layout(dataset):
    header = (dataset / "DL_info.csv").read_text().splitlines()[0]
    assert header.startswith("File_name,Patient_index,Study_index,Series_ID,Key_slice_index")
    assert len(list((dataset / "Images_png").iterdir())) == 6


def test_train_writes_checkpoint_metrics_and_resumes(run_dir):
    assert (run_dir / "epoch_001.safetensors").is_file()
    sidecar = json.loads((run_dir / "epoch_001.json").read_text())
    assert sidecar["config"]["image_size_px"] == 64 and sidecar["training"]["epoch"] == 1
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "step" in r]
    assert len(steps) == 2 and all(np.isfinite(r["loss"]) for r in steps)
    # A second run into the same folder is refused; --resume continues with epoch 2.
    again = invoke("train", "--data", sidecar["training"]["data_dir"], "--out", run_dir, *TINY_MODEL)
    assert again.exit_code == 1 and "--resume" in again.output
    config = json.loads((run_dir / "config.json").read_text())
    config["epochs"] = 2
    (run_dir / "config.json").write_text(json.dumps(config))
    resumed = invoke("train", "--out", run_dir, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert (run_dir / "epoch_002.safetensors").is_file()


def test_evaluate_scores_the_test_split(dataset, run_dir, tmp_path):
    out = tmp_path / "evaluation"
    result = invoke("evaluate", "--data", dataset, "--split", "test", "--weights", run_dir / "epoch_001.safetensors",
                    "--out", out, "--bootstrap", 20)
    assert result.exit_code == 0, result.output
    report = json.loads((out / "evaluation.json").read_text())
    summary = report["summary"]
    assert summary["fps_per_image"] == [0.5, 1, 2, 4, 8, 16]
    assert len(summary["all"]["sensitivity"]) == 6
    assert all(0.0 <= s <= 1.0 for s in summary["all"]["sensitivity"])
    predictions = json.loads((out / "predictions.json").read_text())["predictions"]
    assert summary["all"]["num_images"] == len(predictions)
    assert (out / "evaluation.md").is_file() and (out / "froc.png").is_file()


def test_detect_writes_results_label_map_and_overlays(run_dir, tmp_path):
    out = tmp_path / "out" / "results.json"
    result = invoke("detect", SAMPLE, "--out", out, "--weights", run_dir / "epoch_001.safetensors",
                    "--score-threshold", "0.0")
    assert result.exit_code == 0, result.output
    results = json.loads(out.read_text())
    study = results["studies"][0]
    assert study["slice_interval_mm"] == pytest.approx(2.0) and study["slice_thickness_mm"] == pytest.approx(3.0)
    assert study["shape_zyx"] == [20, 512, 512]
    assert study["lesions"], "score threshold 0 keeps every linked detection"
    labels = nib.load(out.parent / study["label_map"])
    volume = read_volume(SAMPLE)
    np.testing.assert_allclose(labels.affine, np.diag([-1, -1, 1, 1]) @ volume.affine_lps, atol=1e-4)
    label_values = set(np.unique(np.asarray(labels.dataobj)).tolist()) - {0}
    assert label_values <= {lesion["label"] for lesion in study["lesions"]}
    for lesion in study["lesions"]:
        assert (out.parent / lesion["overlay"]).is_file()
        x1, y1, z1, x2, y2, z2 = lesion["box_vox"]
        assert 0 <= x1 <= x2 <= 512 and 0 <= z1 <= z2 <= 19
    # A second run into the same folder that finds fewer lesions leaves none of the first run's
    # overlays behind, and touches no file that is not one of this study's outputs.
    overlay = study["lesions"][0]["overlay"]
    name = overlay[: overlay.rindex("_lesion")]
    foreign = [out.parent / f"other_{overlay}", out.parent / f"{overlay}.bak", out.parent / f"{name}_lesion01.jpg"]
    for path in foreign:
        path.write_bytes(b"")
    again = invoke("detect", SAMPLE, "--out", out, "--weights", run_dir / "epoch_001.safetensors",
                   "--score-threshold", "1.0")
    assert again.exit_code == 0, again.output
    assert json.loads(out.read_text())["studies"][0]["lesions"] == []
    left = sorted(p.name for p in out.parent.iterdir())
    assert left == sorted([study["label_map"], study["summary_sheet"], out.name, *(p.name for p in foreign)])


def _dicom_folder_with(tmp_path: Path, modality: str | None = None, corrupt: bool = False) -> Path:
    folder = tmp_path / "study"
    shutil.copytree(SAMPLE, folder)
    files = sorted(folder.iterdir())
    if modality:
        for f in files:
            ds = pydicom.dcmread(f)
            ds.Modality = modality
            ds.save_as(f)
    if corrupt:
        files[0].write_bytes(files[0].read_bytes()[:300])
    return folder


@pytest.mark.parametrize("case", ["missing", "empty", "no_dicom", "non_ct", "single_file", "all_corrupt"])
def test_bad_input_gives_one_line_and_exit_1(case, run_dir, tmp_path):
    if case == "missing":
        target = tmp_path / "nope"
    elif case == "empty":
        target = tmp_path / "empty"
        target.mkdir()
    elif case == "no_dicom":
        target = tmp_path / "text"
        target.mkdir()
        (target / "notes.txt").write_text("not a scan")
    elif case == "non_ct":
        target = _dicom_folder_with(tmp_path, modality="MR")
    elif case == "single_file":
        target = next(SAMPLE.iterdir())
    else:
        target = tmp_path / "corrupt"
        target.mkdir()
        for i, f in enumerate(sorted(SAMPLE.iterdir())[:3]):
            (target / f"{i}.dcm").write_bytes(f.read_bytes()[:200])
    out_dir = tmp_path / "results"
    result = invoke("detect", target, "--out", out_dir / "results.json", "--weights", run_dir / "epoch_001.safetensors")
    assert result.exit_code == 1
    output = result.output.strip()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in output and len(errors) == 1, output
    assert output.splitlines()[-1] == errors[0], "the error line comes last and is not wrapped"
    assert not out_dir.exists() or not any(out_dir.iterdir()), "no partial output"


def test_corrupt_file_among_good_ones_is_skipped(run_dir, tmp_path):
    folder = _dicom_folder_with(tmp_path, corrupt=True)
    volume = read_volume(folder)
    assert volume.shape_zyx[0] == 19
    assert any("skip" in w.lower() or "unreadable" in w.lower() or "truncat" in w.lower()
               for w in volume.meta["warnings"])


def test_bad_checkpoint_and_usage_errors(tmp_path):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a checkpoint")
    result = invoke("detect", SAMPLE, "--out", tmp_path / "r.json", "--weights", weights)
    assert result.exit_code == 1 and "sidecar" in result.output
    assert invoke("evaluate", "--data", tmp_path, "--split", "dev").exit_code == 2


def test_missing_shipped_model_names_the_way_out(tmp_path, monkeypatch):
    """An installation without the source checkout's models/ (a plain wheel) says what to do."""
    import ctlesion.store

    monkeypatch.setattr(ctlesion.store, "SHIPPED_DEMO_WEIGHTS", tmp_path / "models" / "ctlesion_demo_sim.safetensors")
    result = invoke("detect", SAMPLE, "--out", tmp_path / "r" / "results.json")
    assert result.exit_code == 1 and "shipped demo model is not part of this installation" in result.output
    assert "--weights" in result.output and not (tmp_path / "r").exists()


def test_detect_uses_the_models_recommended_threshold(run_dir, tmp_path):
    weights = tmp_path / "model.safetensors"
    shutil.copy(run_dir / "epoch_001.safetensors", weights)
    info = json.loads((run_dir / "epoch_001.json").read_text())
    info["operating_point"] = {"score_threshold": 0.97, "chosen_on": "test"}
    (tmp_path / "model.json").write_text(json.dumps(info))
    nii = tmp_path / "tiny_ct.nii.gz"
    volume = np.full((48, 48, 6), -1000, np.int16)
    volume[16:32, 16:32, 2:4] = 40
    nib.save(nib.Nifti1Image(volume, np.diag([-1.0, -1.0, 5.0, 1.0])), nii)
    for extra, expected, inference in (
            ((), 0.97, {"precision": "fp32", "key_slice_stride": 1, "test_time_augmentation": "none",
                        "skip_no_body": True, "drop_outside_body": True, "body_crop_margin_px": 64}),
            (("--score-threshold", "0.25", "--fast", "--whole-slice", "--all-windows", "--tta", "--tta-zoom", "1.5",
              "--keep-outside-body"), 0.25,
             {"precision": "fp32", "key_slice_stride": 2, "test_time_augmentation": "flip+zoom 1.5", "skip_no_body": False,
              "drop_outside_body": False,
              "body_crop_margin_px": None})):
        out = tmp_path / f"out{expected}" / "results.json"
        result = invoke("detect", nii, "--out", out, "--weights", weights, *extra)
        assert result.exit_code == 0, result.output
        results = json.loads(out.read_text())
        assert results["model"]["score_threshold"] == expected
        assert results["model"]["inference"] == inference
        assert all(lesion["score"] >= expected for lesion in results["studies"][0]["lesions"])
    refused = invoke("detect", nii, "--out", tmp_path / "zoom" / "results.json", "--weights", weights, "--tta-zoom", "1")
    assert refused.exit_code == 2 and "--tta-zoom must be a number > 1, got 1" in refused.output
    assert not (tmp_path / "zoom").exists()
    del info["operating_point"]
    (tmp_path / "model.json").write_text(json.dumps(info))
    out = tmp_path / "plain" / "results.json"
    assert invoke("detect", nii, "--out", out, "--weights", weights).exit_code == 0
    assert json.loads(out.read_text())["model"]["score_threshold"] == 0.5
