"""Running the detector on the key slices of a DeepLesion-layout split and scoring it.

Protocol (SPEC section 8; DeepLesion as used by 3DCE, MULAN and AlignShift): one image per key
slice, detections in the key slice's source pixels, FROC with IoU >= 0.5, sensitivity at 0.5,
1, 2, 4, 8 and 16 false positives per image and the mean of the first four. Subsets by the
series' slice interval: thin (<= 2 mm), thick (== 5 mm) and > 2 mm, each scored on its own
images.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from ctlesion.data.dataset import DeepLesionDataset, collate_detection
from ctlesion.evaluate.froc import sensitivity_at_fps
from ctlesion.networks.detector import AlignShiftDetector

log = logging.getLogger(__name__)

FPS_PER_IMAGE = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
SUBSETS = {
    "all": lambda s: True,
    "thin_le_2mm": lambda s: s <= 2.0,
    "thick_5mm": lambda s: abs(s - 5.0) < 1e-6,
    "thick_gt_2mm": lambda s: s > 2.0,
}


@torch.no_grad()
def predict_split(model: AlignShiftDetector, data_dir: Path, split: str, *, device: torch.device | str = "cpu",
                  progress: bool = True, num_workers: int = 0) -> list[dict] | None:
    """Detections on every key slice of a split, in source pixels.

    Returns:
        One dict per key slice: ``key`` (file name), ``slice_interval_mm`` (source interval),
        ``detections`` ((N, 5) float64 x1, y1, x2, y2, score), ``ground_truth`` ((M, 4) float64);
        None when the split holds no key slices.
    """
    from ctlesion.progress import make_progress  # noqa: PLC0415

    config = model.config
    dataset = DeepLesionDataset.for_detector(data_dir, split, config, with_masks=False)
    if len(dataset) == 0:
        return None
    loader = DataLoader(dataset, batch_size=1, shuffle=False, num_workers=num_workers, collate_fn=collate_detection)
    was_training = model.training
    model.eval()
    results = []
    with make_progress(enabled=progress) as bar:
        task = bar.add_task(f"evaluate {split}", total=len(dataset), info="")
        for images, intervals, targets in loader:
            outputs = model(images.to(device), intervals.to(device))
            for output, target in zip(outputs, targets):
                boxes = output["boxes"].cpu().double().numpy() / float(target["scale"])
                scores = output["scores"].cpu().double().numpy()[:, None]
                results.append({
                    "key": target["key"],
                    "slice_interval_mm": float(target["slice_interval_src_mm"]),
                    "detections": np.concatenate([boxes, scores], axis=1),
                    "ground_truth": np.asarray(target["boxes_src_px"], dtype=np.float64).reshape(-1, 4),
                })
            bar.update(task, advance=1)
    model.train(was_training)
    return results


def score_predictions(predictions: list[dict], fps: tuple[float, ...] = FPS_PER_IMAGE,
                      iou_threshold: float = 0.5) -> dict:
    """FROC summary overall and per slice-interval subset (each subset on its own images).

    Returns:
        ``{subset: {"sensitivity": [...], "avg_0.5_4": float, "num_images": int, "num_lesions": int}}``
        for the subsets that hold at least one lesion; ``fps_per_image`` lists the FP rates.
    """
    summary: dict = {"fps_per_image": list(fps)}
    for name, keep in SUBSETS.items():
        chosen = [p for p in predictions if keep(p["slice_interval_mm"])]
        num_lesions = sum(len(p["ground_truth"]) for p in chosen)
        if num_lesions == 0:
            continue
        sens = sensitivity_at_fps([p["detections"] for p in chosen], [p["ground_truth"] for p in chosen],
                                  fps=fps, iou_threshold=iou_threshold)
        first_four = [s for f, s in zip(fps, sens) if f <= 4.0]
        summary[name] = {"sensitivity": [float(s) for s in sens], "avg_0.5_4": float(np.mean(first_four)),
                         "num_images": len(chosen), "num_lesions": int(num_lesions)}
    if "thin_le_2mm" in summary and "thick_5mm" in summary:
        summary["thin_minus_thick_avg_0.5_4"] = summary["thin_le_2mm"]["avg_0.5_4"] - summary["thick_5mm"]["avg_0.5_4"]
    return summary


def evaluate_model(model: AlignShiftDetector, data_dir: Path, split: str, *, device: torch.device | str = "cpu",
                   progress: bool = True) -> dict | None:
    """Predict and score one split; None when the split is empty.

    Returns:
        ``{"split", "summary", "predictions"}`` with predictions as JSON-ready lists.
    """
    predictions = predict_split(model, data_dir, split, device=device, progress=progress)
    if predictions is None:
        return None
    return {
        "split": split,
        "summary": score_predictions(predictions),
        "predictions": [{"key": p["key"], "slice_interval_mm": p["slice_interval_mm"],
                         "detections": np.round(p["detections"], 3).tolist()} for p in predictions],
    }
