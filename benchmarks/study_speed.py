"""`detect` end to end on a real study, each inference optimisation on and off side by side (issue 15).

Usage: python benchmarks/study_speed.py [--study PATH] [--slice-range A B] [--weights W | --paper]
                                        [--device cpu|cuda] [--batch-size 4] [--score-threshold T]
                                        [--variants plain,default,...] [--margins 0,32]

Runs :func:`ctlesion.detect.run_detect` (read, resample, windows, network, linking, writers: the
command's own code) on one study for every variant below, in this one process, and prints
seconds per study, windows/s (the study's windows over the seconds, whatever a variant skips),
the speed-up against the plain run, the process's peak resident memory (and each variant's peak
CUDA memory), and the change in the detected lesions against the plain run: lesions matched
one to one by 3D box IoU >= 0.5 (greedy, highest score first), the lesions of either run left
unmatched, the largest box shift in voxels and the largest score change of the matched ones.
Reading and resampling the study alone are timed first (their share of a plain run).

The study defaults to the thick chest CT of ``../shared/data/ct_backgrounds`` (cmb_crc, 2.5 mm),
cut to slices ``--slice-range`` (default 36-59, around the lung nodule the shipped model finds on
slice 48; written to a temporary NIfTI) so that a 2-core CPU finishes in minutes; ``--paper``
times the paper-size network (AlignShift x7, FPN 512, FC 2048, random weights: timing only, its
"lesions" mean nothing), else the shipped model (trained: the detection change is meaningful;
``--score-threshold 0.2`` compares many more lesions than its recommended threshold).

Variants (``--variants``, default all):

* ``plain``: the behaviour before issue 15: masks computed and pasted for every detection (up
  to 50 per window), ``detect``'s score threshold applied afterwards, every window run on the
  whole square;
* ``score-min``: the detector returns only detections at or above the threshold, so its mask
  head and pasting run for those alone (exact);
* ``default``: ``detect``'s defaults: ``score-min``, windows whose key slice holds no body
  skipped, each batch cut to its body bounding box + 64 px;
* ``crop-M`` (``--margins M,...``): the default with another crop margin;
* ``bf16``: the default with bfloat16 autocast (``detect --precision bf16``; not bit-identical);
* ``fast``: the default with the network on every second window (``detect --fast``);
* ``fast-bf16``: both;
* ``tta``: the default with test-time augmentation (``detect --tta``: the left-right flipped
  windows too, fused; not in the default list);
* ``zoom``: the default with the windows zoomed in x 1.5 too (``detect --tta-zoom 1.5``; not in
  the default list).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ctlesion.checkpoint import load_detector, recommended_score_threshold
from ctlesion.detect import DEFAULT_WEIGHTS, FAST_KEY_SLICE_STRIDE, DetectOptions, run_detect
from ctlesion.io import read_volume
from ctlesion.io.nifti import write_nifti
from ctlesion.io.studies import plan_studies
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.predict import TestTimeAugmentation
from ctlesion.preprocess import network_window, num_resampled_slices, resample_to_reference

STUDY = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_backgrounds" / "cmb_crc_msb-01068_chest.nii.gz"


class EveryMask(torch.nn.Module):
    """The detector as it ran before ``score_min``: masks for every detection, the threshold applied after."""

    def __init__(self, model: AlignShiftDetector):
        super().__init__()
        self.model = model
        self.config = model.config

    def forward(self, images, intervals, targets=None, *, score_min: float = 0.0, with_masks: bool = True):
        outputs = self.model(images, intervals)
        return [{key: value[out["scores"] >= score_min] for key, value in out.items()} for out in outputs]


def _lesions(results: dict) -> list[dict]:
    return [lesion for study in results["studies"] for lesion in study["lesions"]]


def _box_volume(box: np.ndarray) -> float:
    """Voxels of an (x1, y1, z1, x2, y2, z2) box (continuous x, y; inclusive z slice indices)."""
    return float(np.prod(np.maximum(box[3:] - box[:3] + [0, 0, 1], 0)))


def _box_iou_3d(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (x1, y1, z1, x2, y2, z2) voxel boxes."""
    inter = _box_volume(np.concatenate([np.maximum(a[:3], b[:3]), np.minimum(a[3:], b[3:])]))
    return inter / (_box_volume(a) + _box_volume(b) - inter)


def compare(reference: list[dict], lesions: list[dict]) -> tuple[int, int, int, float, float]:
    """(matched, unmatched in reference, unmatched in lesions, max box shift vox, max score change)."""
    pairs, used = [], set()
    for a in reference:  # results.json lists lesions by descending score
        ious = [(_box_iou_3d(np.asarray(a["box_vox"], float), np.asarray(b["box_vox"], float)), j)
                for j, b in enumerate(lesions) if j not in used]
        best = max(ious, default=(0.0, -1))
        if best[0] >= 0.5:
            used.add(best[1])
            pairs.append((a, lesions[best[1]]))
    shift = max((float(np.abs(np.subtract(a["box_vox"], b["box_vox"])).max()) for a, b in pairs), default=0.0)
    score = max((abs(a["score"] - b["score"]) for a, b in pairs), default=0.0)
    return len(pairs), len(reference) - len(pairs), len(lesions) - len(pairs), shift, score


def _window_seconds(volume, config) -> float:
    """Seconds per window to build ``detect``'s network inputs (window, HU mapping, in-plane fit)."""
    start = time.perf_counter()
    for z in range(volume.shape_zyx[0]):
        network_window(volume, z, config)
    return (time.perf_counter() - start) / volume.shape_zyx[0]


