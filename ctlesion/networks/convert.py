"""Turning 2D layers of a torchvision CNN into their 3D counterparts (AlignShift paper, section 2.2).

A k x k 2D convolution becomes a 1 x k x k 3D convolution with the same weights (unsqueezed
along depth), so on every slice the 3D network computes exactly what the 2D network computes;
pools become 1 x k x k pools and BatchNorm2d becomes BatchNorm3d with the same statistics.
Depth is never pooled or strided. The slice shift (AlignShift, TSM, or none) is added by
:class:`ShiftConv3d`, which wraps a converted convolution and takes the per-sample slice
interval explicitly in ``forward`` (no hidden global state, unlike the released code).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ctlesion.ops import align_shift, temporal_shift

CONTEXTS = ("alignshift", "tsm", "none")


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)  # type: ignore[return-value]


def conv2d_to_3d(conv: nn.Conv2d) -> nn.Conv3d:
    """A 1 x k x k Conv3d computing ``conv`` on every slice (weights copied, depth kernel 1)."""
    if not isinstance(conv.padding, (tuple, list)):
        raise ValueError(f"string padding {conv.padding!r} is not supported by the converter")
    out = nn.Conv3d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=(1, *_pair(conv.kernel_size)),
        stride=(1, *_pair(conv.stride)),
        padding=(0, *_pair(conv.padding)),
        dilation=(1, *_pair(conv.dilation)),
        groups=conv.groups,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        out.weight.copy_(conv.weight.unsqueeze(2))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out


def batchnorm2d_to_3d(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """A BatchNorm3d with the affine parameters and running statistics of ``bn``."""
    ref = bn.weight if bn.weight is not None else bn.running_mean
    factory = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    out = nn.BatchNorm3d(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, **factory)
    out.load_state_dict(bn.state_dict())
    return out.train(bn.training)


def pool2d_to_3d(pool: nn.Module) -> nn.Module:
    """A 1 x k x k 3D max/avg pool equivalent to the 2D ``pool`` slice by slice."""
    kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool3d((1, *kernel), (1, *stride), (0, *padding), (1, *_pair(pool.dilation)), ceil_mode=pool.ceil_mode)
    return nn.AvgPool3d((1, *kernel), (1, *stride), (0, *padding), ceil_mode=pool.ceil_mode,
                        count_include_pad=pool.count_include_pad)


def convert_layers(module: nn.Module, prefix: str = "") -> tuple[nn.Module, list[str]]:
    """Deep-copy ``module`` with every Conv2d, BatchNorm2d, MaxPool2d and AvgPool2d made 3D.

    Args:
        module: a 2D module tree (not modified).
        prefix: name prefix for the report.

    Returns:
        The converted copy and the dotted names of the layers that were converted.

    Raises:
        ValueError: for 2D layers the converter cannot map (e.g. adaptive pools, string padding).
    """
    converted: list[str] = []
    result = copy.deepcopy(module)

    def visit(parent: nn.Module, parent_name: str) -> None:
        for name, child in parent.named_children():
            full = f"{parent_name}{name}"
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, conv2d_to_3d(child))
            elif isinstance(child, nn.BatchNorm2d):
                setattr(parent, name, batchnorm2d_to_3d(child))
            elif isinstance(child, (nn.MaxPool2d, nn.AvgPool2d)):
                setattr(parent, name, pool2d_to_3d(child))
            elif isinstance(child, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                raise ValueError(f"{full}: adaptive 2D pools have no slice-wise 3D counterpart here")
            else:
                visit(child, full + ".")
                continue
            converted.append(full)

    if isinstance(result, (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)):
        wrapper = nn.Sequential(result)
        visit(wrapper, "")
        return wrapper[0], [prefix.rstrip(".") or type(module).__name__]
    visit(result, prefix)
    return result, converted


class ShiftConv3d(nn.Module):
    """A converted convolution preceded by a slice shift (AlignShift paper, Algorithm 1).

    Args:
        conv: the 3D convolution (from :func:`conv2d_to_3d`).
        context: "alignshift" (shift by clamp(r / s, 0, 1) of a slice), "tsm" (one slice) or
            "none" (no shift: a slice-wise 2D network).
        fold_div: channels per shifted group = C // fold_div.
        padding: border handling of AlignShift, "zero" (paper) or "keep" (released code).
        ref_interval_mm: reference interval r.
    """

    def __init__(self, conv: nn.Conv3d, context: str, fold_div: int = 8, padding: str = "zero",
                 ref_interval_mm: float = 2.0):
        super().__init__()
        if context not in CONTEXTS:
            raise ValueError(f"context must be one of {CONTEXTS}, got {context!r}")
        self.conv = conv
        self.context = context
        self.fold_div = fold_div
        self.padding = padding
        self.ref_interval_mm = ref_interval_mm

    def forward(self, x: Tensor, slice_interval_mm: Tensor) -> Tensor:
        """x: (B, C, D, H, W); slice_interval_mm: (B,) in mm. Returns the convolution output."""
        if self.context == "alignshift":
            x = align_shift(x, slice_interval_mm, self.ref_interval_mm, self.fold_div, self.padding)
        elif self.context == "tsm":
            x = temporal_shift(x, self.fold_div)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"context={self.context}, fold_div={self.fold_div}, padding={self.padding}"
