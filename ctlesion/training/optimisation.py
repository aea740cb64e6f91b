"""The model a run trains and how: initialisation (random, 2D pretrained, a checkpoint), freezing,
SGD with the paper's schedule, mixed precision, one optimisation step."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from ctlesion.checkpoint import load_detector
from ctlesion.choices import PRECISIONS
from ctlesion.errors import CtlesionError
from ctlesion.networks.backbone import torchvision_2d
from ctlesion.networks.detector import (
    AlignShiftDetector,
    freeze_parts,
    to_channels_last,
)
from ctlesion.networks.pretrained import load_pretrained_2d
from ctlesion.training.options import TrainOptions

log = logging.getLogger(__name__)


def lr_factor(iteration: int, iters_per_epoch: int, options: TrainOptions) -> float:
    """Multiplier of the base lr at an iteration: linear warmup from 1 %, then step decay."""
    warmup = 1.0
    if iteration < options.warmup_iters:
        warmup = 0.01 + 0.99 * iteration / options.warmup_iters
    epoch = iteration // max(iters_per_epoch, 1)
    drops = sum(epoch >= e for e in options.drop_epochs())
    return warmup * 0.1**drops

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