def variants(model, margins: list[int]) -> dict[str, tuple[torch.nn.Module, dict]]:
    """Every variant's network and DetectOptions fields (module doc)."""
    out = {"plain": (EveryMask(model), {"skip_no_body": False, "body_crop_margin_px": None}),
           "score-min": (model, {"skip_no_body": False, "body_crop_margin_px": None}),
           "default": (model, {})}
    out.update({f"crop-{m}": (model, {"body_crop_margin_px": m}) for m in margins})
    out.update({"bf16": (model, {"precision": "bf16"}),
                "fast": (model, {"key_slice_stride": FAST_KEY_SLICE_STRIDE}),
                "fast-bf16": (model, {"key_slice_stride": FAST_KEY_SLICE_STRIDE, "precision": "bf16"}),
                "tta": (model, {"augmentation": TestTimeAugmentation(flip=True)}),
                "zoom": (model, {"augmentation": TestTimeAugmentation(zoom=1.5)})})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--slice-range", type=int, nargs=2, default=(36, 60), metavar=("A", "B"),
                        help="slices A..B-1 of the study")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--paper", action="store_true", help="the paper-size x7 network, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--score-threshold", type=float, help="default: the model's recommended one (0.5 without)")
    parser.add_argument("--variants", default="plain,score-min,default,bf16,fast,fast-bf16",
                        help="comma-separated, run in this order; the first is the reference")
    parser.add_argument("--margins", default="", help="comma-separated crop margins (px) for crop-M variants")
    args = parser.parse_args()

    if args.paper:
        torch.manual_seed(0)
        model, info = AlignShiftDetector(DetectorConfig(num_slices=7)).to(args.device).eval(), {}
        name = "paper-size AlignShift x7 (random weights)"
    else:
        model, info = load_detector(args.weights, args.device)
        name = args.weights.name
    threshold = args.score_threshold if args.score_threshold is not None else (
        recommended_score_threshold(info) if info else 0.5)
    margins = [int(m) for m in args.margins.split(",") if m]
    table = variants(model, margins)
    chosen = [v for v in args.variants.split(",") if v] + [f"crop-{m}" for m in margins]
    unknown = [v for v in chosen if v not in table]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(table)}")
    volume = read_volume(args.study)
    with tempfile.TemporaryDirectory(prefix="ctlesion-study-") as temp:
        first, stop = args.slice_range
        study = Path(temp) / f"{args.study.name.split('.')[0]}_slices{first}-{stop - 1}.nii.gz"
        cut = replace(volume, hu=volume.hu[first:stop],
                      origin_lps_mm=tuple(volume.voxel_to_lps(np.array([0.0, 0.0, float(first)]))))
        write_nifti(cut.hu, cut, study)
        windows = num_resampled_slices(cut, model.config.ref_interval_mm)
        start = time.perf_counter()
        network_volume = resample_to_reference(read_volume(study), model.config.ref_interval_mm)
        read_s = time.perf_counter() - start
        window_s = _window_seconds(network_volume, model.config)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads "
              f"({torch.get_num_threads()} used by torch), torch {torch.__version__}, device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
        print(f"model: {name}; score threshold {threshold:.3f}; study {study.name}: {cut.shape_zyx} voxels, "
              f"{cut.slice_interval_mm:g} mm -> {windows} windows, batch {args.batch_size}; "
              f"reading + resampling alone {read_s:.2f} s; building the network inputs {1000 * window_s:.1f} ms "
              "per window")
        print(f"{'variant':<11}{'s/study':>9}{'windows/s':>11}{'speed-up':>10}{'lesions':>9}{'matched':>9}"
              f"{'only ref':>9}{'only this':>10}{'max box shift (vox)':>21}{'max score change':>18}"
              + ("  peak CUDA GiB" if args.device.startswith("cuda") else ""))
        with torch.no_grad():  # warm-up (allocator, kernels), not timed
            config = model.config
            model(torch.zeros(1, 1, config.num_slices, 64, 64, device=args.device),
                  torch.full((1,), 2.0, device=args.device))
        runs = {}
        for variant in chosen:
            net, fields = table[variant]
            out = Path(temp) / variant / "results.json"
            if args.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            run_detect(plan_studies([study]), out, net, info, options=DetectOptions(
                score_threshold=threshold, batch_size=args.batch_size, **fields), device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            lesions = _lesions(json.loads(out.read_text()))
            runs[variant] = (seconds, lesions)
            reference_s, reference = runs[chosen[0]]
            matched, only_ref, only_this, shift, score = compare(reference, lesions)
            print(f"{variant:<11}{seconds:>9.1f}{windows / seconds:>11.2f}{reference_s / seconds:>9.2f}x"
                  f"{len(lesions):>9}{matched:>9}{only_ref:>9}{only_this:>10}{shift:>21.3f}{score:>18.4f}"
                  + (f"{torch.cuda.max_memory_allocated() / 2**30:>15.2f}" if args.device.startswith("cuda") else ""),
                  flush=True)
        reference_s = runs[chosen[0]][0]
        print(f"reading + resampling: {100 * read_s / reference_s:.1f} % of the {chosen[0]} run; building the "
              f"network inputs: {100 * window_s * windows / reference_s:.1f} %")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process: {peak:.2f} GiB")


if __name__ == "__main__":
    main()
