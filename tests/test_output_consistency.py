"""Every output of `detect` tells the same story: results.json, the label map, the DICOM SEG and SR.

The shipped model runs on real CT (the sample study, a NIfTI at a low score threshold where
detections of one spot overlap) and the files are read back as a user would: the label map
with our NIfTI reader, the SEG and SR with highdicom.
"""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.detect import DEFAULT_WEIGHTS
from ctlesion.io import read_volume
from ctlesion.io.nifti import read_nifti
from ctlesion.postprocess import recist_axes

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "abdomen_ct_dicom"
pytestmark = pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="shipped demo model absent")


def sample_with_uids(folder: Path) -> Path:
    """A copy of the sample study with the Study/Series/SOP UIDs an anonymiser blanked, so a SEG can refer to it."""
    folder.mkdir()
    study_uid, series_uid = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for path in sorted(SAMPLE.iterdir()):
        try:
            dataset = pydicom.dcmread(path)
        except pydicom.errors.InvalidDicomError:
            continue
        dataset.StudyInstanceUID, dataset.SeriesInstanceUID = study_uid, series_uid
        dataset.SOPClassUID = dataset.file_meta.MediaStorageSOPClassUID
        dataset.SOPInstanceUID = dataset.file_meta.MediaStorageSOPInstanceUID
        dataset.save_as(folder / path.name)
    return folder


def run_detect(inputs: list[Path], out: Path, *extra: str) -> dict:
    result = CliRunner().invoke(app, ["detect", *map(str, inputs), "--out", str(out), "--device", "cpu", *extra],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


def segment_voxel_counts(seg_path: Path) -> dict[int, int]:
    """Per segment number, the number of voxels set in its frames."""
    seg = hd.seg.segread(seg_path)
    counts = {number: 0 for number in seg.segment_numbers}
    pixels = seg.pixel_array.reshape(seg.NumberOfFrames, seg.Rows, seg.Columns)
    for frame, item in zip(pixels, seg.PerFrameFunctionalGroupsSequence):
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        counts[number] += int(np.count_nonzero(frame))
    return counts


def sr_volumes_ml(sr_path: Path) -> dict[int, float]:
    """Per referenced segment number, the volume (ml) the SR reports."""
    sr = hd.sr.srread(sr_path)
    volumes = {}
    for group in sr.content.get_volumetric_roi_measurement_groups():
        (number,) = group.referenced_segment.referenced_segment_numbers
        (volume,) = [m.value for m in group.get_measurements() if m.name.value == "118565006"]
        volumes[int(number)] = float(volume)
    return volumes


def assert_outputs_agree(results: dict, out_dir: Path) -> int:
    """Check results.json against the label map, SEG and SR of every study; the number of lesions checked."""
    checked = 0
    for study in results["studies"]:
        source = read_volume(Path(study["input"]))
        labels_volume = read_nifti(out_dir / study["label_map"])
        assert labels_volume.shape_zyx == source.shape_zyx
        labels = np.rint(labels_volume.hu).astype(np.int64)
        voxel_ml = float(np.prod(study["spacing_zyx_mm"])) / 1000.0
        found = {int(k) for k in np.unique(labels) if k}
        listed = {lesion["label"] for lesion in study["lesions"]}
        assert found == listed, f"labels in the map {sorted(found - listed)}, in results.json only {sorted(listed - found)}"
        counts = np.bincount(labels.ravel(), minlength=max(listed, default=0) + 1)
        for lesion in study["lesions"]:
            label, count = lesion["label"], int(counts[lesion["label"]])
            assert lesion["volume_ml"] == pytest.approx(count * voxel_ml, rel=1e-3), f"lesion {label}"
            key = labels[lesion["key_slice"]] == label
            assert key.any(), f"lesion {label}: no voxel on its key slice"
            axes = recist_axes(key, tuple(study["spacing_zyx_mm"][1:]))
            assert (lesion["long_axis_mm"], lesion["short_axis_mm"]) == pytest.approx((axes.long_mm, axes.short_mm),
                                                                                      abs=1e-3), f"lesion {label}"
        if study["dicom_seg"]:
            seg_counts = segment_voxel_counts(out_dir / study["dicom_seg"])
            assert seg_counts == {label: int(counts[label]) for label in listed}
        if study["dicom_sr"]:
            sr_volumes = sr_volumes_ml(out_dir / study["dicom_sr"])
            assert set(sr_volumes) == listed
            for label, volume_ml in sr_volumes.items():
                assert volume_ml == pytest.approx(seg_counts[label] * voxel_ml, rel=1e-3), f"SR lesion {label}"
        checked += len(listed)
    return checked


def test_sample_study_outputs_agree_with_seg_and_sr(tmp_path):
    study = sample_with_uids(tmp_path / "study")
    # A low threshold, so that the shipped model reports lesions whatever its recommended threshold.
    results = run_detect([study], tmp_path / "out" / "results.json", "--dicom-sr", "--score-threshold", "0.1")
    (record,) = results["studies"]
    assert record["dicom_seg"] and record["dicom_sr"] and record["lesions"]
    assert assert_outputs_agree(results, tmp_path / "out") == len(record["lesions"])


@pytest.mark.data
def test_nifti_at_a_low_threshold_outputs_agree(shared_data, tmp_path):
    nifti = shared_data / "totalseg_example" / "example_ct_sm.nii.gz"
    results = run_detect([nifti], tmp_path / "results.json", "--score-threshold", "0.05")
    assert assert_outputs_agree(results, tmp_path) >= 20  # many overlapping detections at this threshold

