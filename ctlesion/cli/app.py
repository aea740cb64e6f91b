"""The `ctlesion` command line (Typer): parsing, progress and error -> exit code; no logic.

Exit codes: 0 success, 1 bad input (one line naming the file and the problem), 2 usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ctlesion import __version__
from ctlesion.choices import (
    BACKBONES,
    CRITERIA,
    DETECTOR_CONTEXTS,
    DETECTOR_PARTS,
    INFERENCE_PRECISIONS,
    MASK_LOSSES,
    MASK_SOURCES,
    PADDINGS,
    PRECISIONS,
    PREPARE_SPLITS,
    SCAN_CRITERIA,
    SIMULATION_LAYOUTS,
    SPLITS,
    TILT_CHOICES,
)
from ctlesion.errors import CtlesionError

if TYPE_CHECKING:
    from ctlesion.evaluate.scoring import ReportLayout

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Universal lesion detection in CT with the thickness-aware AlignShift detector.")
stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)
log = logging.getLogger("ctlesion")


def _setup_logging(verbose: bool) -> None:
    """ctlesion's messages from INFO (DEBUG with --verbose); other libraries' from WARNING (all with --verbose).

    On a terminal through rich; otherwise (a log file, CI) as plain ``LEVEL message`` lines, one
    per message, never wrapped.
    """
    if stderr.is_terminal:
        handler: logging.Handler = RichHandler(console=stderr, show_path=False, show_time=False, markup=False)
        line = "%(message)s"
    else:
        handler, line = logging.StreamHandler(sys.stderr), "%(levelname)s %(message)s"
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, handlers=[handler], format=line,
                        force=True)
    logging.getLogger("ctlesion").setLevel(logging.DEBUG if verbose else logging.INFO)


def _device(name: Optional[str]) -> str:
    import torch  # noqa: PLC0415 (keep `--help` fast)

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CtlesionError(f"device {name!r} requested but CUDA is not available")
    return name


def _error(message: str) -> None:
    """Print one unwrapped error line on stderr."""
    stderr.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


def _run(func, *args, **kwargs):
    """Call ``func`` mapping CtlesionError (and OS errors on user files) to one line + exit 1."""
    try:
        return func(*args, **kwargs)
    except CtlesionError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None
    except (PermissionError, FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        _error(f"{exc.filename}: {exc.strerror}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        stderr.print("[bold red]interrupted[/]")
        raise typer.Exit(130) from None


def _choice(name: str, values) -> type[Enum]:
    """A str Enum of the accepted values (Typer shows them as [a|b|c] and rejects others with exit 2)."""
    return Enum(name, [(value, value) for value in values], type=str)


Tilt = _choice("Tilt", TILT_CHOICES)
Context = _choice("Context", DETECTOR_CONTEXTS)
Backbone = _choice("Backbone", BACKBONES)
Padding = _choice("Padding", PADDINGS)
Precision = _choice("Precision", PRECISIONS)
InferencePrecision = _choice("InferencePrecision", INFERENCE_PRECISIONS)
Augment = _choice("Augment", ("paper", "affine", "flip", "none"))
MaskSource = _choice("MaskSource", MASK_SOURCES)
DetectorPart = _choice("DetectorPart", DETECTOR_PARTS)
MaskLoss = _choice("MaskLoss", MASK_LOSSES)
Split = _choice("Split", SPLITS)
PrepareSplit = _choice("PrepareSplit", PREPARE_SPLITS)
Criterion = _choice("Criterion", tuple(dict.fromkeys((*CRITERIA, *SCAN_CRITERIA))))
EvaluateSplit = _choice("EvaluateSplit", (*SPLITS, "all"))
SimulationLayout = _choice("SimulationLayout", SIMULATION_LAYOUTS)

#: ``detect --fast``: what it does and what it was measured to cost (README "Speed").
FAST_HELP = ("Approximate screening mode: the network runs on every second window and lesions are linked across "
             "the windows between (they take the nearest computed slice's mask): 2.3-3.0x faster on 2 CPU cores. "
             "Measured cost (shipped model, simulated test split, 68 lesions): CPM 15.5 % with --fast against 15.1 % "
             "without, no loss visible at that size; lesions seen on a single thick slice can be missed "
             "(README 'Speed').")
#: ``--tta`` of detect and evaluate: test-time augmentation with left-right flipped slices.
TTA = Annotated[bool, typer.Option(
    "--tta", help="Test-time augmentation: run the network on the left-right flipped slices too and fuse the two "
                  "views' detections (weighted boxes fusion; a finding seen in one view keeps half its score): twice "
                  "the network time. Measured on the shipped model's card (models/README.md). A model's recommended "
                  "score threshold was chosen without it.")]
#: ``--tta-zoom`` of detect and evaluate: test-time augmentation with the slices zoomed in.
TTAZoom = Annotated[Optional[float], typer.Option(
    "--tta-zoom", metavar="FACTOR",
    help="Test-time augmentation: also run the network on the slices zoomed in by FACTOR (> 1, e.g. 1.5) and merge "
         "the two scales' detections (non-maximum suppression): small lesions are found more often, and small normal "
         "structures too, at 1 + FACTOR^2 times the network time (twice that with --tta). Measured on the shipped "
         "model's card (models/README.md). A model's recommended score threshold was chosen without it.",
    show_default=False)]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")]
Device = Annotated[Optional[str], typer.Option(help="torch device (default: cuda when available, else cpu).")]
# Datasets of volumes with lesion masks (train and evaluate):
LesionLabel = Annotated[Optional[str], typer.Option(
    help="Volumes: the label (name in dataset.json or a DICOM SEG's segment label, or value) whose 3D connected "
         "components are the lesions (nnDetection: the class whose instances are).")]
MinLesionVoxels = Annotated[int, typer.Option(min=1, help="Volumes: drop smaller lesion components.")]
ValFraction = Annotated[Optional[float], typer.Option(
    min=0.0, max=0.99, help="Volumes without a splits file: share of training cases in val (seeded by --seed).")]


@app.command()
def simulate(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into.")],
    num_series: Annotated[int, typer.Option(min=1, help="Number of simulated CT series.")] = 40,
    image_size: Annotated[int, typer.Option(min=64, help="In-plane size of the slices, px.")] = 512,
    background: Annotated[Optional[list[Path]], typer.Option(
        help="Real CT (DICOM folder or NIfTI) to insert lesions into; repeatable; each is one patient. "
             "Organ masks NAME.seg.nii.gz beside NAME.nii.gz (or NAME/) are used. Default (no --background, "
             "--background-dir or --background-list): every real CT of ../shared/data when it exists (9 backgrounds of 8 "
             "patients, fixed split), else the shipped sample series.")] = None,
    background_dir: Annotated[Optional[list[Path]], typer.Option(
        help="Folder whose every NIfTI file and DICOM sub-folder is a background (masks by the same "
             "NAME.seg.nii.gz convention); repeatable.")] = None,
    organ_masks: Annotated[Optional[list[str]], typer.Option(
        help="BACKGROUND=MASKS: a TotalSegmentator v2 'total' label map for a background (any grid, "
             "aligned by position); repeatable.")] = None,
    background_list: Annotated[Optional[list[Path]], typer.Option(
        help="JSON list of backgrounds with their patient, split (1/2/3), masks and lesion types (paths "
             "relative to the file; an earlier simulation.json works); repeatable.")] = None,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes).")] = 0,
    workers: Annotated[int, typer.Option(
        min=0, help="Worker processes (0: in this process); the dataset written does not depend on it.")] = 0,
    split: Annotated[Optional[list[Split]], typer.Option(
        help="Simulate only the patients of this split (of the whole background set's patient split); "
             "repeatable; default: all.")] = None,
    layout: Annotated[SimulationLayout, typer.Option(
        help="deeplesion: DL_info.csv, Images_png/ (PNG slices), masks/ (true key-slice masks). nnunet: an "
             "nnU-Net v2 raw dataset: imagesTr/ + labelsTr/ (train and val series), imagesTs/ + labelsTs/ (test "
             "series), each series a NIfTI CT (int16 HU) with a 3D label map on its grid (1 = lesion: voxels where "
             "a lesion's occupancy, on a 5 mm slice its mean over the slab, is >= 0.5), dataset.json, "
             "splits_final.json (fold 0: train / val).")] = "deeplesion",
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace a dataset of the same layout already in --out.")] = False,
    verbose: Verbose = False,
) -> None:
    """Write a simulated dataset (synthetic lesions in real CT backgrounds), 1 and 5 mm series.

    --layout deeplesion (default): DL_info.csv, Images_png/, masks/ (true key-slice masks), simulation.json.

    --layout nnunet: dataset.json, imagesTr/ + labelsTr/, imagesTs/ + labelsTs/, splits_final.json, simulation.json.
    """
    from ctlesion.data.backgrounds import parse_mask_pairs  # noqa: PLC0415
    from ctlesion.data.simulate import simulate_dataset  # noqa: PLC0415

    _setup_logging(verbose)
    pairs = _run(parse_mask_pairs, organ_masks or [])
    written = _run(simulate_dataset, out, backgrounds=list(background or []),
                   background_dirs=list(background_dir or []), organ_masks=pairs, num_series=num_series,
                   image_size_px=image_size, seed=seed, overwrite=overwrite,
                   background_lists=list(background_list or []), workers=workers,
                   splits=[SPLITS[s.value] for s in split or []], layout=layout.value)
    stdout.print(f"wrote {written}")


@app.command()
def prepare(
    data: Annotated[Path, typer.Option(help="Dataset in the DeepLesion layout (DL_info.csv + Images_png).")],
    cache: Annotated[Optional[Path], typer.Option(
        "--mask-cache", "--cache", help="Pseudo-mask cache folder (default: DATA/ctlesion_cache/pseudo_masks).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        min=0, help="Worker processes (default: one per CPU; 0: in this process).")] = None,
    split: Annotated[PrepareSplit, typer.Option(help="Key slices to prepare: all, or one split.")] = "all",
    mask_source: Annotated[MaskSource, typer.Option(
        help="auto: skip key slices whose true masks the dataset holds (DATA/masks/); grabcut: prepare all.")] = "auto",
    verbose: Verbose = False,
) -> None:
    """Compute the GrabCut pseudo-masks of a DeepLesion-layout dataset once and cache them on disk."""
    from ctlesion.data.mask_cache import prepare_mask_cache  # noqa: PLC0415

    _setup_logging(verbose)
    report = _run(prepare_mask_cache, data, cache_dir=cache, split=split.value, workers=workers,
                  mask_source=mask_source.value)
    true_masks = f", {report.true_masks} with true masks (skipped)" if report.true_masks else ""
    stdout.print(f"pseudo-masks of {report.total} key slices in {report.cache_dir}: {report.computed} computed, "
                 f"{report.cached} already cached, {report.failed} failed{true_masks}")


@app.command()
def train(
    data: Annotated[Optional[Path], typer.Option(
        help="Dataset: DeepLesion layout (DL_info.csv + Images_png), or CT volumes with lesion masks in the nnU-Net "
             "v2 raw layout (dataset.json, imagesTr/, labelsTr/) or nnDetection's (raw_splitted/), or DICOM CT "
             "series with DICOM SEG files, with --lesion-label.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder (checkpoints, metrics.jsonl, config.json).")] = Path("runs/train"),
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out after its last epoch.")] = False,
    epochs: Annotated[int, typer.Option(min=1)] = 20,
    batch_size: Annotated[int, typer.Option(min=1, help="Images per step (lr scales linearly: 0.02 per 4).")] = 4,
    slices: Annotated[int, typer.Option(help="Window depth D (3 or 7 in the paper).")] = 7,
    context: Annotated[Context, typer.Option(
        help="Network: alignshift (paper), tsm or 2.5d (the paper's baselines), none (3D without shift).")] = "alignshift",
    backbone: Annotated[Backbone, typer.Option(
        help="The torchvision 2D network converted into the 3D backbone: densenet121 (the paper's), another "
             "DenseNet (blocks 1-3) or a ResNet / ResNeXt / Wide ResNet (stem and stages 1-3, the shift in every "
             "residual block).")] = "densenet121",
    pretrained: Annotated[Optional[str], typer.Option(
        help="2D weights for the --backbone network before conversion: 'imagenet' (torchvision's, from the local "
             "torch hub cache only; never downloaded) or a torchvision-format state dict file.")] = None,
    init_from: Annotated[Optional[Path], typer.Option(
        help="Fine-tune: start from this ctlesion checkpoint's whole detector (shipped, imported or trained); "
             "the run takes its architecture (--backbone, --context, --slices, --padding, --image-size, "
             "--fpn-channels, --fc-channels, --hu-window, --input-window may be given only with the checkpoint's "
             "values).")] = None,
    padding: Annotated[Padding, typer.Option(help="AlignShift border handling: zero (paper) or keep (released code).")] = "zero",
    image_size: Annotated[int, typer.Option(help="Network input size, px (paper: 512).")] = 512,
    fpn_channels: Annotated[int, typer.Option(help="FPN output channels (paper: 512).")] = 512,
    fc_channels: Annotated[int, typer.Option(help="Box head FC width (paper: 2048).")] = 2048,
    hu_window: Annotated[tuple[float, float], typer.Option(
        help="HU window mapped to [0, 1] at the input (paper: -1024 2050).")] = (-1024.0, 2050.0),
    input_window: Annotated[Optional[list[str]], typer.Option(
        metavar="LOW,HIGH",
        help="A HU window the network takes as one input channel (repeatable: e.g. soft tissue -175,275 and bone "
             "-450,1050 for a two-channel input), each inside --hu-window, in which the input arrives. "
             "Default: one channel, --hu-window itself.")] = None,
    lr: Annotated[float, typer.Option(
        min=1e-9, help="Learning rate per 4 images (paper: 0.02; scaled linearly with --batch-size); "
                       "fine-tuning a trained model: e.g. 0.002.")] = 0.02,
    warmup_iters: Annotated[int, typer.Option(min=0)] = 500,
    lr_drop_epoch: Annotated[Optional[list[int]], typer.Option(
        help="Epoch after which the lr is multiplied by 0.1; repeatable (default: 45 % and 80 % of --epochs).")] = None,
    max_iters_per_epoch: Annotated[Optional[int], typer.Option(min=1, help="Cap iterations per epoch.")] = None,
    workers: Annotated[int, typer.Option(min=0, help="Data loader worker processes (per training process).")] = 2,
    augment: Annotated[Augment, typer.Option(
        help="paper (shift 4 %, scale 20 %, rotate 15 deg with p 0.8, flip p 0.5), affine (the same without the "
             "flip: anatomy never mirrored), flip (flips only) or none.")] = "paper",
    mask_cache: Annotated[Optional[Path], typer.Option(
        help="Cache folder: DeepLesion, GrabCut pseudo-masks (default: DATA/ctlesion_cache/pseudo_masks; see "
             "`ctlesion prepare`); volumes, the cases as memory-mapped arrays (default: "
             "DATA/ctlesion_cache/volumes).")] = None,
    mask_source: Annotated[MaskSource, typer.Option(
        help="Lesion masks: auto (the dataset's true masks in DATA/masks/ where present, else GrabCut "
             "pseudo-masks) or grabcut (always GrabCut).")] = "auto",
    crop_size: Annotated[Optional[int], typer.Option(
        min=32, help="Train on PX x PX crops (a multiple of 32, at most --image-size) at the model's native scale, "
                     "around lesions or anywhere in the body, instead of whole slices (default: whole slices). "
                     "Validation and evaluate use whole slices.")] = None,
    negative_crop_fraction: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="With --crop-size: share of crops drawn anywhere in the body instead of around "
                               "a lesion.")] = 0.25,
    hard_negatives: Annotated[Optional[Path], typer.Option(
        help="With --crop-size, DeepLesion layout: a predictions JSON of an earlier model on this dataset's training "
             "key slices (`ctlesion evaluate --split train --weights ...`); its false positives (scoring at least "
             "--hard-negative-min-score, touching no annotated lesion) centre --hard-negative-fraction of the "
             "negative crops (hard negative mining).")] = None,
    hard_negative_fraction: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="With --hard-negatives: share of the negative crops centred on a false positive "
                               "(key slices without one get body crops).")] = 0.5,
    hard_negative_min_score: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="With --hard-negatives: lowest score of a false positive used.")] = 0.5,
    keep_noisy: Annotated[bool, typer.Option(
        "--keep-noisy", help="Train on lesions marked Possibly_noisy too (the paper drops them).")] = False,
    lesion_label: LesionLabel = None,
    min_lesion_voxels: MinLesionVoxels = 1,
    val_fraction: ValFraction = None,
    mask_loss: Annotated[MaskLoss, typer.Option(
        help="dice (the released configuration) or dice+bce (adds per-pixel binary cross-entropy, whose gradient "
             "does not vanish where the mask head saturates).")] = "dice",
    freeze: Annotated[Optional[list[DetectorPart]], typer.Option(
        help="Keep this part of the detector as it is (weights and BatchNorm statistics); repeatable. With "
             "--init-from, e.g. train only the mask head: --freeze backbone --freeze rpn --freeze box-head "
             "(boxes and scores then stay the checkpoint's).")] = None,
    norm_eval: Annotated[bool, typer.Option(
        "--norm-eval", help="Every BatchNorm layer uses its running statistics and keeps them (weights still "
             "train): for fine-tuning with small batches or crops, whose statistics differ from whole slices' "
             "(mmdetection's norm_eval).")] = False,
    checkpoint_every: Annotated[int, typer.Option(
        min=0, help="Steps between mid-epoch checkpoints (state.pt) for --resume; 0: epoch ends only.")] = 500,
    precision: Annotated[Precision, typer.Option(
        help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (with a gradient scaler) or fp32.")] = "auto",
    grad_checkpoint: Annotated[bool, typer.Option(
        "--grad-checkpoint", help="Recompute dense layers in backward: less GPU memory, slower.")] = False,
    channels_last: Annotated[bool, typer.Option(
        "--channels-last", help="Channels-last weights and inputs (NDHWC convolutions, meant for CUDA with bf16/fp16; "
             "not yet measured on a GPU; about 5 % slower on CPU).")] = False,
    gpus: Annotated[int, typer.Option(
        min=1, help="GPUs of this machine to train on; > 1 relaunches under torchrun (DDP).")] = 1,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an earlier run in --out (its checkpoints and logs are deleted).")] = False,
    seed: int = 0,
    device: Device = None,
    verbose: Verbose = False,
    ctx: typer.Context = None,  # type: ignore[assignment]  (filled by Typer)
) -> None:
    """Train the detector on a DeepLesion-layout dataset (official Train_Val_Test split) or on CT volumes
    with lesion masks (nnU-Net v2 raw or nnDetection layout: key slices through every lesion, true masks).

    Several GPUs: `ctlesion train --gpus N ...` on one machine, or `torchrun --nproc-per-node N
    [--nnodes ...] -m ctlesion train ...` for several machines; --batch-size is the global batch.
    """
    from ctlesion.data.augment import AugmentConfig, CropConfig  # noqa: PLC0415
    from ctlesion.networks.detector import DetectorConfig  # noqa: PLC0415
    from ctlesion.training import TrainOptions, read_run_options  # noqa: PLC0415
    from ctlesion.training import train as train_run

    _setup_logging(verbose)
    if gpus > 1:
        raise typer.Exit(_launch_torchrun(gpus))
    if resume:
        options = _run(read_run_options, out)
    else:
        if data is None:
            _error("--data is required (unless --resume)")
            raise typer.Exit(2)
        try:
            detector = DetectorConfig(backbone=backbone.value, context=context.value, num_slices=slices,
                                      image_size_px=image_size,
                                      fpn_channels=fpn_channels, fc_channels=fc_channels, padding=padding.value,
                                      hu_window=tuple(hu_window),
                                      input_windows_hu=tuple(map(_parse_window_hu, input_window or ())))
            if init_from is not None:
                detector = _run(_checkpoint_architecture, ctx, init_from, detector, pretrained)
            detector.validate()
            if hard_negatives is not None and crop_size is None:
                raise ValueError("--hard-negatives needs --crop-size (hard negatives centre negative crops)")
            crop = None if crop_size is None else CropConfig(
                crop_size, negative_fraction=negative_crop_fraction,
                hard_negative_fraction=0.0 if hard_negatives is None else hard_negative_fraction)
            if crop is not None and crop.size_px > image_size:
                raise ValueError(f"--crop-size {crop_size} exceeds --image-size {image_size}")
        except ValueError as exc:
            _error(f"{exc}")
            raise typer.Exit(2) from None
        augmentations = {"paper": AugmentConfig(), "affine": AugmentConfig(flip_p=0.0),
                         "flip": AugmentConfig.flip_only(0.5), "none": None}
        problem = _train_data_error(data, lesion_label, val_fraction, mask_source.value, keep_noisy,
                                    hard_negatives is not None)
        if problem is not None:
            _error(problem[1])
            raise typer.Exit(problem[0])
        if hard_negatives is not None:  # a bad file stops the run before its folder is made
            from ctlesion.data.hard_negatives import read_hard_negatives  # noqa: PLC0415

            _run(read_hard_negatives, hard_negatives, data / "DL_info.csv", hard_negative_min_score)
        options = TrainOptions(data_dir=data, out_dir=out, detector=detector, epochs=epochs, batch_size=batch_size,
                               base_lr=lr, warmup_iters=warmup_iters, num_workers=workers, seed=seed,
                               max_iters_per_epoch=max_iters_per_epoch,
                               lr_drop_epochs=tuple(lr_drop_epoch) if lr_drop_epoch else None,
                               augment=augmentations[augment.value], mask_cache_dir=mask_cache, keep_noisy=keep_noisy,
                               pretrained=pretrained, checkpoint_every=checkpoint_every, precision=precision.value,
                               init_from=None if init_from is None else str(init_from),
                               grad_checkpoint=grad_checkpoint, channels_last=channels_last, crop=crop,
                               mask_source=mask_source.value,
                               mask_loss=mask_loss.value, freeze=tuple(part.value for part in freeze or ()),
                               norm_eval=norm_eval, hard_negatives=hard_negatives,
                               hard_negative_min_score=hard_negative_min_score,
                               lesion_label=lesion_label, min_lesion_voxels=min_lesion_voxels,
                               val_fraction=val_fraction)
    last = _run(train_run, options, resume=resume, overwrite=overwrite, device=_run(_device, device))
    stdout.print(f"last checkpoint: {last}")


def _train_data_error(data: Path, lesion_label, val_fraction, mask_source: str,
                      keep_noisy: bool, hard_negatives: bool) -> tuple[int, str] | None:
    """What is wrong with train's dataset (exit code 1) or the options that depend on its kind (2), with
    its message; None when fine."""
    from ctlesion.io.masked_datasets import is_masked_dataset  # noqa: PLC0415

    if is_masked_dataset(data):
        if lesion_label is None:
            return 2, ("--lesion-label is required for a dataset of volumes (a label name of its dataset.json, "
                       "or a value)")
        if mask_source != "auto" or keep_noisy or hard_negatives:
            return 2, ("--mask-source, --keep-noisy and --hard-negatives are for DeepLesion datasets (volumes have "
                       "true masks)")
        return None
    if not (data / "DL_info.csv").is_file():
        return 1, (f"{data}: neither a DeepLesion-layout dataset (DL_info.csv) nor volumes with lesion masks "
                   "(nnU-Net v2 raw or nnDetection layout, or DICOM series with SEG files)")
    if lesion_label is not None or val_fraction is not None:
        return 2, "--lesion-label and --val-fraction are for datasets of volumes (nnU-Net or nnDetection layout)"
    return None


#: train's architecture options and the DetectorConfig field each one sets.
_ARCHITECTURE_OPTIONS = {"backbone": "backbone", "context": "context", "slices": "num_slices", "padding": "padding",
                         "image_size": "image_size_px", "fpn_channels": "fpn_channels",
                         "fc_channels": "fc_channels", "hu_window": "hu_window",
                         "input_window": "input_windows_hu"}


def _parse_window_hu(text: str) -> tuple[float, float]:
    """``"LOW,HIGH"`` -> (low, high) HU; ValueError naming the option otherwise."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--input-window {text!r}: expected LOW,HIGH in HU, e.g. -175,275") from None
    return low, high


