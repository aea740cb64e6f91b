"""`ctlesion simulate`'s background options: --background-dir, --organ-masks and the
NAME.seg.nii.gz convention, on phantom NIfTI files (no data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.io.deeplesion import read_dl_info
from ctlesion.io.nifti import write_nifti
from ctlesion.volume import Volume


def invoke(*args: object):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def _write_phantom(folder: Path, name: str, masks_name: str | None) -> Path:
    """A soft-tissue body in air; with masks, a TotalSegmentator-style label map calling a block
    on the image's left liver (label 5)."""
    yy, xx = np.mgrid[:96, :96] + 0.5
    body = (yy - 48) ** 2 + (xx - 48) ** 2 <= 44**2
    rng = np.random.default_rng(0)
    hu = np.where(body, 60.0, -1000.0)[None].repeat(40, axis=0) + rng.normal(0, 8, (40, 96, 96))
    volume = Volume(hu=hu.astype(np.int16), spacing_zyx_mm=(2.0, 3.0, 3.0), source=name)
    path = folder / name
    write_nifti(volume.hu, volume, path)
    if masks_name:
        labels = np.zeros(volume.shape_zyx, dtype=np.int16)
        labels[:, 25:75, 10:48] = 5
        write_nifti(labels, volume, folder / masks_name)
    return path


def _types(out: Path) -> set[int]:
    return {int(t) for key in read_dl_info(out / "DL_info.csv") for t in key.lesion_types}


def test_organ_masks_by_convention_and_explicitly(tmp_path: Path) -> None:
    folder = tmp_path / "bg"
    folder.mkdir()
    _write_phantom(folder, "a.nii.gz", "a.seg.nii.gz")
    _write_phantom(folder, "b.nii.gz", None)
    _write_phantom(folder, "c.nii.gz", None)
    result = invoke("simulate", "--out", tmp_path / "out", "--background-dir", folder, "--num-series", 6,
                    "--image-size", 96, "--seed", 1)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "simulation.json").read_text())
    masks = {b["name"]: b["masks"] for b in manifest["backgrounds"]}
    assert masks["a"].endswith("a.seg.nii.gz") and masks["b"] is None
    assert manifest["split_by"] == "patient"
    liver_series = [s for s in manifest["series"] if any(l["coarse_type"] == 4 for l in s["lesions"])]
    assert liver_series and {s["background"] for s in liver_series} == {"a"}
    # Explicit pairing (--organ-masks BACKGROUND=MASKS) for a background named on its own.
    other = tmp_path / "other"
    other.mkdir()
    ct = _write_phantom(other, "d.nii.gz", "labels.nii.gz")
    result = invoke("simulate", "--out", tmp_path / "out2", "--background", ct, "--organ-masks",
                    f"{ct}={other / 'labels.nii.gz'}", "--num-series", 3, "--image-size", 96)
    assert result.exit_code == 0, result.output
    assert 4 in _types(tmp_path / "out2")


def test_bad_background_options(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    result = invoke("simulate", "--out", tmp_path / "o1", "--background-dir", empty)
    assert result.exit_code == 1 and "holds no CT background" in result.output
    result = invoke("simulate", "--out", tmp_path / "o2", "--organ-masks", "no-equals-sign")
    assert result.exit_code == 1 and "BACKGROUND=MASKS" in result.output
    ct = _write_phantom(tmp_path, "e.nii.gz", None)
    result = invoke("simulate", "--out", tmp_path / "o3", "--background", ct, "--organ-masks",
                    f"{tmp_path / 'x.nii.gz'}={ct}")
    assert result.exit_code == 1 and "not simulated" in result.output


def test_background_list_declares_patients_and_splits(tmp_path: Path) -> None:
    folder = tmp_path / "bg"
    folder.mkdir()
    for name in ("a", "b", "c"):
        _write_phantom(folder, f"{name}.nii.gz", "a.seg.nii.gz" if name == "a" else None)
    listing = tmp_path / "backgrounds.json"
    listing.write_text(json.dumps([
        {"ct": "bg/a.nii.gz", "masks": "bg/a.seg.nii.gz", "patient": "one", "split": 1},
        {"ct": "bg/b.nii.gz", "patient": "one", "split": 1, "lesion_types": [5, 7]},
        {"ct": "bg/c.nii.gz", "split": 1},
    ]))
    result = invoke("simulate", "--out", tmp_path / "out", "--background-list", listing, "--num-series", 6,
                    "--image-size", 96, "--seed", 2)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "out" / "simulation.json").read_text())
    assert [(b["name"], b["patient"], b["split"]) for b in manifest["backgrounds"]] == [
        ("a", "one", 1), ("b", "one", 1), ("c", "c", 1)]
    assert {s["split"] for s in manifest["series"]} == {1}
    assert all(l["coarse_type"] in (5, 7) for s in manifest["series"] if s["background"] == "b"
               for l in s["lesions"])
    # The simulation.json of a run is itself a background list (absolute paths): same dataset again.
    result = invoke("simulate", "--out", tmp_path / "again", "--background-list", tmp_path / "out" / "simulation.json",
                    "--num-series", 6, "--image-size", 96, "--seed", 2)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "again" / "DL_info.csv").read_bytes() == (tmp_path / "out" / "DL_info.csv").read_bytes()
    # --split: only the patients of a split are read (a missing file of another split is never opened).
    listing.write_text(json.dumps([{"ct": "bg/a.nii.gz", "split": 1}, {"ct": "bg/b.nii.gz", "split": 2},
                                   {"ct": "bg/missing.nii.gz", "split": 3}]))
    result = invoke("simulate", "--out", tmp_path / "val", "--background-list", listing, "--split", "val",
                    "--num-series", 2, "--image-size", 96)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "val" / "simulation.json").read_text())
    assert {s["background"] for s in manifest["series"]} == {"b"} and {s["split"] for s in manifest["series"]} == {2}
    result = invoke("simulate", "--out", tmp_path / "test", "--background-list", listing, "--split", "test")
    assert result.exit_code == 1 and "background CT not found" in result.output
    for text, message in [("[]", "no entries"), ('[{"masks": "x"}]', "'ct' path"),
                          ('[{"ct": "bg/a.nii.gz", "split": 4}]', "split must be"),
                          ('[{"ct": "bg/a.nii.gz", "colour": 1}]', "unknown field"), ("{", "cannot read")]:
        listing.write_text(text)
        result = invoke("simulate", "--out", tmp_path / "bad", "--background-list", listing)
        assert result.exit_code == 1 and message in result.output and "backgrounds.json" in result.output, text
