"""Evaluation on volumes with lesion masks (nnU-Net / nnDetection layouts): lesion-level FROC per scan.

For every case of a split (:mod:`ctlesion.io.masked_datasets`):

1. ground truth: the lesions of one label (3D connected components, or nnDetection instances);
   each lesion's long axis is its RECIST long axis on its largest cross-section (mm);
2. predictions: the 3D lesions ``detect`` finds (:func:`ctlesion.detect.detect_volume`, the
   same code path as ``ctlesion detect``, at ``score_threshold``; its output is kept in
   ``predictions/``), or those of a saved ``results.json`` (its label maps and scores);
3. overlaps per scan (:func:`ctlesion.evaluate.scan_froc.scan_overlaps`): a predicted lesion
   hits a lesion when its centre lies in the lesion's mask (``centre``, LUNA16's rule) or when
   their 3D IoU reaches the threshold (``iou``; nnDetection reports IoU 0.1);
4. the lesion-level FROC over all scans (:func:`ctlesion.evaluate.scan_froc.score_scans`):
   sensitivity at 1/8 ... 8 false positives per scan and their mean (LUNA16's CPM), by slice
   interval group and lesion size, with bootstrap CIs by case;
5. per slice, DeepLesion style: each lesion's largest cross-section is a key slice, its
   ground truth the bounding boxes of the lesions whose largest slice it is, its detections
   the bounding boxes of the predicted lesions' masks on that slice (with their lesion scores),
   scored by the DeepLesion protocol (IoU >= 0.5, :mod:`ctlesion.evaluate.froc`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ctlesion import __version__
from ctlesion.atomic import atomic_write_bytes, atomic_write_text, staged_outputs
from ctlesion.errors import CtlesionError
from ctlesion.evaluate.froc import DEFAULT_FPS_PER_IMAGE, sensitivity_at_fps
from ctlesion.evaluate.plot import froc_png
from ctlesion.evaluate.run import predict_items
from ctlesion.evaluate.scan_froc import FPS_PER_SCAN, SCAN_CRITERIA, SCAN_LAYOUT, scan_overlaps, score_scans
from ctlesion.evaluate.scoring import KEY_SLICE_LAYOUT, averaged_rates
from ctlesion.io.masked_datasets import (
    MASKED_SPLITS,
    CaseLesions,
    MaskedCase,
    MaskedDataset,
    boxes_on_slice,
    check_same_grid,
    largest_cross_sections,
    read_case,
)
from ctlesion.io.nifti import read_nifti
from ctlesion.postprocess import recist_axes_mm
from ctlesion.predict import NO_AUGMENTATION, TestTimeAugmentation

log = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
FROC_PNG = "froc.png"
#: Sub-folder of the report where a model's detect output goes.
PREDICTIONS_DIR = "predictions"


@dataclass(frozen=True)
class ScanEvaluateOptions:
    """What a per-scan evaluation scores and how.

    Attributes:
        split: ``train``, ``val``, ``test`` or ``all`` (:mod:`ctlesion.io.masked_datasets`).
        lesion_label: the label name or value whose components (instances) are the lesions.
        criterion: ``centre`` (a predicted lesion's centre inside the lesion) or ``iou`` (3D IoU).
        iou_threshold: minimum 3D IoU for a hit with ``iou`` (nnDetection: 0.1).
        min_lesion_voxels: smaller ground-truth components are dropped.
        score_threshold: minimum detection score when a model runs (low, so that the curve
            reaches 8 false positives per scan).
        key_slice_stride: when a model runs, ``detect``'s ``key_slice_stride`` (2 = ``--fast``).
        augmentation: when a model runs, ``detect``'s test-time augmentation (``--tta``, ``--tta-zoom``).
        resamples: bootstrap resamples by case for the 95 % intervals (0: none).
        seed: bootstrap seed.
    """

    split: str = "test"
    lesion_label: str = "1"
    criterion: str = "centre"
    iou_threshold: float = 0.1
    min_lesion_voxels: int = 1
    score_threshold: float = 0.05
    key_slice_stride: int = 1
    augmentation: TestTimeAugmentation = NO_AUGMENTATION
    resamples: int = 1000
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError on an option outside its range (a usage error)."""
        if self.split not in MASKED_SPLITS:
            raise ValueError(f"split must be one of {', '.join(MASKED_SPLITS)}, got {self.split!r}")
        if self.criterion not in SCAN_CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(SCAN_CRITERIA)}, got {self.criterion!r}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"the IoU threshold must be in (0, 1], got {self.iou_threshold}")
        if (self.min_lesion_voxels < 1 or self.resamples < 0 or self.key_slice_stride < 1
                or not 0.0 <= self.score_threshold <= 1.0):
            raise ValueError("min lesion voxels must be >= 1, resamples >= 0, the key-slice stride >= 1 and the "
                             "score threshold in [0, 1]")


