"""The named choices of ctlesion's options, as plain tuples.

One place for each list of accepted values, with no heavy imports, so that the command line
builds its ``--help`` and its choice types from them without loading torch; the modules that
act on a choice import its tuple from here.
"""

from __future__ import annotations

#: AlignShift border handling (SPEC section 5): zero padding (paper) or keep (released code).
PADDINGS = ("zero", "keep")
#: Detector networks: AlignShift (paper), TSM and 2.5D (the paper's baselines), none (3D, no shift).
DETECTOR_CONTEXTS = ("alignshift", "tsm", "2.5d", "none")
#: torchvision 2D networks the detector's backbone can be built from (DenseNet-121: the paper's).
BACKBONES = ("densenet121", "densenet169", "densenet201", "resnet18", "resnet34", "resnet50", "resnet101",
             "resnext50_32x4d", "wide_resnet50_2")
#: Training precision: auto (bf16 on CUDA, fp32 on CPU), bf16, fp16 (with a gradient scaler), fp32.
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
#: Inference precision of detect: fp32, or bf16 autocast (CPUs with AVX512-BF16 / AMX, CUDA).
INFERENCE_PRECISIONS = ("fp32", "bf16")
#: What to do with a gantry-tilted series: refuse it, or resample it onto an orthogonal grid.
TILT_CHOICES = ("refuse", "resample")
#: DeepLesion splits by name, with their official ``Train_Val_Test`` codes.
SPLITS: dict[str, int] = {"train": 1, "val": 2, "test": 3}
#: Output layouts of ``simulate``: DeepLesion's (PNG slices, DL_info.csv, key-slice masks) or an
#: nnU-Net v2 raw dataset (NIfTI volumes with 3D lesion label maps).
SIMULATION_LAYOUTS = ("deeplesion", "nnunet")
#: Key slices ``prepare`` computes pseudo-masks for: every split, or one.
PREPARE_SPLITS = ("all", *SPLITS)
#: FROC overlap criteria: ``iou`` (DeepLesion protocol), ``iobb`` (intersection over the detection's area).
CRITERIA = ("iou", "iobb")
#: How HU become network input: ``unit`` (the HU window mapped to [0, 1], ctlesion's models) or
#: ``mmdet`` (the window mapped to [0, 255] minus 50, the authors' released loader).
INPUT_SCALINGS = ("unit", "mmdet")
#: Box geometry of the detector heads: ``torchvision`` (continuous coordinates) or ``mmdet1``
#: (mmdetection 1.0: +1 box widths, rounded anchors, +1 RoI ends; the authors' models).
BOX_CONVENTIONS = ("torchvision", "mmdet1")
#: Where training masks come from: ``auto`` (a dataset's true masks, ``masks/``, where present,
#: else GrabCut pseudo-masks from the RECIST axes) or ``grabcut`` (always the pseudo-masks).
MASK_SOURCES = ("auto", "grabcut")
#: The detector's parts that ``train --freeze`` can keep as they are: the backbone (3D DenseNet +
#: FPN), the RPN, the box head and the mask head.
DETECTOR_PARTS = ("backbone", "rpn", "box-head", "mask-head")
#: Mask losses of training: ``dice`` (the released configuration) or ``dice+bce`` (Dice plus
#: per-pixel binary cross-entropy, whose gradient does not vanish where the sigmoid saturates).
MASK_LOSSES = ("dice", "dice+bce")
#: Hit rules of the lesion-level FROC per scan: ``centre`` (a predicted lesion's centre inside the
#: lesion, LUNA16) or ``iou`` (3D intersection over union, nnDetection).
SCAN_CRITERIA = ("centre", "iou")
