"""Pretrained 2D weights (ImageNet or any torchvision-format state dict) for the 2D network to convert.

Nothing is ever downloaded here: ``"imagenet"`` means torchvision's ImageNet weights *if they
are already in the local torch hub cache*; otherwise a :class:`CtlesionError` says how to get
them. A file may be a ``.pth``/``.pt`` (``torch.load`` with ``weights_only=True``) or a
``.safetensors`` state dict, possibly wrapped in ``{"state_dict": ...}`` or ``{"model": ...}``
and with ``module.`` prefixes (DataParallel / DDP checkpoints); DenseNet's legacy key names
(``norm.1`` ...; torchvision's own ImageNet files use them) are renamed.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torchvision.models import get_model_weights

from ctlesion.errors import CtlesionError

log = logging.getLogger(__name__)

IMAGENET = "imagenet"
_LEGACY_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.([12]\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


@dataclass(frozen=True)
class PretrainedReport:
    """What loading a 2D state dict did: key names of the 2D model."""

    source: str
    loaded: tuple[str, ...]
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    shape_mismatch: tuple[str, ...]

    def summary(self) -> str:
        """One line: counts and the first few names of each kind."""
        def names(keys: tuple[str, ...]) -> str:
            return ", ".join(keys[:4]) + (" ..." if len(keys) > 4 else "")

        parts = [f"{len(self.loaded)} tensors loaded from {self.source}"]
        for label, keys in (("missing", self.missing), ("unexpected", self.unexpected),
                            ("shape mismatch (skipped)", self.shape_mismatch)):
            if keys:
                parts.append(f"{len(keys)} {label}: {names(keys)}")
        return "; ".join(parts)


def imagenet_cache_path(arch: str) -> Path:
    """Where torchvision keeps the default ImageNet weights of ``arch`` (e.g. "densenet121").

    Raises:
        CtlesionError: if torchvision has no weights for ``arch``.
    """
    try:
        weights = get_model_weights(arch).DEFAULT
    except (ValueError, KeyError) as exc:
        raise CtlesionError(f"torchvision has no pretrained weights for {arch!r}", arch) from exc
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _unwrap(obj: object, path: Path) -> dict[str, Tensor]:
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, Tensor) for v in obj.values()):
        raise CtlesionError("not a state dict of tensors (nor one under 'state_dict' or 'model')", path)
    return obj


def _rename(key: str) -> str:
    key = key.removeprefix("module.")
    match = _LEGACY_DENSENET_KEY.match(key)
    return match.group(1) + match.group(2) if match else key


def read_state_dict_2d(path: Path) -> dict[str, Tensor]:
    """Read a torchvision-format 2D state dict from a file (CPU tensors, keys normalised).

    Raises:
        CtlesionError: missing or unreadable file, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CtlesionError("pretrained weights file not found", path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # noqa: PLC0415

            raw = load_file(str(path))
        else:
            raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any reader failure is a bad file)
        raise CtlesionError(f"cannot read pretrained weights ({type(exc).__name__}: {exc})".splitlines()[0], path) \
            from exc
    return {_rename(k): v for k, v in _unwrap(raw, path).items()}


def resolve_pretrained(source: str | Path, arch: str) -> Path:
    """The file behind a ``--pretrained`` value: a path, or ``"imagenet"`` from the local cache.

    Raises:
        CtlesionError: ``"imagenet"`` whose weights are not cached (the message says how to get
            them), or a path that does not exist.
    """
    if str(source).lower() != IMAGENET:
        path = Path(source)
        if not path.is_file():
            raise CtlesionError("pretrained weights file not found", path)
        return path
    path = imagenet_cache_path(arch)
    if not path.is_file():
        raise CtlesionError(
            f"ImageNet weights for {arch} are not in the torch hub cache; ctlesion never downloads them: "
            f"on a machine with internet run python -c \"import torchvision; torchvision.models.{arch}"
            f"(weights='DEFAULT')\" and copy {path.name} to {path.parent}, or pass --pretrained FILE",
            path,
        )
    return path


def load_pretrained_2d(model_2d: nn.Module, source: str | Path, arch: str) -> PretrainedReport:
    """Load pretrained 2D weights into a torchvision model before it is converted to 3D.

    Tensors whose name and shape match are copied; the rest are reported (e.g. a classifier with
    another number of classes). The stem's 3 RGB channels are adapted to the network's input
    later, by the converter (SPEC section 6).

    Args:
        model_2d: the torchvision 2D model (modified in place).
        source: ``"imagenet"`` (local torchvision cache only) or a state dict file.
        arch: torchvision architecture name of ``model_2d`` (for the ImageNet cache lookup).

    Returns:
        A :class:`PretrainedReport` (also logged).

    Raises:
        CtlesionError: weights not found or unreadable, or none of their tensors fits the model.
    """
    path = resolve_pretrained(source, arch)
    state = read_state_dict_2d(path)
    own = model_2d.state_dict()
    fits = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not fits:
        raise CtlesionError(f"no tensor of the file matches a torchvision {arch}", path)
    result = model_2d.load_state_dict(fits, strict=False)
    report = PretrainedReport(
        source=str(path),
        loaded=tuple(fits),
        missing=tuple(k for k in result.missing_keys if k not in state and not k.endswith("num_batches_tracked")),
        unexpected=tuple(k for k in state if k not in own),
        shape_mismatch=tuple(k for k in state if k in own and own[k].shape != state[k].shape),
    )
    log.info("pretrained 2D weights: %s", report.summary())
    return report
