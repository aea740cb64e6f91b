"""Training loop for the detector on a DeepLesion-layout dataset or on CT volumes with lesion
masks (nnU-Net v2 raw / nnDetection layout), on one or many processes.

Recipe (SPEC section 7, released code of the AlignShift paper): SGD, lr 0.02 per 4 images
(scaled linearly with the global batch), momentum 0.9, weight decay 1e-4 (not on biases and
norms), gradient clipping at L2 35, linear warmup over 500 iterations from 1 %, lr x 0.1 after
45 % and 80 % of the epochs (epochs 9 and 16 of 20). Mixed precision on CUDA (bfloat16
autocast by default, or float16 with a gradient scaler).

Many processes (``torchrun --nproc-per-node N -m ctlesion train ...``; see
:mod:`ctlesion.distributed`): each process takes ``batch_size / N`` images of every global
batch (a ``DistributedSampler`` over a permutation seeded by (seed, epoch)), BatchNorm is
synchronised, gradients are averaged by DDP, the RPN/RoI sampling of each image is seeded by
(seed, epoch, image) and the mask loss is averaged per image, so N processes compute what one
process computes with the same global batch. Only rank 0 logs, validates and writes files.

Crops (``crop``, ``ctlesion train --crop-size PX``): each training item is a PX x PX crop of the
key-slice window at the model's native pixel scale, around a lesion or (``negative_fraction``)
anywhere in the body (:mod:`ctlesion.data.augment`), so a CPU step costs (PX / S)^2 of a whole
slice's and sees lesions at the size they have at inference; validation and ``evaluate`` stay
on whole slices. Masks (``mask_source``): the dataset's true masks where it has them
(``DATA/masks/``), else GrabCut pseudo-masks (:mod:`ctlesion.data.mask_cache`). Frozen parts
(``freeze``, ``ctlesion train --freeze PART``): their weights and BatchNorm statistics stay as
they were (e.g. fine-tune only the mask head of a checkpoint: its boxes and scores do not move).

Volumes (``lesion_label``; ``ctlesion train --data DATASET --lesion-label NAME``): the items are
key slices through the train cases' lesions and negative slices, with true masks from the label
maps (:mod:`ctlesion.data.volume_dataset`); validation after each epoch scores the val cases'
largest lesion cross-sections per slice, DeepLesion style
(:func:`ctlesion.evaluate.volumes.validate_on_key_slices`).

A run folder holds ``config.json`` (the options), ``metrics.jsonl`` (one JSON line per step
and per epoch), ``epoch_NNN.safetensors`` + ``.json`` (weights after every epoch, with the
validation FROC), ``best.safetensors`` + ``.json`` (the epoch with the best validation
avg[0.5-4]), ``state.pt`` (weights, optimizer, scheduler, scaler, position, RNG, written
atomically every ``checkpoint_every`` steps and after every epoch; plain tensors, read with
``torch.load(weights_only=True)``) and, when the ``tensorboard`` package is installed,
``tensorboard/`` event files. ``resume`` continues exactly where ``state.pt`` left off,
mid-epoch included.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ctlesion import __version__
from ctlesion.atomic import atomic_write_text
from ctlesion.checkpoint import load_detector, save_checkpoint
from ctlesion.choices import DETECTOR_PARTS, MASK_LOSSES, PRECISIONS
from ctlesion.data.augment import AugmentConfig, CropConfig
from ctlesion.data.dataset import DeepLesionDataset, collate_detection
from ctlesion.data.mask_cache import MASK_SOURCES
from ctlesion.data.volume_dataset import VolumeKeySliceDataset
from ctlesion.distributed import (
    DistContext,
    barrier,
    init_distributed,
    mean_over_processes,
    shutdown,
    synchronise_batchnorm,
    unwrap,
    wrap_ddp,
)
from ctlesion.errors import CtlesionError
from ctlesion.io.masked_datasets import open_masked_dataset
from ctlesion.networks.backbone import torchvision_2d
from ctlesion.networks.detector import (
    AlignShiftDetector,
    DetectorConfig,
    freeze_parts,
    hold_frozen_norms,
    to_channels_last,
)
from ctlesion.networks.pretrained import load_pretrained_2d

log = logging.getLogger(__name__)

RUN_FILES = ("config.json", "metrics.jsonl", "state.pt", "best.safetensors", "best.json")


@dataclass
class TrainOptions:
    """Options of one training run (stored in ``RUN_DIR/config.json``)."""

    data_dir: Path
    out_dir: Path
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    epochs: int = 20
    batch_size: int = 4  # global: over all processes
    base_lr: float = 0.02  # per 4 images
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 35.0
    warmup_iters: int = 500
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)  # SPEC 7 recipe; None: none
    mask_cache_dir: Path | None = None  # pseudo-mask cache; None: DATA/ctlesion_cache/pseudo_masks
    keep_noisy: bool = False  # train on lesions marked Possibly_noisy too (the paper drops them)
    num_workers: int = 2
    seed: int = 0
    max_iters_per_epoch: int | None = None
    lr_drop_epochs: tuple[int, ...] | None = None  # default: 45 % and 80 % of the epochs (9, 16 of 20)
    pretrained: str | None = None  # "imagenet" (local torchvision cache) or a 2D state dict file
    init_from: str | None = None  # a ctlesion checkpoint whose whole detector starts the run (fine-tuning)
    checkpoint_every: int = 500  # steps between mid-epoch state.pt checkpoints (0: epoch ends only)
    precision: str = "auto"  # auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (with a scaler) or fp32
    grad_checkpoint: bool = False  # recompute dense layers in backward (less memory, ~30 % slower)
    channels_last: bool = False  # channels-last weights and inputs (NDHWC convolutions; for CUDA)
    crop: CropConfig | None = None  # train on crops at the native scale (data.augment); None: whole slices
    mask_source: str = "auto"  # "auto": the dataset's true masks (DATA/masks/) where present, else GrabCut; "grabcut"
    mask_loss: str = "dice"  # "dice" (released configuration) or "dice+bce" (choices.MASK_LOSSES)
    freeze: tuple[str, ...] = ()  # detector parts not trained (networks.detector.DETECTOR_PARTS), e.g. all but mask-head
    # Datasets of volumes with lesion masks (nnU-Net v2 raw / nnDetection layout; data.volume_dataset):
    lesion_label: str | None = None  # the lesion label (name or value); None: a DeepLesion-layout dataset
    min_lesion_voxels: int = 1  # smaller lesion components are dropped
    val_fraction: float | None = None  # share of training cases in val when the dataset has no splits file

    @property
    def lr(self) -> float:
        """Learning rate scaled linearly with the global batch (0.02 for 4 images)."""
        return self.base_lr * self.batch_size / 4

    def drop_epochs(self) -> tuple[int, ...]:
        """Epochs after which the lr is multiplied by 0.1: ``lr_drop_epochs``, or 9 and 16 of 20 scaled."""
        if self.lr_drop_epochs is not None:
            return tuple(self.lr_drop_epochs)
        return max(1, round(self.epochs * 0.45)), max(1, round(self.epochs * 0.8))

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(data_dir=str(self.data_dir), out_dir=str(self.out_dir), detector=self.detector.to_dict(),
                    mask_cache_dir=None if self.mask_cache_dir is None else str(self.mask_cache_dir))
        return data


def lr_factor(iteration: int, iters_per_epoch: int, options: TrainOptions) -> float:
    """Multiplier of the base lr at an iteration: linear warmup from 1 %, then step decay."""
    warmup = 1.0
    if iteration < options.warmup_iters:
        warmup = 0.01 + 0.99 * iteration / options.warmup_iters
    epoch = iteration // max(iters_per_epoch, 1)
    drops = sum(epoch >= e for e in options.drop_epochs())
    return warmup * 0.1**drops


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": torch.tensor(np.random.randint(0, 2**31 - 1, dtype=np.int64)),
             "python": torch.tensor(random.randint(0, 2**31 - 1))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    np.random.seed(int(state["numpy"]))
    random.seed(int(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"].cpu())


def prepare_run_dir(options: TrainOptions, resume: bool, overwrite: bool = False) -> None:
    """Create the run folder, or check that it holds the run to resume.

    With ``overwrite``, the files of an earlier run in the folder (config, metrics, state,
    checkpoints, TensorBoard logs) are deleted first; other files are left alone.

    Raises:
        CtlesionError: the folder holds another run (without resume or overwrite), or nothing
            to resume.
    """
    out = options.out_dir
    if resume:
        if not (out / "state.pt").is_file():
            raise CtlesionError("nothing to resume: no state.pt in the run folder", out)
        return
    if (out / "config.json").exists() and not overwrite:
        raise CtlesionError("folder already holds a training run (use --resume to continue it or --overwrite)", out)
    if overwrite and out.is_dir():
        for path in [*(out / name for name in RUN_FILES), *out.glob("epoch_*.safetensors"), *out.glob("epoch_*.json")]:
            path.unlink(missing_ok=True)
        shutil.rmtree(out / "tensorboard", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(options.to_json(), indent=2) + "\n")


class SeededItems(Dataset):
    """Training items of one epoch, each target tagged with ``sample_seed`` = f(seed, epoch, index).

    The detector seeds each image's RPN / RoI sampling with it (``SeededSampler``), so the
    result does not depend on which process or batch position the image lands in.
    """

    def __init__(self, dataset: DeepLesionDataset, seed: int, epoch: int):
        self.dataset, self.seed, self.epoch = dataset, seed, epoch
        dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, interval, target = self.dataset[index]
        target["sample_seed"] = int(np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(1)[0])
        return image, interval, target


def epoch_batches(num_items: int, batch_size: int, ctx: DistContext, seed: int, epoch: int) -> list[list[int]]:
    """This process's share of every global batch of an epoch.

    The epoch's order is ``DistributedSampler``'s permutation seeded by (seed, epoch); process r
    of N takes positions r, r + N, ... of it and cuts them into batches of ``batch_size / N``,
    so global batch k is the same set of items for any N dividing ``batch_size``.
    """
    sampler = DistributedSampler(range(num_items), num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                 seed=seed, drop_last=False)
    sampler.set_epoch(epoch)
    indices = list(sampler)
    per_process = batch_size // ctx.world_size
    return [indices[i : i + per_process] for i in range(0, len(indices), per_process)]


def make_train_loader(dataset: DeepLesionDataset, options: TrainOptions, ctx: DistContext, epoch: int,
                      start_step: int) -> DataLoader:
    """The epoch's loader from step ``start_step`` on (earlier batches are not read)."""
    batches = epoch_batches(len(dataset), options.batch_size, ctx, options.seed, epoch)[start_step:]
    return DataLoader(SeededItems(dataset, options.seed, epoch), batch_sampler=batches,
                      num_workers=options.num_workers, collate_fn=collate_detection,
                      pin_memory=ctx.device.type == "cuda")


