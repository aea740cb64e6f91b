"""The training items a run sees (DeepLesion key slices or volumes with lesion masks) and their
batches, the same for any number of processes."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ctlesion.data.dataset import DeepLesionDataset, collate_detection
from ctlesion.data.hard_negatives import read_hard_negatives
from ctlesion.data.mask_cache import MASK_SOURCES
from ctlesion.data.volume_dataset import VolumeKeySliceDataset
from ctlesion.distributed import (
    DistContext,
)
from ctlesion.errors import CtlesionError
from ctlesion.io.masked_datasets import open_masked_dataset
from ctlesion.training.options import TrainOptions


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

def targets_to_device(targets: list[dict], device: torch.device) -> list[dict]:
    return [{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in t.items()} for t in targets]

def train_dataset(options: TrainOptions) -> DeepLesionDataset | VolumeKeySliceDataset:
    """The training split as the run sees it: augmented, cropped, with masks. DeepLesion layout:
    the key slices of ``Train_Val_Test`` = 1, with ``options.hard_negatives`` read
    (:func:`~ctlesion.data.hard_negatives.read_hard_negatives`) for the crops; volumes
    (``options.lesion_label``): the key slices of the train cases (:mod:`ctlesion.data.volume_dataset`).

    Raises:
        CtlesionError: as :class:`~ctlesion.data.dataset.DeepLesionDataset`, or a crop larger
            than the network input, an unknown mask source, hard negatives without crops or with
            volumes, or an unreadable hard-negatives file.
    """
    if options.crop is not None and options.crop.size_px > options.detector.image_size_px:
        raise CtlesionError(f"crop size {options.crop.size_px} px exceeds the network input size "
                            f"{options.detector.image_size_px} px", options.out_dir)
    if options.hard_negatives is not None and (options.crop is None or options.lesion_label is not None):
        raise CtlesionError("hard negatives need crops (--crop-size) and a DeepLesion-layout dataset",
                            options.hard_negatives)
    if options.mask_source not in MASK_SOURCES:
        raise CtlesionError(f"unknown mask source {options.mask_source!r}; expected one of "
                            f"{', '.join(MASK_SOURCES)}", options.out_dir)
    if options.lesion_label is not None:
        return volume_split(options, "train", augment=options.augment, crop=options.crop)
    hard = None
    if options.hard_negatives is not None:
        hard = read_hard_negatives(options.hard_negatives, options.data_dir / "DL_info.csv",
                                   options.hard_negative_min_score)
    return DeepLesionDataset.for_detector(options.data_dir, "train", options.detector, augment=options.augment,
                                          mask_cache_dir=options.mask_cache_dir, drop_noisy=not options.keep_noisy,
                                          seed=options.seed, crop=options.crop, mask_source=options.mask_source,
                                          hard_negatives=hard)

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
