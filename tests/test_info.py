"""`ctlesion info` (tables and --json), and `detect --series / --all-series / --tilt`, through the CLI."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from synthetic_dicom import (
    TILT_DEG,
    stored_pattern,
    write_series,
    write_slice,
    write_tilted_series,
    z_positions,
)
from typer.testing import CliRunner

from ctlesion.cli.app import app

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "abdomen_ct_dicom"
ISSUE_KEYS = ["series_uid", "description", "num_slices", "rows", "columns", "pixel_spacing_mm", "slice_interval_mm",
              "slice_thickness_mm", "gantry_tilt_deg", "warnings", "selected"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def info_json(*paths) -> dict:
    result = invoke("info", "--json", *paths)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture()
def study(tmp_path) -> Path:
    """One folder: a 5 mm and a 2.5 mm CT series, a localizer, a coronal reformat, a text file."""
    folder = tmp_path / "study"
    names = [f"IM{n:04d}" for n in np.random.default_rng(2).permutation(20)]
    write_series(folder, z_positions([0, 5, 10, 15]), series_uid="1.2.5", series_number=2,
                 description="Abd 5.0", slice_thickness_mm=5.0, names=names[:4])
    write_series(folder, z_positions(np.arange(0, 15.1, 2.5)), series_uid="1.2.2", series_number=3,
                 description="Abd 2.5", slice_thickness_mm=3.0, names=names[4:11])
    write_slice(folder / "scout", (0, 0, 0), stored_pattern(0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(folder / "reformats", [(0, y, 0) for y in range(3)], orientation=(1, 0, 0, 0, 0, -1),
                 series_number=9, description="Cor")
    (folder / "README.txt").write_text("export notes")
    return folder


def assert_one_error_line(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    output = result.output.strip()
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert "Traceback" not in output and len(errors) == 1, output
    assert output.splitlines()[-1] == errors[0]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


# --------------------------------------------------------------------------- info --json


def test_info_json_lists_every_series_and_every_skip(study):
    document = info_json(study)
    assert all(list(s) == ISSUE_KEYS for s in document["series"])  # exactly the issue's keys, in its order
    assert document["inputs"] == [{"path": str(study), "series": [0, 1], "warnings": []}]
    series = {s["series_uid"]: s for s in document["series"]}
    thin, thick = series["1.2.2"], series["1.2.5"]
    assert thin == {
        "series_uid": "1.2.2", "description": "Abd 2.5", "num_slices": 7, "rows": 6, "columns": 5,
        "pixel_spacing_mm": [0.7, 0.8], "slice_interval_mm": 2.5, "slice_thickness_mm": 3.0, "gantry_tilt_deg": 0.0,
        "warnings": [], "selected": True,
    }
    assert thick == {
        "series_uid": "1.2.5", "description": "Abd 5.0", "num_slices": 4, "rows": 6, "columns": 5,
        "pixel_spacing_mm": [0.7, 0.8], "slice_interval_mm": 5.0, "slice_thickness_mm": 5.0, "gantry_tilt_deg": 0.0,
        "warnings": [], "selected": False,
    }
    assert sorted(document["skipped"], key=lambda s: s["path"]) == [
        {"path": str(study / "README.txt"), "reason": "not a DICOM file"},
        {"path": str(study / "reformats"),
         "reason": "series #9 'Cor' (3 images): non-axial orientation (slice normal [0.0, 1.0, 0.0] in LPS)"},
        {"path": str(study / "scout"), "reason": "localizer (ImageType LOCALIZER)"},
    ]
    assert "thinnest slice interval" in document["selection_rule"]


def test_info_json_explains_geometry_problems(tmp_path):
    write_series(tmp_path / "gap", z_positions([0.0, 2.0, 4.0, 8.0, 10.0]), series_uid="1")
    write_tilted_series(tmp_path / "tilt", [0.0, 3.0, 6.0])
    (tmp_path / "lone").mkdir()
    write_slice(tmp_path / "lone" / "only", (0, 0, 0), stored_pattern(0))
    write_series(tmp_path / "same", z_positions([3.0, 3.0]), series_uid="2")
    write_series(tmp_path / "mr", z_positions([0, 4, 8]), series_uid="3", modality="MR", intercept=0.0)
    paths = [tmp_path / name for name in ("gap", "tilt", "lone", "same", "mr")]
    gap, tilt, lone, same, mr = info_json(*paths)["series"]
    assert gap["num_slices"] == 5 and gap["slice_interval_mm"] == 2.0 and gap["selected"]
    assert "4.00 -> 8.00 mm" in gap["warnings"][0] and "1 of them interpolated" in gap["warnings"][0]
    assert tilt["gantry_tilt_deg"] == pytest.approx(TILT_DEG) and tilt["selected"]
    assert "refused unless read with --tilt resample" in tilt["warnings"][0]
    assert lone["slice_interval_mm"] is None and not lone["selected"]
    assert lone["warnings"] == ["only one slice (only) in the series, at least 2 needed to know the slice interval"]
    assert same["num_slices"] == 1 and same["slice_interval_mm"] is None and not same["selected"]
    assert same["warnings"][0].startswith("all 2 slices of the series lie at one position (3.00 mm")
    assert not mr["selected"] and mr["warnings"] == ["modality MR is not CT: read only with --allow-non-ct"]


def test_info_json_truncated_file_is_skipped_with_a_warning(tmp_path):
    paths = write_series(tmp_path, z_positions([0, 2, 4]))
    paths[0].write_bytes(paths[0].read_bytes()[:200])  # cut inside the header
    document = info_json(tmp_path)
    assert [s["num_slices"] for s in document["series"]] == [2]
    assert document["skipped"][0]["path"] == str(paths[0])
    # pydicom stops at the cut: the header lacks the image attributes
    assert document["skipped"][0]["reason"] == "image object without pixel data (truncated or corrupt)"
    assert document["inputs"][0]["warnings"] == [
        "slice000.dcm is an image object without pixel data (truncated or corrupt?); file skipped"]


def test_info_json_nifti_is_one_series(tmp_path):
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 7, 6), np.int16), np.diag([0.9, 0.8, 3.0, 1.0])), path)
    document = info_json(path)
    (series,) = document["series"]
    assert document["inputs"] == [{"path": str(path), "series": [0], "warnings": []}]
    assert series["description"] == "scan.nii.gz" and series["selected"] and document["skipped"] == []
    assert (series["num_slices"], series["rows"], series["columns"]) == (6, 7, 8)
    assert series["pixel_spacing_mm"] == pytest.approx([0.8, 0.9]) and series["slice_interval_mm"] == pytest.approx(3.0)
    assert series["slice_thickness_mm"] is None and series["warnings"] == []


@pytest.mark.data
def test_info_json_on_the_real_data(shared_data):
    document = info_json(SAMPLE, shared_data / "dicom_bad_geometry" / "missing_slice")
    sample, missing = document["series"]
    assert [entry["series"] for entry in document["inputs"]] == [[0], [1]]
    assert (sample["num_slices"], sample["rows"], sample["columns"]) == (20, 512, 512)
    assert sample["slice_interval_mm"] == 2.0 and sample["slice_thickness_mm"] == 3.0  # reported separately
    assert sample["pixel_spacing_mm"] == [0.9765625, 0.9765625] and sample["warnings"] == []
    assert missing["num_slices"] == 4 and missing["slice_interval_mm"] == pytest.approx(5.0)
    assert "missing slices" in missing["warnings"][0] and "28.11 -> 38.11 mm" in missing["warnings"][0]


# --------------------------------------------------------------------------- info tables


def test_info_table(study, tmp_path):
    nii = tmp_path / "scan.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), nii)
    result = invoke("info", study, nii)
    assert result.exit_code == 0, result.output
    text = result.stdout
    rows = {line.split()[0]: line.split() for line in text.splitlines() if line.strip().startswith(("#2", "#3"))}
    assert rows["#3"][1:] == ["Abd", "2.5", "CT", "7", "6x5", "0.700x0.800", "2.500", "3.00", "15.0", "0.00", "yes"]
    assert rows["#2"][1:] == ["Abd", "5.0", "CT", "4", "6x5", "0.700x0.800", "5.000", "5.00", "15.0", "0.00", "can"]
    assert "detect reads #3 by default" in text
    assert "localizer (ImageType LOCALIZER)" in text and "non-axial orientation" in text
    assert "scan.nii" in text and "selection rule:" in text


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("case", ["missing", "empty", "no_dicom", "single_file", "not_nifti", "unreadable"])
def test_info_bad_input_gives_one_line_and_exit_1(case, tmp_path, monkeypatch):
    target = tmp_path / case
    if case == "empty":
        target.mkdir()
    elif case == "no_dicom":
        target.mkdir()
        (target / "a.txt").write_text("not a scan")
    elif case == "single_file":
        target = write_slice(tmp_path / "one.dcm", (0, 0, 0), stored_pattern(0))
    elif case == "not_nifti":
        target = tmp_path / "notes.txt"
        target.write_text("x")
    elif case == "unreadable":
        write_series(target, z_positions([0, 1]))
        real_scandir = os.scandir

        def denied(path="."):
            if Path(path) == target:
                raise PermissionError(13, "Permission denied", str(path))
            return real_scandir(path)

        monkeypatch.setattr(os, "scandir", denied)
    expected = {
        "missing": "does not exist", "empty": "folder is empty", "no_dicom": "no DICOM files among its 1 files",
        "single_file": "is a single DICOM file", "not_nifti": "not a DICOM folder or NIfTI file",
        "unreadable": "cannot read folder (Permission denied)",
    }[case]
    assert_one_error_line(invoke("info", target), str(target), expected)
    assert_one_error_line(invoke("info", "--json", target), expected)


# --------------------------------------------------------------------------- detect options




@pytest.fixture()
def two_series(tmp_path) -> Path:
    """Two 2-slice CT series (5 mm and 2.5 mm) of 32 x 32 pixels in one folder (the network is slow on CPU)."""
    folder = tmp_path / "patient"
    folder.mkdir()
    for number, z_values in [(2, [0, 5]), (3, [0, 2.5])]:
        for i, z in enumerate(z_values):
            write_slice(folder / f"s{number}_{i}", (0, 0, z), stored_pattern(i, 32, 32), series_uid=f"1.{number}",
                        series_number=number, description=f"series {number}")
    return folder


def detect(*args):
    """`ctlesion detect` on CPU keeping no detection (score >= 1): these tests check inputs and names."""
    return invoke("detect", *args, "--device", "cpu", "--score-threshold", "1.0")


@pytest.fixture()
def no_network(monkeypatch):
    """Skip the detector's forward passes (slow on CPU; covered by test_cli): no lesions, same interval."""
    import ctlesion.detect

    def no_lesions(model, volume, **kwargs):
        return [], max(volume.slice_interval_mm, model.config.ref_interval_mm)

    monkeypatch.setattr(ctlesion.detect, "detect_volume", no_lesions)


