"""DICOM SEG and SR output: geometry, references and measurements read back with highdicom; skipped inputs; the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
from synthetic_dicom import write_series, write_tilted_series, z_positions
from typer.testing import CliRunner

from ctlesion.cli.app import app
from ctlesion.io import pending_volumes
from ctlesion.postprocess import Lesion
from ctlesion.report.dicom_seg import (
    completed_sources,
    frame_positions_lps_mm,
    lesion_segmentation,
    seg_source_problem,
    write_dicom_file,
)
from ctlesion.report.dicom_sr import lesion_measurement_report
from ctlesion.report.results import label_map

UIDS = {"series_uid": "1.2.826.0.1.3680043.10.5", "study_uid": "1.2.826.0.1.3680043.10.6",
        "frame_uid": "1.2.826.0.1.3680043.10.7"}


def box_lesion(score: float, offset_zyx: tuple[int, int, int], shape_zyx: tuple[int, int, int],
               axes_mm: tuple[float, float] = (1.0, 1.0), volume_ml: float = 0.0) -> Lesion:
    """A lesion whose mask fills a (dz, dy, dx) box at ``offset_zyx``, with given measurements;
    its long axis end points are the box's diagonal (no short axis end points)."""
    z, y, x = offset_zyx
    dz, dy, dx = shape_zyx
    return Lesion(score=score, box_vox=(x, y, z, x + dx, y + dy, z + dz - 1), key_slice=z, long_axis_mm=axes_mm[0],
                  short_axis_mm=axes_mm[1], volume_ml=volume_ml, mask_zyx=np.ones(shape_zyx, bool),
                  mask_offset_zyx=offset_zyx, long_axis_px=((float(x), float(y)), (float(x + dx), float(y + dy))))


def labelled_lps_mm(positions_lps_mm: np.ndarray, labels: np.ndarray) -> dict[int, set]:
    """Per label, the set of its voxels' LPS positions rounded to 1 um."""
    return {int(k): {tuple(p) for p in np.round(positions_lps_mm[labels == k], 3)} for k in np.unique(labels) if k}


def grid_zyx(shape_zyx: tuple[int, ...]) -> np.ndarray:
    """(Z, Y, X, 3) float (z, y, x) indices of every voxel."""
    return np.stack(np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij"), axis=-1).astype(float)


def ours_lps_mm(volume) -> np.ndarray:
    """(Z, Y, X, 3) LPS positions of our volume's voxels (Volume.voxel_to_lps takes x, y, z)."""
    return volume.voxel_to_lps(grid_zyx(volume.shape_zyx)[..., ::-1])


def seg_lps_mm(seg_volume) -> np.ndarray:
    """(Z, Y, X, 3) LPS positions of a highdicom Volume's voxels (its affine takes z, y, x)."""
    affine = seg_volume.affine
    return grid_zyx(seg_volume.array.shape) @ affine[:3, :3].T + affine[:3, 3]


def test_seg_has_the_lesions_at_their_lps_positions_and_refers_to_the_source(tmp_path):
    folder = tmp_path / "ct"
    paths = write_series(folder, z_positions([0, 2, 4, 6, 8]), description="thin", series_number=4, **UIDS)
    (pending,) = pending_volumes(folder)
    volume = pending.read()
    lesions = [box_lesion(0.9, (1, 1, 1), (3, 2, 2)), box_lesion(0.6, (4, 3, 0), (1, 2, 3))]
    labels = label_map(volume, lesions)
    out = tmp_path / "ct_lesions.seg.dcm"
    write_dicom_file(out, lesion_segmentation(volume, labels, lesions, pending.source_images(), version="9.9",
                                              model_name="m.safetensors"))

    seg = hd.seg.segread(out)
    assert seg.StudyInstanceUID == UIDS["study_uid"] and seg.FrameOfReferenceUID == UIDS["frame_uid"]
    assert seg.SeriesInstanceUID != UIDS["series_uid"] and seg.SeriesNumber == 1004 and seg.Modality == "SEG"
    assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 2
    first = seg.get_segment_description(1)
    assert first.segment_label == "lesion 1 (score 0.90)" and first.tracking_id == "lesion 1"
    assert first.segmented_property_type.value == "52988006"  # SNOMED CT: Lesion
    assert first.segmented_property_category.value == "49755003"  # Morphologically abnormal structure
    assert first.SegmentAlgorithmType == "AUTOMATIC" and first.algorithm_identification[0].AlgorithmVersion == "9.9"
    # Every labelled voxel sits at the same LPS position in the SEG as in our volume.
    ours = labelled_lps_mm(ours_lps_mm(volume), labels)
    back = seg.get_volume(combine_segments=True)
    theirs = labelled_lps_mm(seg_lps_mm(back), back.array)
    assert theirs == ours and len(ours[1]) == 12 and len(ours[2]) == 6
    # Each frame names the source slice it lies on.
    uid_by_z = {float(z): pydicom_uid(p) for z, p in zip([0, 2, 4, 6, 8], paths)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == uid_by_z[z]


def pydicom_uid(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID)


def pydicom_uid_from_meta(path: Path) -> str:
    return str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.MediaStorageSOPInstanceUID)


def test_seg_over_a_regridded_series_keeps_the_interpolated_slice(tmp_path):
    folder = tmp_path / "gap"
    write_series(folder, z_positions([0, 3, 6, 12]), **UIDS)  # 9 mm is missing: a 3 mm grid of 5 slices
    (pending,) = pending_volumes(folder)
    volume = pending.read()
    assert volume.shape_zyx[0] == 5
    lesions = [box_lesion(0.8, (2, 0, 1), (2, 3, 1))]  # on z = 6 mm (a source slice) and 9 mm (interpolated)
    labels = label_map(volume, lesions)
    seg = lesion_segmentation(volume, labels, lesions, pending.source_images(), version="9.9")
    positions = sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                       for f in seg.PerFrameFunctionalGroupsSequence)
    assert positions == [6.0, 9.0]
    on_slice = pending.source_slices(volume)[2:4]
    assert on_slice[0].header.ImagePositionPatient[2] == 6.0 and on_slice[1] is None  # 9 mm was interpolated
    back = seg.get_volume(combine_segments=True)
    assert labelled_lps_mm(seg_lps_mm(back), back.array) == labelled_lps_mm(ours_lps_mm(volume), labels)