def _checkpoint_architecture(ctx: typer.Context, checkpoint: Path, given: "DetectorConfig",
                             pretrained: str | None) -> "DetectorConfig":
    """The detector configuration of an --init-from checkpoint; architecture options typed on the
    command line must agree with it.

    Raises:
        CtlesionError: unreadable checkpoint, --pretrained given too, or a disagreeing option.
    """
    from click.core import ParameterSource  # noqa: PLC0415

    from ctlesion.checkpoint import read_checkpoint_info  # noqa: PLC0415
    from ctlesion.networks.config import DetectorConfig  # noqa: PLC0415

    if pretrained is not None:
        raise CtlesionError("--init-from and --pretrained exclude each other (the checkpoint holds every weight)")
    try:
        config = DetectorConfig.from_dict(read_checkpoint_info(checkpoint)["config"])
    except (TypeError, ValueError) as exc:
        raise CtlesionError(f"bad detector configuration ({exc})", checkpoint) from None
    for option, name in _ARCHITECTURE_OPTIONS.items():
        if ctx.get_parameter_source(option) is ParameterSource.COMMANDLINE and \
                getattr(given, name) != getattr(config, name):
            raise CtlesionError(f"--{option.replace('_', '-')} {getattr(given, name)} differs from the "
                                f"checkpoint's {getattr(config, name)}", checkpoint)
    return config


