"""`detect` end to end on a real study, each inference optimisation on and off side by side (issue 15).

Usage: python benchmarks/study_speed.py [--study PATH] [--slice-range A B] [--weights W | --paper]
                                        [--device cpu|cuda] [--batch-size 4]

Runs :func:`ctlesion.detect.run_detect` (read, resample, windows, network, linking, writers: the
command's own code) on one study for every variant below, in this one process, and prints
seconds per study, windows/s, the process's peak resident memory (and peak CUDA memory), and the
change in the detected lesions against the plain run (lesions matched by label order, largest
box shift in voxels, largest score change). The study defaults to the thick chest CT of
``../shared/data/ct_backgrounds`` (cmb_crc, 2.5 mm), cut to slices ``--slice-range`` (default
36-59, around the lung nodule the shipped model finds on slice 48; written to a temporary NIfTI)
so that a 2-core CPU finishes in minutes; ``--paper`` times the
paper-size network (AlignShift x7, FPN 512, FC 2048, random weights: timing only, its
"lesions" mean nothing), else the shipped model (trained: the detection change is meaningful).

Variants:

* ``plain``: the detector computes and pastes masks for every detection (up to 50 per window)
  and ``detect`` drops those under its score threshold afterwards (the behaviour before the
  optimisation);
* ``default``: ``detect`` asks the detector for the detections at or above its threshold only
  (``score_min``): the mask head and pasting run for those alone (exact);
* ``bf16``: the default with bfloat16 autocast (``detect --precision bf16``; not bit-identical).
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
from ctlesion.detect import DEFAULT_WEIGHTS, DetectOptions, run_detect
from ctlesion.io import read_volume
from ctlesion.io.nifti import write_nifti
from ctlesion.io.studies import plan_studies
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.preprocess import num_resampled_slices

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--slice-range", type=int, nargs=2, default=(36, 60), metavar=("A", "B"),
                        help="slices A..B-1 of the study")
    parser.add_argument("--weights", type=Path, default=DEFAULT_WEIGHTS)
    parser.add_argument("--paper", action="store_true", help="the paper-size x7 network, random weights")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    if args.paper:
        torch.manual_seed(0)
        model, info = AlignShiftDetector(DetectorConfig(num_slices=7)).to(args.device).eval(), {}
        name = "paper-size AlignShift x7 (random weights)"
    else:
        model, info = load_detector(args.weights, args.device)
        name = args.weights.name
    threshold = recommended_score_threshold(info) if info else 0.5
    volume = read_volume(args.study)
    with tempfile.TemporaryDirectory(prefix="ctlesion-study-") as temp:
        first, stop = args.slice_range
        study = Path(temp) / f"{args.study.name.split('.')[0]}_slices{first}-{stop - 1}.nii.gz"
        cut = replace(volume, hu=volume.hu[first:stop],
                      origin_lps_mm=tuple(volume.voxel_to_lps(np.array([0.0, 0.0, float(first)]))))
        write_nifti(cut.hu, cut, study)
        windows = num_resampled_slices(cut, model.config.ref_interval_mm)
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads "
              f"({torch.get_num_threads()} used by torch), torch {torch.__version__}, device {args.device}"
              + (f" ({torch.cuda.get_device_name()})" if args.device.startswith("cuda") else ""))
        print(f"model: {name}; score threshold {threshold:.3f}; study {study.name}: {cut.shape_zyx} voxels, "
              f"{cut.slice_interval_mm:g} mm -> {windows} windows, batch {args.batch_size}")
        print(f"{'variant':<10}{'s/study':>9}{'windows/s':>11}{'vs plain':>10}{'lesions':>9}{'matched':>9}"
              f"{'max box shift (vox)':>21}{'max score change':>18}")
        runs = {}
        for variant, net, precision in (("plain", EveryMask(model), "fp32"), ("default", model, "fp32"),
                                        ("bf16", model, "bf16")):
            out = Path(temp) / variant / "results.json"
            start = time.perf_counter()
            run_detect(plan_studies([study]), out, net, info, options=DetectOptions(
                score_threshold=threshold, batch_size=args.batch_size, precision=precision), device=args.device)
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            lesions = _lesions(json.loads(out.read_text()))
            runs[variant] = (seconds, lesions)
            plain_s, plain = runs["plain"]
            matched = min(len(plain), len(lesions))
            shift = max((float(np.abs(np.subtract(a["box_vox"], b["box_vox"])).max())
                         for a, b in zip(plain, lesions)), default=0.0)
            score = max((abs(a["score"] - b["score"]) for a, b in zip(plain, lesions)), default=0.0)
            print(f"{variant:<10}{seconds:>9.1f}{windows / seconds:>11.2f}{plain_s / seconds:>9.2f}x"
                  f"{len(lesions):>9}{matched:>9}{shift:>21.3f}{score:>18.4f}", flush=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak resident memory of this process: {peak:.2f} GiB"
          + (f"; peak CUDA memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB"
             if args.device.startswith("cuda") else ""))


if __name__ == "__main__":
    main()
