"""Import the authors' AlignShift checkpoints (mmdetection 1.0, M3DV/AlignShift) as ctlesion checkpoints.

The authors released their DeepLesion-trained detectors as mmdetection-1 checkpoints: a pickled
dict ``{"meta": {"mmdet_version", "config", "epoch", "iter", ...}, "state_dict": {...},
"optimizer": {...}}`` saved with PyTorch's legacy serialisation. This module

* loads such a file with ``torch.load(weights_only=True)`` only (plain dicts and tensors;
  anything that needs code to unpickle is refused, never run);
* infers the detector configuration from the tensors (window depth from the depth-reduction
  kernel, FPN width from the laterals, FC width, mask-head width, anchors per location,
  classes) and checks it against the training config text in ``meta["config"]``, read with
  :mod:`ast` (the text is Python source: it is parsed, never executed; see
  :func:`config_literals`);
* maps every tensor onto the ctlesion detector (:data:`_RULES`), 2-D convolution kernels of
  their 3-D network onto our (O, I, 1, k, k) kernels;
* records the authors' inference conventions in the configuration (``input_scaling="mmdet"``,
  ``box_convention="mmdet1"``, ``padding="keep"``, no depth-reduction bias, 512-px input), so
  that every command runs the model as their code does;
* writes an ordinary ctlesion checkpoint (:func:`ctlesion.checkpoint.save_checkpoint`).

Supported backbones: ``DenseNetCustomTrunc3dAlign`` (AlignShift), ``DenseNetCustomTrunc3dTSM``
(TSM; same keys) and ``DenseNetCustomTrunc`` (2.5D). A3D is out of scope.
"""

from __future__ import annotations

import ast
import hashlib
import logging
import operator
import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import ANCHOR_RATIOS, AlignShiftDetector, DetectorConfig

log = logging.getLogger(__name__)

#: Backbone types of the authors' configs and the ctlesion context each one is.
BACKBONE_CONTEXTS = {"DenseNetCustomTrunc3dAlign": "alignshift", "DenseNetCustomTrunc3dTSM": "tsm",
                     "DenseNetCustomTrunc": "2.5d"}
#: The anchor scales of the released configs (x base size 4 = 16 ... 192 px), the only ones supported.
ANCHOR_SCALES = (4, 6, 8, 12, 24, 48)
#: The released test settings (``test_cfg``) that ctlesion's detector applies; others are reported.
TEST_SETTINGS = {("rpn", "nms_pre"): 6000, ("rpn", "nms_post"): 300, ("rpn", "nms_thr"): 0.7,
                 ("rcnn", "score_thr"): 0.001, ("rcnn", "max_per_img"): 50, ("rcnn", "mask_thr_binary"): 0.5}
#: Their input: HU window (``WINDOWING``) onto [0, 255] minus 50; 512-px slices.
RELEASED_WINDOW_HU = (-1024.0, 2050.0)
RELEASED_IMAGE_SIZE_PX = 512


@dataclass(frozen=True)
class ImportReport:
    """What :func:`import_mmdet_checkpoint` did.

    Attributes:
        config: the detector configuration inferred from the tensors (and checked against the
            training config text in the checkpoint's ``meta``).
        num_mapped: tensors of the source mapped onto the ctlesion model.
        unmatched: source keys that map to nothing (empty unless ``allow_partial``).
        missing: ctlesion model keys no source tensor fills (empty unless ``allow_partial``).
        source: what is known about the source file (JSON-ready): ``file``, ``sha256``,
            ``mmdet_version``, ``epoch``, ``iter``, ``backbone_type``.
    """

    config: DetectorConfig
    num_mapped: int
    unmatched: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    source: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# Reading the file safely