def _launch_torchrun(gpus: int) -> int:
    """Run this same `train` command under torchrun with one process per GPU; returns its exit code."""
    import subprocess  # noqa: PLC0415

    import torch  # noqa: PLC0415

    if torch.cuda.device_count() < gpus:
        _error(f"--gpus {gpus}: only {torch.cuda.device_count()} CUDA device(s) visible")
        return 2
    args, skip = [], False
    for arg in sys.argv[sys.argv.index("train") + 1 :]:
        if skip or arg == "--gpus" or arg.startswith("--gpus="):
            skip = arg == "--gpus"
            continue
        args.append(arg)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}",
               "-m", "ctlesion", "train", *args]
    log.info("launching %s", " ".join(command))
    return subprocess.run(command, check=False).returncode


def _print_summary(summary: dict, layout: "ReportLayout", title: str) -> None:
    """Sensitivity % per subset (with the 95 % interval of the mean when bootstrapped), then the gap.

    ``layout``: the report's names (key slices: the mean is avg[0.5-4]; scans: the CPM).
    """
    labels = {"all": "all", "thin_le_2mm": "thin", "thick_5mm": "thick", "thick_ge_5mm": "thick", "thick_gt_2mm": ">2mm"}
    unit, mean_key = layout.unit, layout.mean_key
    caption = "thin: slice interval <= 2 mm; thick: " + ("5 mm" if unit == "image" else ">= 5 mm")
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("subset", no_wrap=True)
    for fp in summary[f"fps_per_{unit}"]:  # per scan 1/8, not 0.125: the table stays readable at 80 columns
        table.add_column(f"@{Fraction(fp).limit_denominator(8)}" if unit == "scan" else f"@{fp:g}", justify="right")
    table.add_column("avg" if unit == "image" else "CPM", justify="right")  # short forms of layout.mean_label
    table.add_column("95% CI", justify="right", no_wrap=True)
    table.add_column(f"{unit}s", justify="right")
    table.add_column("lesions", justify="right")
    for name, row in summary.items():
        if isinstance(row, dict):
            bounds = (row.get("ci95") or {}).get(mean_key)
            ci = f"{100 * bounds[0]:.1f}-{100 * bounds[1]:.1f}" if bounds and bounds[0] is not None else "-"
            table.add_row(labels.get(name, name), *(f"{100 * s:.1f}" for s in row["sensitivity"]),
                          f"{100 * row[mean_key]:.1f}", ci, str(row[f"num_{unit}s"]), str(row["num_lesions"]))
    stdout.print(table)
    gap = f"thin_minus_thick_{mean_key}"
    if gap in summary:
        stdout.print(f"thin minus thick, {layout.mean_label}: {100 * summary[gap]:+.1f} points")


