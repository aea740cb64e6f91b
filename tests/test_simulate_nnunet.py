"""`ctlesion simulate --layout nnunet`: an nnU-Net v2 raw dataset with 3D lesion label maps,
made from the shipped sample CT (small and fast: 64 px slices, 4 series)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.data.simulate import SAMPLE_BACKGROUND, _lesions_apart, simulate_dataset, simulate_from_volumes
from ctlesion.errors import CtlesionError
from ctlesion.io.deeplesion import read_png_hu
from ctlesion.io.masked_datasets import open_masked_dataset, read_case
from ctlesion.io.nifti import read_nifti, write_nifti
from ctlesion.volume import Volume

pytestmark = pytest.mark.skipif(not SAMPLE_BACKGROUND.is_dir(), reason=f"sample CT not found at {SAMPLE_BACKGROUND}")

SIMULATION = ["--background", str(SAMPLE_BACKGROUND), "--num-series", "4", "--image-size", "64", "--seed", "0"]


def _simulate(out: Path, *extra: str) -> None:
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), *SIMULATION, *extra])
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def nnunet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "Dataset900_Sim"
    _simulate(out, "--layout", "nnunet")
    return out


@pytest.fixture(scope="module")
def deeplesion(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same simulation in the default layout."""
    out = tmp_path_factory.mktemp("sim") / "deeplesion"
    _simulate(out)
    return out


def _series(root: Path) -> dict[str, dict]:
    """simulation.json's series records by case id."""
    return {s["case_id"]: s for s in json.loads((root / "simulation.json").read_text())["series"]}


def _digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_json_and_patient_splits(nnunet: Path) -> None:
    dataset = open_masked_dataset(nnunet)
    series = _series(nnunet)
    assert dataset.layout == "nnunet" and dataset.split_source == "splits_final.json fold 0"
    by_split = {name: [c.case_id for c in dataset.cases(name)] for name in ("train", "val", "test")}
    for name, code in (("train", 1), ("val", 2), ("test", 3)):
        assert by_split[name] == sorted(k for k, s in series.items() if s["split"] == code), name
        assert by_split[name], f"no {name} case"
    folds = json.loads((nnunet / "splits_final.json").read_text())
    assert folds == [{"train": by_split["train"], "val": by_split["val"]}]
    assert all((nnunet / "imagesTs" / f"{case}_0000.nii.gz").is_file() for case in by_split["test"])
    description = json.loads((nnunet / "dataset.json").read_text())
    assert description["channel_names"] == {"0": "CT"} and description["file_ending"] == ".nii.gz"
    assert description["labels"] == {"background": 0, "lesion": 1}
    assert description["numTraining"] == len(by_split["train"]) + len(by_split["val"])
    assert "seed 0" in description["description"] and "abdomen_ct_dicom" in description["description"]
    assert json.loads((nnunet / "simulation.json").read_text())["layout"] == "nnunet"


