"""Datasets of DICOM CT series with DICOM SEG objects beside them (ctlesion.io.dicom_seg_dataset)."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes
from synthetic_dicom import write_series, z_positions
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.data.volume_dataset import VolumeKeySliceDataset
from ctlesion.errors import CtlesionError
from ctlesion.io import read_volume
from ctlesion.io.masked_datasets import is_masked_dataset, open_masked_dataset, read_case
from ctlesion.report.dicom_seg import completed_sources, write_dicom_file

UIDS = {"series_uid": "1.2.826.0.1.3680043.10.15", "study_uid": "1.2.826.0.1.3680043.10.16",
        "frame_uid": "1.2.826.0.1.3680043.10.17"}


def _seg(volume, paths, labels_zyx, names, positions_z=None):
    """A BINARY SEG of ``labels_zyx`` (value i = segment i, named names[i - 1]) on the series' slices."""
    sources = completed_sources([pydicom.dcmread(p) for p in paths], volume)
    segments = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=name, segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion, algorithm_type="MANUAL") for i, name in enumerate(names, start=1)]
    positions = None
    if positions_z is not None:
        positions = [hd.PlanePositionSequence("PATIENT", [-10.0, 20.0, float(z)]) for z in positions_z]
    return hd.seg.Segmentation(
        source_images=sources, pixel_array=labels_zyx.astype(np.uint8), segmentation_type="BINARY",
        segment_descriptions=segments, series_instance_uid=hd.UID(), series_number=100, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="test", manufacturer_model_name="test", software_versions="1",
        device_serial_number="1", plane_positions=positions,
        plane_orientation=None if positions is None else hd.PlaneOrientationSequence("PATIENT", [1, 0, 0, 0, 1, 0]),
        pixel_measures=None if positions is None else hd.PixelMeasuresSequence(
            pixel_spacing=[float(v) for v in volume.spacing_zyx_mm[1:]], slice_thickness=2.5))


@pytest.fixture
def seg_dataset(tmp_path):
    root = tmp_path / "study"
    paths = write_series(root / "ct", z_positions([0, 2, 4, 6, 8, 10]), description="ct", **UIDS)
    volume = read_volume(root / "ct")
    labels = np.zeros(volume.shape_zyx, np.uint8)
    labels[1:4, 1:3, 1:3] = 1  # a tumour over three slices
    labels[5, 4:6, 3:5] = 1  # another
    labels[2, 4, 0] = 2  # a 'vessel' segment
    write_dicom_file(root / "segs" / "reader1.dcm", _seg(volume, paths, labels, ["tumor", "vessel"]))
    return root, volume, labels, paths


def test_dicom_series_with_segs_are_a_dataset_of_volumes(seg_dataset):
    root, volume, labels, _ = seg_dataset
    assert is_masked_dataset(root) and not is_masked_dataset(root / "ct")
    data = open_masked_dataset(root)
    assert data.layout == "dicom-seg" and data.labels == {"tumor": 1, "vessel": 2}
    (case,) = data.cases("train")
    assert case.case_id == "segs_reader1" and case.series_uid == UIDS["series_uid"] and data.cases("test") == ()
    truth = read_case(case, data.lesion_value("tumor"), layout=data.layout)
    assert truth.num_lesions == 2 and truth.volume.shape_zyx == volume.shape_zyx
    np.testing.assert_array_equal(truth.lesions_zyx > 0, labels == 1)  # the SEG's frames sit on their CT slices
    assert read_case(case, data.lesion_value("2"), layout=data.layout).num_lesions == 1
    assert read_case(case, 1, layout=data.layout, min_lesion_voxels=5).num_lesions == 1
    items = VolumeKeySliceDataset(data, "train", 1, num_slices=3, image_size_px=32, other_slices_per_lesion=0,
                                  negative_fraction=0, cache_dir=root.parent / "cache")
    assert items.names == ["segs_reader1:1", "segs_reader1:5"]  # largest cross-sections (first on ties)


def test_a_seg_off_the_ct_grid_is_refused(seg_dataset):
    root, volume, labels, paths = seg_dataset
    shifted = _seg(volume, paths, labels[:, :, :], ["tumor", "vessel"], positions_z=[1, 3, 5, 7, 9, 11])
    write_dicom_file(root / "segs" / "reader1.dcm", shifted)
    data = open_masked_dataset(root)
    with pytest.raises(CtlesionError, match="not on a slice of the CT's grid"):
        read_case(data.cases("train")[0], 1, layout=data.layout)


def test_a_seg_without_its_ct_is_one_error_line(seg_dataset, tmp_path):
    root, *_ = seg_dataset
    for path in (root / "ct").iterdir():
        path.unlink()
    with pytest.raises(CtlesionError, match="is not in the folder"):
        open_masked_dataset(root)
    result = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--lesion-label", "tumor", "--split", "all",
                                      "--out", str(tmp_path / "e")])
    assert result.exit_code == 1 and "is not in the folder" in result.output and "Traceback" not in result.output


def test_evaluate_runs_detect_on_the_referenced_series_and_scores_per_scan(seg_dataset, tiny_weights, tmp_path):
    import json

    root, *_ = seg_dataset
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--lesion-label", "tumor", "--split", "all",
                                      "--weights", str(tiny_weights), "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert evaluation["layout"] == "dicom-seg" and evaluation["froc_per_scan"]["summary"]["all"]["num_lesions"] == 2
    rescored = CliRunner().invoke(app, ["evaluate", "--data", str(root), "--lesion-label", "tumor", "--split", "all",
                                        "--predictions", str(out / "predictions" / "results.json"),
                                        "--out", str(tmp_path / "again")])
    assert rescored.exit_code == 0, rescored.output
    again = json.loads((tmp_path / "again" / "evaluation.json").read_text())
    assert again["froc_per_scan"]["summary"] == evaluation["froc_per_scan"]["summary"]
