"""Multi-process training with torch.distributed: process context, synchronised BatchNorm, DDP.

``torchrun --nproc-per-node N -m ctlesion train ...`` (or ``ctlesion train --gpus N``) starts N
processes with the standard environment variables (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT``); :func:`init_distributed` joins them into one process group
(NCCL on CUDA, gloo on CPU). Without those variables everything runs in one process.

BatchNorm statistics are synchronised across processes so that a global batch split over N
processes normalises exactly as one process would: ``nn.SyncBatchNorm`` on CUDA; on CPU (gloo),
where ``nn.SyncBatchNorm`` does not run, :class:`AllReduceBatchNorm` computes the same
statistics with differentiable all-reduces (``torch.distributed.nn.functional.all_reduce``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.nn.functional import all_reduce as differentiable_all_reduce

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, number of processes and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Rank 0 logs, evaluates and writes checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str | None = None) -> DistContext:
    """Join the process group started by torchrun (if any) and pick this process's device.

    Args:
        device: "cpu", "cuda" or "cuda:N"; default CUDA when available. Under torchrun with
            CUDA, process ``LOCAL_RANK`` uses GPU ``LOCAL_RANK``.

    Returns:
        The :class:`DistContext` (world size 1 without torchrun's environment).

    Raises:
        RuntimeError: more processes on this machine than GPUs, or a failed rendezvous.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    wanted = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if world_size == 1:
        return DistContext(0, 1, 0, wanted)
    if wanted.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"process {local_rank} has no GPU ({torch.cuda.device_count()} visible)")
        wanted = torch.device("cuda", local_rank)
        torch.cuda.set_device(wanted)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if wanted.type == "cuda" else "gloo", timeout=timedelta(minutes=60))
    log.info("process %d of %d on %s", rank, world_size, wanted)
    return DistContext(rank, world_size, local_rank, wanted)


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (no-op in one process)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    """Wait for every process (no-op in one process)."""
    if ctx.distributed:
        dist.barrier()


def mean_over_processes(values: dict[str, float], ctx: DistContext) -> dict[str, float]:
    """The mean of scalar values over all processes (for logging)."""
    if not ctx.distributed or not values:
        return values
    tensor = torch.tensor(list(values.values()), dtype=torch.float64, device=ctx.device)
    dist.all_reduce(tensor)
    return dict(zip(values, (tensor / ctx.world_size).tolist()))


class AllReduceBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the global batch of all processes, for CPU (gloo) training.

    Same parameters, buffers and results as ``nn.SyncBatchNorm``: in training the per-channel
    mean and biased variance come from sums all-reduced over the processes (differentiable, so
    gradients are exact), the running variance is updated with the unbiased estimate of the
    global count; in eval mode it is an ordinary BatchNorm. Any input rank >= 2 (N, C, ...).
    """

    def _check_input_dim(self, input: Tensor) -> None:  # noqa: A002 (torch's signature)
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (N, C, ...), got {input.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        dist.all_reduce(count)
        mean = differentiable_all_reduce(x.sum(dims)) / count
        shape = [1, -1] + [1] * (x.dim() - 2)
        centred = x - mean.view(shape)
        var = differentiable_all_reduce(centred.square().sum(dims)) / count
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * count / (count - 1).clamp(min=1))
        out = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        with torch.no_grad():
            self.num_batches_tracked.add_(1)
            momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
            self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), momentum)


def _to_all_reduce_bn(module: nn.Module) -> nn.Module:
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, AllReduceBatchNorm):
        out = AllReduceBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                                 module.track_running_stats)
        out.load_state_dict(module.state_dict())
        return out.to(module.running_mean.device if module.running_mean is not None else "cpu").train(module.training)
    for name, child in module.named_children():
        module.add_module(name, _to_all_reduce_bn(child))
    return module


def synchronise_batchnorm(model: nn.Module, ctx: DistContext) -> nn.Module:
    """Make every BatchNorm of ``model`` normalise over the global batch (no-op in one process).

    CUDA: ``nn.SyncBatchNorm``; CPU: :class:`AllReduceBatchNorm`. Parameter and buffer names
    are unchanged, so checkpoints load into the ordinary model.
    """
    if not ctx.distributed:
        return model
    if ctx.device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_all_reduce_bn(model)


def wrap_ddp(model: nn.Module, ctx: DistContext) -> nn.Module:
    """``DistributedDataParallel`` around ``model`` when several processes run, else ``model``."""
    if not ctx.distributed:
        return model
    device_ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model