def test_detect_all_series_names_studies_by_series_number(tiny_weights, two_series, tmp_path, no_network):
    nii = tmp_path / "patient.nii.gz"  # its default name is taken by nothing: the folder's studies get _s<N>
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), -1000, np.int16), np.diag([-1, -1, 5.0, 1])), nii)
    out = tmp_path / "out" / "results.json"
    result = detect(two_series, nii, "--all-series", "--out", out, "--weights", tiny_weights)
    assert result.exit_code == 0, result.output
    studies = json.loads(out.read_text())["studies"]
    assert [s["input"] for s in studies] == [str(two_series), str(two_series), str(nii)]
    assert [s["series"]["uid"] for s in studies] == ["1.2", "1.3", None]
    assert [s["slice_interval_mm"] for s in studies] == [5.0, 2.5, 5.0]
    assert [s["label_map"] for s in studies] == ["patient_s2_lesions.nii.gz", "patient_s3_lesions.nii.gz",
                                                 "patient_lesions.nii.gz"]
    assert all((out.parent / s["label_map"]).is_file() for s in studies)


def test_detect_checks_every_input_first_then_decodes_one_volume_at_a_time(
        tiny_weights, two_series, tmp_path, monkeypatch):
    import ctlesion.detect
    import ctlesion.io.dicom

    events = []
    decode = ctlesion.io.dicom._load_hu
    monkeypatch.setattr(ctlesion.io.dicom, "_load_hu", lambda slices, *a: events.append("decode") or decode(slices, *a))
    monkeypatch.setattr(ctlesion.detect, "detect_volume", lambda model, volume, **kw: events.append("detect") or (
        [], max(volume.slice_interval_mm, model.config.ref_interval_mm)))
    out = tmp_path / "out" / "results.json"
    assert detect(two_series, "--all-series", "--out", out, "--weights", tiny_weights).exit_code == 0
    assert events == ["decode", "detect", "decode", "detect"]
    # A tilted series after a good one is refused from its headers, before anything is decoded.
    tilted = tmp_path / "tilted"
    write_tilted_series(tilted, [0.0, 3.0], rows=32, columns=32)
    events.clear()
    out_2 = tmp_path / "out_2" / "results.json"
    assert_one_error_line(detect(two_series, tilted, "--all-series", "--out", out_2, "--weights", tiny_weights),
                          "gantry tilt of 15.00 deg")
    assert events == [] and not out_2.parent.exists()
    # A data block that turns out corrupt after a study was processed: an error, and nothing written.
    corrupt = tmp_path / "corrupt.nii.gz"
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), -1000, np.int16), np.diag([-1, -1, 5.0, 1])), corrupt)
    corrupt.write_bytes(corrupt.read_bytes()[:-40])
    assert_one_error_line(detect(two_series, corrupt, "--out", out_2, "--weights", tiny_weights),
                          str(corrupt), "cannot read the NIfTI data")
    assert events == ["decode", "detect"] and not out_2.parent.exists()