def _augmentation(tta: bool, tta_zoom: Optional[float]):
    """The test-time augmentation of ``--tta`` and ``--tta-zoom`` (a bad zoom: one line, exit 2)."""
    from ctlesion.predict import TestTimeAugmentation  # noqa: PLC0415

    try:
        return TestTimeAugmentation(flip=tta, zoom=tta_zoom)
    except ValueError:
        _error(f"--tta-zoom must be a number > 1, got {tta_zoom:g}")
        raise typer.Exit(2) from None


def _weights_path(weights: Optional[Path], model: Optional[str]) -> Path:
    """The checkpoint to load: ``--weights`` as given, ``--model`` resolved through the model store
    (no torch: an unknown name fails at once), else the shipped demo model (exit 1 when absent)."""
    from ctlesion.store import demo_weights, resolve_model  # noqa: PLC0415

    if model is not None:
        return _run(resolve_model, model)
    if weights is not None:
        return weights
    path = demo_weights()
    if not path.is_file():
        _error(f"{path}: the shipped demo model is not part of this installation (it lives in the source "
               "checkout's models/ folder: `pip install -e .` from a checkout); name a checkpoint with --weights "
               "or an installed model with --model (`ctlesion models` lists them)")
        raise typer.Exit(1)
    return path


def _load_model(path: Path, device: str, context: Optional[Enum] = None, slices: Optional[int] = None):
    """Load the checkpoint at ``path`` (see :func:`_weights_path`); ``context`` / ``slices``, when given,
    must be the network it holds (exit 1)."""
    from ctlesion.checkpoint import load_detector  # noqa: PLC0415

    model, info = _run(load_detector, path, device)
    config = model.config
    context = None if context is None else context.value
    if (context is not None and context != config.context) or (slices is not None and slices != config.num_slices):
        wanted = f"{context or config.context} x{slices or config.num_slices}"
        _error(f"{path}: holds a {config.name} network ({config.context} x{config.num_slices}), not {wanted}")
        raise typer.Exit(1)
    info["weights"] = path.name
    return model, info


