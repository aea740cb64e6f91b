"""2D layers of a torchvision CNN turned into their 3D counterparts (AlignShift paper, section 2.2).

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
    """The 3D counterpart of a 2D pool.

    Max/avg pools become 1 x k x k pools (equal to the 2D pool slice by slice). Adaptive pools
    with output size (h, w) become adaptive 3D pools with output (1, h, w): they also pool over
    depth, so on a 1-slice input they equal the 2D pool, and a classifier after them sees the
    same number of features whatever the depth.
    """
    if isinstance(pool, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = (1, *_pair(pool.output_size))
        return nn.AdaptiveAvgPool3d(size) if isinstance(pool, nn.AdaptiveAvgPool2d) else nn.AdaptiveMaxPool3d(size)
    kernel, stride, padding = _pair(pool.kernel_size), _pair(pool.stride or pool.kernel_size), _pair(pool.padding)
    if isinstance(pool, nn.MaxPool2d):
        return nn.MaxPool3d((1, *kernel), (1, *stride), (0, *padding), (1, *_pair(pool.dilation)),
                            ceil_mode=pool.ceil_mode)
    return nn.AvgPool3d((1, *kernel), (1, *stride), (0, *padding), ceil_mode=pool.ceil_mode,
                        count_include_pad=pool.count_include_pad)


POOLS_2D = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)
POOLS_3D = (nn.MaxPool3d, nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)


def convert_layers(module: nn.Module, prefix: str = "") -> tuple[nn.Module, list[str]]:
    """Deep-copy ``module`` with every Conv2d, BatchNorm2d and 2D pool made 3D (see above).

    Args:
        module: a 2D module tree (not modified).
        prefix: name prefix for the report.

    Returns:
        The converted copy and the dotted names of the layers that were converted.

    Raises:
        ValueError: for 2D layers the converter cannot map (string padding).
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
            elif isinstance(child, POOLS_2D):
                setattr(parent, name, pool2d_to_3d(child))
            else:
                visit(child, full + ".")
                continue
            converted.append(full)

    if isinstance(result, (nn.Conv2d, nn.BatchNorm2d, *POOLS_2D)):
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

    def forward(self, x: Tensor, slice_interval_mm: Tensor | float | None = None) -> Tensor:
        """x: (B, C, D, H, W); slice_interval_mm: (B,) or float in mm (AlignShift needs it).

        Raises:
            ValueError: AlignShift without a slice interval (and the operator's own errors).
        """
        if self.context == "alignshift":
            if slice_interval_mm is None:
                raise ValueError("slice_interval_mm is required by the alignshift context")
            x = align_shift(x, slice_interval_mm, self.ref_interval_mm, self.fold_div, self.padding)
        elif self.context == "tsm":
            x = temporal_shift(x, self.fold_div)
        return self.conv(x)

    def extra_repr(self) -> str:
        return f"context={self.context}, fold_div={self.fold_div}, padding={self.padding}"


def adapt_stem_weight(weight: Tensor, in_channels: int) -> Tensor:
    """Stem convolution weights of a 2D network for a different number of input channels.

    SPEC section 6: a 1-channel stem takes the middle input channel of the pretrained stem
    (the released AlignShift code); the same number of channels keeps the weights (2.5D x3 uses
    the RGB stem as is). Any other count C' samples the C pretrained channels by linear
    interpolation at C' evenly spaced positions and scales them by C / C', so that a constant
    image gives the same response as the pretrained stem on a grey image.

    Args:
        weight: (O, C, kh, kw) pretrained stem weights.
        in_channels: C', the new number of input channels (>= 1).

    Returns:
        (O, C', kh, kw) weights (a new tensor, same dtype and device).

    Raises:
        ValueError: if ``in_channels`` < 1.
    """
    if in_channels < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    channels = weight.shape[1]
    if in_channels == channels:
        return weight.detach().clone()
    if in_channels == 1:
        middle = channels // 2
        return weight.detach()[:, middle : middle + 1].clone()
    positions = torch.linspace(0, channels - 1, in_channels, dtype=torch.float64)
    lo = positions.floor().long().clamp(max=channels - 1)
    hi = (lo + 1).clamp(max=channels - 1)
    frac = (positions - lo).to(weight.dtype).view(1, -1, 1, 1).to(weight.device)
    w = weight.detach()
    return (w[:, lo] * (1 - frac) + w[:, hi] * frac) * (channels / in_channels)


def stem_conv_for(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    """A copy of a 2D stem convolution taking ``in_channels`` channels (:func:`adapt_stem_weight`)."""
    out = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                    conv.groups, conv.bias is not None, conv.padding_mode, device=conv.weight.device,
                    dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(adapt_stem_weight(conv.weight, in_channels))
        if conv.bias is not None:
            out.bias.copy_(conv.bias)
    return out
