"""Windows per second of the paper-size detector on a GPU, by batch size and execution settings.

Usage: python benchmarks/gpu_throughput.py [--slices 7] [--batch-sizes 8,16,32] [--repeats 5]
                                           [--variants fp32,bf16,bf16-boxes,bf16-cl,bf16-cl-compile]

Builds the paper's network (AlignShift, DenseNet-121 blocks 1-3, FPN 512, FC 2048, 512-px
windows of --slices slices, random initialisation: timing does not depend on the weights) and
runs whole-detector inference (backbone, RPN, box and mask heads, mask pasting) on random
windows in one process, for each variant and batch size:

- ``fp32``: float32 (TF32 matrix products allowed, PyTorch's default for convolutions);
- ``bf16``: ``torch.autocast`` bfloat16;
- ``bf16-cl``: bf16 with channels-last weights and input (``to_channels_last``);
- ``bf16-cl-compile``: the same with the backbone (where the FLOPs are) through
  ``torch.compile``; its compile time (the first batch) is printed separately;
- ``bf16-boxes``: bf16 without the mask head and mask pasting (``with_masks=False``: what the
  key-slice evaluation asks for; ``detect`` asks for masks of the detections above its
  threshold only, between this and ``bf16``).

Prints windows/s (median of --repeats timed batches after two warm-up batches), the ratio
against fp32 at the same batch size, and the peak GPU memory. The goal of issue 15 is >= 400
windows/s on an H100-class GPU (its FLOP ceiling for this network is about 4,000).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig, to_channels_last

VARIANTS = ("fp32", "bf16", "bf16-boxes", "bf16-cl", "bf16-cl-compile")


def _model(variant: str, state: dict, config: DetectorConfig) -> AlignShiftDetector:
    """The detector laid out for ``variant`` with weights ``state`` (compiled lazily, at its first batch)."""
    model = AlignShiftDetector(config).cuda().eval()
    model.load_state_dict(state)
    if "-cl" in variant:
        to_channels_last(model)
    if variant.endswith("compile"):
        model.backbone = torch.compile(model.backbone, dynamic=False)
    return model


def _batch_s(model: AlignShiftDetector, images: torch.Tensor, intervals: torch.Tensor, variant: str) -> float:
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if variant.startswith("bf16")
                else contextlib.nullcontext())
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode(), autocast:
        model(images, intervals, with_masks=not variant.endswith("boxes"))
    torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=7)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--batch-sizes", default="8,16,32")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("gpu_throughput.py: no CUDA device")

    torch.manual_seed(0)
    config = DetectorConfig(context="alignshift", num_slices=args.slices, image_size_px=args.image_size)
    state = AlignShiftDetector(config).state_dict()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(f"GPU {torch.cuda.get_device_name()}, torch {torch.__version__}; network {config.name}, "
          f"{args.image_size} px, FPN {config.fpn_channels}, FC {config.fc_channels}; "
          f"median of {args.repeats} batches after 2 warm-up batches")
    print(f"{'variant':<18}{'batch':>6}{'windows/s':>11}{'vs fp32':>9}{'peak MiB':>10}{'first batch s':>15}")
    fp32_rate: dict[int, float] = {}
    for variant in args.variants.split(","):
        model = _model(variant, state, config)
        for batch in batches:
            images = torch.rand(batch, 1, args.slices, args.image_size, args.image_size, device="cuda")
            if "-cl" in variant:
                images = images.contiguous(memory_format=torch.channels_last_3d)
            intervals = torch.full((batch,), 5.0, device="cuda")
            torch.cuda.reset_peak_memory_stats()
            try:
                first = _batch_s(model, images, intervals, variant)  # compiles here for -compile
                _batch_s(model, images, intervals, variant)
                times = [_batch_s(model, images, intervals, variant) for _ in range(args.repeats)]
            except Exception as error:  # noqa: BLE001 - a variant that fails is reported, the others run
                print(f"{variant:<18}{batch:>6}  failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
                break
            rate = batch / statistics.median(times)
            if variant == "fp32":
                fp32_rate[batch] = rate
            ratio = f"{rate / fp32_rate[batch]:>8.2f}x" if batch in fp32_rate else f"{'':>9}"
            print(f"{variant:<18}{batch:>6}{rate:>11.1f}{ratio}{torch.cuda.max_memory_allocated() / 2**20:>10.0f}"
                  f"{first:>15.1f}", flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
