"""AlignShift and the Temporal Shift Module (TSM), out of place and autograd-correct.

Source: Yang, He et al., "AlignShift: Bridging the Gap of Imaging Thickness in 3D Anisotropic
Volumes", MICCAI 2020, Algorithm 1; TSM: Lin et al., ICCV 2019. SPEC section 5.

For X of shape (B, C, D, H, W), per-sample slice interval s (B,), reference interval r and
fold f = C // fold_div, with a = clamp(r / s, 0, 1):

* channels [0, f):   out[:, c, d] = (1 - a) X[:, c, d] + a X[:, c, d + 1]
* channels [f, 2f):  out[:, c, d] = (1 - a) X[:, c, d] + a X[:, c, d - 1]
* channels [2f, C):  unchanged.

At the border slice (d = D - 1 for the first group, d = 0 for the second) the missing
neighbour is zero ("zero" padding, the paper: out = (1 - a) X) or the slice is left unchanged
("keep" padding, the released code's default). TSM is the same with a = 1 and zero padding.

Implementation: the output is built with one allocation (``torch.cat`` of the three channel
groups); each shifted group is a blend of the group with its shifted copy written by
``torch.lerp``. Everything is differentiable by autograd and never writes into ``x``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
import torch.nn.functional as F

PADDINGS = ("zero", "keep")


def _check_input(x: Tensor, fold_div: int) -> int:
    if not isinstance(x, Tensor) or x.dim() != 5:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a 5-D tensor (B, C, D, H, W), got {shape}")
    if not x.is_floating_point():
        raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
    if not isinstance(fold_div, int) or fold_div < 2:
        raise ValueError(f"fold_div must be an integer >= 2, got {fold_div!r}")
    if x.shape[1] < fold_div:
        raise ValueError(f"x has C={x.shape[1]} channels, fewer than fold_div={fold_div}")
    return x.shape[1] // fold_div


def _shift_next(x: Tensor) -> Tensor:
    """x[:, :, d + 1] at slice d, zero beyond the last slice."""
    return F.pad(x[:, :, 1:], (0, 0, 0, 0, 0, 1))


def _shift_prev(x: Tensor) -> Tensor:
    """x[:, :, d - 1] at slice d, zero before the first slice."""
    return F.pad(x[:, :, :-1], (0, 0, 0, 0, 1, 0))


def _blend(group: Tensor, shifted: Tensor, weight: Tensor, border: int | None) -> Tensor:
    """(1 - w) * group + w * shifted, with slice ``border`` left as ``group`` when given."""
    out = torch.lerp(group, shifted, weight)
    if border is None:
        return out
    depth = group.shape[2]
    keep = torch.zeros(depth, dtype=torch.bool, device=group.device)
    keep[border] = True
    return torch.where(keep.view(1, 1, depth, 1, 1), group, out)


def _shift(x: Tensor, weight: Tensor, fold: int, padding: str) -> Tensor:
    first, second, rest = x[:, :fold], x[:, fold : 2 * fold], x[:, 2 * fold :]
    keep = padding == "keep"
    out_first = _blend(first, _shift_next(first), weight, -1 if keep else None)
    out_second = _blend(second, _shift_prev(second), weight, 0 if keep else None)
    return torch.cat((out_first, out_second, rest), dim=1)


def shift_weight(slice_interval_mm: Tensor | float, ref_interval_mm: float, batch: int, like: Tensor) -> Tensor:
    """The per-sample shift fraction a = clamp(r / s, 0, 1) as a (B, 1, 1, 1, 1) tensor.

    Args:
        slice_interval_mm: float or (B,) tensor of slice intervals s in mm (each > 0, finite).
        ref_interval_mm: reference interval r in mm (> 0).
        batch: B, to broadcast a scalar interval.
        like: tensor whose dtype and device the result takes.

    Raises:
        ValueError: if an interval is not positive and finite or the shape does not match B.
    """
    if not (isinstance(ref_interval_mm, (int, float)) and math.isfinite(ref_interval_mm) and ref_interval_mm > 0):
        raise ValueError(f"ref_interval_mm must be a positive finite number, got {ref_interval_mm!r}")
    s = torch.as_tensor(slice_interval_mm, dtype=like.dtype, device=like.device)
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"slice_interval_mm must be a float or a ({batch},) tensor, got shape {tuple(s.shape)}")
    if not torch.compiler.is_compiling() and not bool(torch.all(torch.isfinite(s) & (s > 0))):
        raise ValueError(f"slice_interval_mm must be positive and finite, got {s.tolist()}")
    return torch.clamp(ref_interval_mm / s.detach(), 0.0, 1.0).view(batch, 1, 1, 1, 1)


def align_shift(
    x: Tensor,
    slice_interval_mm: Tensor | float,
    ref_interval_mm: float = 2.0,
    fold_div: int = 8,
    padding: str = "zero",
) -> Tensor:
    """AlignShift (paper, Algorithm 1): shift 2 * C // fold_div channels by a fraction of a slice.

    Args:
        x: (B, C, D, H, W) floating tensor, any device; not modified.
        slice_interval_mm: the slice interval s of each sample in mm, a float or a (B,) tensor.
        ref_interval_mm: reference interval r in mm (paper: 2 mm); a = clamp(r / s, 0, 1).
        fold_div: channels per shifted group = C // fold_div (paper: 8).
        padding: "zero" (paper: border slices become (1 - a) X) or "keep" (released code:
            border slices unchanged).

    Returns:
        A new tensor shaped and typed like ``x``.

    Raises:
        ValueError: wrong rank or dtype, C < fold_div, a non-positive or non-finite interval,
            or an unknown padding.
    """
    fold = _check_input(x, fold_div)
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    weight = shift_weight(slice_interval_mm, ref_interval_mm, x.shape[0], x)
    return _shift(x, weight, fold, padding)


def temporal_shift(x: Tensor, fold_div: int = 8) -> Tensor:
    """Temporal Shift Module (Lin et al., ICCV 2019): one-slice shift with zero padding.

    Channels [0, f) take the next slice, [f, 2f) the previous one, f = C // fold_div.

    Args:
        x: (B, C, D, H, W) floating tensor; not modified.
        fold_div: channels per shifted group = C // fold_div.

    Returns:
        A new tensor shaped and typed like ``x``.

    Raises:
        ValueError: wrong rank or dtype, or C < fold_div.
    """
    fold = _check_input(x, fold_div)
    first, second, rest = x[:, :fold], x[:, fold : 2 * fold], x[:, 2 * fold :]
    return torch.cat((_shift_next(first), _shift_prev(second), rest), dim=1)
