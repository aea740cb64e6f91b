"""A run's folder and state: ``config.json``, ``state.pt`` (weights, optimizer, scheduler, scaler,
position, RNG) written atomically, and exact resume."""

from __future__ import annotations

import json
import logging
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ctlesion import __version__
from ctlesion.atomic import atomic_write_text
from ctlesion.distributed import (
    unwrap,
)
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import (
    AlignShiftDetector,
    DetectorConfig,
)
from ctlesion.training.options import TrainOptions

log = logging.getLogger(__name__)


RUN_FILES = ("config.json", "metrics.jsonl", "state.pt", "best.safetensors", "best.json")

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

@dataclass
class RunState:
    """Where a run stands: the next step to run is ``step`` of epoch ``epoch`` (both from 0)."""

    epoch: int = 0
    step: int = 0
    best_avg: float | None = None
    loss_sums: dict = field(default_factory=dict)
    metrics_bytes: int = 0

def write_state(path: Path, model, optimizer, scheduler, scaler, run: RunState) -> None:
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

def restore_state(path: Path, model: AlignShiftDetector, optimizer, scheduler, scaler) -> RunState:
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