ModelContext = Annotated[Optional[Context], typer.Option(
    "--context", help="Expected network (alignshift, tsm, 2.5d, none): the checkpoint must hold it.")]
ModelSlices = Annotated[Optional[int], typer.Option(
    "--slices", help="Expected window depth (3 or 7): the checkpoint must hold it.")]
ModelName = Annotated[Optional[str], typer.Option(
    "--model", help="Installed model by name (`ctlesion models` lists them; demo: the shipped demo model); "
                    "excludes --weights.")]


@app.command()
def evaluate(
    data: Annotated[Path, typer.Option(
        help="Dataset: DeepLesion layout (DL_info.csv; Images_png to run a model), or CT volumes with lesion masks "
             "in the nnU-Net v2 raw layout (dataset.json, imagesTr/, labelsTr/) or nnDetection's (raw_splitted/), or "
             "DICOM CT series with DICOM SEG files.")],
    split: Annotated[EvaluateSplit, typer.Option(
        help="DeepLesion: train, val, test (Train_Val_Test 1, 2, 3) or all. Volumes: train/val (splits_final.json "
             "fold 0, or --val-fraction), test (imagesTs/ with labelsTs/), or all.")] = "test",
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint (.safetensors); default: the shipped model.")] = None,
    predictions: Annotated[Optional[Path], typer.Option(
        help="Score saved predictions instead of running a model: DeepLesion, a predictions JSON (see the README); "
             "volumes, a `ctlesion detect` results.json with its label maps.")] = None,
    key_slices: Annotated[Optional[Path], typer.Option(
        help="DeepLesion: restrict to these key slices (one File_name per line, or a CSV with a File_name column).")] = None,
    lesion_label: LesionLabel = None,
    min_lesion_voxels: MinLesionVoxels = 1,
    val_fraction: ValFraction = None,
    score_threshold: Annotated[float, typer.Option(
        min=0.0, max=1.0, help="Volumes, running a model: minimum lesion score (low, so the FROC reaches 8 FP/scan).")] = 0.05,
    out: Annotated[Path, typer.Option(
        help="Folder for evaluation.json, evaluation.md, froc.png (and the predictions).")] = Path("evaluation"),
    criterion: Annotated[Optional[Criterion], typer.Option(
        help="DeepLesion: iou (default) or iobb (intersection over the detected box's area). Volumes: centre "
             "(default; a predicted lesion's centre inside the lesion, LUNA16) or iou (3D IoU, nnDetection).",
        show_default=False)] = None,
    iou_threshold: Annotated[Optional[float], typer.Option(
        help="Minimum overlap for a hit (default: 0.5 for DeepLesion, 0.1 for 3D IoU).", show_default=False)] = None,
    fast: Annotated[bool, typer.Option(
        "--fast", help="Volumes, running a model: as `detect --fast` (the network on every second window), to "
                       "measure what it costs.")] = False,
    tta: TTA = False,
    tta_zoom: TTAZoom = None,
    bootstrap: Annotated[int, typer.Option(
        min=0, help="Bootstrap resamples (by image, or by scan) for 95 % intervals (0: none).")] = 1000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed (and --val-fraction's).")] = 0,
    context: ModelContext = None,
    slices: ModelSlices = None,
    model_name: ModelName = None,
    device: Device = None,
    verbose: Verbose = False,
) -> None:
    """Score a detector: DeepLesion FROC (sensitivity at 0.5-16 FP per image) on key slices, or the
    lesion-level FROC per scan (1/8-8 FP per scan, LUNA16's CPM) on volumes with lesion masks."""
    from ctlesion.io.masked_datasets import is_masked_dataset  # noqa: PLC0415

    _setup_logging(verbose)
    volumes = is_masked_dataset(data)
    usage = _evaluate_usage_error(volumes, split.value, criterion, key_slices, lesion_label, val_fraction)
    usage = usage or (predictions is not None and weights is not None and "--predictions and --weights exclude "
                                                                         "each other")
    usage = usage or (fast and predictions is not None and "--fast runs a model; saved --predictions are "
                                                           "scored as they are")
    usage = usage or ((tta or tta_zoom is not None) and predictions is not None
                      and f"{'--tta' if tta else '--tta-zoom'} runs a model; saved --predictions are scored as they are")
    if model_name is not None and (weights is not None or predictions is not None):
        usage = f"--model and {'--weights' if weights is not None else '--predictions'} exclude each other"
    if not usage and (out.suffix.lower() == ".json" or out.is_file()):
        usage = f"--out takes a folder (evaluation.json, evaluation.md and froc.png go into it), got {out}"
    if usage:
        _error(usage)
        raise typer.Exit(2)
    from ctlesion.detect import FAST_KEY_SLICE_STRIDE  # noqa: PLC0415
    from ctlesion.evaluate.protocols import protocol_for  # noqa: PLC0415

    try:
        protocol = protocol_for(data, split=split.value, criterion=None if criterion is None else criterion.value,
                                iou_threshold=iou_threshold, resamples=bootstrap, seed=seed, key_list=key_slices,
                                lesion_label=lesion_label, min_lesion_voxels=min_lesion_voxels,
                                score_threshold=score_threshold, val_fraction=val_fraction,
                                key_slice_stride=FAST_KEY_SLICE_STRIDE if fast else 1,
                                augmentation=_augmentation(tta, tta_zoom))
    except ValueError as exc:
        _error(str(exc))
        raise typer.Exit(2) from None
    except CtlesionError as exc:
        _error(str(exc))
        raise typer.Exit(1) from None
    if predictions is not None:
        evaluation = _run(protocol.evaluate, out, predictions_path=predictions)
    else:
        path = _weights_path(weights, model_name)
        dev = _run(_device, device)
        model, info = _load_model(path, dev, context, slices)
        evaluation = _run(protocol.evaluate, out, model=model, weights_path=path, model_info=info, device=dev)
    _print_summary(protocol.summary(evaluation), protocol.layout, protocol.title())
    if evaluation.get("model_note"):
        stderr.print(f"note: {evaluation['model_note']}", highlight=False)
    stdout.print(f"wrote {out}/")


def _evaluate_usage_error(volumes: bool, split: str, criterion, key_slices, lesion_label, val_fraction) -> str | None:
    """The options that do not fit the dataset's kind, as a message (None: fine)."""
    if volumes:
        if lesion_label is None:
            return "--lesion-label is required for a dataset of volumes (a label name of its dataset.json, or a value)"
        if criterion is not None and criterion.value not in ("centre", "iou"):
            return f"--criterion {criterion.value} is for DeepLesion key slices; volumes take centre or iou"
        if key_slices is not None:
            return "--key-slices is for DeepLesion datasets"
        return None
    if criterion is not None and criterion.value == "centre":
        return "--criterion centre is for datasets of volumes; DeepLesion key slices take iou or iobb"
    if lesion_label is not None or val_fraction is not None:
        return "--lesion-label and --val-fraction are for datasets of volumes (nnU-Net or nnDetection layout)"
    return None


@app.command()
def detect(
    inputs: Annotated[list[Path], typer.Argument(help="DICOM series folders and/or NIfTI files.", show_default=False)],
    out: Annotated[Path, typer.Option(help="results.json to write (label maps and overlays go beside it).")] = Path("results.json"),
    weights: Annotated[Optional[Path], typer.Option(help="Checkpoint (.safetensors); default: the shipped model.")] = None,
    score_threshold: Annotated[Optional[float], typer.Option(
        min=0.0, max=1.0, help="Minimum lesion score (default: the one the model recommends, chosen on validation "
                               "data, see its card; 0.5 for a model without one).")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="Windows per forward pass.")] = 4,
    precision: Annotated[InferencePrecision, typer.Option(
        help="fp32, or bf16 (autocast; CPUs with AVX512-BF16 or AMX, and GPUs): faster, not bit-identical "
             "(README 'Speed' gives the measured speed and change in lesions).")] = "fp32",
    whole_slice: Annotated[bool, typer.Option(
        "--whole-slice",
        help="Run the network on the whole slice (default: on the body's bounding box plus a margin, faster, "
             "detections unchanged within the limits README 'Speed' states).")] = False,
    fast: Annotated[bool, typer.Option("--fast", help=FAST_HELP)] = False,
    tta: TTA = False,
    tta_zoom: TTAZoom = None,
    all_windows: Annotated[bool, typer.Option(
        "--all-windows", help="Also run the network on windows whose key slice holds no body (skipped by "
                              "default: no lesion can be found there).")] = False,
    keep_outside_body: Annotated[bool, typer.Option(
        "--keep-outside-body", help="Keep detections centred outside the body (dropped by default: in the air or on "
                                    "the table, outside the body and every other region above -500 HU of at least 2 % "
                                    "of its area, lungs and bowel gas counting as inside).")] = False,
    allow_non_ct: Annotated[bool, typer.Option("--allow-non-ct", help="Also read MR/PT series (the model knows only CT).")] = False,
    series: Annotated[Optional[str], typer.Option(
        help="Series to read from each DICOM folder: SeriesNumber, SeriesInstanceUID or SeriesDescription "
             "(every match is read). Default: the one `ctlesion info` marks.")] = None,
    all_series: Annotated[bool, typer.Option("--all-series", help="Read every axial CT series of each DICOM folder.")] = False,
    tilt: Annotated[Tilt, typer.Option(help="Gantry-tilted series: refuse, or resample onto an orthogonal grid.")] = "refuse",
    dicom_seg: Annotated[bool, typer.Option(
        "--dicom-seg", help="Also write each DICOM study's lesions as a DICOM SEG (<study>_lesions.seg.dcm).")] = False,
    dicom_sr: Annotated[bool, typer.Option(
        "--dicom-sr", help="Also write the DICOM SEG and a DICOM SR measurement report (TID 1500) of each DICOM "
                           "study (<study>_lesions.sr.dcm).")] = False,
    context: ModelContext = None,
    slices: ModelSlices = None,
    model_name: ModelName = None,
    device: Device = None,
    verbose: Verbose = False,
) -> None:
    """Find lesions in CT studies; write results.json, a NIfTI label map and overlay PNGs (and DICOM SEGs)."""
    from ctlesion.atomic import check_output_folder  # noqa: PLC0415
    from ctlesion.io.studies import plan_studies  # noqa: PLC0415 (no torch: a bad input fails in a second)

    _setup_logging(verbose)
    if series is not None and all_series:
        _error("--series and --all-series exclude each other")
        raise typer.Exit(2)
    if model_name is not None and weights is not None:
        _error("--model and --weights exclude each other")
        raise typer.Exit(2)
    path = _weights_path(weights, model_name)  # an unknown --model fails at once
    studies = _run(plan_studies, inputs, series=series, all_series=all_series, allow_non_ct=allow_non_ct,
                   tilt=tilt.value)  # headers only, before the model loads
    _run(check_output_folder, out.parent)
    augmentation = _augmentation(tta, tta_zoom)

    from ctlesion.checkpoint import recommended_score_threshold  # noqa: PLC0415
    from ctlesion.detect import (  # noqa: PLC0415
        BODY_CROP_MARGIN_PX,
        FAST_KEY_SLICE_STRIDE,
        DetectOptions,
        run_detect,
    )
    from ctlesion.progress import make_progress  # noqa: PLC0415
    from ctlesion.report import format_score  # noqa: PLC0415

    dev = _run(_device, device)
    model, info = _load_model(path, dev, context, slices)
    threshold = recommended_score_threshold(info) if score_threshold is None else score_threshold
    options = DetectOptions(score_threshold=threshold, batch_size=batch_size, precision=precision.value,
                            skip_no_body=not all_windows, drop_outside_body=not keep_outside_body,
                            key_slice_stride=FAST_KEY_SLICE_STRIDE if fast else 1,
                            body_crop_margin_px=None if whole_slice else BODY_CROP_MARGIN_PX, augmentation=augmentation,
                            dicom_seg=dicom_seg, dicom_sr=dicom_sr)

    def detect_with_progress():  # the bar closes before an error line is printed
        with make_progress() as progress:
            return run_detect(studies, out, model, info, options=options, device=dev, progress=progress)

    results = _run(detect_with_progress)
    for study in results["studies"]:
        stdout.print(f"{study['input']}: {len(study['lesions'])} lesion(s), slice interval "
                     f"{study['slice_interval_mm']:.2f} mm, {study['shape_zyx']} voxels")
        for lesion in study["lesions"][:10]:
            stdout.print(f"  #{lesion['label']} score {format_score(lesion['score'])} slice {lesion['key_slice']} "
                         f"long axis {lesion['long_axis_mm']:.1f} mm")
        if len(study["lesions"]) > 10:
            stdout.print(f"  ... and {len(study['lesions']) - 10} more (see {out.name})")
        dicom = [name for name in (study["dicom_seg"], study["dicom_sr"]) if name]
        if dicom:
            stdout.print(f"  DICOM: {', '.join(dicom)}")
    stdout.print(f"wrote {out}")