def read_mmdet_checkpoint(src: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load an mmdetection-1 checkpoint with ``torch.load(weights_only=True)``.

    Args:
        src: the ``.pth`` file (legacy or zip serialisation).

    Returns:
        The state dict (``module.`` prefixes of DDP runs removed) and the ``meta`` dict (empty
        when the file holds a bare state dict).

    Raises:
        CtlesionError: missing file, not a PyTorch file, truncated, a pickle that needs code
            (refused without running it), or no tensors in the expected places.
    """
    src = Path(src)
    if not src.is_file():
        raise CtlesionError("does not exist" if not src.exists() else "is not a file", src)
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols are not the user's concern
            warnings.simplefilter("ignore", UserWarning)
            loaded = torch.load(src, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc) or "can still be loaded" in str(exc):
            raise CtlesionError("not a plain checkpoint: it needs code to unpickle, which is refused "
                                "(torch.load weights_only=True)", src) from None
        detail = str(exc).split("WeightsUnpickler error:")[-1].strip().splitlines()[0]
        raise CtlesionError(f"not a readable PyTorch checkpoint (another format: {detail})", src) from None
    except (EOFError, RuntimeError, ValueError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CtlesionError(f"not a readable PyTorch checkpoint (truncated or another format: {first})", src) from None
    if not isinstance(loaded, dict):
        raise CtlesionError(f"not a checkpoint dict (a {type(loaded).__name__})", src)
    state = loaded.get("state_dict", loaded)
    meta = loaded.get("meta") if isinstance(loaded.get("meta"), dict) else {}
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CtlesionError("holds no state_dict of tensors", src)
    return {k.removeprefix("module."): v for k, v in state.items()}, meta


# ---------------------------------------------------------------------------------------------
# The training config text, read with ast (never executed)

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod}


class _Unknown(Exception):
    """An expression this reader does not evaluate (a call, an import, an unknown name...)."""


def _evaluate(node: ast.AST, names: dict) -> object:
    """Value of a literal expression: constants, lists, tuples, dicts, ``dict(k=v)``, names
    assigned earlier, subscripts, unary minus and + - * / // % on their values."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        values = [_evaluate(e, names) for e in node.elts]
        return values if isinstance(node, ast.List) else tuple(values)
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Unknown
        return {_evaluate(k, names): _evaluate(v, names) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict" and not node.args:
        return {kw.arg: _evaluate(kw.value, names) for kw in node.keywords if kw.arg is not None}
    if isinstance(node, ast.Name):
        if node.id not in names:
            raise _Unknown
        return names[node.id]
    if isinstance(node, ast.Subscript):
        container, key = _evaluate(node.value, names), _evaluate(node.slice, names)
        try:
            return container[key]  # type: ignore[index]
        except (KeyError, IndexError, TypeError):
            raise _Unknown from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _evaluate(node.operand, names)
        if not isinstance(value, (int, float)):
            raise _Unknown
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _evaluate(node.left, names), _evaluate(node.right, names)
        try:
            return _BINARY[type(node.op)](left, right)
        except (TypeError, ZeroDivisionError):
            raise _Unknown from None
    raise _Unknown


def config_literals(text: str) -> dict:
    """The top-level assignments of an mmdetection config whose values are literal expressions.

    The text is parsed with :func:`ast.parse` and NEVER executed: only constants, lists,
    tuples, dicts, ``dict(key=value)`` calls, names assigned earlier in the text, subscripts and
    arithmetic on those are evaluated; other assignments (imports, calls) are left out.

    Args:
        text: the config source (``meta["config"]`` of an mmdetection checkpoint).

    Returns:
        ``{name: value}`` of the literal assignments, in text order.

    Raises:
        SyntaxError: the text is not Python source.
    """
    names: dict = {}
    for statement in ast.parse(text).body:
        if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
            try:
                value = _evaluate(statement.value, names)
            except _Unknown:
                continue
            for target in statement.targets:
                names[target.id] = value  # type: ignore[union-attr]
    return names


def _get(tree: dict, *path: str):
    """``tree[path[0]][path[1]]...`` or None where a step is missing."""
    for step in path:
        if not isinstance(tree, dict) or step not in tree:
            return None
        tree = tree[step]
    return tree


# ---------------------------------------------------------------------------------------------
# Configuration from the tensors, checked against the text


def _shape(state: dict[str, torch.Tensor], key: str, src: Path) -> tuple[int, ...]:
    if key not in state:
        raise CtlesionError(f"not an AlignShift/TSM/2.5D DenseNet detector of the authors' code: no {key}", src)
    return tuple(state[key].shape)


def infer_config(state: dict[str, torch.Tensor], meta: dict, src: Path) -> tuple[DetectorConfig, str]:
    """The ctlesion configuration of an authors' checkpoint, and its backbone type.

    Raises:
        CtlesionError: keys of another detector, unsupported settings, or a disagreement
            between the tensors and the config text.
    """
    literals = {}
    if isinstance(meta.get("config"), str):
        try:
            literals = config_literals(meta["config"])
        except SyntaxError as exc:
            raise CtlesionError(f"its meta config is not Python source ({exc.msg}, line {exc.lineno})", src) from None
    model_cfg = literals.get("model", {}) if isinstance(literals.get("model"), dict) else {}
    backbone_type = _get(model_cfg, "backbone", "type")
    three_d = "backbone.reductionz1.reduction_z_conv.weight" in state
    if backbone_type is None:
        backbone_type = "DenseNetCustomTrunc3dAlign" if three_d else "DenseNetCustomTrunc"
        log.warning("%s: no training config text; assuming a %s backbone from its keys", src, backbone_type)
    if backbone_type not in BACKBONE_CONTEXTS:
        raise CtlesionError(f"backbone {backbone_type!r} is not supported (only {', '.join(BACKBONE_CONTEXTS)})", src)
    context = BACKBONE_CONTEXTS[backbone_type]
    if (context != "2.5d") != three_d:
        raise CtlesionError(f"its keys do not match its {backbone_type} backbone (depth reductions "
                            f"{'present' if three_d else 'absent'})", src)

    if three_d:
        num_slices = _shape(state, "backbone.reductionz1.reduction_z_conv.weight", src)[2]
    else:
        num_slices = _shape(state, "backbone.conv0.weight", src)[1]
    fpn = _shape(state, "backbone.lateral2.weight", src)[0]
    fc, fc_in = _shape(state, "bbox_head.shared_fcs.0.weight", src)
    num_classes = _shape(state, "bbox_head.fc_cls.weight", src)[0]
    mask_channels = _shape(state, "mask_head.convs.0.conv.weight", src)[0]
    num_mask_convs = len({k.split(".")[2] for k in state if k.startswith("mask_head.convs.")})
    anchors = _shape(state, "rpn_head.rpn_cls.weight", src)[0]
    facts = {"classes": (num_classes, 2), "mask convs": (num_mask_convs, 4),
             "anchors per location": (anchors, len(ANCHOR_SCALES) * len(ANCHOR_RATIOS)),
             "box head input": (fc_in, fpn * 7 * 7)}
    for what, (found, wanted) in facts.items():
        if found != wanted:
            raise CtlesionError(f"{what}: {found} in its tensors, ctlesion's detector has {wanted}", src)

    text_values = {
        "NUM_SLICES": (_get(literals, "dataset_transform", "NUM_SLICES"), num_slices),
        "backbone out_dim": (_get(model_cfg, "backbone", "out_dim"), fpn),
        "fc_out_channels": (_get(model_cfg, "bbox_head", "fc_out_channels"), fc),
        "mask conv_out_channels": (_get(model_cfg, "mask_head", "conv_out_channels"), mask_channels),
        "mask num_convs": (_get(model_cfg, "mask_head", "num_convs"), num_mask_convs),
        "bbox num_classes": (_get(model_cfg, "bbox_head", "num_classes"), num_classes),
        "anchor_scales": (_as_tuple(_get(model_cfg, "rpn_head", "anchor_scales")), ANCHOR_SCALES),
        "anchor_ratios": (_as_tuple(_get(model_cfg, "rpn_head", "anchor_ratios")), ANCHOR_RATIOS),
        "anchor_strides": (_as_tuple(_get(model_cfg, "rpn_head", "anchor_strides")), (4,)),
        "WINDOWING": (_as_tuple(_get(literals, "dataset_transform", "WINDOWING")), RELEASED_WINDOW_HU),
    }
    for what, (in_text, in_tensors) in text_values.items():
        if in_text is not None and in_text != in_tensors:
            raise CtlesionError(f"its config text says {what} = {in_text}, its tensors (or ctlesion's detector) "
                                f"{in_tensors}", src)
    for (stage, name), ours in TEST_SETTINGS.items():
        theirs = _get(literals, "test_cfg", stage, name)
        if theirs is not None and theirs != ours:
            log.warning("%s: its test_cfg %s.%s is %s; ctlesion runs it with %s", src, stage, name, theirs, ours)

    fold_div = _get(model_cfg, "backbone", "n_fold")
    ref_interval = _get(model_cfg, "backbone", "ref_thickness")
    config = DetectorConfig(
        context=context, num_slices=int(num_slices), image_size_px=RELEASED_IMAGE_SIZE_PX, fpn_channels=int(fpn),
        fc_channels=int(fc), fold_div=int(fold_div) if fold_div is not None else 8, padding="keep",
        ref_interval_mm=float(ref_interval) if ref_interval is not None else 2.0, hu_window=RELEASED_WINDOW_HU,
        input_scaling="mmdet", box_convention="mmdet1", reduction_bias=False, mask_channels=int(mask_channels),
    )
    try:
        config.validate()
    except ValueError as exc:
        raise CtlesionError(f"unsupported configuration ({exc})", src) from None
    return config, backbone_type


def _as_tuple(value) -> tuple | None:
    """Lists of numbers as tuples of floats (ints kept for integral values), for comparison."""
    if value is None:
        return None
    if not isinstance(value, (list, tuple)):
        return (value,)
    return tuple(float(v) if isinstance(v, float) and not float(v).is_integer() else v for v in value)


# ---------------------------------------------------------------------------------------------
# Key mapping

#: (their key pattern, our key template): ``{gN}`` is the pattern's group N, ``{gN-k}`` that
#: number minus k. Their dense layers and reductions are 1-based, our lists 0-based; lateral2..4
#: (the outputs of blocks 1..3) are our lateral[0..2].
_RULES_3D = (
    (r"backbone\.conv0\.weight", "backbone.stem.0.weight"),
    (r"backbone\.norm0\.(.+)", "backbone.stem.1.{g1}"),
    (r"backbone\.denseblock(\d)\.denselayer(\d+)\.(norm[12])\.(.+)", "backbone.block{g1}.layers.{g2-1}.{g3}.{g4}"),
    (r"backbone\.denseblock(\d)\.denselayer(\d+)\.(conv[12])\.weight", "backbone.block{g1}.layers.{g2-1}.{g3}.conv.weight"),
    (r"backbone\.transition(\d)\.(norm\..+|conv\.weight)", "backbone.transition{g1}.{g2}"),
    (r"backbone\.reductionz(\d)\.reduction_z_conv\.(weight|bias)", "backbone.reduce.{g1-1}.conv.{g2}"),
)
_RULES_25D = (
    (r"backbone\.conv0\.weight", "backbone.stem.0.weight"),
    (r"backbone\.norm0\.(.+)", "backbone.stem.1.{g1}"),
    (r"backbone\.denseblock(\d)\.(denselayer\d+\.(?:norm|conv)[12]\..+)", "backbone.block{g1}.{g2}"),
    (r"backbone\.transition(\d)\.(norm\..+|conv\.weight)", "backbone.transition{g1}.{g2}"),
)
_RULES_COMMON = (
    (r"backbone\.lateral(\d)\.(weight|bias)", "backbone.lateral.{g1-2}.{g2}"),
    (r"rpn_head\.rpn_conv\.(weight|bias)", "rpn.head.conv.0.0.{g1}"),
    (r"rpn_head\.rpn_cls\.(weight|bias)", "rpn.head.cls_logits.{g1}"),
    (r"rpn_head\.rpn_reg\.(weight|bias)", "rpn.head.bbox_pred.{g1}"),
    (r"bbox_head\.shared_fcs\.0\.(weight|bias)", "roi_heads.box_head.fc6.{g1}"),
    (r"bbox_head\.shared_fcs\.1\.(weight|bias)", "roi_heads.box_head.fc7.{g1}"),
    (r"bbox_head\.fc_cls\.(weight|bias)", "roi_heads.box_predictor.cls_score.{g1}"),
    (r"bbox_head\.fc_reg\.(weight|bias)", "roi_heads.box_predictor.bbox_pred.{g1}"),
    (r"mask_head\.convs\.(\d)\.conv\.(weight|bias)", "roi_heads.mask_head.{g1}.0.{g2}"),
    (r"mask_head\.upsample\.(weight|bias)", "roi_heads.mask_predictor.conv5_mask.{g1}"),
    (r"mask_head\.conv_logits\.(weight|bias)", "roi_heads.mask_predictor.mask_fcn_logits.{g1}"),
)
_TEMPLATE_FIELD = re.compile(r"\{g(\d)(-\d)?\}")


def target_key(source_key: str, context: str) -> str | None:
    """Our state-dict key for one of their keys, or None when no rule maps it."""
    rules = (_RULES_25D if context == "2.5d" else _RULES_3D) + _RULES_COMMON
    for pattern, template in rules:
        match = re.fullmatch(pattern, source_key)
        if match:
            return _TEMPLATE_FIELD.sub(lambda fld, m=match: _field(m, fld), template)
    return None


def _field(match: re.Match, fld: re.Match) -> str:
    """The value of one ``{gN}`` / ``{gN-k}`` template field for a matched source key."""
    value = match.group(int(fld.group(1)))
    return str(int(value) + int(fld.group(2))) if fld.group(2) else value


def map_state_dict(state: dict[str, torch.Tensor], model: AlignShiftDetector,
                   src: Path) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Their tensors as our state dict: mapped, unmatched source keys, missing target keys.

    Their 3-D network keeps 2-D (O, I, k, k) kernels and runs them as 1 x k x k convolutions; our
    Conv3d kernels are (O, I, 1, k, k): a depth axis is inserted.

    Raises:
        CtlesionError: a mapped tensor whose shape does not fit (naming both keys).
    """
    reference = model.state_dict()
    mapped, unmatched = {}, []
    for key, tensor in state.items():
        target = target_key(key, model.config.context)
        if target is None or target not in reference:
            unmatched.append(key)
            continue
        wanted = reference[target].shape
        if tensor.dim() == 4 and len(wanted) == 5:
            tensor = tensor.unsqueeze(2)
        if tuple(tensor.shape) != tuple(wanted):
            raise CtlesionError(f"{key} has shape {tuple(tensor.shape)}, but {target} needs {tuple(wanted)}", src)
        mapped[target] = tensor.to(reference[target].dtype)
    missing = [key for key in reference if key not in mapped]
    return mapped, unmatched, missing


# ---------------------------------------------------------------------------------------------
# The import


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def import_mmdet_checkpoint(src: Path, dst: Path, *, allow_partial: bool = False) -> ImportReport:
    """Read an mmdetection-1 AlignShift checkpoint and write it as a ctlesion checkpoint.

    Args:
        src: the authors' ``.pth`` file (loaded with ``torch.load(weights_only=True)`` only).
        dst: the ``.safetensors`` to write (its JSON sidecar beside it), atomically.
        allow_partial: write even when keys are unmatched or missing (reported; missing
            tensors keep their random initialisation).

    Returns:
        The :class:`ImportReport`.

    Raises:
        CtlesionError: not a checkpoint, truncated, needs code to unpickle, another detector,
            unmatched or missing keys (without ``allow_partial``), configuration disagreement
            (one line naming ``src`` and the problem).
    """
    from ctlesion.checkpoint import save_checkpoint  # (checkpoint imports this package)

    src = Path(src)
    state, meta = read_mmdet_checkpoint(src)
    config, backbone_type = infer_config(state, meta, src)
    model = AlignShiftDetector(config)
    mapped, unmatched, missing = map_state_dict(state, model, src)
    if (unmatched or missing) and not allow_partial:
        parts = [f"{len(unmatched)} unmatched key(s) (first: {unmatched[0]})" if unmatched else "",
                 f"{len(missing)} missing key(s) (first: {missing[0]})" if missing else ""]
        raise CtlesionError(f"{' and '.join(p for p in parts if p)}; --allow-partial imports the rest", src)
    model.load_state_dict(mapped, strict=False)
    source = {"file": src.name, "sha256": _sha256(src), "format": "mmdetection-1 checkpoint (M3DV/AlignShift)",
              "mmdet_version": meta.get("mmdet_version"), "epoch": meta.get("epoch"), "iter": meta.get("iter"),
              "backbone_type": backbone_type}
    training = {"description": f"imported from {src.name}: the authors' {config.name} (M3DV/AlignShift)",
                "source": source,
                "trained_on": "unknown to ctlesion: the authors' training run (DeepLesion in their release)",
                "licence": "the authors' terms for their released weights (see github.com/M3DV/AlignShift); "
                           "DeepLesion's terms of use for models trained on it",
                "unmatched_keys": unmatched, "missing_keys": missing}
    save_checkpoint(model, Path(dst), training=training)
    log.debug("%s: imported %d tensors (%s)", src, len(mapped), config.name)
    return ImportReport(config=config, num_mapped=len(mapped), unmatched=unmatched, missing=missing, source=source)
