"""Training step time of the detector (no data loader), by precision and memory layout, side by side.

Usage: python benchmarks/train_speed.py [--device cpu|cuda] [--context alignshift] [--slices 7]
       [--image-size 512] [--batch-size 4] [--repeats 5] [--fpn-channels 512] [--fc-channels 2048]
       [--variants fp32,bf16,bf16-cl,bf16-ckpt] [--key-slices 22484] [--crop-size PX]

One step is what ``ctlesion train`` does per batch (its ``build_model``, ``build_optimizer``,
``mixed_precision`` and ``optimisation_step``): forward with losses, backward, gradient clipping (L2 35) and an
SGD step (lr 0.02 x batch / 4, momentum 0.9, weight decay 1e-4 on weights), on a
fixed random batch of windows with 1-3 boxes and masks per image (``sample_seed`` set, so the
RPN / RoI sampling is the same in every step). Variants, all built from the same initial
weights in this one process and timed in alternating repeats (median reported):

* ``fp32``: float32;
* ``bf16`` / ``fp16``: autocast (fp16 with a gradient scaler), as ``--precision``;
* ``-cl`` suffix: channels-last weights and input (``--channels-last``);
* ``-ckpt`` suffix: gradient checkpointing of the dense layers (``--grad-checkpoint``).

Reported per variant: seconds per step, images/s, the ratio against the first variant, peak
CUDA memory (on GPU), and the time of one epoch of ``--key-slices`` key slices at that rate
(default 22,484: 70 % of DeepLesion's 32,120 key slices, the share of its official training
split; pass your split's count for the exact figure), which is the expected epoch time if the
loader keeps up (``benchmarks/loader_speed.py``). Defaults are
the paper's configuration (7 slices, 512 px, FPN 512, FC 2048, batch 4); on a CPU pass a
smaller one.

``--crop-size PX`` times what ``ctlesion train --crop-size PX`` steps on: the model is the
``--image-size`` one (its anchors), its input PX x PX crops (boxes drawn within them). To
compare whole slices with crops at the native scale, e.g. on the CPU demo model::

    python benchmarks/train_speed.py --slices 3 --fpn-channels 256 --fc-channels 512 --variants fp32 --image-size 256
    python benchmarks/train_speed.py --slices 3 --fpn-channels 256 --fc-channels 512 --variants fp32 --image-size 512 \
        --crop-size 192
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.training import TrainOptions, build_model, build_optimizer, mixed_precision, optimisation_step

PRECISIONS = ("fp32", "bf16", "fp16")


def synthetic_batch(batch: int, depth: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    """Random windows (B, 1, D, S, S) in [0, 1], intervals alternating 1 mm / 5 mm, 1-3 boxes and masks each."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 1, depth, size, size, generator=generator)
    intervals = torch.tensor([1.0 if i % 2 == 0 else 5.0 for i in range(batch)])
    targets = []
    for i in range(batch):
        count = 1 + i % 3
        corner = torch.rand(count, 2, generator=generator) * size * 0.7
        side = 8 + torch.rand(count, 2, generator=generator) * size * 0.2
        boxes = torch.cat([corner, corner + side], dim=1)
        masks = torch.zeros(count, size, size, dtype=torch.uint8)
        for n, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
            masks[n, y1:y2, x1:x2] = 1
        targets.append({"boxes": boxes, "labels": torch.ones(count, dtype=torch.int64), "masks": masks,
                        "sample_seed": i})
    return images, intervals, targets


