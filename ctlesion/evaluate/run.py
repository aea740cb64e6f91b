"""Running the detector on the key slices of a DeepLesion-layout split, scoring, and writing the report.

Protocol (SPEC section 8; DeepLesion as used by 3DCE, MULAN and AlignShift): one image per key
slice, detections in the key slice's source pixels, FROC with IoU >= 0.5, sensitivity at 0.5,
1, 2, 4, 8 and 16 false positives per image and the mean of the first four; subsets by the
series' slice interval (thin <= 2 mm, thick == 5 mm, > 2 mm), each scored on its own images;
breakdowns by lesion type and size; bootstrap confidence intervals
(:mod:`ctlesion.evaluate.scoring`).

:func:`run_evaluation` writes, into one folder, ``evaluation.json`` (the figures),
``evaluation.md`` (the report), ``froc.png`` (the curves) and, when it ran a model,
``predictions.json`` (:mod:`ctlesion.evaluate.predictions`), which scores again without the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Subset

from ctlesion import __version__
from ctlesion.atomic import atomic_write_bytes, atomic_write_text, staged_outputs
from ctlesion.data.dataset import DeepLesionDataset, collate_detection
from ctlesion.evaluate.context import summarize_contexts
from ctlesion.evaluate.froc import CRITERIA, DEFAULT_FPS_PER_IMAGE
from ctlesion.evaluate.plot import froc_png, froc_title
from ctlesion.evaluate.predictions import (
    align_predictions,
    read_predictions,
    to_file_precision,
    write_predictions,
)
from ctlesion.evaluate.report import paper_comparison, render_markdown
from ctlesion.evaluate.scoring import score_split
from ctlesion.evaluate.split import load_evaluation_set
from ctlesion.io.deeplesion import split_code
from ctlesion.networks.detector import AlignShiftDetector
from ctlesion.predict import NO_AUGMENTATION, TestTimeAugmentation, predict_windows

log = logging.getLogger(__name__)

EVALUATION_JSON = "evaluation.json"
EVALUATION_MD = "evaluation.md"
FROC_PNG = "froc.png"
PREDICTIONS_JSON = "predictions.json"


@torch.no_grad()
def predict_split(model: AlignShiftDetector, data_dir: Path, split: str, *, device: torch.device | str = "cpu",
                  progress: bool = True, num_workers: int = 0, keys: Collection[str] | None = None,
                  skip_unreadable: bool = False,
                  augmentation: TestTimeAugmentation = NO_AUGMENTATION) -> list[dict] | None:
    """Detections on every key slice of a split (or those named in ``keys``), in source pixels
    (with ``augmentation``, test-time views: :func:`predict_items`).

    An unreadable (missing or corrupt) PNG raises a CtlesionError, so that an evaluation scores
    every image or fails; with ``skip_unreadable`` such key slices are left out (logged) instead,
    which the validation after each training epoch uses so that a bad file cannot stop a run.

    Neighbour slices come from the series folder (``load_key_slice_window``); where the folder
    holds only the key slice, it is replicated with a warning (single-slice context).

    Returns:
        One dict per key slice: ``key`` (file name), ``slice_interval_mm`` (source interval),
        ``detections`` ((N, 5) float64 x1, y1, x2, y2, score), ``ground_truth`` ((M, 4) float64);
        None when the split holds no key slices.
    """
    config = model.config
    dataset = DeepLesionDataset.for_detector(data_dir, split, config, with_masks=False,
                                             skip_unreadable=skip_unreadable)
    if keys is not None:
        wanted = set(keys)
        dataset = Subset(dataset, [i for i, key in enumerate(dataset.keys) if key.file_name in wanted])
    return predict_items(model, dataset, device=device, progress=progress, num_workers=num_workers,
                         label=f"evaluate {split}", augmentation=augmentation)


@torch.no_grad()
def predict_items(model: AlignShiftDetector, dataset, *, device: torch.device | str = "cpu", progress: bool = True,
                  num_workers: int = 0, label: str = "predict",
                  augmentation: TestTimeAugmentation = NO_AUGMENTATION) -> list[dict] | None:
    """Detections on every item of a key-slice dataset (any :class:`~ctlesion.data.dataset.KeySliceItems`,
    or a Subset of one, without augmentation or crops), in source pixels; with ``augmentation``, the
    test-time views' detections merged (:func:`ctlesion.predict.predict_windows`).

    Returns:
        One dict per item: ``key``, ``slice_interval_mm`` (source interval), ``detections``
        ((N, 5) float64 x1, y1, x2, y2, score), ``ground_truth`` ((M, 4) float64, the item's boxes
        in source pixels); None for an empty dataset.
    """
    from ctlesion.progress import make_progress

    if len(dataset) == 0:
        return None
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    results = []
    with make_progress(enabled=progress) as bar:
        task = bar.add_task(label, total=len(dataset), info="")
        for images, intervals, targets in loader:
            found = predict_windows(model, images, intervals, [t["in_plane"] for t in targets], device=device,
                                    clip=False, with_masks=False, augmentation=augmentation)
            for detections, target in zip(found, targets):
                results.append({
                    "key": target["key"],
                    "slice_interval_mm": float(target["slice_interval_src_mm"]),
                    "detections": np.concatenate([detections.boxes_px, detections.scores[:, None]], axis=1),
                    "ground_truth": np.asarray(target["boxes_src_px"], dtype=np.float64).reshape(-1, 4),
                })
            bar.update(task, advance=1)
    model.train(was_training)
    return results


def _detections_by_key(predictions: list[dict]) -> dict[str, np.ndarray]:
    """Model predictions at the precision of a predictions file (what is saved is what is scored)."""
    return {p["key"]: to_file_precision(p["detections"]) for p in predictions}


def evaluate_model(model: AlignShiftDetector, data_dir: Path, split: str, *, device: torch.device | str = "cpu",
                   progress: bool = True) -> dict | None:
    """Predict and score one split without confidence intervals (quick: used after each training epoch).

    Returns:
        ``{"split", "summary", "lesion_types", "lesion_sizes", "predictions"}`` (figures as in
        :func:`ctlesion.evaluate.scoring.score_split`; predictions as the ``predictions`` list
        of a predictions file), or None when the split holds no key slice with lesions.

    Key slices whose PNGs cannot be read are left out of the scoring (with a warning).

    Raises:
        CtlesionError: if the dataset is missing or malformed.
    """
    predictions = predict_split(model, data_dir, split, device=device, progress=progress, skip_unreadable=True)
    if predictions is None:
        return None
    by_key = _detections_by_key(predictions)
    evaluation_set = load_evaluation_set(data_dir, split)
    readable = tuple(key for key in evaluation_set.key_slices if key.file_name in by_key)
    if not readable:
        return None
    evaluation_set = replace(evaluation_set, key_slices=readable)
    scores = score_split(evaluation_set, [by_key[key] for key in evaluation_set.keys], resamples=0)
    return {"split": split, **scores.report,
            "predictions": [{"key": key, "detections": dets.tolist()} for key, dets in by_key.items()]}


@dataclass(frozen=True)
class EvaluateOptions:
    """What an evaluation scores and how.

    Attributes:
        split: ``"train"``, ``"val"`` or ``"test"`` (``Train_Val_Test`` 1 / 2 / 3), or ``"all"``.
        key_list: optional file of key-slice names to restrict to (one per line, or a CSV
            with a ``File_name`` column).
        criterion: ``"iou"`` (DeepLesion) or ``"iobb"``.
        iou_threshold: minimum overlap for a hit, in (0, 1] (DeepLesion: 0.5).
        resamples: bootstrap resamples for the 95 % intervals (0: none).
        seed: bootstrap seed.
        fps_per_image: false-positive rates at which sensitivity is read.
        augmentation: when a model runs, its test-time views
            (:class:`ctlesion.predict.TestTimeAugmentation`).
    """

    split: str = "test"
    key_list: Path | None = None
    criterion: str = "iou"
    iou_threshold: float = 0.5
    resamples: int = 1000
    seed: int = 0
    fps_per_image: tuple[float, ...] = DEFAULT_FPS_PER_IMAGE
    augmentation: TestTimeAugmentation = NO_AUGMENTATION

    def validate(self) -> None:
        """Raise ValueError on an option outside its range (a usage error)."""
        if self.split != "all":
            split_code(self.split)
        if self.criterion not in CRITERIA:
            raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {self.criterion!r}")
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ValueError(f"the overlap threshold must be in (0, 1], got {self.iou_threshold}")
        if self.resamples < 0:
            raise ValueError(f"bootstrap resamples must be >= 0, got {self.resamples}")


def _model_note(weights_path: Path | None, model_info: dict | None) -> str | None:
    """A warning for the report when the model is the shipped demo (trained on simulated lesions)."""
    from ctlesion.store import demo_weights

    description = ((model_info or {}).get("training") or {}).get("description", "")
    if weights_path is not None and Path(weights_path).resolve() == demo_weights().resolve():
        return ("These figures are for the demo model shipped with ctlesion, trained on simulated lesions in real "
                "CT (not on DeepLesion): they say nothing about performance on real lesions.")
    if "simulated" in description.lower():
        return f"The model was trained on simulated lesions: {description}"
    return None


def _detection_limits(model: AlignShiftDetector | None, detections: list[np.ndarray]) -> dict:
    """The ``detections_per_image`` entry of ``evaluation.json``: the model's cap and score threshold
    (None when the detections come from a predictions file: unknown) and what was found."""
    heads = None if model is None else getattr(model, "roi_heads", None)

    def setting(name: str) -> float | None:
        value = getattr(heads, name, None)
        return None if value is None else float(value)

    found = np.array([len(d) for d in detections], dtype=np.int64)
    cap = setting("detections_per_img")
    return {
        "source": "model" if model is not None else "predictions file",
        "cap": None if cap is None else int(cap),
        "score_threshold": setting("score_thresh"),
        "nms_iou_threshold": setting("nms_thresh"),
        "max_found": int(found.max()) if found.size else 0,
        "mean_found": float(found.mean()) if found.size else 0.0,
        "images_without_detections": int((found == 0).sum()),
    }


def run_evaluation(
    data_dir: Path,
    out_dir: Path,
    options: EvaluateOptions = EvaluateOptions(),
    *,
    model: AlignShiftDetector | None = None,
    weights_path: Path | None = None,
    model_info: dict | None = None,
    predictions_path: Path | None = None,
    device: torch.device | str = "cpu",
    progress: bool = True,
) -> dict:
    """Evaluate a model (or a predictions file) on a split and write the report folder.

    Exactly one of ``model`` and ``predictions_path`` is given. Ground truth, slice intervals,
    lesion types and sizes come from ``data_dir/DL_info.csv``. Outputs are staged and moved into
    ``out_dir`` together only when everything succeeded (nothing half-written is left).

    Args:
        data_dir: DeepLesion-layout folder (``DL_info.csv``; ``Images_png`` to run a model).
        out_dir: folder for ``evaluation.json``, ``evaluation.md``, ``froc.png`` and, with a
            model, ``predictions.json`` (created if needed; these files are replaced).
        options: split, key-slice list, criterion, threshold, bootstrap.
        model: the detector to run on the key slices.
        weights_path: its checkpoint (named in the report).
        model_info: its checkpoint sidecar (``training.description`` is quoted in the report).
        predictions_path: a predictions file to score instead of running a model.
        device: torch device for the model.
        progress: show a progress bar while predicting.

    Returns:
        The ``evaluation.json`` content: ``version``, ``data``, ``dl_info``, ``split``,
        ``key_slices_file``, ``weights``, ``model`` (e.g. "AlignShift x3"), ``model_description``, ``model_note``,
        ``predictions_file``, ``protocol`` (criterion, threshold, rates, counts), ``bootstrap``,
        ``detections_per_image``, ``neighbour_slices``, ``paper_comparison``, ``summary``,
        ``lesion_types``, ``lesion_sizes`` (see :func:`ctlesion.evaluate.scoring.score_split`).

        ``detections_per_image``: ``source`` ("model" or "predictions file"), ``cap`` (the
        model's maximum detections per image, the paper's 50), ``score_threshold`` (minimum score
        kept, the paper's 0.001) and ``nms_iou_threshold`` (all three None for a predictions file:
        not known), ``max_found`` and ``mean_found`` (boxes per image scored),
        ``images_without_detections``.

        ``neighbour_slices`` (None for a predictions file: the windows are not known):
        ``window_slices`` (the model's window depth D), ``images_with_absent_neighbours`` (images
        whose window needed a neighbour PNG absent from the series folder, replaced by the nearest
        present one), ``images_single_slice_context`` (images whose every neighbour was the key
        slice itself), ``images_beyond_series_ends`` (windows past the series' ends, edge slice
        replicated as in the protocol); see :mod:`ctlesion.evaluate.context`.

        ``paper_comparison``: ``comparable`` (bool), ``reasons`` (why the paper's Table 2 rows
        are not comparable: split, overlap criterion, rates, image and lesion counts, absent
        neighbours), ``protocol_matches`` (split, criterion and rates are the paper's, so its rows
        are shown beside the figures for reference) and ``official_test_split`` (the counts of
        the official DeepLesion test split: ``key_slices`` 4,831 and ``lesions`` 4,927 in the
        table, ``scored_key_slices`` 4,817 and ``scored_lesions`` 4,912 once lesions marked
        Possibly_noisy are left out); see :func:`ctlesion.evaluate.report.paper_comparison`.

    Raises:
        ValueError: on invalid options, or if not exactly one of model / predictions is given.
        CtlesionError: on a missing or malformed table, key list or predictions file (naming
            the file and the row / entry), a split without lesions, or unreadable images.
    """
    options.validate()
    if (model is None) == (predictions_path is None):
        raise ValueError("give exactly one of model and predictions_path")
    evaluation_set = load_evaluation_set(data_dir, options.split, options.key_list)
    keys = evaluation_set.keys
    if predictions_path is not None:
        saved = read_predictions(predictions_path)
        detections = align_predictions(saved, keys, predictions_path, left_out=evaluation_set.left_out,
                                       split_description=f"the {options.split} split of {evaluation_set.csv_path}")
        missing = sum(1 for key in keys if key not in saved)
        by_key = None
        neighbours = None
    else:
        predicted = predict_split(model, data_dir, options.split, device=device, progress=progress, keys=set(keys),
                                  augmentation=options.augmentation)
        by_key = _detections_by_key(predicted or [])
        detections = [by_key[key] for key in keys]
        missing = 0
        neighbours = summarize_contexts(Path(data_dir) / "Images_png", evaluation_set.key_slices,
                                        model.config.num_slices, resample_thick=model.config.resample_thick)
        if neighbours["images_with_absent_neighbours"]:
            log.warning("%d of %d images were scored with neighbour slices absent from their series folder "
                        "(%d with single-slice context); the report says so",
                        neighbours["images_with_absent_neighbours"], len(keys),
                        neighbours["images_single_slice_context"])
    scores = score_split(evaluation_set, detections, fps=options.fps_per_image, iou_threshold=options.iou_threshold,
                         criterion=options.criterion, resamples=options.resamples, seed=options.seed)
    evaluation = {
        "version": __version__,
        "data": str(data_dir),
        "dl_info": str(evaluation_set.csv_path),
        "split": options.split,
        "key_slices_file": None if options.key_list is None else str(options.key_list),
        "weights": None if model is None else Path(weights_path).name if weights_path else "(in memory)",
        "model": None if model is None else model.config.name,
        "model_description": ((model_info or {}).get("training") or {}).get("description"),
        "model_note": None if model is None else _model_note(weights_path, model_info),
        "predictions_file": PREDICTIONS_JSON if model is not None else str(predictions_path),
        "protocol": {
            "criterion": options.criterion,
            "iou_threshold": options.iou_threshold,
            "fps_per_image": list(options.fps_per_image),
            "split_code": [1, 2, 3] if options.split == "all" else split_code(options.split),
            "num_images": len(keys),
            "num_lesions": evaluation_set.num_lesions,
            "images_without_predictions": missing,
            "possibly_noisy": "excluded",
            "image_order": "File_name (ties in score keep image order, then detection order)",
        },
        "detections_per_image": _detection_limits(model, detections),
        "test_time_augmentation": None if model is None else options.augmentation.name,
        "neighbour_slices": neighbours,
        "bootstrap": None if options.resamples == 0 else {
            "resamples": options.resamples, "seed": options.seed, "level": 0.95, "unit": "image",
            "method": "percentile",
        },
    }
    evaluation["paper_comparison"] = paper_comparison(evaluation)
    evaluation.update(scores.report)
    png = froc_png(scores.curves, scores.report["summary"], froc_title(evaluation))
    with staged_outputs(out_dir) as stage:
        atomic_write_text(stage / EVALUATION_JSON, json.dumps(evaluation, indent=1) + "\n")
        atomic_write_text(stage / EVALUATION_MD, render_markdown(evaluation, FROC_PNG))
        atomic_write_bytes(stage / FROC_PNG, png)
        if by_key is not None:
            write_predictions(stage / PREDICTIONS_JSON, {key: by_key[key] for key in keys}, split=options.split,
                              weights=evaluation["weights"], ctlesion_version=__version__)
    log.info("wrote %s, %s, %s%s into %s", EVALUATION_JSON, EVALUATION_MD, FROC_PNG,
             f", {PREDICTIONS_JSON}" if by_key is not None else "", out_dir)
    return evaluation
