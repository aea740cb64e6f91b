"""The AlignShift DenseNet-121 backbone with depth reduction and FPN (SPEC section 6).

Released configuration of the AlignShift paper (MICCAI 2020): DenseNet-121 truncated after
dense block 3, converted to 3D (1 x k x k convolutions, BatchNorm3d, depth never pooled),
AlignShift applied inside the dense layers before both the 1x1 and the 3x3 convolution, a
learned Conv3d with kernel (D, 1, 1) after each dense block collapsing depth to a 2D map, and a
top-down FPN with 1x1 laterals (1024, 512, 256 -> C), nearest upsampling and no smoothing,
producing ONE map at stride 4.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import densenet121
from torchvision.models.densenet import _DenseBlock, _DenseLayer

from ctlesion.networks.convert import ShiftConv3d, convert_layers

log = logging.getLogger(__name__)


class DenseLayer3d(nn.Module):
    """A DenseNet bottleneck layer (BN-ReLU-[shift]-Conv1x1-BN-ReLU-[shift]-Conv3x3) in 3D.

    Built from a torchvision ``_DenseLayer`` whose weights are copied.
    """

    def __init__(self, layer_2d: _DenseLayer, context: str, fold_div: int, padding: str, ref_interval_mm: float):
        super().__init__()
        converted, _ = convert_layers(layer_2d)
        self.norm1, self.relu1 = converted.norm1, converted.relu1
        self.conv1 = ShiftConv3d(converted.conv1, context, fold_div, padding, ref_interval_mm)
        self.norm2, self.relu2 = converted.norm2, converted.relu2
        self.conv2 = ShiftConv3d(converted.conv2, context, fold_div, padding, ref_interval_mm)

    def forward(self, x: Tensor, slice_interval_mm: Tensor) -> Tensor:
        """x: (B, C_in, D, H, W) -> new features (B, growth_rate, D, H, W)."""
        out = self.conv1(self.relu1(self.norm1(x)), slice_interval_mm)
        return self.conv2(self.relu2(self.norm2(out)), slice_interval_mm)


class DenseBlock3d(nn.Module):
    """A dense block: each layer sees the concatenation of the input and all earlier outputs."""

    def __init__(self, block_2d: _DenseBlock, **shift_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer3d(layer, **shift_kwargs) for layer in block_2d.values())

    def forward(self, x: Tensor, slice_interval_mm: Tensor) -> Tensor:
        features = [x]
        for layer in self.layers:
            features.append(layer(torch.cat(features, 1), slice_interval_mm))
        return torch.cat(features, 1)


class DepthReduction(nn.Module):
    """Learned Conv3d with kernel (D, 1, 1) collapsing D slices into one 2D map.

    Initialised to the mean over slices (identity on channels) so the untrained network starts
    from an average of the slices' features; training then learns its own weighting.
    """

    def __init__(self, channels: int, num_slices: int):
        super().__init__()
        self.conv = nn.Conv3d(channels, channels, kernel_size=(num_slices, 1, 1))
        with torch.no_grad():
            self.conv.weight.zero_()
            idx = torch.arange(channels)
            self.conv.weight[idx, idx] = 1.0 / num_slices
            self.conv.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        """(B, C, D, H, W) -> (B, C, H, W)."""
        return self.conv(x).squeeze(2)


class AlignShiftDenseNet(nn.Module):
    """DenseNet-121 (blocks 1-3) in 3D with slice shifts, depth reduction and a single-map FPN.

    Args:
        num_slices: window depth D (odd).
        context: "alignshift", "tsm" or "none" (see :class:`ShiftConv3d`).
        fpn_channels: channels of the output map (paper: 512).
        fold_div: shifted channels per group = C // fold_div (paper: 8).
        padding: AlignShift border handling, "zero" or "keep".
        ref_interval_mm: reference interval r (paper: 2 mm).
        densenet_2d: optional torchvision DenseNet-121 whose weights are copied (e.g. ImageNet);
            its 3-channel stem is reduced to the middle input channel. Random init otherwise.

    Input (B, 1, D, H, W) with H, W divisible by 16 and slice intervals (B,) in mm;
    output (B, fpn_channels, H / 4, W / 4).
    """

    def __init__(self, num_slices: int = 3, context: str = "alignshift", fpn_channels: int = 512,
                 fold_div: int = 8, padding: str = "zero", ref_interval_mm: float = 2.0,
                 densenet_2d: nn.Module | None = None):
        super().__init__()
        net = densenet_2d if densenet_2d is not None else densenet121(weights=None)
        feats = net.features
        shift = dict(context=context, fold_div=fold_div, padding=padding, ref_interval_mm=ref_interval_mm)
        stem_conv = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
        with torch.no_grad():
            middle = feats.conv0.weight.shape[1] // 2
            stem_conv.weight.copy_(feats.conv0.weight[:, middle : middle + 1])
        self.stem, _ = convert_layers(nn.Sequential(stem_conv, feats.norm0, feats.relu0, feats.pool0))
        self.block1 = DenseBlock3d(feats.denseblock1, **shift)
        self.transition1, _ = convert_layers(feats.transition1)
        self.block2 = DenseBlock3d(feats.denseblock2, **shift)
        self.transition2, _ = convert_layers(feats.transition2)
        self.block3 = DenseBlock3d(feats.denseblock3, **shift)
        channels = (feats.denseblock1.denselayer1.conv1.in_channels + 32 * len(feats.denseblock1),
                    feats.denseblock2.denselayer1.conv1.in_channels + 32 * len(feats.denseblock2),
                    feats.denseblock3.denselayer1.conv1.in_channels + 32 * len(feats.denseblock3))
        self.reduce = nn.ModuleList(DepthReduction(c, num_slices) for c in channels)
        self.lateral = nn.ModuleList(nn.Conv2d(c, fpn_channels, kernel_size=1) for c in channels)
        self.num_slices = num_slices
        self.out_channels = fpn_channels

    def stages(self, images: Tensor, slice_interval_mm: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """3D outputs of dense blocks 1-3: (B, 256, D, H/4, W/4), (B, 512, D, H/8, W/8), (B, 1024, D, H/16, W/16)."""
        c2 = self.block1(self.stem(images), slice_interval_mm)
        c3 = self.block2(self.transition1(c2), slice_interval_mm)
        c4 = self.block3(self.transition2(c3), slice_interval_mm)
        return c2, c3, c4

    def forward(self, images: Tensor, slice_interval_mm: Tensor) -> Tensor:
        """images: (B, 1, D, H, W) float; slice_interval_mm: (B,) mm -> (B, C, H/4, W/4)."""
        if images.dim() != 5 or images.shape[1] != 1 or images.shape[2] != self.num_slices:
            raise ValueError(f"images must be (B, 1, {self.num_slices}, H, W), got {tuple(images.shape)}")
        maps = [reduce(c) for reduce, c in zip(self.reduce, self.stages(images, slice_interval_mm))]
        out = self.lateral[2](maps[2])
        for level in (1, 0):
            lateral = self.lateral[level](maps[level])
            out = lateral + F.interpolate(out, size=lateral.shape[-2:], mode="nearest")
        return out