class Variant:
    """One model + optimizer + precision + layout, stepping on the same batch."""

    def __init__(self, name: str, config: DetectorConfig, state: dict, batch: tuple, device: str) -> None:
        precision, *flags = name.split("-")
        if precision not in PRECISIONS or any(flag not in ("cl", "ckpt") for flag in flags):
            raise SystemExit(f"unknown variant {name!r}: use fp32|bf16|fp16 with optional -cl and -ckpt suffixes")
        self.name = name
        self.device = device
        options = TrainOptions(data_dir=Path("."), out_dir=Path("."), detector=config, batch_size=batch[0].shape[0],
                               precision=precision, warmup_iters=0, grad_checkpoint="ckpt" in flags,
                               channels_last="cl" in flags)
        self.model = build_model(options, resume=False)  # as `train` builds it (checkpointing, layout)
        self.model.load_state_dict(state)  # the same initial weights for every variant; keeps the layout
        self.model.to(device).train()
        images, intervals, targets = batch
        layout = torch.channels_last_3d if options.channels_last else torch.contiguous_format
        self.images = images.to(device, memory_format=layout)
        self.intervals = intervals.to(device)
        self.targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        self.params, self.optimizer, _ = build_optimizer(self.model, options, iters_per_epoch=1)
        self.autocast, self.scaler = mixed_precision(options, torch.device(device))
        self.clip_norm = options.clip_norm

    def step_s(self) -> float:
        """Seconds of one training step (synchronised on CUDA)."""
        start = time.perf_counter()
        with self.autocast:
            losses = self.model(self.images, self.intervals, self.targets)
        optimisation_step(sum(losses.values()), self.optimizer, self.scaler, self.params, self.clip_norm)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--context", default="alignshift")
    parser.add_argument("--slices", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--fpn-channels", type=int, default=512)
    parser.add_argument("--fc-channels", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=None,
                        help="comma-separated (default: fp32,bf16,bf16-cl,bf16-ckpt on CUDA; fp32,fp32-cl on CPU)")
    parser.add_argument("--crop-size", type=int, default=None,
                        help="input side, px, as `train --crop-size` (default: whole --image-size inputs)")
    parser.add_argument("--key-slices", type=int, default=22484,
                        help="key slices per epoch for the epoch time (default: 70 %% of DeepLesion's 32,120)")
    args = parser.parse_args()

    cuda = args.device.startswith("cuda")
    names = (args.variants or ("fp32,bf16,bf16-cl,bf16-ckpt" if cuda else "fp32,fp32-cl")).split(",")
    config = DetectorConfig(context=args.context, num_slices=args.slices, image_size_px=args.image_size,
                            fpn_channels=args.fpn_channels, fc_channels=args.fc_channels)
    torch.manual_seed(0)
    state = AlignShiftDetector(config).state_dict()
    input_px = args.image_size if args.crop_size is None else args.crop_size
    batch = synthetic_batch(args.batch_size, args.slices, input_px)
    variants, peak_mib = [], {}
    for name in names:  # build, warm up twice (cuDNN autotuning, allocator), record the peak memory
        variant = Variant(name, config, state, batch, args.device)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        variant.step_s()
        variant.step_s()
        if cuda:
            peak_mib[name] = torch.cuda.max_memory_allocated() / 2**20
        variants.append(variant)
    times: dict[str, list[float]] = {v.name: [] for v in variants}
    for _ in range(args.repeats):
        for variant in variants:
            times[variant.name].append(variant.step_s())

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU threads "
          f"({torch.get_num_threads()} used by torch), torch {torch.__version__}, device {args.device}"
          + (f" ({torch.cuda.get_device_name()})" if cuda else ""))
    crops = "" if args.crop_size is None else f" on {args.crop_size} px crops"
    print(f"model: {config.name}, {args.image_size} px{crops}, FPN {args.fpn_channels}, FC {args.fc_channels}; "
          f"batch {args.batch_size}; median of {args.repeats} alternating repeats after 2 warm-up steps")
    base = statistics.median(times[variants[0].name])
    print(f"{'variant':<12}{'s/step':>9}{'img/s':>9}{'vs ' + variants[0].name:>10}"
          f"{'epoch (h)':>11}" + ("  peak MiB" if cuda else ""))
    for variant in variants:
        step = statistics.median(times[variant.name])
        rate = args.batch_size / step
        line = f"{variant.name:<12}{step:>9.3f}{rate:>9.2f}{step / base:>9.2f}x{args.key_slices / rate / 3600:>11.2f}"
        print(line + (f"{peak_mib[variant.name]:>10.0f}" if cuda else ""))


if __name__ == "__main__":
    main()