@app.command()
def info(
    paths: Annotated[list[Path], typer.Argument(help="DICOM folders and/or NIfTI files.")],
    json_output: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    verbose: Verbose = False,
) -> None:
    """List the series in each input (geometry, warnings, the one detect reads) and what is skipped."""
    from ctlesion.cli.info import info as show_info  # noqa: PLC0415

    _setup_logging(verbose)
    _run(show_info, paths, json_output)


def _some(names: list[str], limit: int = 10) -> str:
    """The first ``limit`` names, comma-separated, and how many more."""
    shown = ", ".join(names[:limit])
    return shown + (f", ... and {len(names) - limit} more" if len(names) > limit else "")


@app.command("import-weights")
def import_weights(
    src: Annotated[Path, typer.Argument(
        help="The authors' AlignShift checkpoint (mmdetection 1.0 .pth); read with torch.load(weights_only=True), "
             "never unpickled.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option(
        help="ctlesion checkpoint to write (.safetensors; its .json sidecar goes beside it).")] = None,
    name: Annotated[Optional[str], typer.Option(
        help="Install into the model store (CTLESION_HOME/models, default ~/.ctlesion/models) under this name "
             "(letters, digits, . _ -), for --model NAME.")] = None,
    overwrite: Annotated[bool, typer.Option(
        "--overwrite", help="Replace an installed model of that name (or the --out checkpoint).")] = False,
    allow_partial: Annotated[bool, typer.Option(
        "--allow-partial", help="Write even when source tensors are unmatched or model tensors missing (listed; "
                                "missing ones keep their random initialisation): for inspection only.")] = False,
    verbose: Verbose = False,
) -> None:
    """Convert the authors' AlignShift checkpoint into a ctlesion checkpoint (--out) or install it (--name).

    Exactly one of --out and --name. Nothing is written unless the whole import succeeds.
    """
    from ctlesion.store import checkpoint_destination, install_path, write_checkpoint_staged  # noqa: PLC0415

    _setup_logging(verbose)
    if (out is None) == (name is None):
        _error("give exactly one of --out DST.safetensors and --name NAME")
        raise typer.Exit(2)
    if out is not None and out.suffix != ".safetensors":
        _error(f"--out takes a .safetensors file (its .json sidecar goes beside it), got {out}")
        raise typer.Exit(2)
    if not src.is_file():
        _error(f"{src}: {'is a folder, not a checkpoint file' if src.is_dir() else 'does not exist'}")
        raise typer.Exit(1)
    _run(lambda: open(src, "rb").close())  # unreadable: one line naming it
    if name is not None:
        dst = _run(install_path, name, overwrite=overwrite)
    else:
        dst = _run(checkpoint_destination, out, overwrite=overwrite)

    from ctlesion.networks import mmdet_import  # noqa: PLC0415 (imports torch)

    report = _run(write_checkpoint_staged, dst,
                  lambda path: mmdet_import.import_mmdet_checkpoint(src, path, allow_partial=allow_partial))
    config = report.config
    stdout.print(f"{src.name}: {config.name} network ({config.num_slices} slices, FPN {config.fpn_channels}, "
                 f"FC {config.fc_channels}, input {config.image_size_px} px), {report.num_mapped} tensors mapped",
                 markup=False, highlight=False)
    if report.unmatched:
        stdout.print(f"unmatched source tensors ({len(report.unmatched)}): {_some(report.unmatched)}",
                     markup=False, highlight=False)
    if report.missing:
        stdout.print(f"model tensors not in the source, left at random initialisation ({len(report.missing)}): "
                     f"{_some(report.missing)}", markup=False, highlight=False)
    if report.unmatched or report.missing:
        log.warning("partial import (--allow-partial): %s is for inspection, not for detection", dst.name)
    stdout.print(f"wrote {dst} and {dst.with_suffix('.json').name}", markup=False, highlight=False)
    if name is not None:
        stdout.print(f"installed as {name}: ctlesion detect STUDY --model {name}", markup=False, highlight=False)


