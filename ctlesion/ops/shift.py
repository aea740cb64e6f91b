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

Implementation: each shifted group is a linear map along D, out_g = M x_g, with M bidiagonal:
M[d, d] = 1 - a, M[d, d + k] = a (k = +1 for the first group, -1 for the second) and, under
"keep" padding, M[e, e] = 1 at the border slice e. Its adjoint M^T (the backward) is the same
kind of map with the step reversed and the "keep" slice now at the *other* end of the step, so
one routine (:func:`_blend_into`) writes both directions straight into slices of a single
output allocation (``torch.empty_like`` + ``torch.lerp(..., out=)`` / ``torch.mul(..., out=)``
on views). Forward and backward each allocate exactly one tensor of the input's size, in the
input's memory format; ``x`` is never written. The backward applies the adjoint through the
same :class:`torch.autograd.Function`, so double backward works too. The weight a is data (it
comes from the slice interval) and receives no gradient.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ctlesion.choices import PADDINGS


def _check_input(x: Tensor, fold_div: int) -> int:
    """Validate ``x`` (B, C, D, H, W) floating and ``fold_div``; return the fold f = C // fold_div.

    Raises:
        ValueError: naming ``x`` (rank, dtype) or ``fold_div`` (not an int >= 2, C < fold_div).
    """
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


def _memory_format(x: Tensor) -> torch.memory_format:
    """torch.channels_last_3d when ``x`` is laid out channels-last (and not also contiguous), else contiguous."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def _write(op, dst: Tensor, *args: Tensor) -> None:
    """dst[...] = op(*args) without a temporary: ``out=dst`` in eager mode.

    TorchDynamo rejects ``out=`` into a non-contiguous view, so while compiling this is written
    ``dst.copy_(op(*args))``; Inductor fuses the expression into the copy (one kernel, no
    temporary buffer).
    """
    if torch.compiler.is_compiling():
        dst.copy_(op(*args))
    else:
        op(*args, out=dst)


def _blend_into(dst: Tensor, src: Tensor, weight: Tensor | None, step: int, keep_at: int | None) -> None:
    """dst[:, :, d] = c_d * src[:, :, d] + a * src[:, :, d + step], written into ``dst`` in place.

    The neighbour beyond the end (d + step outside [0, D)) is zero. c_d = 1 - a, except at slice
    ``keep_at`` (when given) where c_d = 1 ("keep" padding in the forward map, or its transpose).

    Args:
        dst: (B, f, D, H, W) view of the output to write; must not overlap ``src``.
        src: (B, f, D, H, W) input group, same dtype and device.
        weight: a as a (B, 1, 1, 1, 1) tensor of ``src``'s dtype, or None for a = 1 (a pure
            one-slice shift, written by copies so that non-finite values do not leak).
        step: +1 (take the next slice) or -1 (take the previous slice).
        keep_at: index in [0, D) of the slice whose own coefficient is 1, or None.
    """
    depth = src.shape[2]
    edge = depth - 1 if step == 1 else 0  # the slice without a neighbour
    body, neighbour = (slice(0, depth - 1), slice(1, depth)) if step == 1 else (slice(1, depth), slice(0, depth - 1))
    edge_dst, edge_src = dst[:, :, edge : edge + 1], src[:, :, edge : edge + 1]
    if weight is None:
        dst[:, :, body].copy_(src[:, :, neighbour])
        edge_dst.zero_()
    else:
        _write(torch.lerp, dst[:, :, body], src[:, :, body], src[:, :, neighbour], weight)
        _write(torch.mul, edge_dst, edge_src, 1.0 - weight)
    if keep_at is None:
        return
    keep_dst, keep_src = dst[:, :, keep_at : keep_at + 1], src[:, :, keep_at : keep_at + 1]
    if keep_at == edge:
        keep_dst.copy_(keep_src)
        return
    # keep_at has a neighbour: c = 1, so dst = src + a * src[keep_at + step] (transposed "keep").
    other = src[:, :, keep_at + step : keep_at + step + 1]
    if weight is None:
        keep_dst.copy_(other)
    else:
        _write(torch.mul, keep_dst, other, weight)
    keep_dst.add_(keep_src)


def _apply_shift(
    x: Tensor, weight: Tensor | None, fold: int, keep: bool, transpose: bool, memory_format: torch.memory_format
) -> Tensor:
    """Apply the channel-group shift map (or its transpose) to ``x`` with one allocation.

    Args:
        x: (B, C, D, H, W) tensor; not modified.
        weight: a as a (B, 1, 1, 1, 1) tensor of ``x``'s dtype, or None for a = 1 (TSM).
        fold: f, channels per shifted group.
        keep: "keep" padding (border slices unchanged) instead of zero padding.
        transpose: apply M^T (the backward map) instead of M.
        memory_format: layout of the result (contiguous or channels_last_3d).

    Returns:
        A new (B, C, D, H, W) tensor in ``x``'s dtype and device, laid out as ``memory_format``.
    """
    out = torch.empty_like(x, memory_format=memory_format)
    out[:, 2 * fold :].copy_(x[:, 2 * fold :])
    last = x.shape[2] - 1
    # Forward: group 1 reads d + 1 and keeps d = D - 1; group 2 reads d - 1 and keeps d = 0.
    # Transpose: the steps reverse, the keep slices stay where they were.
    step = -1 if transpose else 1
    _blend_into(out[:, :fold], x[:, :fold], weight, step, last if keep else None)
    _blend_into(out[:, fold : 2 * fold], x[:, fold : 2 * fold], weight, -step, 0 if keep else None)
    return out


class _ChannelShift(torch.autograd.Function):
    """out = M x (or M^T x) for the AlignShift / TSM channel-group map; grad_x = M^T grad_out.

    The backward calls this Function with ``transpose`` flipped, so it is itself differentiable.
    The result is laid out as ``memory_format``; the gradient is laid out like ``x`` (so that
    AccumulateGrad keeps it without a copy), whatever the layout of the incoming gradient.
    """

    @staticmethod
    def forward(ctx, x, weight, fold, keep, transpose, memory_format):
        """x (B, C, D, H, W); weight (B, 1, 1, 1, 1) or None (a = 1); see :func:`_apply_shift`."""
        ctx.save_for_backward(weight)
        ctx.fold, ctx.keep, ctx.transpose, ctx.input_format = fold, keep, transpose, _memory_format(x)
        return _apply_shift(x, weight, fold, keep, transpose, memory_format)

    @staticmethod
    def backward(ctx, grad_out):
        """grad_x = M^T grad_out (M x when this call was itself the transpose); no gradient for the weight."""
        (weight,) = ctx.saved_tensors
        grad_x = _ChannelShift.apply(grad_out, weight, ctx.fold, ctx.keep, not ctx.transpose, ctx.input_format)
        return grad_x, None, None, None, None, None


def shift_weight(slice_interval_mm: Tensor | float, ref_interval_mm: float, batch: int, like: Tensor) -> Tensor:
    """The per-sample shift fraction a = clamp(r / s, 0, 1) as a (B, 1, 1, 1, 1) tensor.

    The ratio is computed in at least float32 (so bfloat16 / float16 inputs do not round s
    first) and returned in ``like``'s dtype, detached: the interval is data, not a parameter.

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
    dtype = torch.promote_types(like.dtype, torch.float32)
    s = torch.as_tensor(slice_interval_mm, dtype=dtype, device=like.device).detach()
    if s.dim() == 0:
        s = s.expand(batch)
    if s.shape != (batch,):
        raise ValueError(f"slice_interval_mm must be a float or a ({batch},) tensor, got shape {tuple(s.shape)}")
    if not torch.compiler.is_compiling() and not bool(torch.all(torch.isfinite(s) & (s > 0))):
        raise ValueError(f"slice_interval_mm must be positive and finite, got {s.tolist()}")
    return torch.clamp(ref_interval_mm / s, 0.0, 1.0).to(like.dtype).view(batch, 1, 1, 1, 1)