def test_detect_series_by_description(tiny_weights, two_series, tmp_path):
    out = tmp_path / "out" / "results.json"
    result = detect(two_series, "--series", "SERIES 2", "--out", out, "--weights", tiny_weights)
    assert result.exit_code == 0, result.output
    (study,) = json.loads(out.read_text())["studies"]
    assert study["series"]["uid"] == "1.2" and study["label_map"] == "patient_lesions.nii.gz"
    assert any(s["reason"].startswith("series #3 'series 3' not read: ") for s in study["series"]["skipped"])


def test_detect_series_errors(tiny_weights, two_series, tmp_path):
    out = tmp_path / "out" / "results.json"
    assert_one_error_line(detect(two_series, "--series", "7", "--out", out, "--weights", tiny_weights),
                          str(two_series), "no series matches '7'")
    assert not out.parent.exists()
    both = detect(two_series, "--series", "2", "--all-series", "--out", out, "--weights", tiny_weights)
    assert both.exit_code == 2 and "exclude each other" in both.output
    bad_tilt = detect(two_series, "--tilt", "ignore", "--out", out, "--weights", tiny_weights)
    assert bad_tilt.exit_code == 2 and "'refuse', 'resample'" in bad_tilt.output


def test_detect_tilt_refused_by_default_and_resampled_on_request(tiny_weights, tmp_path, no_network):
    folder = tmp_path / "tilted"
    write_tilted_series(folder, [0.0, 3.0], rows=32, columns=32)
    out = tmp_path / "out" / "results.json"
    assert_one_error_line(detect(folder, "--out", out, "--weights", tiny_weights),
                          "gantry tilt of 15.00 deg", "use --tilt resample")
    resampled = detect(folder, "--tilt", "resample", "--out", out, "--weights", tiny_weights)
    assert resampled.exit_code == 0, resampled.output
    (study,) = json.loads(out.read_text())["studies"]
    assert study["shape_zyx"] == [2, 34, 32]  # 3 mm * sin(15 deg) = 0.78 mm = 1.1 rows of drift
    assert any("resampled onto an orthogonal grid" in w for w in study["series"]["warnings"])
    labels = nib.load(out.parent / study["label_map"])  # the label map carries the orthogonal, tilted grid
    z_axis_lps = np.diag([-1, -1, 1]) @ labels.affine[:3, 2]
    normal = np.array([0.0, np.sin(np.radians(TILT_DEG)), np.cos(np.radians(TILT_DEG))])
    np.testing.assert_allclose(z_axis_lps / np.linalg.norm(z_axis_lps), normal, atol=1e-6)


def test_info_explains_a_folder_without_readable_series(tmp_path, tiny_weights):
    write_slice(tmp_path / "scout", (0, 0, 0), stored_pattern(0), image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))
    write_series(tmp_path / "sag", [(x, 0, 0) for x in range(3)], orientation=(0, 1, 0, 0, 0, -1))
    result = invoke("info", tmp_path)
    assert result.exit_code == 0, result.output  # info explains; detect refuses (below)
    assert "no axial image series" in result.stdout
    assert "localizer (ImageType LOCALIZER)" in result.stdout and "non-axial orientation" in result.stdout
    document = info_json(tmp_path)
    assert document["series"] == [] and len(document["skipped"]) == 2
    assert_one_error_line(detect(tmp_path, "--out", tmp_path / "r.json", "--weights", tiny_weights),
                          "no axial CT image series among its 4 files")
