"""Scoring a split: breakdowns, bootstrap, predictions files, key lists, the report and the plot.

The hand-worked split (``write_hand_split``) has four key slices, sorted by file name:

    A thin 1 mm:  a1 liver  8 mm           detections: hit a1 .90, FP .60
    B thin 1 mm:  b1 lung  20 mm                       FP .80, hit b1 .30
    C thick 5 mm: c1 liver 40 mm, c2 abdomen 15 mm     hit c1 .85, duplicate on c1 .70, FP .50
    D thick 5 mm: d1 lung  12 mm                       FP .95

Ranked: D-FP .95, A-hit .90, C-hit .85, B-FP .80, C-dup .70, A-FP .60, C-FP .50, B-hit .30.
All (4 images, 5 lesions): at 0.5 FP/image (2 FPs allowed) the 3rd FP (A .60) stops the list:
a1, c1 hit -> 2/5; at 1 and beyond every detection counts: 3/5. avg[0.5-4] = 0.55.
Thin (A, B): A-hit, B-FP | A-FP, B-hit: 1/2 at 0.5, 2/2 from 1 on; avg 0.875.
Thick (C, D): D-FP, C-hit, C-dup | C-FP: 1/3 everywhere; avg 1/3. Gap 0.875 - 1/3.
Per type (FPs over all 4 images): liver a1, c1 -> 1 everywhere; abdomen c2 -> 0; lung b1, d1 ->
0 at 0.5, then 1/2. Per size: < 10 mm a1 -> 1; 10-30 mm b1, c2, d1 -> 0, then 1/3; > 30 mm c1 -> 1.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from ctlesion.errors import CtlesionError
from ctlesion.evaluate import DEFAULT_FPS_PER_IMAGE, sensitivity_at_fps
from ctlesion.evaluate.bootstrap import percentile_interval, resample_counts
from ctlesion.evaluate.plot import froc_png
from ctlesion.evaluate.predictions import (
    align_predictions,
    read_predictions,
    to_file_precision,
    write_predictions,
)
from ctlesion.evaluate.report import PAPER_TABLE_2, render_markdown
from ctlesion.evaluate.scoring import score_split
from ctlesion.evaluate.split import load_evaluation_set, read_key_list
from ctlesion.io.deeplesion import load_key_slice_window, read_dl_info, write_dl_info, write_png_hu

REPO = Path(__file__).resolve().parents[1]
SPACING_MM = 0.5


def dl_row(file_name: str, box, *, interval_mm: float, lesion_type: int, long_mm: float, split: int = 3,
           noisy: int = 0) -> dict:
    """One DL_info row (all 18 columns) for a lesion with box (x1, y1, x2, y2) px."""
    x1, y1, x2, y2 = box
    patient, study, series, key = (int(v) for v in file_name[:-4].split("_"))
    long_px = long_mm / SPACING_MM
    return {
        "File_name": file_name, "Patient_index": patient, "Study_index": study, "Series_ID": series,
        "Key_slice_index": key,
        "Measurement_coordinates": [x1, (y1 + y2) / 2, x2, (y1 + y2) / 2, (x1 + x2) / 2, y1, (x1 + x2) / 2, y2],
        "Bounding_boxes": list(box), "Lesion_diameters_Pixel_": [long_px, long_px / 2],
        "Normalized_lesion_location": [0.5, 0.5, 0.5], "Coarse_lesion_type": lesion_type, "Possibly_noisy": noisy,
        "Slice_range": [key - 5, key + 5], "Spacing_mm_px_": [SPACING_MM, SPACING_MM, interval_mm],
        "Image_size": [512, 512], "DICOM_windows": [-175, 275], "Patient_gender": "F", "Patient_age": 60,
        "Train_Val_Test": split,
    }


A, B, C, D = "000001_01_01_010.png", "000002_01_01_020.png", "000003_01_01_030.png", "000004_01_01_040.png"
BOX = {"a1": (10, 10, 49, 49), "b1": (100, 100, 159, 159), "c1": (200, 200, 299, 299), "c2": (300, 10, 339, 49),
       "d1": (50, 300, 89, 339)}
FAR = (450, 450, 470, 470)
HAND_PREDICTIONS = {
    A: [[*BOX["a1"], 0.90], [*FAR, 0.60]],
    B: [[*FAR, 0.80], [*BOX["b1"], 0.30]],
    C: [[*BOX["c1"], 0.85], [202, 202, 299, 299, 0.70], [*FAR, 0.50]],
    D: [[*FAR, 0.95]],
}


def write_hand_split(folder: Path) -> Path:
    """The hand-worked split of the module docstring (+ a val image and a noisy test lesion), rows shuffled."""
    rows = [
        dl_row(C, BOX["c2"], interval_mm=5, lesion_type=2, long_mm=15),
        dl_row(A, BOX["a1"], interval_mm=1, lesion_type=4, long_mm=8),
        dl_row(D, BOX["d1"], interval_mm=5, lesion_type=5, long_mm=12),
        dl_row("000009_01_01_090.png", (0, 0, 9, 9), interval_mm=1, lesion_type=4, long_mm=5, split=2),
        dl_row(C, BOX["c1"], interval_mm=5, lesion_type=4, long_mm=40),
        dl_row(B, (300, 300, 330, 330), interval_mm=1, lesion_type=5, long_mm=15, noisy=1),
        dl_row(B, BOX["b1"], interval_mm=1, lesion_type=5, long_mm=20),
    ]
    write_dl_info(folder / "DL_info.csv", rows)
    return folder


#: Synthetic DeepLesion-layout series for the neighbour-slice accounting (window of 3 slices):
#: file name -> (slice interval mm, Slice_range, slice numbers whose PNG is present, expected
#: (absent neighbours, single-slice context, beyond the series' ends)).
CONTEXT_SERIES = {
    # thin: neighbours 2 mm = 2 slices away (8 and 12), all present
    "000011_01_01_010.png": (1.0, (1, 20), range(1, 21), (0, False, False)),
    # thick, key slice only: both neighbours absent, replaced by the key slice itself
    "000012_01_01_010.png": (5.0, (5, 15), [10], (2, True, False)),
    # thin, 8 absent (-> 10, the key slice) but 12 present: context on one side
    "000013_01_01_010.png": (1.0, (1, 20), [10, 12], (1, False, False)),
    # thick, key slice first of its series: the window reaches past the end (edge replicated)
    "000014_01_01_001.png": (5.0, (1, 10), range(1, 11), (0, False, True)),
}


def write_context_layout(folder: Path, size_px: int = 64) -> Path:
    """A DeepLesion-layout folder (DL_info.csv + Images_png) of :data:`CONTEXT_SERIES`, one lesion
    each (test split); slice n of every series is a uniform image of HU 10 n, so windows tell their
    sources apart."""
    rows = []
    for name, (interval, slice_range, present, _) in CONTEXT_SERIES.items():
        row = dl_row(name, (20, 20, 39, 39), interval_mm=interval, lesion_type=4, long_mm=10)
        row.update(Slice_range=list(slice_range), Image_size=[size_px, size_px])
        rows.append(row)
        for number in present:
            write_png_hu(folder / "Images_png" / name[:12] / f"{number:03d}.png",
                         np.full((size_px, size_px), 10.0 * number))
    write_dl_info(folder / "DL_info.csv", rows)
    return folder


def hand_detections(keys: list[str]) -> list[np.ndarray]:
    return [np.array(HAND_PREDICTIONS[key], dtype=np.float64) for key in keys]


def test_hand_worked_split_overall_thin_thick_and_gap(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    assert evaluation_set.keys == [A, B, C, D] and evaluation_set.num_lesions == 5  # noisy lesion dropped
    report = score_split(evaluation_set, hand_detections(evaluation_set.keys), resamples=0).report
    summary = report["summary"]
    np.testing.assert_allclose(summary["all"]["sensitivity"], [0.4, 0.6, 0.6, 0.6, 0.6, 0.6], atol=1e-15)
    assert summary["all"]["avg_0.5_4"] == pytest.approx(0.55, abs=1e-15)
    np.testing.assert_allclose(summary["thin_le_2mm"]["sensitivity"], [0.5, 1, 1, 1, 1, 1], atol=1e-15)
    np.testing.assert_allclose(summary["thick_5mm"]["sensitivity"], [1 / 3] * 6, atol=1e-15)
    assert summary["thick_gt_2mm"] == summary["thick_5mm"]
    assert summary["thin_minus_thick_avg_0.5_4"] == pytest.approx(0.875 - 1 / 3, abs=1e-15)
    assert (summary["all"]["num_images"], summary["all"]["num_lesions"]) == (4, 5)
    assert (summary["thin_le_2mm"]["num_images"], summary["thin_le_2mm"]["num_lesions"]) == (2, 2)
    assert "ci95" not in summary["all"]


def test_hand_worked_split_by_type_and_size(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    report = score_split(evaluation_set, hand_detections(evaluation_set.keys), resamples=0).report
    types, sizes = report["lesion_types"], report["lesion_sizes"]
    assert list(types) == ["abdomen", "liver", "lung"]  # DeepLesion code order 2, 4, 5
    np.testing.assert_allclose(types["liver"]["sensitivity"], [1] * 6, atol=1e-15)
    np.testing.assert_allclose(types["abdomen"]["sensitivity"], [0] * 6, atol=1e-15)
    np.testing.assert_allclose(types["lung"]["sensitivity"], [0, 0.5, 0.5, 0.5, 0.5, 0.5], atol=1e-15)
    assert types["lung"]["avg_0.5_4"] == pytest.approx(0.375, abs=1e-15)
    assert (types["liver"]["num_lesions"], types["liver"]["num_images_with_lesions"]) == (2, 2)
    assert list(sizes) == ["lt_10mm", "10_30mm", "gt_30mm"]
    np.testing.assert_allclose(sizes["lt_10mm"]["sensitivity"], [1] * 6, atol=1e-15)
    np.testing.assert_allclose(sizes["10_30mm"]["sensitivity"], [0] + [1 / 3] * 5, atol=1e-15)
    np.testing.assert_allclose(sizes["gt_30mm"]["sensitivity"], [1] * 6, atol=1e-15)
    assert [row["num_lesions"] for row in sizes.values()] == [1, 3, 1]


def test_iobb_criterion_and_threshold_reach_the_scoring(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    detections = hand_detections(evaluation_set.keys)
    # Shrink the hit on a1 to its central quarter: IoU 0.25 (a miss at 0.5, a hit at 0.2); IoBB 1.
    detections[0][0, :4] = (20, 20, 39, 39)
    def all_row(**kwargs):
        return score_split(evaluation_set, detections, resamples=0, **kwargs).report["summary"]["all"]["sensitivity"]
    assert all_row()[-1] == pytest.approx(0.4)  # a1 missed: b1, c1 hit
    assert all_row(iou_threshold=0.2)[-1] == pytest.approx(0.6)
    assert all_row(criterion="iobb")[-1] == pytest.approx(0.6)


def test_bootstrap_intervals_are_seeded_and_bracket_the_resamples(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    detections = hand_detections(evaluation_set.keys)
    first = score_split(evaluation_set, detections, resamples=200, seed=3).report
    again = score_split(evaluation_set, detections, resamples=200, seed=3).report
    other = score_split(evaluation_set, detections, resamples=200, seed=4).report
    assert first == again and first != other
    ci = first["summary"]["all"]["ci95"]
    assert all(0.0 <= lo <= hi <= 1.0 for lo, hi in ci["sensitivity"])
    assert ci["avg_0.5_4"][0] < 0.55 < ci["avg_0.5_4"][1]
    lo, hi = first["summary"]["thin_minus_thick_avg_0.5_4_ci95"]
    assert lo < 0.875 - 1 / 3 < hi
    # c2 (abdomen) is never hit, whatever is drawn; liver lesions are all hit where no false positive
    # ranks above them, as in the split itself.
    assert first["lesion_types"]["abdomen"]["ci95"]["avg_0.5_4"] == [0.0, 0.0]
    assert first["lesion_types"]["liver"]["ci95"]["avg_0.5_4"][1] == 1.0


def test_resample_counts_are_seeded_draws_with_replacement():
    blocks = list(resample_counts(7, 40, seed=11))
    counts = np.concatenate(blocks)
    assert counts.shape == (40, 7) and (counts.sum(axis=1) == 7).all()
    assert np.array_equal(counts, np.concatenate(list(resample_counts(7, 40, seed=11))))
    assert not np.array_equal(counts, np.concatenate(list(resample_counts(7, 40, seed=12))))
    # Each image is drawn 7 x 40 / 7 = 40 times on average over the resamples.
    assert abs(counts.sum(axis=0) - 40).max() < 25


def test_percentile_interval_hand_computed():
    samples = np.arange(101, dtype=np.float64)  # quantiles 2.5 % and 97.5 % of 0..100
    np.testing.assert_allclose(percentile_interval(samples), [2.5, 97.5])
    with_nan = np.column_stack([samples, np.full(101, np.nan)])
    with_nan[:50, 0] = np.nan  # 50..100 left: 51 values
    bounds = percentile_interval(with_nan)
    np.testing.assert_allclose(bounds[0], [51.25, 98.75])
    assert np.isnan(bounds[1]).all()


def test_predictions_round_trip_at_file_precision(tmp_path):
    raw = {A: np.array([[10.123456, 20.5, 30.987654, 40.0, 0.123456789], [1, 2, 3, 4, 0.5]]),
           B: np.zeros((0, 5))}
    path = tmp_path / "predictions.json"
    write_predictions(path, raw, split="test")
    back = read_predictions(path)
    assert list(back) == [A, B]
    for key, dets in raw.items():
        assert np.array_equal(back[key], to_file_precision(dets))  # exactly what was scored
    assert back[A][0, 0] == 10.12 and back[A][0, 4] == 0.12345679  # float32 precision, shortest decimal
    assert np.float32(back[A][0, 4]) == np.float32(0.123456789)
    assert json.loads(path.read_text())["version"] == 1


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "cannot read predictions"),
        ({"predictions": []}, "unsupported predictions version None"),
        ({"version": 1, "predictions": [{"key": A, "detections": [[5, 0, 1, 1, 0.5]]}]},
         rf"predictions\[0\] \(key {A}\), detection 0: box has x2 < x1"),
        ({"version": 1, "predictions": [{"key": A, "detections": [[0, 0, 1, 1, 0.5], [0, 0, 1, 1, float("nan")]]}]},
         rf"predictions\[0\] \(key {A}\), detection 1: score must be a finite number"),
        ({"version": 1, "predictions": [{"key": A, "detections": [[0, 0, 1, 0.5]]}]},
         r"expected \[x1, y1, x2, y2, score\] numbers"),
        ({"version": 1, "predictions": [{"key": A, "detections": []}, {"key": A, "detections": []}]},
         rf"predictions\[1\]: key {A} appears twice"),
        ({"version": 1, "predictions": [{"detections": []}]}, r"predictions\[0\] must be an object"),
    ],
)
def test_bad_predictions_files_name_the_entry(tmp_path, document, message):
    path = tmp_path / "p.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    with pytest.raises(CtlesionError, match=message) as info:
        read_predictions(path)
    assert str(path) in str(info.value)


def test_align_predictions_rejects_other_keys_and_warns_on_missing(tmp_path, caplog):
    path = tmp_path / "p.json"
    one = np.array([[0, 0, 1, 1, 0.5]])
    with caplog.at_level(logging.WARNING):
        aligned = align_predictions({B: one}, [A, B], path)
    assert aligned[0].shape == (0, 5) and np.array_equal(aligned[1], one)
    assert "no predictions for 1 of 2 key slices" in caplog.text
    with pytest.raises(CtlesionError, match=rf"predictions\[1\]: key {D} is not a key slice"):
        align_predictions({A: one, D: one}, [A, B], path)
    # Key slices of the split left out by a key list are ignored, not an error.
    assert len(align_predictions({A: one, D: one}, [A, B], path, left_out=frozenset({D}))) == 2


def test_key_list_restricts_and_names_bad_lines(tmp_path):
    folder = write_hand_split(tmp_path)
    (tmp_path / "keys.txt").write_text(f"# chosen\n{C}\n\n{A}\n{A}\n")
    chosen = load_evaluation_set(folder, "test", tmp_path / "keys.txt")
    assert chosen.keys == [A, C] and chosen.left_out == {B, D}
    (tmp_path / "keys.csv").write_text(f"Patient_index,File_name\n3,{C}\n")
    assert read_key_list(tmp_path / "keys.csv") == [(2, C)]
    (tmp_path / "bad.txt").write_text(f"{A}\n000009_01_01_090.png\n")  # a val key slice
    with pytest.raises(CtlesionError, match="bad.txt: line 2: 000009_01_01_090.png is not a key slice"):
        load_evaluation_set(folder, "test", tmp_path / "bad.txt")


def test_split_without_lesions_and_missing_column_are_errors(tmp_path):
    folder = write_hand_split(tmp_path)
    with pytest.raises(CtlesionError, match="split 'train' holds no lesions"):
        load_evaluation_set(folder, "train")
    lines = (folder / "DL_info.csv").read_text().splitlines()
    header = lines[0].split(",")
    column = header.index("Coarse_lesion_type")
    rows = list(csv.reader(lines))
    with (folder / "DL_info.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows([row[:column] + row[column + 1:] for row in rows])
    with pytest.raises(CtlesionError, match="DL_info.csv: missing DL_info column.s. Coarse_lesion_type"):
        load_evaluation_set(folder, "test")


def test_official_test_table_counts_and_perfect_detector(shared_data, tmp_path):
    table = shared_data / "deeplesion_tables" / "DL_info_niftiID_test.csv"
    keys = read_dl_info(table, drop_noisy=False)  # the extra Nifti_ct_name column is accepted
    assert len(keys) == 4831 and sum(k.num_lesions for k in keys) == 4927
    assert sum(int(k.noisy.sum()) for k in keys) == 15 and all(k.split == 3 for k in keys)
    per_interval = Counter()
    for key in keys:
        per_interval[key.slice_interval_mm] += key.num_lesions
    assert per_interval[1.0] == 2314 and per_interval[5.0] == 2469

    # Counts from the csv module alone, for the evaluation set (Possibly_noisy dropped).
    with table.open(newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["Possibly_noisy"] == "0"]
    shutil.copy(table, tmp_path / "DL_info.csv")
    evaluation_set = load_evaluation_set(tmp_path, "test")
    assert evaluation_set.num_lesions == len(rows) == 4912
    assert len(evaluation_set.keys) == len({r["File_name"] for r in rows})
    assert evaluation_set.keys == sorted(evaluation_set.keys)

    # A detector that finds the lesions of the first half of the images, without false positives.
    half = len(evaluation_set.keys) // 2
    detections = [np.c_[key.boxes_px, np.full(key.num_lesions, 1.0 - i * 1e-5)] if i < half else np.zeros((0, 5))
                  for i, key in enumerate(evaluation_set.key_slices)]
    report = score_split(evaluation_set, detections, resamples=0).report
    found = sum(k.num_lesions for k in evaluation_set.key_slices[:half])
    np.testing.assert_allclose(report["summary"]["all"]["sensitivity"], [found / 4912] * 6, atol=1e-15)
    thin_rows = [r for r in rows if float(r["Spacing_mm_px_"].split(",")[2]) <= 2]
    assert report["summary"]["thin_le_2mm"]["num_lesions"] == len(thin_rows)
    names = {1: "bone", 2: "abdomen", 3: "mediastinum", 4: "liver", 5: "lung", 6: "kidney", 7: "soft_tissue",
             8: "pelvis"}
    type_counts = Counter(names[int(r["Coarse_lesion_type"])] for r in rows)
    assert {name: row["num_lesions"] for name, row in report["lesion_types"].items()} == type_counts
    long_mm = [float(r["Lesion_diameters_Pixel_"].split(",")[0]) * float(r["Spacing_mm_px_"].split(",")[0])
               for r in rows]
    assert report["lesion_sizes"]["lt_10mm"]["num_lesions"] == sum(d < 10 for d in long_mm)
    assert report["lesion_sizes"]["gt_30mm"]["num_lesions"] == sum(d > 30 for d in long_mm)
    assert sum(row["num_lesions"] for row in report["lesion_sizes"].values()) == 4912


def test_score_split_matches_sensitivity_at_fps_on_the_images(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    detections = hand_detections(evaluation_set.keys)
    report = score_split(evaluation_set, detections, resamples=0).report
    expected = sensitivity_at_fps(detections, evaluation_set.ground_truth, DEFAULT_FPS_PER_IMAGE)
    assert report["summary"]["all"]["sensitivity"] == expected.tolist()


def evaluation_for_report(**changes) -> dict:
    row = {"sensitivity": [0.787, 0.85, 0.9, 0.93, 0.95, 0.97], "avg_0.5_4": 0.86675, "num_images": 10,
           "num_lesions": 12, "ci95": {"sensitivity": [[0.761, 0.81]] * 6, "avg_0.5_4": [0.84, 0.89]}}
    evaluation = {
        "version": "0.1.0", "dl_info": "DL_info.csv", "split": "test", "key_slices_file": None,
        "weights": "model.safetensors", "predictions_file": "predictions.json", "model_note": None,
        "protocol": {"criterion": "iou", "iou_threshold": 0.5, "split_code": 3, "num_images": 10, "num_lesions": 12,
                     "images_without_predictions": 0},
        "bootstrap": {"resamples": 1000, "seed": 0},
        "summary": {"fps_per_image": list(DEFAULT_FPS_PER_IMAGE), "all": row, "thin_le_2mm": row, "thick_5mm": row,
                    "thin_minus_thick_avg_0.5_4": 0.013, "thin_minus_thick_avg_0.5_4_ci95": [-0.005, 0.03]},
        "lesion_types": {"liver": {**row, "num_images_with_lesions": 3}},
        "lesion_sizes": {"10_30mm": {**row, "num_images_with_lesions": 3}},
    }
    evaluation.update(changes)
    return evaluation


def test_report_tables_with_intervals_and_paper_rows():
    text = render_markdown(evaluation_for_report())
    assert "| **this evaluation** | 78.7 [76.1, 81.0] | 85.0 [76.1, 81.0] |" in text
    assert "| AlignShift x7 (paper) | 78.68 | 85.69 | 90.37 | 93.49 | 95.48 | 97.05 | 87.06 |" in text
    assert all(f"| {name} (paper) |" in text for name in PAPER_TABLE_2)
    assert "| thin (<= 2 mm) | 10 | 12 | 78.7 | 85.0 | 90.0 | 93.0 | 95.0 | 97.0 | 86.7 [84.0, 89.0] |" in text
    assert "Thin minus thick, avg[0.5-4]: **+1.3** [-0.5, +3.0] percentage points" in text
    assert "| liver | 12 |" in text and "| 10-30 mm | 12 |" in text
    assert "![FROC curves" in text


def test_report_leaves_out_paper_rows_when_not_comparable():
    evaluation = evaluation_for_report(split="val")
    evaluation["protocol"]["criterion"] = "iobb"
    text = render_markdown(evaluation)
    assert "(paper) |" not in text
    assert ("These figures are **not comparable with the paper's rows** (AlignShift Table 2, not shown): this "
            "evaluation uses the val split, not test; IoBB >= 0.5, not IoU >= 0.5.") in text


def test_froc_png_is_a_figure_of_the_configured_size(tmp_path):
    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    scores = score_split(evaluation_set, hand_detections(evaluation_set.keys), resamples=20)
    png = froc_png(scores.curves, scores.report["summary"], "test")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (768, 576)


@pytest.mark.slow
def test_bootstrap_intervals_bracket_the_estimate_at_scale():
    """5,000 images x 50 detections (the speed benchmark's split; its timings are in benchmarks/froc_speed.py)."""
    spec = importlib.util.spec_from_file_location("froc_speed", REPO / "benchmarks" / "froc_speed.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    evaluation_set, detections = benchmark.synthetic_split(5000, 50, seed=0)
    report = score_split(evaluation_set, detections, resamples=1000).report
    np.testing.assert_allclose(report["summary"]["all"]["sensitivity"],
                               sensitivity_at_fps(detections, evaluation_set.ground_truth), atol=1e-12)
    lo, hi = report["summary"]["all"]["ci95"]["avg_0.5_4"]
    assert lo < report["summary"]["all"]["avg_0.5_4"] < hi


def test_window_context_plans_windows_as_the_reader_does(tmp_path):
    from ctlesion.evaluate.context import summarize_contexts, window_context

    folder = write_context_layout(tmp_path)
    keys = read_dl_info(folder / "DL_info.csv")
    images = folder / "Images_png"
    for key in keys:
        absent, single, beyond = CONTEXT_SERIES[key.file_name][3]
        context = window_context(images, key, 3)
        assert (context.num_absent, context.single_slice, context.beyond_series_ends) == (absent, single, beyond)
        window = load_key_slice_window(images, key, 3)[0]
        assert bool(np.all(window == window[1])) == single, key.file_name  # the reader agrees
    assert load_key_slice_window(images, keys[2], 3)[0][:, 0, 0].tolist() == [100, 100, 120]  # 8 -> 10, 12
    assert summarize_contexts(images, keys, 3) == {
        "window_slices": 3, "images_with_absent_neighbours": 2, "images_single_slice_context": 1,
        "images_beyond_series_ends": 1}


def test_window_context_on_real_key_slice_only_folders(shared_data):
    """deeplesion_sample holds only key slices: every window of its test split misses neighbours."""
    from ctlesion.evaluate.context import summarize_contexts, window_context

    data = shared_data / "deeplesion_sample"
    keys = read_dl_info(data / "DL_info.csv", split="test")
    images = data / "Images_png"
    for key in keys:
        window = load_key_slice_window(images, key, 3)[0]
        assert window_context(images, key, 3).single_slice == bool(np.all(window == window[1])), key.file_name
    counts = summarize_contexts(images, keys, 3)
    assert counts["images_with_absent_neighbours"] == len(keys) == 18
    assert 0 < counts["images_single_slice_context"] < len(keys)


def test_official_test_split_counts_of_the_report(shared_data, tmp_path):
    from ctlesion.evaluate.report import OFFICIAL_TEST_SPLIT

    table = shared_data / "deeplesion_tables" / "DL_info_niftiID_test.csv"
    keys = read_dl_info(table, drop_noisy=False)
    shutil.copy(table, tmp_path / "DL_info.csv")
    scored = load_evaluation_set(tmp_path, "test")
    assert OFFICIAL_TEST_SPLIT == {"key_slices": len(keys), "lesions": sum(k.num_lesions for k in keys),
                                   "scored_key_slices": len(scored.keys), "scored_lesions": scored.num_lesions}


def test_paper_rows_are_called_comparable_only_for_the_whole_official_split():
    from ctlesion.evaluate.report import paper_comparison

    full = evaluation_for_report()
    full["protocol"].update(num_images=4817, num_lesions=4912)
    assert paper_comparison(full)["comparable"] and paper_comparison(full)["reasons"] == []
    text = render_markdown(full)
    assert "not comparable" not in text and "| AlignShift x7 (paper) |" in text
    assert "same 4,817 key slices and 4,912 lesions" in text

    subset = evaluation_for_report()  # 10 key slices, 12 lesions
    comparison = paper_comparison(subset)
    assert not comparison["comparable"] and comparison["protocol_matches"]
    assert comparison["reasons"] == ["10 key slices with 12 lesions, not the official test split's 4,817 with 4,912"]
    text = render_markdown(subset)
    assert "These figures are **not comparable with the paper's rows**" in text
    assert "10 key slices with 12 lesions, not the official test split's 4,817 with 4,912" in text
    assert "| AlignShift x7 (paper) |" in text and "shown for reference only" in text
    assert "(paper, not comparable, see above: 2.5D x7 +4.10" in text

    # The whole split, but key slices without their neighbours: not comparable either.
    replicated = evaluation_for_report(neighbour_slices={
        "window_slices": 3, "images_with_absent_neighbours": 4817, "images_single_slice_context": 4817,
        "images_beyond_series_ends": 0})
    replicated["protocol"].update(num_images=4817, num_lesions=4912)
    assert paper_comparison(replicated)["reasons"] == [
        "4,817 of 4,817 images scored with neighbour slices absent from their series folder"]
    assert "not comparable with the paper's rows" in render_markdown(replicated)

    val = evaluation_for_report(split="val")
    assert not paper_comparison(val)["protocol_matches"]
    text = render_markdown(val)
    assert "not comparable with the paper's rows" in text and "(paper) |" not in text


def test_report_states_detection_cap_and_neighbour_slices():
    model_run = evaluation_for_report(
        detections_per_image={"source": "model", "cap": 50, "score_threshold": 0.001, "nms_iou_threshold": 0.5,
                              "max_found": 50, "mean_found": 47.25, "images_without_detections": 0},
        neighbour_slices={"window_slices": 3, "images_with_absent_neighbours": 8, "images_single_slice_context": 6,
                          "images_beyond_series_ends": 1})
    text = render_markdown(model_run)
    assert ("| detections per image | at most 50 per image, score >= 0.001, NMS at IoU 0.5 (the paper: 50, 0.001, "
            "0.5); scored: up to 50 per image, 47.2 on average |") in text
    assert "window of 3 slices (key slice +/- 1); **8 of 10 images were scored with neighbour slices absent" in text
    assert "6 of them with single-slice context" in text and "1 window reaches past its series' ends" in text
    assert "the official test split scores 4,817 key slices and 4,912 lesions (4,831 and 4,927 in its table)" in text

    scored_file = evaluation_for_report(
        weights=None, predictions_file="other.json", neighbour_slices=None,
        detections_per_image={"source": "predictions file", "cap": None, "score_threshold": None,
                              "nms_iou_threshold": None, "max_found": 7, "mean_found": 3.5,
                              "images_without_detections": 2})
    text = render_markdown(scored_file)
    assert ("| detections per image | as found in the predictions file: up to 7 per image, 3.5 on average; the "
            "detector's cap per image and score threshold are not known |") in text
    assert "| neighbour slices | not known: the detections come from a predictions file |" in text


def test_froc_figure_keeps_every_curve_visible_and_names_the_model(tmp_path):
    from ctlesion.evaluate.plot import froc_figure, froc_title

    evaluation_set = load_evaluation_set(write_hand_split(tmp_path), "test")
    scores = score_split(evaluation_set, hand_detections(evaluation_set.keys), resamples=20)
    summary = scores.report["summary"]
    title = froc_title(evaluation_for_report(weights="best.safetensors", model="AlignShift x7"))
    assert title.endswith("model best.safetensors (AlignShift x7)")
    assert froc_title(evaluation_for_report(weights=None, predictions_file="/x/other.json")).endswith(
        "predictions: other.json")
    axes = froc_figure(scores.curves, summary, title).axes[0]
    assert axes.get_title() == title
    curves = {line.get_label().split(":")[0]: line for line in axes.get_lines()}
    assert list(curves) == ["all", "thick (5 mm)", "thin (<= 2 mm)"]  # widest first, thinnest on top
    styles = [(line.get_linestyle(), line.get_marker()) for line in curves.values()]
    assert len(set(styles)) == 3 and all(marker not in ("None", "", None) for _, marker in styles)
    widths = [line.get_linewidth() for line in curves.values()]
    assert widths == sorted(widths, reverse=True)
    for name, line in (("all", curves["all"]), ("thin_le_2mm", curves["thin (<= 2 mm)"])):
        marked = np.asarray(line.get_markevery())
        np.testing.assert_allclose(np.asarray(line.get_xdata())[marked], DEFAULT_FPS_PER_IMAGE)
        np.testing.assert_allclose(np.asarray(line.get_ydata())[marked], 100 * np.array(summary[name]["sensitivity"]))
    low, high = axes.get_xlim()
    assert DEFAULT_FPS_PER_IMAGE[0] / 1.2 <= low <= DEFAULT_FPS_PER_IMAGE[0]
    assert DEFAULT_FPS_PER_IMAGE[-1] <= high <= DEFAULT_FPS_PER_IMAGE[-1] * 1.2
    assert axes.get_ylim()[0] < 0  # a curve at 0 stays above the axis line
    legend = [text.get_text().split(":")[0] for text in axes.get_legend().get_texts()]
    assert legend == ["all", "thin (<= 2 mm)", "thick (5 mm)"]
