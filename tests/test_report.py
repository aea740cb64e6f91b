"""results.json, label maps and atomic output (overlay pictures: test_overlays.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctlesion.postprocess import Lesion, box_lps_mm, disjoint_lesions
from ctlesion.report import (
    atomic_write_bytes,
    atomic_write_text,
    format_score,
    label_map,
    staged_outputs,
    study_record,
    write_results_json,
)
from ctlesion.volume import Volume

SHAPE_ZYX = (6, 40, 50)


def make_volume(interval_mm: float = 2.5) -> Volume:
    hu = np.full(SHAPE_ZYX, -1000, dtype=np.int16)
    hu[:, 8:36, 6:46] = 40  # soft-tissue "body"
    return Volume(
        hu=hu,
        spacing_zyx_mm=(interval_mm, 0.7, 0.7),
        origin_lps_mm=(-17.5, -14.0, 100.0),
        source="/data/study1",
        meta={
            "slice_thickness_mm": 3.0,
            "series_uid": "1.2.3.4",
            "description": "ABD C+",
            "warnings": ["slice thickness 3 mm exceeds the interval 2.5 mm (overlapping reconstruction)"],
            "skipped": [{"path": "/data/study1/scout.dcm", "reason": "localizer"}],
            "patient_name": "DOE^JANE",
            "patient_id": "PID-0042",
        },
    )


def make_lesion(score: float, z0: int, yx0: tuple[int, int], size: int, num_slices: int) -> Lesion:
    """A cuboid lesion of `size` x `size` pixels on slices z0 .. z0 + num_slices - 1.

    Its box is 2 pixels wider than the mask on every side (as a detector's box may be).
    """
    mask = np.ones((num_slices, size, size), dtype=bool)
    y0, x0 = yx0
    return Lesion(
        score=score,
        box_vox=(x0 - 2.0, y0 - 2.0, float(z0), x0 + size + 2.0, y0 + size + 2.0, float(z0 + num_slices - 1)),
        key_slice=z0 + num_slices // 2,
        long_axis_mm=size * 0.7 * np.sqrt(2),
        short_axis_mm=size * 0.7 * np.sqrt(2),
        volume_ml=mask.sum() * 2.5 * 0.7 * 0.7 / 1000,
        mask_zyx=mask,
        mask_offset_zyx=(z0, y0, x0),
        long_axis_px=((float(x0), float(y0)), (float(x0 + size), float(y0 + size))),
    )


@pytest.fixture
def lesions() -> list[Lesion]:
    # Label 1 has the LOWER score; the two overlap on slices 2-3, rows 14-17, columns 16-19.
    return [make_lesion(0.6, 2, (14, 16), 8, 3), make_lesion(0.9, 1, (10, 12), 8, 3)]


def test_label_map_refuses_overlapping_lesions(lesions):
    with pytest.raises(ValueError, match="lesion 2 shares voxels"):
        label_map(make_volume(), lesions)


def test_label_map_of_disjoint_lesions_holds_each_lesion_whole(lesions):
    volume = make_volume()
    kept = disjoint_lesions(lesions, volume.spacing_zyx_mm)  # 32 of 192 voxels shared: below the 50 % rule
    assert [les.score for les in kept] == [0.9, 0.6]
    labels = label_map(volume, kept)
    assert labels.shape == SHAPE_ZYX and labels.dtype == np.uint8
    assert set(np.unique(labels)) == {0, 1, 2}
    assert labels[2, 15, 17] == 1  # the shared voxels stay with the higher score (label 1)
    assert labels[4, 20, 22] == 2  # only the 0.6 lesion (slices 2-4)
    assert (labels == 1).sum() == 3 * 64
    assert (labels == 2).sum() == 3 * 64 - 2 * 4 * 4  # minus the voxels it shares with label 1
    voxel_ml = float(np.prod(volume.spacing_zyx_mm)) / 1000
    for label, lesion in enumerate(kept, start=1):
        assert lesion.volume_ml == pytest.approx((labels == label).sum() * voxel_ml, rel=1e-12)
        assert labels[lesion.key_slice][lesion.slice_mask(lesion.key_slice, SHAPE_ZYX[1:])].min() == label


def test_label_map_nifti_geometry(lesions, tmp_path):
    nib = pytest.importorskip("nibabel")
    write_nifti = pytest.importorskip("ctlesion.io.nifti").write_nifti
    volume = make_volume()
    labels = label_map(volume, disjoint_lesions(lesions, volume.spacing_zyx_mm)[::-1])  # label 2: the 0.9 lesion
    write_nifti(labels, reference=volume, path=tmp_path / "labels.nii.gz")
    image = nib.load(tmp_path / "labels.nii.gz")
    data = np.asarray(image.dataobj)  # (x, y, z)
    ijk = np.argwhere(data == 2)
    ras = nib.affines.apply_affine(image.affine, ijk)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    # Label 2 (mask at x 12..19, y 10..17, z 1..3) lands at those voxel centres in LPS ...
    np.testing.assert_allclose(lps.min(axis=0), [-17.5 + 12 * 0.7, -14.0 + 10 * 0.7, 102.5], atol=1e-4)
    np.testing.assert_allclose(lps.max(axis=0), [-17.5 + 19 * 0.7, -14.0 + 17 * 0.7, 107.5], atol=1e-4)
    # ... inside its LPS box.
    bounds = box_lps_mm(lesions[1].box_vox, volume)
    assert np.all(lps.min(axis=0) > bounds[:3]) and np.all(lps.max(axis=0) < bounds[3:])


def test_study_record_content(lesions):
    volume = make_volume()
    record = study_record(
        volume, lesions, input_path="/data/study1", detector_interval_mm=2.5,
        label_map_file="study1_labels.nii.gz", overlay_files=["l1.png", "l2.png"],
    )
    assert set(record) == {
        "input", "slice_interval_mm", "slice_thickness_mm", "shape_zyx", "spacing_zyx_mm", "series",
        "resampled_to_mm", "label_map", "dicom_seg", "dicom_sr", "summary_sheet", "lesions",
    }
    assert record["input"] == "/data/study1"
    assert record["slice_interval_mm"] == 2.5 and record["slice_thickness_mm"] == 3.0
    assert record["shape_zyx"] == [6, 40, 50] and record["spacing_zyx_mm"] == [2.5, 0.7, 0.7]
    assert record["series"] == {
        "uid": "1.2.3.4",
        "description": "ABD C+",
        "warnings": volume.meta["warnings"],
        "skipped": volume.meta["skipped"],
    }
    assert record["resampled_to_mm"] is None
    assert record["label_map"] == "study1_labels.nii.gz"
    first = record["lesions"][0]
    assert set(first) == {
        "label", "score", "box_vox", "box_lps_mm", "key_slice", "long_axis_mm", "short_axis_mm", "long_axis_px",
        "short_axis_px", "volume_ml", "overlay",
    }
    assert [les["label"] for les in record["lesions"]] == [1, 2]
    assert first["box_vox"] == [14.0, 12.0, 2.0, 26.0, 24.0, 4.0]
    # x: [14, 26) -> voxel indices 13.5 .. 25.5 -> -17.5 + 0.7 * that; y likewise from -14;
    # z: slices 2..4 -> 1.5 .. 4.5 -> 100 + 2.5 * that.
    np.testing.assert_allclose(
        first["box_lps_mm"], [-8.05, -5.95, 103.75, 0.35, 2.45, 111.25], atol=1e-9
    )
    assert first["key_slice"] == 3 and first["overlay"] == "l1.png"
    assert first["long_axis_px"] == [[16.0, 14.0], [24.0, 22.0]] and first["short_axis_px"] is None
    assert first["volume_ml"] == pytest.approx(192 * 2.5 * 0.49 / 1000)

    thin = study_record(make_volume(1.0), [], input_path="x.nii.gz", detector_interval_mm=2.0)
    assert thin["resampled_to_mm"] == 2.0 and thin["label_map"] is None and thin["lesions"] == []
    with pytest.raises(ValueError, match="overlay_files"):
        study_record(volume, lesions, input_path="x", detector_interval_mm=2.5, overlay_files=["a.png"])


def test_write_results_json(lesions, tmp_path):
    volume = make_volume()
    lesions[1].long_axis_mm = float("nan")
    lesions[0].score = 0.123456789
    lesions[0].volume_ml = 0.0012345678  # a few voxels: 7 significant digits keep its precision
    record = study_record(volume, lesions, input_path="/data/study1", detector_interval_mm=2.5)
    path = tmp_path / "out" / "results.json"
    write_results_json(path, [record], model={"name": "alignshift-x7", "checkpoint": "m.safetensors"}, version="0.1.0")
    text = path.read_text()
    assert text.startswith('{\n  "version": "0.1.0",')  # indent 2
    document = json.loads(text)
    assert list(document) == ["version", "model", "studies"]
    assert document["model"]["name"] == "alignshift-x7"
    study = document["studies"][0]
    assert study["lesions"][0]["score"] == 0.1234568
    assert study["lesions"][0]["volume_ml"] == 0.001234568
    assert study["lesions"][1]["long_axis_mm"] is None  # NaN -> null
    assert study["spacing_zyx_mm"] == [2.5, 0.7, 0.7]
    assert "DOE" not in text and "PID-0042" not in text and "patient" not in text.lower()
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temporary left


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "results.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(path, "not bytes")  # type: ignore[arg-type]
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new"


def test_staged_outputs_moves_files_only_on_success(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with staged_outputs(out) as stage:
            atomic_write_text(stage / "results.json", "{}")
            atomic_write_text(stage / "overlays" / "lesion_001.png", "x")
            raise RuntimeError("detector failed half-way")
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # staging folder removed too

    out.mkdir()
    (out / "keep.txt").write_text("user file")
    with staged_outputs(out) as stage:
        atomic_write_text(stage / "results.json", "{}")
        atomic_write_text(stage / "overlays" / "lesion_001.png", "x")
        assert not (out / "results.json").exists()  # nothing visible before the block ends
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "keep.txt", "overlays/lesion_001.png", "results.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize(("score", "text"), [(0.9, "0.90"), (0.3, "0.30"), (0.12, "0.12"), (0.87341, "0.8734"),
                                             (0.99534, "0.9953"), (0.9951, "0.9951"), (0.001, "0.001"), (1.0, "1.00")])
def test_scores_are_shown_with_the_digits_that_tell_them_apart(score, text):
    # Two decimals would show both of the demo model's top validation-CT findings (0.9953 and
    # 0.9951, either side of its 0.9952 threshold) as "1.00".
    assert format_score(score) == text