def test_seg_frames_sit_on_their_source_slices_despite_step_jitter(tmp_path):
    folder = tmp_path / "jitter"
    paths = write_series(folder, z_positions([0, 2.03, 3.98, 6.01]), **UIDS)  # within 5 %: kept, not resampled
    (pending,) = pending_volumes(folder)
    volume = pending.read()
    assert volume.slice_interval_mm == pytest.approx(2.03)  # the grid puts slice 2 at 4.06 mm, its file is at 3.98
    sources = pending.source_slices(volume)
    lesions = [box_lesion(0.8, (1, 0, 0), (3, 2, 2))]
    seg = lesion_segmentation(volume, label_map(volume, lesions), lesions, pending.source_images(), version="9.9",
                              source_positions_lps_mm=[s.position_lps_mm for s in sources])
    uid_by_z = {z: pydicom_uid(path) for z, path in zip([0.0, 2.03, 3.98, 6.01], paths)}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
        assert frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == uid_by_z[z]
    assert sorted(float(f.PlanePositionSequence[0].ImagePositionPatient[2])
                  for f in seg.PerFrameFunctionalGroupsSequence) == [2.03, 3.98, 6.01]


def test_tilt_corrected_slices_keep_the_volume_grid(tmp_path):
    folder = tmp_path / "tilted"
    write_tilted_series(folder, [0.0, 3.0, 6.0])
    (pending,) = pending_volumes(folder, tilt="resample")
    volume = pending.read()
    sources = pending.source_slices(volume)
    assert all(s is not None for s in sources)  # each slice still comes from one file ...
    grid = frame_positions_lps_mm(volume, None)
    positions = frame_positions_lps_mm(volume, [s.position_lps_mm for s in sources])
    np.testing.assert_allclose(positions[1:], grid[1:])  # ... but shifted in its plane: the grid is the truth


