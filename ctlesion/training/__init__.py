"""Training the detector on a DeepLesion-layout dataset or on CT volumes with lesion
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
``norm_eval`` (``--norm-eval``) holds every BatchNorm layer's statistics while all weights train:
fine-tuning on crops or small batches, whose statistics are not whole slices' (the shipped demo
model's crop stage). Hard negatives (``hard_negatives``, ``--hard-negatives PREDICTIONS``): an
earlier model's false positives on the training key slices
(:mod:`ctlesion.data.hard_negatives`) centre ``crop.hard_negative_fraction`` of the negative crops.

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

Modules: ``options`` (the run's options), ``state`` (run folder, ``state.pt``, resume), ``data``
(items and batches), ``optimisation`` (model, optimizer, precision), ``validation``, ``loop``.
"""

from ctlesion.training.data import epoch_batches, iterations_per_epoch, make_train_loader, train_dataset, volume_split
from ctlesion.training.loop import train
from ctlesion.training.optimisation import build_model, build_optimizer, lr_factor, mixed_precision, optimisation_step
from ctlesion.training.options import TrainOptions, read_run_options
from ctlesion.training.state import RUN_FILES, RunState, prepare_run_dir, seed_everything
from ctlesion.training.validation import validation

__all__ = ["RUN_FILES", "RunState", "TrainOptions", "build_model", "build_optimizer", "epoch_batches",
           "iterations_per_epoch", "lr_factor", "make_train_loader", "mixed_precision", "optimisation_step",
           "prepare_run_dir", "read_run_options", "seed_everything", "train", "train_dataset", "validation",
           "volume_split"]
