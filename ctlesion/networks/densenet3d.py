"""torchvision DenseNets converted to 3D with slice shifts inside the dense layers (SPEC section 6).

AlignShift (MICCAI 2020), released configuration: every k x k convolution becomes 1 x k x k,
pools 1 x k x k, BatchNorm2d becomes BatchNorm3d; depth is never pooled or strided; the shift
(AlignShift, TSM or none) is applied inside each dense layer before both the 1x1 and the 3x3
convolution, never in the stem or the transitions. Weights are copied from the 2D network, so
with context "none" every slice is processed exactly as the 2D network processes an image.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torchvision.models import DenseNet
from torchvision.models.densenet import _DenseBlock, _DenseLayer

from ctlesion.networks.layers import ShiftConv3d, convert_layers, stem_conv_for


class DenseLayer3d(nn.Module):
    """A DenseNet bottleneck layer (BN-ReLU-[shift]-Conv1x1-BN-ReLU-[shift]-Conv3x3) in 3D.

    Built from a torchvision ``_DenseLayer`` whose weights are copied (its dropout rate too).
    """

    def __init__(self, layer_2d: _DenseLayer, context: str, fold_div: int, padding: str, ref_interval_mm: float):
        super().__init__()
        converted, _ = convert_layers(layer_2d)
        self.norm1, self.relu1 = converted.norm1, converted.relu1
        self.conv1 = ShiftConv3d(converted.conv1, context, fold_div, padding, ref_interval_mm)
        self.norm2, self.relu2 = converted.norm2, converted.relu2
        self.conv2 = ShiftConv3d(converted.conv2, context, fold_div, padding, ref_interval_mm)
        self.drop_rate = float(layer_2d.drop_rate)

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """x: (B, C_in, D, H, W) -> new features (B, growth_rate, D, H, W)."""
        out = self.conv1(self.relu1(self.norm1(x)), slice_interval_mm)
        out = self.conv2(self.relu2(self.norm2(out)), slice_interval_mm)
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        return out


class DenseBlock3d(nn.Module):
    """A dense block: each layer sees the concatenation of the input and all earlier outputs.

    With ``gradient_checkpointing`` set, each layer's activations are recomputed in the
    backward pass instead of stored (``torch.utils.checkpoint``): less memory, more compute.
    """

    def __init__(self, block_2d: _DenseBlock, **shift_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(DenseLayer3d(layer, **shift_kwargs) for layer in block_2d.values())
        self.gradient_checkpointing = False

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C, D, H, W) -> (B, C + L * growth_rate, D, H, W) for L layers."""
        features = [x]
        recompute = self.gradient_checkpointing and torch.is_grad_enabled()
        for layer in self.layers:
            inputs = torch.cat(features, 1)
            features.append(checkpoint(layer, inputs, slice_interval_mm, use_reentrant=False) if recompute
                            else layer(inputs, slice_interval_mm))
        return torch.cat(features, 1)


def dense_block_channels(net: DenseNet) -> list[int]:
    """Output channels of each dense block of a torchvision DenseNet (e.g. 256, 512, 1024, 1024)."""
    blocks = [m for name, m in net.features.named_children() if name.startswith("denseblock")]
    return [block.denselayer1.conv1.in_channels + block.denselayer1.conv2.out_channels * len(block)
            for block in blocks]


class DenseNet3d(nn.Module):
    """A torchvision DenseNet in 3D (build it with :func:`ctlesion.networks.convert.convert_to_3d`).

    Structure: ``stem`` (conv0, norm0, relu0, pool0), ``blocks`` (dense blocks),
    ``transitions`` (one fewer than blocks), ``norm5`` and ``classifier`` (the 2D Linear layer).

    Args:
        net_2d: the 2D DenseNet (not modified).
        context: "alignshift", "tsm" or "none".
        in_channels: input channels of the stem (:func:`~ctlesion.networks.layers.adapt_stem_weight`).
        fold_div, padding, ref_interval_mm: shift settings (:class:`ShiftConv3d`).
    """

    def __init__(self, net_2d: DenseNet, context: str, in_channels: int, fold_div: int = 8, padding: str = "zero",
                 ref_interval_mm: float = 2.0):
        super().__init__()
        feats = net_2d.features
        shift = dict(context=context, fold_div=fold_div, padding=padding, ref_interval_mm=ref_interval_mm)
        stem = nn.Sequential(stem_conv_for(feats.conv0, in_channels), feats.norm0, feats.relu0, feats.pool0)
        self.stem, _ = convert_layers(stem)
        children = dict(feats.named_children())
        num_blocks = sum(name.startswith("denseblock") for name in children)
        self.blocks = nn.ModuleList(DenseBlock3d(children[f"denseblock{i}"], **shift) for i in range(1, num_blocks + 1))
        self.transitions = nn.ModuleList(convert_layers(children[f"transition{i}"])[0] for i in range(1, num_blocks))
        self.norm5, _ = convert_layers(feats.norm5)
        self.classifier = copy.deepcopy(net_2d.classifier)
        self.block_channels = dense_block_channels(net_2d)

    def forward_features(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C_in, D, H, W) -> the final feature map (B, C, D, H/32, W/32) after norm5."""
        out = self.stem(x)
        for i, block in enumerate(self.blocks):
            out = block(out, slice_interval_mm)
            if i < len(self.transitions):
                out = self.transitions[i](out)
        return self.norm5(out)

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """(B, C_in, D, H, W) -> logits (B, num_classes): ReLU, global average over D, H, W, classifier.

        On a 1-slice input this equals the 2D DenseNet's output when the context is "none".
        """
        out = F.relu(self.forward_features(x, slice_interval_mm))
        return self.classifier(torch.flatten(F.adaptive_avg_pool3d(out, 1), 1))