def align_shift(
    x: Tensor,
    slice_interval_mm: Tensor | float,
    ref_interval_mm: float = 2.0,
    fold_div: int = 8,
    padding: str = "zero",
) -> Tensor:
    """AlignShift (paper, Algorithm 1): shift 2 * C // fold_div channels by a fraction of a slice.

    Args:
        x: (B, C, D, H, W) floating tensor, any device and memory format; not modified.
        slice_interval_mm: the slice interval s of each sample in mm, a float or a (B,) tensor.
        ref_interval_mm: reference interval r in mm (paper: 2 mm); a = clamp(r / s, 0, 1).
        fold_div: channels per shifted group = C // fold_div (paper: 8).
        padding: "zero" (paper: border slices become (1 - a) X) or "keep" (released code:
            border slices unchanged).

    Returns:
        A new (B, C, D, H, W) tensor with ``x``'s dtype, device and memory format
        (contiguous or channels_last_3d).

    Raises:
        ValueError: wrong rank or dtype, C < fold_div, a non-positive or non-finite interval,
            or an unknown padding.
    """
    fold = _check_input(x, fold_div)
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    weight = shift_weight(slice_interval_mm, ref_interval_mm, x.shape[0], x)
    return _ChannelShift.apply(x, weight, fold, padding == "keep", False, _memory_format(x))


def temporal_shift(x: Tensor, fold_div: int = 8) -> Tensor:
    """Temporal Shift Module (Lin et al., ICCV 2019): one-slice shift with zero padding.

    Channels [0, f) take the next slice, [f, 2f) the previous one, f = C // fold_div.

    Args:
        x: (B, C, D, H, W) floating tensor, any device and memory format; not modified.
        fold_div: channels per shifted group = C // fold_div.

    Returns:
        A new (B, C, D, H, W) tensor with ``x``'s dtype, device and memory format.

    Raises:
        ValueError: wrong rank or dtype, or C < fold_div.
    """
    fold = _check_input(x, fold_div)
    return _ChannelShift.apply(x, None, fold, False, False, _memory_format(x))
