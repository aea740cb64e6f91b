"""The detector's configuration: everything needed to rebuild a detector, stored as JSON beside
every checkpoint. Plain data (no torch import), so a checkpoint's network can be named and
checked without loading a model."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ctlesion.choices import BACKBONES, BOX_CONVENTIONS, DETECTOR_CONTEXTS, INPUT_SCALINGS


@dataclass(frozen=True)
class DetectorConfig:
    """Everything needed to rebuild a detector; stored as JSON beside every checkpoint.

    Defaults are the paper's released configuration; the shipped demo model (trained on CPU)
    uses a smaller ``image_size_px``, ``fpn_channels`` and ``fc_channels`` (see its model card).
    ``context`` picks the network of the paper's comparison: "alignshift" (3D, shift by the
    slice interval), "tsm" (3D, one-slice shift), "2.5d" (slices as input channels of the 2D
    network) or "none" (3D, slices meet only in the depth reduction).

    The conventions of a model's origin travel with it: ``input_scaling`` (how HU become input,
    :func:`ctlesion.preprocess.network_input`), ``box_convention`` ("torchvision", ctlesion's
    own models, or "mmdet1": the box geometry of the authors' mmdetection-1 code, for their
    imported weights), ``reduction_bias`` (a bias in the depth reductions; the authors' have
    none), ``mask_channels`` (the mask head's width; paper 256) and ``padding``.

    ``input_windows_hu`` (default: none) gives the network several HU windows of the same
    slices as input channels, as multi-window lesion detectors do (MVP-Net, Li et al., MICCAI
    2019: soft tissue, lung and bone windows): the input still arrives in ``hu_window`` (which
    must hold every window) and the network's first step re-windows it into one channel per
    window (:class:`~ctlesion.networks.input_windows.WindowChannels`). Empty: one channel, the input as is.

    The detector's thresholds travel with it too (defaults: the released configuration, SPEC
    section 6): ``rpn_nms_iou`` (NMS between proposals), ``rpn_proposals`` (proposals kept per
    image at inference), ``box_score_min`` (the lowest score a detection may have),
    ``box_nms_iou`` (NMS between detections) and ``detections_per_image`` (at most this many per
    window, highest scores first). Checkpoints written before these fields existed get the
    defaults, which are the values their detectors had.
    """

    backbone: str = "densenet121"
    context: str = "alignshift"
    num_slices: int = 7
    image_size_px: int = 512
    fpn_channels: int = 512
    fc_channels: int = 2048
    fold_div: int = 8
    padding: str = "zero"
    ref_interval_mm: float = 2.0
    hu_window: tuple[float, float] = (-1024.0, 2050.0)
    input_windows_hu: tuple[tuple[float, float], ...] = ()
    input_scaling: str = "unit"
    box_convention: str = "torchvision"
    reduction_bias: bool = True
    mask_channels: int = 256
    rpn_nms_iou: float = 0.7
    rpn_proposals: int = 300
    box_score_min: float = 0.001
    box_nms_iou: float = 0.5
    detections_per_image: int = 50

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DetectorConfig":
        """Build from a JSON dict, ignoring unknown keys; raises ValueError on bad values."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        if "hu_window" in values:
            values["hu_window"] = tuple(float(v) for v in values["hu_window"])
        if "input_windows_hu" in values:
            values["input_windows_hu"] = tuple(tuple(float(v) for v in window) for window in values["input_windows_hu"])
        config = cls(**values)
        config.validate()
        return config

    @property
    def input_channels(self) -> int:
        """Channels of the network input after its first step: one per input window, else 1."""
        return max(1, len(self.input_windows_hu))

    @property
    def resample_thick(self) -> bool:
        """Whether every window is resampled to ``ref_interval_mm`` (TSM and 2.5D, as in the paper).

        AlignShift (and "none") see thick series at their own interval and only thin ones
        resampled (SPEC section 4); the TSM and 2.5D baselines assume slices ``ref_interval_mm``
        apart, so their neighbours are interpolated at that spacing for every series.
        """
        return self.context in ("tsm", "2.5d")

    @property
    def name(self) -> str:
        """Short name as in the paper's tables, e.g. "AlignShift x7", "2.5D x3"."""
        label = {"alignshift": "AlignShift", "tsm": "TSM", "2.5d": "2.5D", "none": "3D no shift"}[self.context]
        return f"{label} x{self.num_slices}"

    def validate(self) -> None:
        if self.backbone not in BACKBONES:
            raise ValueError(f"backbone {self.backbone!r} must be one of {', '.join(BACKBONES)}")
        if self.backbone != "densenet121" and self.box_convention == "mmdet1":
            raise ValueError("the authors' conventions (box_convention mmdet1) exist for densenet121 only")
        if self.context not in DETECTOR_CONTEXTS:
            raise ValueError(f"context {self.context!r} must be one of {', '.join(DETECTOR_CONTEXTS)}")
        if self.num_slices < 1 or self.num_slices % 2 == 0:
            raise ValueError(f"num_slices must be odd and positive, got {self.num_slices}")
        if self.image_size_px % 32:
            raise ValueError(f"image_size_px must be a multiple of 32, got {self.image_size_px}")
        if len(self.hu_window) != 2 or not self.hu_window[0] < self.hu_window[1]:
            raise ValueError(f"hu_window must be (low, high) with low < high, got {self.hu_window}")
        if self.input_scaling not in INPUT_SCALINGS:
            raise ValueError(f"input_scaling {self.input_scaling!r} must be one of {', '.join(INPUT_SCALINGS)}")
        self._validate_input_windows()
        if self.box_convention not in BOX_CONVENTIONS:
            raise ValueError(f"box_convention {self.box_convention!r} must be one of {', '.join(BOX_CONVENTIONS)}")
        if self.mask_channels < 1:
            raise ValueError(f"mask_channels must be positive, got {self.mask_channels}")
        for name in ("rpn_nms_iou", "box_nms_iou"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.box_score_min < 1.0:
            raise ValueError(f"box_score_min must be in [0, 1), got {self.box_score_min}")
        if self.rpn_proposals < 1 or self.detections_per_image < 1:
            raise ValueError(f"rpn_proposals and detections_per_image must be positive, got {self.rpn_proposals}, "
                             f"{self.detections_per_image}")

    def _validate_input_windows(self) -> None:
        low, high = self.hu_window
        for window in self.input_windows_hu:
            if len(window) != 2 or not low <= window[0] < window[1] <= high:
                raise ValueError(f"each of input_windows_hu must be (low, high) with low < high inside hu_window "
                                 f"{self.hu_window}, got {window}")
        if self.input_windows_hu and self.input_scaling != "unit":
            raise ValueError("input_windows_hu needs input_scaling 'unit'")
