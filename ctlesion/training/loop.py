"""The training loop: epochs of steps, metrics, mid-epoch and epoch checkpoints, the best checkpoint."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

import torch

from ctlesion.checkpoint import save_checkpoint
from ctlesion.choices import DETECTOR_PARTS, MASK_LOSSES
from ctlesion.distributed import (
    DistContext,
    barrier,
    init_distributed,
    mean_over_processes,
    shutdown,
    synchronise_batchnorm,
    wrap_ddp,
)
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import (
    hold_frozen_norms,
)
from ctlesion.training.data import iterations_per_epoch, make_train_loader, targets_to_device, train_dataset
from ctlesion.training.optimisation import build_model, build_optimizer, mixed_precision, optimisation_step
from ctlesion.training.options import TrainOptions
from ctlesion.training.state import RunState, prepare_run_dir, restore_state, seed_everything, write_state
from ctlesion.training.validation import Validation, validation

log = logging.getLogger(__name__)


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
    validate = validation(options)
    if ctx.is_main:
        log.info("training on %d key slices, %s; masks: %d true (%s), %d GrabCut", len(dataset),
                 "whole slices" if options.crop is None else
                 f"{options.crop.size_px} px crops ({options.crop.negative_fraction:.0%} negative"
                 + (f", {options.crop.hard_negative_fraction:.0%} of them on hard negatives)"
                    if options.hard_negatives is not None else ")"),
                 mask_sources["true"], "label maps" if options.lesion_label else options.data_dir / "masks",
                 mask_sources["grabcut"])
    model = synchronise_batchnorm(build_model(options, resume).to(ctx.device), ctx)
    params, optimizer, scheduler = build_optimizer(model, options, iters_per_epoch)
    autocast, scaler = mixed_precision(options, ctx.device)
    state_path = options.out_dir / "state.pt"
    run = restore_state(state_path, model, optimizer, scheduler, scaler) if resume else RunState()
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
            write_state(state_path, model, optimizer, scheduler, scaler, run)

    memory_format = torch.channels_last_3d if options.channels_last else torch.contiguous_format
    metrics_target = metrics_path if ctx.is_main else Path(os.devnull)  # only rank 0 logs
    with make_progress(enabled=progress) as bar, metrics_target.open("a") as metrics_file:
        task = bar.add_task("train", total=options.epochs * iters_per_epoch,
                            completed=run.epoch * iters_per_epoch + run.step, info="")
        for epoch in range(run.epoch, options.epochs):
            ddp.train()
            hold_frozen_norms(model, DETECTOR_PARTS if options.norm_eval else options.freeze)
            started, seen = time.perf_counter(), 0
            loader = make_train_loader(dataset, options, ctx, epoch, run.step)
            for step, (images, intervals, targets) in enumerate(loader, start=run.step):
                if step >= iters_per_epoch:
                    break
                images = images.to(ctx.device, non_blocking=True, memory_format=memory_format)
                with autocast:
                    losses = ddp(images, intervals.to(ctx.device), targets_to_device(targets, ctx.device))
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
            last_checkpoint = _finish_epoch(ddp, model, options, ctx, run, epoch, validate, metrics_file, writer,
                                            mask_sources)
            run.epoch, run.step, run.loss_sums = epoch + 1, 0, {}
            save_state()
            barrier(ctx)
    if writer is not None:
        writer.close()
    return last_checkpoint

def _finish_epoch(ddp, model, options: TrainOptions, ctx: DistContext, run: RunState, epoch: int,
                  validate: Validation, metrics_file, writer, mask_sources: dict[str, int]) -> Path:
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
    val = validate(model, ctx.device)
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
