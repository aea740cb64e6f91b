"""Training loop for the AlignShift detector on any dataset in the DeepLesion layout.

Recipe (SPEC section 7, released code of the AlignShift paper): SGD, lr 0.02 per 4 images
(scaled linearly with the batch), momentum 0.9, weight decay 1e-4, gradient clipping at L2 35,
linear warmup over 500 iterations from 1 %, lr x 0.1 after 45 % and 80 % of the epochs (epochs
9 and 16 of 20). Mixed precision (bfloat16 autocast) on CUDA.

A run folder holds ``config.json`` (the options), ``metrics.jsonl`` (one JSON line per logged
step and per epoch), ``epoch_NNN.safetensors`` + ``.json`` (one checkpoint per epoch) and
``state.pt`` (optimizer, scheduler, RNG and epoch, saved with plain tensors and read back
with ``torch.load(weights_only=True)``) so that ``resume`` continues after the last epoch.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.models import densenet121

from ctlesion.checkpoint import load_detector, save_checkpoint
from ctlesion.data.dataset import DeepLesionDataset, collate_detection
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.networks.pretrained import load_pretrained_2d
from ctlesion.atomic import atomic_write_text

log = logging.getLogger(__name__)


@dataclass
class TrainOptions:
    """Options of one training run (stored in ``RUN_DIR/config.json``)."""

    data_dir: Path
    out_dir: Path
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    epochs: int = 20
    batch_size: int = 4
    base_lr: float = 0.02  # per 4 images
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clip_norm: float = 35.0
    warmup_iters: int = 500
    flip_p: float = 0.5
    num_workers: int = 2
    seed: int = 0
    max_iters_per_epoch: int | None = None
    lr_drop_epochs: tuple[int, ...] | None = None  # default: 45 % and 80 % of the epochs (9, 16 of 20)
    pretrained: str | None = None  # "imagenet" (local torchvision cache) or a 2D state dict file

    @property
    def lr(self) -> float:
        """Learning rate scaled linearly with the batch (0.02 for 4 images)."""
        return self.base_lr * self.batch_size / 4

    def drop_epochs(self) -> tuple[int, ...]:
        """Epochs after which the lr is multiplied by 0.1: ``lr_drop_epochs``, or 9 and 16 of 20 scaled."""
        if self.lr_drop_epochs is not None:
            return tuple(self.lr_drop_epochs)
        return max(1, round(self.epochs * 0.45)), max(1, round(self.epochs * 0.8))

    def to_json(self) -> dict:
        data = asdict(self)
        data.update(data_dir=str(self.data_dir), out_dir=str(self.out_dir), detector=self.detector.to_dict())
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
    return {"torch": torch.get_rng_state(), "numpy": torch.tensor(np.random.randint(0, 2**31 - 1, dtype=np.int64)),
            "python": torch.tensor(random.randint(0, 2**31 - 1))}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.seed(int(state["numpy"]))
    random.seed(int(state["python"]))


def prepare_run_dir(options: TrainOptions, resume: bool) -> None:
    """Create the run folder, or check that it holds the same run when resuming.

    Raises:
        CtlesionError: the folder holds another run (without resume), or nothing to resume.
    """
    config_path = options.out_dir / "config.json"
    if resume:
        if not (options.out_dir / "state.pt").is_file():
            raise CtlesionError("nothing to resume: no state.pt in the run folder", options.out_dir)
        return
    if config_path.exists():
        raise CtlesionError("folder already holds a training run (use --resume to continue it)", options.out_dir)
    options.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, json.dumps(options.to_json(), indent=2) + "\n")


def make_loader(options: TrainOptions, split: str, train: bool) -> DataLoader:
    dataset = DeepLesionDataset.for_detector(options.data_dir, split, options.detector,
                                             flip_p=options.flip_p if train else 0.0, seed=options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    return DataLoader(dataset, batch_size=options.batch_size if train else 1, shuffle=train,
                      num_workers=options.num_workers, collate_fn=collate_detection, generator=generator,
                      drop_last=False, persistent_workers=False)


def _to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]


def build_model(options: TrainOptions, resume: bool) -> AlignShiftDetector:
    """The detector to train: from pretrained 2D weights (``options.pretrained``), or random init.

    A resumed run skips the pretrained weights (its checkpoint replaces them).

    Raises:
        CtlesionError: pretrained weights not found, unreadable, or not fitting DenseNet-121.
    """
    if options.pretrained is None or resume:
        return AlignShiftDetector(options.detector)
    densenet = densenet121(weights=None)
    report = load_pretrained_2d(densenet, options.pretrained, "densenet121")
    log.info("initialised from %s", report.summary())
    return AlignShiftDetector(options.detector, densenet_2d=densenet)


def train(options: TrainOptions, *, resume: bool = False, device: str | None = None,
          progress: bool = True) -> Path:
    """Train (or resume) a detector; returns the path of the last epoch's checkpoint.

    Raises:
        CtlesionError: bad data folder, run folder conflicts, empty training split.
    """
    from ctlesion.evaluate.run import evaluate_model  # noqa: PLC0415 (evaluation imports the loader stack)
    from ctlesion.progress import make_progress  # noqa: PLC0415

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    prepare_run_dir(options, resume)
    seed_everything(options.seed)
    loader = make_loader(options, "train", train=True)
    if len(loader.dataset) == 0:
        raise CtlesionError("the training split (Train_Val_Test = 1) holds no usable key slices", options.data_dir)
    iters_per_epoch = len(loader) if options.max_iters_per_epoch is None else min(len(loader), options.max_iters_per_epoch)

    model = build_model(options, resume).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": options.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=options.lr, momentum=options.momentum)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(it, iters_per_epoch, options))
    start_epoch = 0
    if resume:
        start_epoch = _restore(options, model, optimizer, scheduler, dev)
    metrics_path = options.out_dir / "metrics.jsonl"
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")
    last_checkpoint = options.out_dir / f"epoch_{start_epoch:03d}.safetensors"

    with make_progress(enabled=progress) as bar, metrics_path.open("a") as metrics_file:
        task = bar.add_task("train", total=(options.epochs - start_epoch) * iters_per_epoch, info="")
        for epoch in range(start_epoch, options.epochs):
            model.train()
            loader.dataset.set_epoch(epoch)
            loader.generator.manual_seed(options.seed * 1000 + epoch)  # order depends on (seed, epoch) only: exact resume
            started, seen, running = time.perf_counter(), 0, {}
            for step, (images, intervals, targets) in enumerate(loader):
                if step >= iters_per_epoch:
                    break
                images, intervals = images.to(dev, non_blocking=True), intervals.to(dev)
                with autocast:
                    losses = model(images, intervals, _to_device(targets, dev))
                loss = sum(losses.values())
                if not torch.isfinite(loss):
                    raise CtlesionError(f"training diverged at epoch {epoch + 1} step {step} (loss {loss.item()})",
                                        options.out_dir)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, options.clip_norm)
                optimizer.step()
                scheduler.step()
                seen += images.shape[0]
                for k, v in losses.items():
                    running[k] = 0.9 * running.get(k, v.item()) + 0.1 * v.item()
                rate = seen / (time.perf_counter() - started)
                lr = optimizer.param_groups[0]["lr"]
                bar.update(task, advance=1, info=f"ep {epoch + 1} loss {loss.item():.3f} lr {lr:.2e} {rate:.2f} img/s")
                record = {"epoch": epoch + 1, "step": step + 1, "iteration": scheduler.last_epoch, "lr": lr,
                          "loss": loss.item(), **{k: v.item() for k, v in losses.items()}, "images_per_s": rate}
                metrics_file.write(json.dumps(record) + "\n")
                metrics_file.flush()
            epoch_record = {"epoch": epoch + 1, "train_loss_ema": running, "seconds": time.perf_counter() - started}
            val = evaluate_model(model, options.data_dir, "val", device=dev, progress=False)
            if val is not None:
                epoch_record["val"] = val["summary"]
                log.info("epoch %d: val avg[0.5-4] sensitivity %.3f", epoch + 1, val["summary"]["all"]["avg_0.5_4"])
            metrics_file.write(json.dumps(epoch_record) + "\n")
            metrics_file.flush()
            last_checkpoint = save_checkpoint(
                model, options.out_dir / f"epoch_{epoch + 1:03d}.safetensors",
                training={**options.to_json(), "epoch": epoch + 1}, metrics=epoch_record.get("val", {}))
            _save_state(options, optimizer, scheduler, epoch + 1)
    return last_checkpoint


def _save_state(options: TrainOptions, optimizer, scheduler, epoch: int) -> None:
    tmp = options.out_dir / ".state.pt.tmp"
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "epoch": epoch,
                "rng": _rng_state()}, tmp)
    tmp.replace(options.out_dir / "state.pt")


def _restore(options: TrainOptions, model: AlignShiftDetector, optimizer, scheduler, dev: torch.device) -> int:
    state = torch.load(options.out_dir / "state.pt", map_location=dev, weights_only=True)
    epoch = int(state["epoch"])
    weights = options.out_dir / f"epoch_{epoch:03d}.safetensors"
    trained, _ = load_detector(weights, dev)
    if trained.config != model.config:
        raise CtlesionError("the run's checkpoint was made with another detector configuration", weights)
    model.load_state_dict(trained.state_dict())
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"])
    log.info("resuming %s after epoch %d", options.out_dir, epoch)
    if epoch >= options.epochs:
        log.warning("the run already finished its %d epochs", options.epochs)
    return epoch


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
    return TrainOptions(**data)

