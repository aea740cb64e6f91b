"""Key-slice windows per second of the training data loader alone (no model), by worker count.

Usage: python benchmarks/loader_speed.py [--data DIR] [--mask-cache DIR]
       [--workers 0,1,2] [--slices 7] [--size 512] [--batch-size 4] [--min-windows 240]
       [--num-series 32] [--keep DIR] [--volumes]

With ``--volumes`` (and no ``--data``) the same series are also simulated in the nnU-Net
layout (``--layout nnunet``: NIfTI volumes with 3D lesion masks) and the loader of training on
volumes (:mod:`ctlesion.data.volume_dataset`: key slices through every lesion, windows from
memory-mapped cached cases, true masks) is measured beside the DeepLesion one, worker count by
worker count, in this one process (issue 14's goal: not slower than the DeepLesion loader).

Without ``--data`` a DeepLesion-layout dataset is simulated into a temporary folder
(``ctlesion.data.simulate.simulate_dataset`` on the shipped sample CT, 512 px slices, thin
1 mm and thick 5 mm series: ``--num-series`` series give about two key slices each). The
pseudo-mask cache is filled first (``prepare_mask_cache``, the work of ``ctlesion prepare``,
timed separately), so the loader reads masks from disk as in training.

For each worker count, in this one process, the training split is loaded exactly as
``ctlesion train`` loads it in one process: ``train_dataset`` (the paper's augmentation,
shift / scale / rotate + flip, SPEC section 7, with pseudo-masks) and one ``make_train_loader``
per epoch (its shuffled batches, fresh workers every epoch), until at least ``--min-windows``
windows have come out. Reported per worker count:

* steady windows/s: windows after each epoch's first batch over the time after it (what a
  full 32,120-key-slice pass sees, where worker start-up is negligible);
* overall windows/s: every window over the whole wall time, worker start-up included.

The loader must not limit a GPU: the issue's goals are >= 100 windows/s with 8 workers on a
16-core machine and >= 10 windows/s on a 2-core one.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch

from ctlesion.data.dataset import KeySliceItems
from ctlesion.data.mask_cache import prepare_mask_cache
from ctlesion.data.simulate import SAMPLE_BACKGROUND, simulate_dataset
from ctlesion.distributed import DistContext
from ctlesion.networks.detector import DetectorConfig
from ctlesion.training import TrainOptions, make_train_loader, train_dataset


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (Linux), else ``platform.processor()``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def usable_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def measure(options: TrainOptions, dataset: KeySliceItems, min_windows: int) -> dict:
    """Iterate whole epochs of the training loader; windows/s steady and overall."""
    ctx = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    windows = steady_windows = 0
    steady_s = 0.0
    epoch = 0
    started = time.perf_counter()
    while windows < min_windows:
        first_batch_at = None
        for images, _, _ in make_train_loader(dataset, options, ctx, epoch, start_step=0):
            windows += images.shape[0]
            if first_batch_at is None:
                first_batch_at = time.perf_counter()
            else:
                steady_windows += images.shape[0]
        if first_batch_at is not None:
            steady_s += time.perf_counter() - first_batch_at
        epoch += 1
        if first_batch_at is None:  # empty split
            break
    total_s = time.perf_counter() - started
    return {"workers": options.num_workers, "epochs": epoch, "windows": windows,
            "steady": steady_windows / steady_s if steady_s > 0 else float("nan"),
            "overall": windows / total_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, help="DeepLesion-layout dataset (default: simulate one)")
    parser.add_argument("--mask-cache", type=Path, help="pseudo-mask cache folder (default: DATA/ctlesion_cache/...)")
    parser.add_argument("--workers", default="0,1,2", help="comma-separated worker counts")
    parser.add_argument("--slices", type=int, default=7)
    parser.add_argument("--size", type=int, default=512, help="network input side, px")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--min-windows", type=int, default=240)
    parser.add_argument("--num-series", type=int, default=32, help="series to simulate without --data")
    parser.add_argument("--keep", type=Path, help="simulate into this folder and keep it")
    parser.add_argument("--volumes", action="store_true", help="also the loader of the same series as volumes")
    args = parser.parse_args()
    worker_counts = [int(w) for w in args.workers.split(",")]

    print(f"machine: {cpu_name()}, {usable_cpus()} usable CPUs ({os.cpu_count()} in all); {platform.platform()}")
    print(f"python {platform.python_version()}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"opencv {cv2.__version__} ({cv2.getNumThreads()} threads), numpy {np.__version__}")
    temp = None
    data = args.data
    if data is None:
        temp = None if args.keep else tempfile.mkdtemp(prefix="ctlesion-loader-")
        data = args.keep or Path(temp) / "data"
        started = time.perf_counter()
        simulate_dataset(data, backgrounds=[SAMPLE_BACKGROUND], num_series=args.num_series, image_size_px=512,
                         seed=0, overwrite=True)
        print(f"simulated {args.num_series} series (512 px) in {time.perf_counter() - started:.1f} s: {data}")
    volumes = None
    if args.volumes and args.data is None:
        volumes = data.parent / (data.name + "_nnunet")
        simulate_dataset(volumes, backgrounds=[SAMPLE_BACKGROUND], num_series=args.num_series, image_size_px=512,
                         seed=0, overwrite=True, layout="nnunet")
    try:
        started = time.perf_counter()
        report = prepare_mask_cache(data, cache_dir=args.mask_cache, split="train",
                                    workers=min(usable_cpus(), 8), progress=False)
        print(f"pseudo-mask cache warmed in {time.perf_counter() - started:.1f} s: {report.computed} computed, "
              f"{report.cached} already cached, {report.failed} failed ({report.cache_dir})")
        base = TrainOptions(data_dir=data, out_dir=data, batch_size=args.batch_size, mask_cache_dir=args.mask_cache,
                            detector=DetectorConfig(num_slices=args.slices, image_size_px=args.size))
        dataset = train_dataset(base)
        thin = sum(k.slice_interval_mm < 2.0 for k in dataset.keys)
        print(f"train split: {len(dataset)} key slices ({thin} thin, {len(dataset) - thin} thick); "
              f"windows of {args.slices} slices at {args.size} px, batch {args.batch_size}, augmentation on, masks on")
        loaders = {"deeplesion": (base, dataset)}
        if volumes is not None:
            on_volumes = replace(base, data_dir=volumes, out_dir=volumes, lesion_label="lesion", mask_cache_dir=None)
            started = time.perf_counter()
            volume_items = train_dataset(on_volumes)
            print(f"volumes: {len(volume_items.cases)} train cases cached in {time.perf_counter() - started:.1f} s, "
                  f"{len(volume_items)} key slices ({volume_items.num_negative} negative)")
            loaders["volumes"] = (on_volumes, volume_items)
        print()
        print(f"{'loader':>10}  {'workers':>7}  {'epochs':>6}  {'windows':>7}  {'steady win/s':>12}  {'overall win/s':>13}")
        for workers in worker_counts:
            for name, (options, items) in loaders.items():
                row = measure(replace(options, num_workers=workers), items, args.min_windows)
                print(f"{name:>10}  {row['workers']:>7}  {row['epochs']:>6}  {row['windows']:>7}  "
                      f"{row['steady']:>12.1f}  {row['overall']:>13.1f}", flush=True)
    finally:
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    main()