def iterations_per_epoch(num_items: int, options: TrainOptions, ctx: DistContext) -> int:
    per_process = -(-num_items // ctx.world_size)
    steps = -(-per_process // (options.batch_size // ctx.world_size))
    return steps if options.max_iters_per_epoch is None else min(steps, options.max_iters_per_epoch)


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def build_model(options: TrainOptions, resume: bool) -> AlignShiftDetector:
    """The detector to train: a whole ctlesion checkpoint (``options.init_from``, fine-tuning),
    pretrained 2D weights (``options.pretrained``), or random init.

    A resumed run skips both (its checkpoint replaces them).

    Raises:
        CtlesionError: weights not found or unreadable, 2D weights not fitting DenseNet-121, or a
            checkpoint whose detector configuration differs from ``options.detector``.
    """
    if options.init_from is not None and not resume:
        model, _ = load_detector(Path(options.init_from))
        if model.config != options.detector:
            raise CtlesionError("the checkpoint's detector configuration differs from the run's",
                                options.init_from)
        log.info("initialised from the detector of %s", options.init_from)
    elif options.pretrained is None or resume:
        model = AlignShiftDetector(options.detector)
    else:
        net_2d = torchvision_2d(options.detector.backbone)
        report = load_pretrained_2d(net_2d, options.pretrained, options.detector.backbone)
        log.info("initialised from %s", report.summary())
        model = AlignShiftDetector(options.detector, net_2d=net_2d)
    freeze_parts(model, options.freeze)
    model.roi_heads.mask_loss = options.mask_loss
    if options.grad_checkpoint:
        model.backbone.set_gradient_checkpointing(True)
    if options.channels_last:
        to_channels_last(model)
    return model


def train_dataset(options: TrainOptions) -> DeepLesionDataset | VolumeKeySliceDataset:
    """The training split as the run sees it: augmented, cropped, with masks. DeepLesion layout:
    the key slices of ``Train_Val_Test`` = 1; volumes (``options.lesion_label``): the key slices of
    the train cases (:mod:`ctlesion.data.volume_dataset`).

    Raises:
        CtlesionError: as :class:`~ctlesion.data.dataset.DeepLesionDataset`, or a crop larger
            than the network input, or an unknown mask source.
    """
    if options.crop is not None and options.crop.size_px > options.detector.image_size_px:
        raise CtlesionError(f"crop size {options.crop.size_px} px exceeds the network input size "
                            f"{options.detector.image_size_px} px", options.out_dir)
    if options.mask_source not in MASK_SOURCES:
        raise CtlesionError(f"unknown mask source {options.mask_source!r}; expected one of "
                            f"{', '.join(MASK_SOURCES)}", options.out_dir)
    if options.lesion_label is not None:
        return volume_split(options, "train", augment=options.augment, crop=options.crop)
    return DeepLesionDataset.for_detector(options.data_dir, "train", options.detector, augment=options.augment,
                                          mask_cache_dir=options.mask_cache_dir, drop_noisy=not options.keep_noisy,
                                          seed=options.seed, crop=options.crop, mask_source=options.mask_source)


def volume_split(options: TrainOptions, split: str, **kwargs) -> VolumeKeySliceDataset:
    """A split of the run's dataset of volumes (``options.lesion_label`` set) as key-slice items
    (:mod:`ctlesion.data.volume_dataset`); ``kwargs`` as its constructor.

    Raises:
        CtlesionError: an unreadable dataset, an unknown lesion label, or a case that cannot be read.
    """
    dataset = open_masked_dataset(options.data_dir, val_fraction=options.val_fraction, seed=options.seed)
    return VolumeKeySliceDataset.for_detector(dataset, split, dataset.lesion_value(options.lesion_label),
                                              options.detector, seed=options.seed,
                                              min_lesion_voxels=options.min_lesion_voxels,
                                              cache_dir=options.mask_cache_dir, **kwargs)


def validate(model: AlignShiftDetector, options: TrainOptions, device: torch.device) -> dict | None:
    """The validation after an epoch: the DeepLesion FROC of the val split (``evaluate_model``), or
    for volumes the per-slice figures on the val cases' largest lesion cross-sections; None
    without a val split."""
    from ctlesion.evaluate.run import evaluate_model  # noqa: PLC0415 (evaluation imports the loader stack)
    from ctlesion.evaluate.volumes import validate_on_key_slices  # noqa: PLC0415

    if options.lesion_label is None:
        return evaluate_model(model, options.data_dir, "val", device=device, progress=False)
    items = volume_split(options, "val", with_masks=False, other_slices_per_lesion=0, negative_fraction=0.0)
    return validate_on_key_slices(model, items, device=device)


def mixed_precision(options: TrainOptions, device: torch.device) -> tuple[torch.autocast, torch.amp.GradScaler]:
    """The autocast context and gradient scaler of ``options.precision`` on ``device``.

    ``auto`` is bf16 on CUDA and fp32 elsewhere; fp16 enables the scaler, the others leave it a
    pass-through.

    Raises:
        CtlesionError: for an unknown precision.
    """
    if options.precision not in PRECISIONS:
        raise CtlesionError(f"precision must be one of {PRECISIONS}, got {options.precision!r}", options.out_dir)
    mode = options.precision if options.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    autocast = torch.autocast(device.type, dtype=dtype, enabled=mode in ("bf16", "fp16"))
    return autocast, torch.amp.GradScaler(device.type, enabled=mode == "fp16")


@dataclass
class RunState:
    """Where a run stands: the next step to run is ``step`` of epoch ``epoch`` (both from 0)."""

    epoch: int = 0
    step: int = 0
    best_avg: float | None = None
    loss_sums: dict = field(default_factory=dict)
    metrics_bytes: int = 0


def _save_state(path: Path, model, optimizer, scheduler, scaler, run: RunState) -> None:
    """Write ``state.pt`` atomically; on failure (e.g. disk full) the previous one stays intact.

    Raises:
        CtlesionError: the state could not be written.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    payload = {"model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
               "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "run": asdict(run),
               "rng": _rng_state(), "version": __version__, "config": unwrap(model).config.to_dict()}
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CtlesionError(f"cannot write the training state ({exc.strerror or exc}); the previous "
                            f"{path.name} is intact, resume from it with --resume", path) from None


def _restore(path: Path, model: AlignShiftDetector, optimizer, scheduler, scaler) -> RunState:
    """Load ``state.pt`` into the model, optimizer, scheduler and scaler; return the position."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any failure means an unusable state file)
        raise CtlesionError(f"cannot read the training state ({type(exc).__name__})", path) from None
    if "model" not in state:
        raise CtlesionError("state.pt from an older ctlesion version (no weights in it): start a new run", path)
    if DetectorConfig.from_dict(state["config"]) != model.config:
        raise CtlesionError("the run's state was made with another detector configuration", path)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"])
    run = RunState(**state["run"])
    log.info("resuming %s at epoch %d, step %d", path.parent, run.epoch + 1, run.step)
    return run


def _tensorboard(out_dir: Path, enabled: bool):
    """A TensorBoard SummaryWriter in ``out_dir/tensorboard`` when the package is installed, else None."""
    if not enabled:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        log.info("tensorboard is not installed: metrics go to metrics.jsonl only")
        return None
    return SummaryWriter(str(out_dir / "tensorboard"))


def build_optimizer(model: torch.nn.Module, options: TrainOptions, iters_per_epoch: int):
    """SGD of the recipe (SPEC section 7): weight decay on weights only, lr scaled with the batch.

    Returns:
        ``(params, optimizer, scheduler)``: the trainable parameters, the SGD optimizer and the
        per-iteration LambdaLR schedule of :func:`lr_factor` (warmup, step decay).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": options.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=options.lr, momentum=options.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, options))
    return params, optimizer, scheduler


def optimisation_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                      params: list[torch.Tensor], clip_norm: float) -> None:
    """Backward of ``loss`` (scaled), gradient clipping to L2 norm ``clip_norm``, optimizer and scaler steps."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, clip_norm)
    scaler.step(optimizer)
    scaler.update()


def train(options: TrainOptions, *, resume: bool = False, overwrite: bool = False, device: str | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) a detector, in one process or under torchrun; returns the last epoch's checkpoint.

    Raises:
        CtlesionError: bad data folder, run folder conflicts, empty training split, a global
            batch not divisible by the number of processes, divergence, unwritable checkpoints.
    """
    ctx = init_distributed(device)
    try:
        return _train(options, ctx, resume=resume, overwrite=overwrite, progress=progress and ctx.is_main)
    finally:
        shutdown(ctx)


def _train(options: TrainOptions, ctx: DistContext, *, resume: bool, overwrite: bool, progress: bool) -> Path:
    from ctlesion.progress import make_progress  # noqa: PLC0415

    if options.mask_loss not in MASK_LOSSES:
        raise CtlesionError(f"unknown mask loss {options.mask_loss!r} (expected one of {', '.join(MASK_LOSSES)})",
                            options.out_dir)
    unknown = sorted(set(options.freeze) - set(DETECTOR_PARTS))
    if unknown or set(options.freeze) >= set(DETECTOR_PARTS):
        raise CtlesionError(f"--freeze {' '.join(options.freeze)}: " + (f"unknown part(s) {', '.join(unknown)}"
                            if unknown else "every part frozen, nothing to train"), options.out_dir)
    if options.batch_size % ctx.world_size:
        raise CtlesionError(f"the global batch ({options.batch_size}) must be divisible by the number of "
                            f"processes ({ctx.world_size})", options.out_dir)
    if ctx.is_main:
        prepare_run_dir(options, resume, overwrite)
    barrier(ctx)
    seed_everything(options.seed)
    dataset = train_dataset(options)
    if len(dataset) == 0:
        raise CtlesionError("the training split holds no usable key slices" + (
            " (Train_Val_Test = 1)" if options.lesion_label is None else " (no lesion of that label in its cases)"),
            options.data_dir)
    iters_per_epoch = iterations_per_epoch(len(dataset), options, ctx)
    mask_sources = dataset.mask_sources()
    if ctx.is_main:
        log.info("training on %d key slices, %s; masks: %d true (%s), %d GrabCut", len(dataset),
                 "whole slices" if options.crop is None else
                 f"{options.crop.size_px} px crops ({options.crop.negative_fraction:.0%} negative)",
                 mask_sources["true"], "label maps" if options.lesion_label else options.data_dir / "masks",
                 mask_sources["grabcut"])
    model = synchronise_batchnorm(build_model(options, resume).to(ctx.device), ctx)
    params, optimizer, scheduler = build_optimizer(model, options, iters_per_epoch)
    autocast, scaler = mixed_precision(options, ctx.device)
    state_path = options.out_dir / "state.pt"
    run = _restore(state_path, model, optimizer, scheduler, scaler) if resume else RunState()
    metrics_path = options.out_dir / "metrics.jsonl"
    if ctx.is_main and resume and metrics_path.exists():
        with metrics_path.open("r+b") as handle:  # drop lines logged after the state was saved
            handle.truncate(run.metrics_bytes)
    ddp = wrap_ddp(model, ctx)
    writer = _tensorboard(options.out_dir, ctx.is_main)
    last_checkpoint = options.out_dir / f"epoch_{run.epoch:03d}.safetensors"

    def save_state() -> None:
        if ctx.is_main:
            run.metrics_bytes = metrics_path.stat().st_size if metrics_path.exists() else 0
            _save_state(state_path, model, optimizer, scheduler, scaler, run)

    memory_format = torch.channels_last_3d if options.channels_last else torch.contiguous_format
    metrics_target = metrics_path if ctx.is_main else Path(os.devnull)  # only rank 0 logs
    with make_progress(enabled=progress) as bar, metrics_target.open("a") as metrics_file:
        task = bar.add_task("train", total=options.epochs * iters_per_epoch,
                            completed=run.epoch * iters_per_epoch + run.step, info="")
        for epoch in range(run.epoch, options.epochs):
            ddp.train()
            hold_frozen_norms(model, options.freeze)
            started, seen = time.perf_counter(), 0
            loader = make_train_loader(dataset, options, ctx, epoch, run.step)
            for step, (images, intervals, targets) in enumerate(loader, start=run.step):
                if step >= iters_per_epoch:
                    break
                images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
                with autocast:
                    losses = ddp(images, intervals.to(ctx.device), _to_device(targets, ctx.device))
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise CtlesionError(f"training diverged at epoch {epoch + 1} step {step + 1} "
                                        f"(loss {loss.item()})", options.out_dir)
                optimisation_step(loss, optimizer, scaler, params, options.clip_norm)
                scheduler.step()
                seen += images.shape[0] * ctx.world_size
                values = mean_over_processes({"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}, ctx)
                for k, v in values.items():
                    run.loss_sums[k] = run.loss_sums.get(k, 0.0) + v
                run.step = step + 1
                lr = optimizer.param_groups[0]["lr"]
                rate = seen / (time.perf_counter() - started)
                record = {"epoch": epoch + 1, "step": step + 1, "iteration": scheduler.last_epoch, "lr": lr,
                          **values, "images_per_s": rate}
                if ctx.is_main:
                    bar.update(task, advance=1, info=f"ep {epoch + 1} loss {values['loss']:.3f} lr {lr:.2e} "
                                                     f"{rate:.2f} img/s")
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                    if writer is not None:
                        writer.add_scalars("train", {k: v for k, v in record.items() if k not in ("epoch", "step")},
                                           scheduler.last_epoch)
                if options.checkpoint_every and run.step % options.checkpoint_every == 0 and run.step < iters_per_epoch:
                    save_state()
            last_checkpoint = _finish_epoch(ddp, model, options, ctx, run, epoch, metrics_file, writer, mask_sources)
            run.epoch, run.step, run.loss_sums = epoch + 1, 0, {}
            save_state()
            barrier(ctx)
    if writer is not None:
        writer.close()
    return last_checkpoint


def _finish_epoch(ddp, model, options: TrainOptions, ctx: DistContext, run: RunState, epoch: int,
                  metrics_file, writer, mask_sources: dict[str, int]) -> Path:
    """Rank 0: validation FROC, the epoch's checkpoint, the best checkpoint, the epoch's metrics line.

    The checkpoints' ``training`` record is the run's options (``crop``, ``mask_source`` among
    them), the epoch, and ``mask_sources``: how many training key slices had true masks and how
    many GrabCut pseudo-masks.
    """
    path = options.out_dir / f"epoch_{epoch + 1:03d}.safetensors"
    if not ctx.is_main:
        return path
    steps = max(run.step, 1)
    record = {"epoch": epoch + 1, "train_loss_mean": {k: v / steps for k, v in run.loss_sums.items()}}
    val = validate(model, options, ctx.device)
    ddp.train()
    if val is not None:
        record["val"] = val["summary"]
        log.info("epoch %d: val avg[0.5-4] sensitivity %.3f", epoch + 1, val["summary"]["all"]["avg_0.5_4"])
    metrics_file.write(json.dumps(record) + "\n")
    metrics_file.flush()
    training = {**options.to_json(), "epoch": epoch + 1, "mask_sources": dict(mask_sources)}
    avg = record.get("val", {}).get("all", {}).get("avg_0.5_4")
    try:
        save_checkpoint(model, path, training=training, metrics=record.get("val", {}))
        if avg is not None and (run.best_avg is None or avg > run.best_avg):
            run.best_avg = avg
            save_checkpoint(model, options.out_dir / "best.safetensors", training=training, metrics=record["val"])
            log.info("epoch %d is the best so far (val avg[0.5-4] %.3f): best.safetensors", epoch + 1, avg)
    except OSError as exc:
        raise CtlesionError(f"cannot write the checkpoint ({exc.strerror or exc}); earlier checkpoints are intact",
                            path) from None
    if writer is not None and avg is not None:
        writer.add_scalar("val/avg_0.5_4", avg, epoch + 1)
    return path


def read_run_options(run_dir: Path) -> TrainOptions:
    """Rebuild the options of an existing run from ``RUN_DIR/config.json``.

    Raises:
        CtlesionError: missing or unreadable config.
    """
    path = Path(run_dir) / "config.json"
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CtlesionError(f"cannot read the run's config.json ({exc})", path) from None
    data["detector"] = DetectorConfig.from_dict(data["detector"])
    if data.get("lr_drop_epochs") is not None:
        data["lr_drop_epochs"] = tuple(data["lr_drop_epochs"])
    data["data_dir"], data["out_dir"] = Path(data["data_dir"]), Path(data["out_dir"])
    flip_p = data.pop("flip_p", None)  # runs made before the full augmentation flipped only
    if flip_p is not None and "augment" not in data:
        data["augment"] = AugmentConfig.flip_only(flip_p)
    if isinstance(data.get("augment"), dict):
        data["augment"] = AugmentConfig(**data["augment"])
    if isinstance(data.get("crop"), dict):  # runs made before crops have no "crop": whole slices
        data["crop"] = CropConfig(**data["crop"])
    if data.get("mask_cache_dir") is not None:
        data["mask_cache_dir"] = Path(data["mask_cache_dir"])
    data["freeze"] = tuple(data.get("freeze", ()))
    return TrainOptions(**data)