def test_inputs_that_cannot_carry_a_seg_are_explained(tmp_path):
    anonymised = tmp_path / "anon"
    write_series(anonymised, z_positions([0, 2]), series_uid="1.2.3")  # empty StudyInstanceUID
    (pending,) = pending_volumes(anonymised)
    assert "no StudyInstanceUID" in seg_source_problem(pending.source_images())
    nii = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 3), np.int16), np.eye(4)), nii)
    (nifti,) = pending_volumes(nii)
    assert nifti.source_images() == [] and "not a DICOM series" in seg_source_problem([])
    assert nifti.source_slices(nifti.read()) == [None] * 3
    folder = tmp_path / "ct"
    write_series(folder, z_positions([0, 2]), **UIDS)
    (good,) = pending_volumes(folder)
    assert seg_source_problem(good.source_images()) is None
    volume = good.read()
    with pytest.raises(ValueError, match="at least one segment"):
        lesion_segmentation(volume, label_map(volume, []), [], good.source_images(), version="9.9")
    # SOP Class / Instance UIDs blanked in the data set are taken from the file meta, as PS3.10 equates them.
    blanked = tmp_path / "blanked"
    paths = write_series(blanked, z_positions([0, 2]), **UIDS)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.SOPInstanceUID, ds.SOPClassUID = "", ""
        ds.save_as(path)
    (pending,) = pending_volumes(blanked)
    assert seg_source_problem(pending.source_images()) is None
    volume = pending.read()
    lesions = [box_lesion(0.5, (0, 0, 0), (2, 1, 1))]
    seg = lesion_segmentation(volume, label_map(volume, lesions), lesions, pending.source_images(), version="9.9")
    referenced = {item.ReferencedSOPInstanceUID for item in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence}
    assert referenced == {pydicom_uid_from_meta(path) for path in paths}
    assert [image.SOPInstanceUID for image in pending.source_images()] == ["", ""]  # the caller's headers stay as read
    key = pending.source_slices(volume)[1]
    sr = lesion_measurement_report(seg, lesions, completed_sources(pending.source_images(), volume), version="9.9",
                                   key_slice_images=[(key.header, key.frame_number)])
    (group,) = hd.sr.Comprehensive3DSR.from_dataset(sr).content.get_volumetric_roi_measurement_groups()
    assert group.get_measurements()[0].referenced_images[0].referenced_sop_instance_uid == pydicom_uid_from_meta(paths[1])


def test_sr_reports_each_lesion_against_its_segment(tmp_path):
    folder = tmp_path / "ct"
    write_series(folder, z_positions([0, 2, 4, 6]), series_number=5, **UIDS)
    (pending,) = pending_volumes(folder)
    volume, sources = pending.read(), pending.source_images()
    lesions = [box_lesion(0.9, (1, 1, 1), (2, 2, 2), (21.4, 15.25), 3.125), box_lesion(0.5, (0, 3, 0), (1, 2, 2), (7.5, 4.0), 0.25)]
    seg = lesion_segmentation(volume, label_map(volume, lesions), lesions, sources, version="9.9")
    key_images = [(s.header, s.frame_number) for s in (pending.source_slices(volume)[les.key_slice] for les in lesions)]
    assert [image.ImagePositionPatient[2] for image, frame in key_images] == [2.0, 0.0]
    assert [frame for image, frame in key_images] == [None, None]  # single-frame files
    write_dicom_file(tmp_path / "sr.dcm", lesion_measurement_report(seg, lesions, sources, version="9.9",
                                                                       model_name="m.safetensors",
                                                                       key_slice_images=key_images))
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    assert sr.StudyInstanceUID == UIDS["study_uid"] and sr.SeriesNumber == 2005 and sr.Modality == "SR"
    evidence = {item.ReferencedSOPInstanceUID for study in sr.CurrentRequestedProcedureEvidenceSequence
                for series in study.ReferencedSeriesSequence for item in series.ReferencedSOPSequence}
    assert evidence == {seg.SOPInstanceUID} | {s.SOPInstanceUID for s in sources}
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 2
    for number, (group, lesion) in enumerate(zip(groups, lesions), start=1):
        segment = seg.get_segment_description(number)
        assert group.tracking_uid == segment.tracking_uid and group.tracking_identifier == f"lesion {number}"
        reference = group.referenced_segment
        assert reference.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert list(reference.referenced_segment_numbers) == [number]
        assert group.finding_type.value == "52988006"
        values = {(m.name.value, m.unit.value): m.value for m in group.get_measurements()}
        assert values == {("103339001", "mm"): lesion.long_axis_mm, ("103340004", "mm"): lesion.short_axis_mm,
                          ("118565006", "ml"): lesion.volume_ml}
        named = {m.name.value: [i.referenced_sop_instance_uid for i in m.referenced_images]
                 for m in group.get_measurements()}
        key_uid = key_images[number - 1][0].SOPInstanceUID  # the axes name the key slice's image
        assert named == {"103339001": [key_uid], "103340004": [key_uid], "118565006": []}
    with pytest.raises(ValueError, match="2 segments for 1 lesions"):
        lesion_measurement_report(seg, lesions[:1], sources, version="9.9")


