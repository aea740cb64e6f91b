"""The options of a training run and their record in ``RUN_DIR/config.json``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ctlesion.data.augment import AugmentConfig, CropConfig
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import (
    DetectorConfig,
)


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
    freeze: tuple[str, ...] = ()  # detector parts not trained (networks.detector.DETECTOR_PARTS), e.g. all but
    # the mask head
    norm_eval: bool = False  # every BatchNorm layer uses (and keeps) its running statistics: fine-tuning with
    # small batches or crops (mmdetection's norm_eval)
    hard_negatives: Path | None = None  # predictions file of an earlier model on the training data: its
    # false positives centre crop.hard_negative_fraction of the negative crops (data.hard_negatives)
    hard_negative_min_score: float = 0.5  # lowest score of a false positive used as a hard negative
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
                    mask_cache_dir=None if self.mask_cache_dir is None else str(self.mask_cache_dir),
                    hard_negatives=None if self.hard_negatives is None else str(self.hard_negatives))
        return data

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
    for name in ("mask_cache_dir", "hard_negatives"):
        if data.get(name) is not None:
            data[name] = Path(data[name])
    data["freeze"] = tuple(data.get("freeze", ()))
    return TrainOptions(**data)