def test_cases_hold_every_lesion_in_3d_on_the_image_grid(nnunet: Path) -> None:
    dataset = open_masked_dataset(nnunet)
    series = _series(nnunet)
    intervals, spans = set(), []
    for case in dataset.cases("all"):
        record = series[case.case_id]
        image, labels = read_nifti(case.image_path), read_nifti(case.label_path)
        assert image.meta["nifti_dtype"] == "int16" and labels.meta["nifti_dtype"] == "uint8"
        assert labels.shape_zyx == image.shape_zyx and labels.spacing_zyx_mm == image.spacing_zyx_mm
        assert labels.origin_lps_mm == image.origin_lps_mm
        np.testing.assert_array_equal(labels.direction_lps, image.direction_lps)
        per = 5 if record["thick"] else 1
        assert image.shape_zyx == (record["num_thin_slices"] // per, 64, 64)
        assert image.spacing_zyx_mm == pytest.approx((float(per), record["pixel_mm"], record["pixel_mm"]), rel=1e-6)
        intervals.add(image.slice_interval_mm)
        assert set(np.unique(labels.hu).tolist()) == {0, 1}
        truth = read_case(case, dataset.lesion_value("lesion"), layout="nnunet")
        lesions = record["lesions"]
        assert record["lesions_apart"]  # placed apart: each lesion is its own 3D component here
        assert truth.num_lesions == len(lesions)
        found = set()
        for lesion in lesions:
            # The component at the lesion's centre is the lesion: its voxels on every written
            # slice are those simulation.json counts there (areas_px), its key slice included.
            z, y, x = (int(v) for v in np.floor(lesion["centre_zyx"]))
            component = int(truth.lesions_zyx[z // per, y, x])
            assert component > 0, (case.case_id, lesion["centre_zyx"])
            found.add(component)
            areas = (truth.lesions_zyx == component).sum(axis=(1, 2))
            assert areas.tolist() == lesion["areas_px"]
            assert areas[lesion["key_slice"] - 1] == max(areas) > 0
        assert len(found) == len(lesions)
        spans.extend(int(np.count_nonzero(lesion["areas_px"])) for lesion in lesions)
    assert intervals == {1.0, 5.0}  # a thin and a thick case
    assert max(spans) > 1  # 3D label maps, not the key slices only


def test_images_are_the_deeplesion_layout_slices(nnunet: Path, deeplesion: Path) -> None:
    """Same seed, same series: the NIfTI CT holds exactly the PNG slices (HU), 1 mm or 5 mm, and
    simulation.json the same series and lesions."""
    for case in open_masked_dataset(nnunet).cases("all"):
        pngs = sorted((deeplesion / "Images_png" / case.case_id).glob("*.png"))
        np.testing.assert_array_equal(read_nifti(case.image_path).hu, np.stack([read_png_hu(p) for p in pngs]))
    plain = {f"{s['patient']:06d}_{s['study']:02d}_{s['series']:02d}": s
             for s in json.loads((deeplesion / "simulation.json").read_text())["series"]}
    for case_id, record in _series(nnunet).items():
        assert {k: v for k, v in record.items() if k not in ("case_id", "lesions_apart")} == plain[case_id]


def test_default_layout_is_deeplesion_and_unchanged(deeplesion: Path, tmp_path: Path) -> None:
    _simulate(tmp_path / "explicit", "--layout", "deeplesion")
    files = _digest(deeplesion)
    assert files == _digest(tmp_path / "explicit")
    assert "DL_info.csv" in files and any(name.startswith("masks/") for name in files)
    assert not any(name.startswith(("imagesTr", "labelsTr", ".")) or name == "dataset.json" for name in files)
    assert "layout" not in json.loads((deeplesion / "simulation.json").read_text())


def test_existing_datasets_and_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kwargs = {"backgrounds": [SAMPLE_BACKGROUND], "num_series": 3, "image_size_px": 64, "seed": 1}
    out = tmp_path / "nn"
    simulate_dataset(out, layout="nnunet", **kwargs)
    with pytest.raises(CtlesionError, match="already holds a dataset.json"):
        simulate_dataset(out, layout="nnunet", **kwargs)
    with pytest.raises(CtlesionError, match="holds a dataset of the nnunet layout"):
        simulate_dataset(out, overwrite=True, **kwargs)
    (out / "imagesTr" / "stale_0000.nii.gz").write_bytes(b"")
    simulate_dataset(out, layout="nnunet", overwrite=True, **kwargs)
    assert not (out / "imagesTr" / "stale_0000.nii.gz").exists()  # replaced wholly
    with pytest.raises(CtlesionError, match="unknown layout"):
        simulate_dataset(tmp_path / "x", layout="nifti", **kwargs)

    # A failure while writing leaves nothing behind (the dataset is staged, then moved).
    import ctlesion.data.simulate as simulate_module

    calls = []
    original = simulate_module.write_case

    def failing(*args, **kwargs):
        calls.append(args[1])
        if len(calls) == 2:
            raise CtlesionError("disk full", args[0])
        return original(*args, **kwargs)

    monkeypatch.setattr(simulate_module, "write_case", failing)
    with pytest.raises(CtlesionError, match="disk full"):
        simulate_dataset(tmp_path / "failed", layout="nnunet", **kwargs)
    assert len(calls) == 2 and not (tmp_path / "failed").exists()


def test_evaluate_reads_the_dataset(nnunet: Path, tmp_path: Path) -> None:
    """``ctlesion evaluate --lesion-label lesion`` scores a results.json against the simulated lesions."""
    dataset = open_masked_dataset(nnunet)
    studies = []
    for case in dataset.cases("all"):
        truth = read_case(case, 1, layout="nnunet")
        write_nifti(truth.lesions_zyx.astype(np.uint8), truth.volume, tmp_path / f"{case.case_id}_lesions.nii.gz")
        studies.append({"input": str(case.image_path), "label_map": f"{case.case_id}_lesions.nii.gz",
                        "lesions": [{"label": i + 1, "score": 0.9} for i in range(truth.num_lesions)]})
    (tmp_path / "results.json").write_text(json.dumps({"version": "test", "studies": studies}))
    result = CliRunner().invoke(app, ["evaluate", "--data", str(nnunet), "--lesion-label", "lesion", "--split", "all",
                                      "--predictions", str(tmp_path / "results.json"), "--out", str(tmp_path / "e"),
                                      "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "e" / "evaluation.json").read_text())["froc_per_scan"]["summary"]
    num_lesions = sum(len(s["lesions"]) for s in _series(nnunet).values())
    assert summary["all"]["num_lesions"] == num_lesions and summary["all"]["sensitivity"] == [1.0] * 7
    assert summary["thin_le_2mm"]["num_scans"] >= 1 and summary["thick_ge_5mm"]["num_scans"] >= 1


def test_a_test_only_dataset_keeps_the_training_folders(tmp_path: Path) -> None:
    """Every series in the test split (a fixed split): imagesTs/ holds them, imagesTr/ is empty but there."""
    yy, xx = np.mgrid[:96, :96] + 0.5
    body = np.hypot(yy - 48, xx - 48) <= 44
    hu = np.where(body[None], 40.0, -1000.0).repeat(41, axis=0).astype(np.float32)
    phantom = Volume(hu=hu, spacing_zyx_mm=(2.0, 3.5, 3.5), source="phantom.nii.gz")
    simulate_from_volumes(tmp_path, [phantom], num_series=2, image_size_px=64, seed=1, splits=[3], layout="nnunet")
    dataset = open_masked_dataset(tmp_path)
    assert len(dataset.cases("test")) == 2 and not dataset.cases("train") and not dataset.cases("val")
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == 0


def test_lesions_apart_rule() -> None:
    """Apart: each lesion exactly one 26-connected component of the lesion voxels."""
    instances = np.zeros((4, 10, 10), np.uint8)
    instances[0:2, 1:3, 1:3] = 1
    instances[0:2, 5:7, 5:7] = 2
    assert _lesions_apart(instances, 2)
    grown = instances.copy()
    grown[2, 3, 3] = 1  # a diagonal neighbour of lesion 1 only: still apart
    assert _lesions_apart(grown, 2)
    grown[1, 4, 4] = 1  # diagonal neighbour of both lesions (26-connectivity): they touch
    assert not _lesions_apart(grown, 2)
    split = instances.copy()
    split[3, 8, 8] = 2  # lesion 2 in two pieces
    assert not _lesions_apart(split, 2)
