"""The evaluation protocols behind ``ctlesion evaluate``, one interface for both.

* :class:`KeySliceProtocol`: the DeepLesion protocol on key slices (Yan et al. 2018; sensitivity
  at 0.5-16 false positives per image, avg[0.5-4]), :mod:`ctlesion.evaluate.run`;
* :class:`ScanProtocol`: the lesion-level FROC per scan on volumes with lesion masks (LUNA16,
  nnDetection; 1/8-8 false positives per scan, CPM), :mod:`ctlesion.evaluate.volumes`.

Each knows its report layout, how to score a model or saved predictions into a report folder,
and where the report's summary table lies; :func:`protocol_for` picks the one a dataset folder
calls for. The command line only parses options, builds the protocol and prints its summary.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ctlesion.errors import CtlesionError
from ctlesion.evaluate.run import EvaluateOptions, run_evaluation
from ctlesion.evaluate.scan_froc import SCAN_LAYOUT
from ctlesion.evaluate.scoring import KEY_SLICE_LAYOUT, ReportLayout
from ctlesion.evaluate.volumes import ScanEvaluateOptions, run_scan_evaluation
from ctlesion.io.masked_datasets import MaskedDataset, is_masked_dataset, open_masked_dataset
from ctlesion.predict import NO_AUGMENTATION, TestTimeAugmentation
from ctlesion.progress import make_progress


class EvaluationProtocol(Protocol):
    """What ``ctlesion evaluate`` runs on a dataset."""

    layout: ReportLayout

    def evaluate(self, out_dir: Path, *, model=None, weights_path: Path | None = None,
                 model_info: dict | None = None, predictions_path: Path | None = None,
                 device: torch.device | str = "cpu", progress: bool = True) -> dict:
        """Score ``model`` (or the saved ``predictions_path``) and write the report folder; the evaluation dict."""

    def summary(self, evaluation: dict) -> dict:
        """The report's summary table (subset -> row) of an evaluation."""

    def title(self) -> str:
        """One line naming the protocol, the split and the figures, for the summary table."""


@dataclass(frozen=True)
class KeySliceProtocol:
    """The DeepLesion protocol on the key slices of a DeepLesion-layout folder."""

    data_dir: Path
    options: EvaluateOptions
    layout: ReportLayout = KEY_SLICE_LAYOUT

    def evaluate(self, out_dir: Path, *, model=None, weights_path: Path | None = None,
                 model_info: dict | None = None, predictions_path: Path | None = None,
                 device: torch.device | str = "cpu", progress: bool = True) -> dict:
        """:func:`ctlesion.evaluate.run.run_evaluation` (a predictions JSON for ``predictions_path``)."""
        return run_evaluation(self.data_dir, out_dir, self.options, model=model, weights_path=weights_path,
                              model_info=model_info, predictions_path=predictions_path, device=device,
                              progress=progress)

    def summary(self, evaluation: dict) -> dict:
        return evaluation["summary"]

    def title(self) -> str:
        return f"DeepLesion FROC, {self.options.split} split: sensitivity % at FP/image, avg[0.5-4]"


@dataclass(frozen=True)
class ScanProtocol:
    """The lesion-level FROC per scan on a dataset of volumes with lesion masks."""

    dataset: MaskedDataset
    options: ScanEvaluateOptions
    layout: ReportLayout = SCAN_LAYOUT

    def evaluate(self, out_dir: Path, *, model=None, weights_path: Path | None = None,
                 model_info: dict | None = None, predictions_path: Path | None = None,
                 device: torch.device | str = "cpu", progress: bool = True) -> dict:
        """:func:`ctlesion.evaluate.volumes.run_scan_evaluation` (``predictions_path``: a ``detect`` results.json)."""
        with make_progress(enabled=progress and model is not None) as bar:
            return run_scan_evaluation(self.dataset, out_dir, self.options, model=model, weights_path=weights_path,
                                       model_info=model_info, results_path=predictions_path, device=device,
                                       progress=bar if model is not None else None)

    def summary(self, evaluation: dict) -> dict:
        return evaluation["froc_per_scan"]["summary"]

    def title(self) -> str:
        return f"Lesion-level FROC per scan, {self.options.split} split: sensitivity % at FP/scan, mean (CPM)"


def protocol_for(data: Path, *, split: str, criterion: str | None = None, iou_threshold: float | None = None,
                 resamples: int = 1000, seed: int = 0, key_list: Path | None = None, lesion_label: str | None = None,
                 min_lesion_voxels: int = 1, score_threshold: float = 0.05,
                 val_fraction: float | None = None, key_slice_stride: int = 1,
                 augmentation: TestTimeAugmentation = NO_AUGMENTATION) -> EvaluationProtocol:
    """The protocol a dataset folder calls for, with each protocol's defaults.

    Volumes with lesion masks (:func:`~ctlesion.io.masked_datasets.is_masked_dataset`) get the
    per-scan protocol (criterion "centre"; IoU threshold 0.1 for "iou"); anything else the
    DeepLesion protocol (criterion "iou", threshold 0.5).

    Raises:
        ValueError: an option outside its range (a usage error).
        CtlesionError: (naming the file) an unreadable dataset or an unknown lesion label.
    """
    if is_masked_dataset(data):
        options = ScanEvaluateOptions(split=split, lesion_label=lesion_label, criterion=criterion or "centre",
                                      iou_threshold=0.1 if iou_threshold is None else iou_threshold,
                                      min_lesion_voxels=min_lesion_voxels, score_threshold=score_threshold,
                                      resamples=resamples, seed=seed, key_slice_stride=key_slice_stride,
                                      augmentation=augmentation)
        options.validate()
        dataset = open_masked_dataset(data, val_fraction=val_fraction, seed=seed)
        dataset.lesion_value(lesion_label)  # a bad label fails before a model is loaded
        return ScanProtocol(dataset, options)
    if key_slice_stride != 1:
        raise ValueError("--fast is for datasets of volumes (detect runs on whole CTs there)")
    options = EvaluateOptions(split=split, key_list=key_list, criterion=criterion or "iou",
                              iou_threshold=0.5 if iou_threshold is None else iou_threshold, resamples=resamples,
                              seed=seed, augmentation=augmentation)
    try:
        options.validate()
    except CtlesionError as exc:
        raise ValueError(str(exc)) from None
    return KeySliceProtocol(data, options)