@pytest.mark.data
def test_seg_of_an_enhanced_multiframe_ct(shared_data, tmp_path):
    (pending,) = pending_volumes(shared_data / "pydicom_small")
    assert len(pending.source_images()) == 1  # one file holding both frames
    if seg_source_problem(pending.source_images()):
        pytest.skip(seg_source_problem(pending.source_images()))
    volume = pending.read()
    lesions = [box_lesion(0.7, (0, 100, 120), (2, 10, 4))]
    labels = label_map(volume, lesions)
    seg = lesion_segmentation(volume, labels, lesions, pending.source_images(), version="9.9")
    back = seg.get_volume(combine_segments=True)
    assert labelled_lps_mm(seg_lps_mm(back), back.array) == labelled_lps_mm(ours_lps_mm(volume), labels)
    frames = {s.frame_number for s in pending.source_slices(volume)}
    assert frames == {1, 2}  # each slice is one frame of the one file




def test_detect_dicom_seg_and_sr_per_dicom_study(tiny_weights, tmp_path, monkeypatch):
    import ctlesion.detect

    def one_lesion(model, volume, **kwargs):  # the network is covered elsewhere: a fixed lesion here
        return [box_lesion(0.9, (0, 2, 2), (2, 3, 3))], volume.slice_interval_mm

    monkeypatch.setattr(ctlesion.detect, "detect_volume", one_lesion)
    good, anonymised = tmp_path / "good", tmp_path / "anon"
    write_series(good, z_positions([0, 2, 4]), **UIDS)
    write_series(anonymised, z_positions([0, 2, 4]), series_uid="1.2.3")
    nii = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 3), np.int16), np.diag([-1, -1, 2.0, 1])), nii)
    out = tmp_path / "out" / "results.json"
    result = CliRunner().invoke(app, ["detect", str(good), str(anonymised), str(nii), "--dicom-seg", "--device", "cpu",
                                      "--out", str(out), "--weights", str(tiny_weights)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    studies = json.loads(out.read_text())["studies"]
    assert [s["dicom_seg"] for s in studies] == ["good_lesions.seg.dcm", None, None]
    assert [s["dicom_sr"] for s in studies] == [None, None, None]
    assert "no StudyInstanceUID" in result.output and "not a DICOM series" in result.output
    seg = hd.seg.segread(out.parent / "good_lesions.seg.dcm")
    assert seg.StudyInstanceUID == UIDS["study_uid"] and seg.number_of_segments == 1
    with_sr = CliRunner().invoke(app, ["detect", str(good), "--dicom-sr", "--device", "cpu", "--out",
                                       str(tmp_path / "sr" / "results.json"), "--weights", str(tiny_weights)])
    assert with_sr.exit_code == 0, with_sr.output
    assert "DICOM: good_lesions.seg.dcm, good_lesions.sr.dcm" in with_sr.output
    (study,) = json.loads((tmp_path / "sr" / "results.json").read_text())["studies"]
    assert study["dicom_seg"] == "good_lesions.seg.dcm" and study["dicom_sr"] == "good_lesions.sr.dcm"
    report = hd.sr.srread(tmp_path / "sr" / "good_lesions.sr.dcm")
    assert len(report.content.get_volumetric_roi_measurement_groups()) == 1
    without = CliRunner().invoke(app, ["detect", str(good), "--device", "cpu", "--out", str(tmp_path / "o2.json"),
                                       "--weights", str(tiny_weights)], catch_exceptions=False)
    assert without.exit_code == 0 and json.loads((tmp_path / "o2.json").read_text())["studies"][0]["dicom_seg"] is None
    assert not list(tmp_path.glob("*.seg.dcm"))