@app.command()
def models(
    json_output: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
    verbose: Verbose = False,
) -> None:
    """List the models --model can name: the shipped demo, then those installed in CTLESION_HOME/models."""
    from ctlesion.store import HOME_ENV, list_models, models_dir  # noqa: PLC0415

    _setup_logging(verbose)
    entries = _run(list_models)
    if json_output:
        sys.stdout.write(json.dumps([entry.to_dict() for entry in entries], indent=1) + "\n")
        return
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True,
                  caption=f"model store: {models_dir()} (set {HOME_ENV} to move it)")
    for column in ("name", "network", "trained on", "licence / terms", "source", "weights"):
        table.add_column(column, no_wrap=column in ("name", "network"), overflow="fold")
    missing, store = "not recorded", models_dir()
    for entry in entries:  # Text: recorded values are shown as written, never read as markup
        weights = entry.weights.name if entry.weights.parent == store else str(entry.weights)
        table.add_row(*(Text(value) for value in (
            entry.name, entry.network or "unreadable", entry.trained_on or missing, entry.licence or missing,
            entry.problem or entry.source or missing, weights)))
    if entries:
        stdout.print(table, highlight=False)
    if not any(not entry.demo for entry in entries):
        stdout.print(f"no model installed in {models_dir()}; install one with "
                     "`ctlesion import-weights SRC --name NAME`", markup=False, highlight=False)


@app.callback(invoke_without_command=True)
def _main(version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False) -> None:
    if version:
        stdout.print(__version__)
        raise typer.Exit(0)


def main() -> None:
    """Console-script entry point."""
    app(prog_name="ctlesion")
    sys.exit(0)