@dataclass(frozen=True)
class ScanPrediction:
    """A scan's predicted lesions: (Z, Y, X) int label map (1..P) on the case's grid and (P,) scores."""

    labels_zyx: np.ndarray
    scores: np.ndarray


def lesion_long_axes_mm(truth: CaseLesions, slices: np.ndarray) -> np.ndarray:
    """(G,) float64 RECIST long axis (mm) of each lesion on its largest cross-section ``slices``
    (:func:`largest_cross_sections`; :func:`ctlesion.postprocess.recist_axes_mm`: maximum Feret
    diameter of the slice's mask)."""
    spacing_yx = truth.volume.spacing_zyx_mm[1:]
    return np.array([recist_axes_mm(truth.lesions_zyx[z] == g + 1, spacing_yx)[0] for g, z in enumerate(slices)],
                    dtype=np.float64)


def key_slice_items(truth: CaseLesions, prediction: ScanPrediction,
                    slices: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Per-slice items of one scan (module docstring, point 5): for each slice that is some
    lesion's largest cross-section (``slices``, :func:`largest_cross_sections`),
    ``(detections (N, 5) x1, y1, x2, y2, score, ground truth (M, 4))``."""
    for z in np.unique(slices):
        truth_boxes = boxes_on_slice(truth.lesions_zyx[z], np.flatnonzero(slices == z) + 1)
        present = np.unique(prediction.labels_zyx[z])
        present = present[present > 0]
        boxes = boxes_on_slice(prediction.labels_zyx[z], present)
        yield np.column_stack([boxes, prediction.scores[present - 1]]), truth_boxes


def saved_predictions(results_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """The studies of a ``detect`` results.json by input file name: (label map path, (P,) scores by label).

    Raises:
        CtlesionError: (naming the file) unreadable JSON, no ``studies``, a study without a
            label map, or labels not numbered 1..P.
    """
    results_path = Path(results_path)
    try:
        results = json.loads(results_path.read_text())
        studies = results["studies"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CtlesionError(f"not a ctlesion results.json ({exc})", results_path) from None
    by_name = {}
    for study in studies:
        name = Path(str(study.get("input", ""))).name
        if not study.get("label_map"):
            raise CtlesionError(f"study {name} has no label map", results_path)
        lesions = study.get("lesions", [])
        if [lesion.get("label") for lesion in lesions] != list(range(1, len(lesions) + 1)):
            raise CtlesionError(f"study {name}: lesion labels are not 1..{len(lesions)}", results_path)
        by_name[name] = (results_path.parent / study["label_map"],
                         np.array([float(lesion["score"]) for lesion in lesions], dtype=np.float64))
    return by_name


def _saved_prediction(case: MaskedCase, truth: CaseLesions, saved: dict, results_path: Path) -> ScanPrediction:
    map_path, scores = saved[case.image_path.name]
    labels = read_nifti(map_path)
    check_same_grid(truth.volume, labels, map_path)
    if labels.hu.max(initial=0) > len(scores):
        raise CtlesionError(f"label map holds label {int(labels.hu.max())} beyond the {len(scores)} lesions of "
                            "results.json", map_path)
    return ScanPrediction(labels.hu.astype(np.int32), scores)


def predict_cases(cases: Sequence[MaskedCase], results_path: Path, model, model_info: dict, *,
                  score_threshold: float, key_slice_stride: int = 1,
                  augmentation: TestTimeAugmentation = NO_AUGMENTATION,
                  device: torch.device | str = "cpu", progress=None) -> Path:
    """Run ``detect`` on every case's CT (:func:`ctlesion.detect.run_detect`, the command's own code, its
    default options but ``score_threshold``, ``key_slice_stride`` and ``augmentation``): ``results_path`` (results.json),
    label maps, overlays and summary sheets, for rescoring later.

    Raises:
        CtlesionError: an unreadable image (nothing is written then).
    """
    from ctlesion.detect import DetectOptions, run_detect
    from ctlesion.io.studies import plan_studies

    Path(results_path).parent.mkdir(parents=True, exist_ok=True)
    sources = dict.fromkeys((case.image_path, case.series_uid) for case in cases)  # a CT shared by cases runs once
    studies = [study for path, series in sources for study in plan_studies([path], series=series)]
    options = DetectOptions(score_threshold=score_threshold, key_slice_stride=key_slice_stride,
                            augmentation=augmentation)
    run_detect(studies, Path(results_path), model, model_info, options=options, device=device, progress=progress)
    return Path(results_path)


def _per_slice_scores(items: list[tuple[np.ndarray, np.ndarray]]) -> dict:
    detections, truth = zip(*items)
    rates, averaged = averaged_rates(DEFAULT_FPS_PER_IMAGE, KEY_SLICE_LAYOUT)
    sens = sensitivity_at_fps(list(detections), list(truth), rates)
    return {"fps_per_image": rates.tolist(), "sensitivity": [float(s) for s in sens],
            KEY_SLICE_LAYOUT.mean_key: float(np.mean(np.asarray(sens)[averaged])), "num_images": len(items),
            "num_lesions": int(sum(len(t) for t in truth)),
            "rule": "each lesion's largest cross-section is a key slice; detections are the predicted lesions' "
                    "boxes on it; DeepLesion protocol, IoU >= 0.5"}


def validate_on_key_slices(model, dataset, *, device: torch.device | str = "cpu") -> dict | None:
    """Per-slice DeepLesion-style figures of a model on the key slices of a volume dataset: the
    quick validation after each training epoch on volumes (no 3D linking, no intervals).

    Args:
        model: the detector.
        dataset: a :class:`~ctlesion.data.volume_dataset.VolumeKeySliceDataset` without
            augmentation or crops (its items' ground truth: the lesions' tight boxes, pixel i
            covering [i, i + 1); scored here as inclusive boxes, first to last pixel).

    Returns:
        ``{"split", "summary": {"all": {"fps_per_image", "sensitivity", "avg_0.5_4", "num_images",
        "num_lesions"}}}``, or None when the dataset has no key slice.
    """
    predictions = predict_items(model, dataset, device=device, progress=False)
    if not predictions:
        return None
    items = [(p["detections"], p["ground_truth"] - np.array([0.0, 0.0, 1.0, 1.0])) for p in predictions]
    scores = _per_slice_scores(items)
    return {"split": dataset.split, "summary": {"all": {key: scores[key] for key in (
        "fps_per_image", "sensitivity", KEY_SLICE_LAYOUT.mean_key, "num_images", "num_lesions")}}}


def run_scan_evaluation(dataset: MaskedDataset, out_dir: Path, options: ScanEvaluateOptions, *, model=None,
                        weights_path: Path | None = None, model_info: dict | None = None,
                        results_path: Path | None = None,
                        device: torch.device | str = "cpu", progress=None) -> dict:
    """Score a model (run as ``detect`` runs) or a saved results.json on a split of a masked dataset.

    Exactly one of ``model`` and ``results_path`` is given. A model runs as ``detect`` does
    (:func:`predict_cases`) and its output goes into ``out_dir/predictions/`` (results.json,
    label maps, pictures), so that ``--predictions`` can rescore it. Writes ``evaluation.json`` (its
    ``froc_per_scan`` holds the lesion-level FROC; ``per_slice`` the DeepLesion-style figures),
    ``evaluation.md`` and ``froc.png`` into ``out_dir``, staged: all or nothing.

    Raises:
        ValueError: invalid options, or not exactly one of model / results_path.
        CtlesionError: unreadable cases or predictions (naming the file), a split without cases
            or without any lesion.
    """
    options.validate()
    if (model is None) == (results_path is None):
        raise ValueError("give exactly one of model and results_path")
    cases = dataset.cases(options.split)
    if not cases:
        raise CtlesionError(f"the {options.split} split holds no case ({dataset.split_source})", dataset.root)
    lesion_value = dataset.lesion_value(options.lesion_label)
    predictions_file = results_path
    if model is not None:
        results_path = predict_cases(cases, Path(out_dir) / PREDICTIONS_DIR / "results.json", model, model_info or {},
                                     score_threshold=options.score_threshold,
                                     key_slice_stride=options.key_slice_stride, augmentation=options.augmentation,
                                     device=device, progress=progress)
    saved = saved_predictions(results_path)
    missing = [case.case_id for case in cases if case.image_path.name not in saved]
    if missing:
        raise CtlesionError(f"holds no study for case {', '.join(missing[:3])}"
                            f"{f' and {len(missing) - 3} more' if len(missing) > 3 else ''} (inputs named "
                            f"CASE_0000.nii.gz are matched by file name)", results_path)
    scores, overlaps, intervals, long_axes, slice_items, per_case = [], [], [], [], [], []
    task = None if progress is None else progress.add_task(f"evaluate {options.split}", total=len(cases), info="")
    for case in cases:
        truth = read_case(case, lesion_value, layout=dataset.layout, min_lesion_voxels=options.min_lesion_voxels)
        prediction = _saved_prediction(case, truth, saved, results_path)
        num_predicted = len(prediction.scores)
        scores.append(prediction.scores)
        overlaps.append(scan_overlaps(prediction.labels_zyx, num_predicted, truth.lesions_zyx, truth.num_lesions,
                                      options.criterion))
        intervals.append(truth.volume.slice_interval_mm)
        largest = largest_cross_sections(truth.lesions_zyx, truth.num_lesions)
        long_axes.append(lesion_long_axes_mm(truth, largest))
        slice_items.extend(key_slice_items(truth, prediction, largest))
        per_case.append({"case": case.case_id, "slice_interval_mm": truth.volume.slice_interval_mm,
                         "num_lesions": truth.num_lesions, "num_predicted": num_predicted})
        if task is not None:
            progress.update(task, advance=1)
    if not any(item["num_lesions"] for item in per_case):
        raise CtlesionError(f"no lesion of label {options.lesion_label!r} in the {options.split} split", dataset.root)
    threshold = options.iou_threshold if options.criterion == "iou" else 1.0
    scored = score_scans(scores, overlaps, threshold=threshold, slice_interval_mm=np.asarray(intervals),
                         lesion_long_axis_mm=np.concatenate(long_axes), fps=FPS_PER_SCAN,
                         resamples=options.resamples, seed=options.seed)
    evaluation = {
        "version": __version__,
        "data": str(dataset.root),
        "layout": dataset.layout,
        "split": options.split,
        "split_source": dataset.split_source,
        "lesion_label": options.lesion_label,
        "weights": None if model is None else Path(weights_path).name if weights_path else "(in memory)",
        "model": None if model is None else model.config.name,
        "predictions_file": str(results_path) if predictions_file is not None else f"{PREDICTIONS_DIR}/results.json",
        "protocol": {
            "criterion": options.criterion,
            "iou_threshold": options.iou_threshold if options.criterion == "iou" else None,
            "min_lesion_voxels": options.min_lesion_voxels,
            "score_threshold": options.score_threshold if model is not None else None,
            "key_slice_stride": options.key_slice_stride if model is not None else None,
            "test_time_augmentation": options.augmentation.name if model is not None else None,
            "num_scans": len(cases),
            "num_lesions": int(sum(item["num_lesions"] for item in per_case)),
        },
        "bootstrap": None if options.resamples == 0 else {
            "resamples": options.resamples, "seed": options.seed, "level": 0.95, "unit": "scan", "method": "percentile"},
        "froc_per_scan": scored.report,
        "per_slice": _per_slice_scores(slice_items),
        "cases": per_case,
    }
    png = froc_png(scored.curves, scored.report["summary"], _title(evaluation), SCAN_LAYOUT)
    with staged_outputs(out_dir) as stage:
        atomic_write_text(stage / EVALUATION_JSON, json.dumps(evaluation, indent=1) + "\n")
        atomic_write_text(stage / EVALUATION_MD, render_scan_markdown(evaluation, FROC_PNG))
        atomic_write_bytes(stage / FROC_PNG, png)
    log.info("wrote %s, %s, %s into %s", EVALUATION_JSON, EVALUATION_MD, FROC_PNG, out_dir)
    return evaluation


def _title(evaluation: dict) -> str:
    protocol = evaluation["protocol"]
    rule = "centre in lesion" if protocol["criterion"] == "centre" else f"3D IoU >= {protocol['iou_threshold']:g}"
    source = (f"model {evaluation['weights']}" if evaluation["weights"]
              else f"predictions: {Path(evaluation['predictions_file']).name}")
    return f"Lesion-level FROC per scan, {evaluation['split']} split ({rule})\n{source}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}"


def render_scan_markdown(evaluation: dict, plot_name: str | None = FROC_PNG) -> str:
    """The ``evaluation.md`` of a per-scan evaluation: protocol, FROC table with CIs, per-slice figures."""
    froc = evaluation["froc_per_scan"]
    summary = froc["summary"]
    rates = summary["fps_per_scan"]
    protocol = evaluation["protocol"]
    lines = [f"# {_title(evaluation).splitlines()[0]}", "",
             f"- data: `{evaluation['data']}` ({evaluation['layout']} layout), split {evaluation['split']} "
             f"({evaluation['split_source']}), lesion label `{evaluation['lesion_label']}`",
             f"- {protocol['num_scans']} scans, {protocol['num_lesions']} lesions; "
             + (f"model `{evaluation['weights']}` ({evaluation['model']}), score >= {protocol['score_threshold']:g}"
                if evaluation["weights"] else f"predictions `{evaluation['predictions_file']}`"),
             "- a lesion is hit when " + ("a predicted lesion's centre lies in its mask" if protocol["criterion"] ==
                                           "centre" else f"a predicted lesion's 3D IoU with it is >= "
                                                         f"{protocol['iou_threshold']:g}")
             + "; each lesion counts once; later hits of a lesion are neither true nor false positives", ""]
    header = ["group", "scans", "lesions", *[f"{r:g} FP" for r in rates], "mean (CPM)"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(name: str, data: dict) -> str:
        cells = [_pct(s) for s in data["sensitivity"]]
        mean = _pct(data["mean"])
        if "ci95" in data:
            lo, hi = data["ci95"]["mean"]
            mean += f" [{_pct(lo)}, {_pct(hi)}]"
        return "| " + " | ".join([name, str(data.get("num_scans", "")), str(data["num_lesions"]), *cells, mean]) + " |"

    for name, data in summary.items():
        if isinstance(data, dict):
            lines.append(row(name, data))
    for name, data in froc.get("lesion_sizes", {}).items():
        lines.append(row(f"size {name}", data))
    if "thin_minus_thick_mean" in summary:
        bounds = summary.get("thin_minus_thick_mean_ci95")
        interval = f" [{_pct(bounds[0])}, {_pct(bounds[1])}]" if bounds else ""
        lines += ["", f"Thin minus thick, CPM: {100 * summary['thin_minus_thick_mean']:+.1f} points{interval}"]
    per_slice = evaluation["per_slice"]
    lines += ["", f"Per slice (DeepLesion style, {per_slice['num_images']} key slices, {per_slice['num_lesions']} "
                  f"lesions): avg[0.5-4] {_pct(per_slice['avg_0.5_4'])} %; " + ", ".join(
                      f"{r:g} FP: {_pct(s)}" for r, s in zip(per_slice["fps_per_image"], per_slice["sensitivity"])),
              ""]
    if plot_name:
        lines += [f"![FROC]({plot_name})", ""]
    return "\n".join(lines)
