"""Detector checkpoints: safetensors weights plus a JSON sidecar with the configuration.

A checkpoint is ``NAME.safetensors`` (the model's ``state_dict``; float16 or float32) next to
``NAME.json``::

    {"format": "ctlesion-detector", "ctlesion_version": "...", "config": {DetectorConfig},
     "training": {...}, "metrics": {...}}

Nothing is ever unpickled: safetensors holds only tensors, the sidecar only JSON.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from ctlesion import __version__
from ctlesion.atomic import atomic_write_text
from ctlesion.errors import CtlesionError
from ctlesion.networks.config import DetectorConfig

if TYPE_CHECKING:  # torch is imported where weights are read or written, so that sidecars load fast
    import torch

    from ctlesion.networks.detector import AlignShiftDetector

log = logging.getLogger(__name__)
FORMAT = "ctlesion-detector"


def sidecar_path(weights_path: Path) -> Path:
    """The JSON sidecar of a ``.safetensors`` checkpoint."""
    return Path(weights_path).with_suffix(".json")


def save_checkpoint(model: AlignShiftDetector, weights_path: Path, *, training: dict | None = None,
                    metrics: dict | None = None, half: bool = False) -> Path:
    """Write ``weights_path`` (.safetensors) and its JSON sidecar atomically.

    Args:
        model: the detector (its ``config`` is recorded).
        weights_path: destination ``.safetensors`` path.
        training: JSON-serialisable description of how it was trained.
        metrics: JSON-serialisable evaluation figures.
        half: store floating-point tensors as float16 (halves the file; loading casts back).

    Returns:
        The weights path.

    Raises:
        OSError: the files could not be written (an earlier file of the same name is intact).
    """
    from safetensors.torch import save_file  # noqa: PLC0415

    weights_path = Path(weights_path)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        value = value.detach().cpu().contiguous()
        state[key] = value.half() if half and value.is_floating_point() else value
    tmp = weights_path.with_name(f".{weights_path.name}.tmp")
    try:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        tmp.replace(weights_path)
    finally:
        tmp.unlink(missing_ok=True)
    info = {"format": FORMAT, "ctlesion_version": __version__, "config": model.config.to_dict(),
            "training": training or {}, "metrics": metrics or {}}
    atomic_write_text(sidecar_path(weights_path), json.dumps(info, indent=2) + "\n")
    return weights_path


def read_checkpoint_info(weights_path: Path) -> dict:
    """Read and check the JSON sidecar of a checkpoint.

    Raises:
        CtlesionError: missing weights or sidecar, unreadable JSON, wrong format.
    """
    weights_path = Path(weights_path)
    if not weights_path.is_file():
        raise CtlesionError("checkpoint does not exist", weights_path)
    sidecar = sidecar_path(weights_path)
    try:
        info = json.loads(sidecar.read_text())
    except FileNotFoundError:
        raise CtlesionError(f"checkpoint has no JSON sidecar {sidecar.name}", weights_path) from None
    except (OSError, json.JSONDecodeError) as exc:
        raise CtlesionError(f"unreadable checkpoint sidecar ({exc})", sidecar) from None
    if info.get("format") != FORMAT or "config" not in info:
        raise CtlesionError(f"not a {FORMAT} checkpoint sidecar", sidecar)
    return info


#: Lesion score threshold of ``detect`` for a model whose sidecar recommends none.
DEFAULT_SCORE_THRESHOLD = 0.5


def recommended_score_threshold(info: dict) -> float:
    """The detection score threshold a checkpoint recommends (sidecar ``operating_point``:
    ``{"score_threshold": t, "chosen_on": "...", ...}``, written when the threshold was chosen on
    validation data), else :data:`DEFAULT_SCORE_THRESHOLD`.

    Args:
        info: the checkpoint's sidecar dict (:func:`read_checkpoint_info`).
    """
    value = (info.get("operating_point") or {}).get("score_threshold")
    return float(value) if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else DEFAULT_SCORE_THRESHOLD


def load_detector(weights_path: Path, device: torch.device | str = "cpu") -> tuple[AlignShiftDetector, dict]:
    """Rebuild the detector recorded in a checkpoint and load its weights (float32, eval mode).

    Returns:
        The model and the sidecar dict.

    Raises:
        CtlesionError: unreadable or mismatching checkpoint.
    """
    from safetensors import SafetensorError  # noqa: PLC0415
    from safetensors.torch import load_file  # noqa: PLC0415

    from ctlesion.networks.detector import AlignShiftDetector  # noqa: PLC0415

    info = read_checkpoint_info(weights_path)
    try:
        config = DetectorConfig.from_dict(info["config"])
    except (TypeError, ValueError) as exc:
        raise CtlesionError(f"bad detector configuration ({exc})", sidecar_path(weights_path)) from None
    model = AlignShiftDetector(config)
    try:
        state = load_file(str(weights_path))
    except (SafetensorError, OSError) as exc:
        raise CtlesionError(f"unreadable safetensors file ({exc})", weights_path) from None
    reference = model.state_dict()
    state = {k: v.to(reference[k].dtype) if k in reference else v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CtlesionError(f"weights do not match the recorded configuration ({first})", weights_path) from None
    return model.to(device).eval(), info
