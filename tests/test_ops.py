"""AlignShift / TSM against the authors' reference figures, gradcheck and limits."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ctlesion.ops import align_shift, temporal_shift

REFERENCE = Path(__file__).resolve().parent / "data" / "alignshift_reference.npz"


@pytest.fixture(scope="module")
def ref():
    if not REFERENCE.exists():
        pytest.skip(f"reference figures not found at {REFERENCE}")
    return dict(np.load(REFERENCE))


@pytest.mark.parametrize(
    "key, fn",
    [
        ("alignshift_zero", lambda x, s: align_shift(x, s, 2.0, 8, "zero")),
        ("alignshift_keep", lambda x, s: align_shift(x, s, 2.0, 8, "keep")),
        ("tsm", lambda x, s: temporal_shift(x, 8)),
    ],
)
def test_matches_reference_outputs_and_gradients(ref, key, fn):
    x = torch.tensor(ref["x"], requires_grad=True)
    s = torch.tensor(ref["thickness"])
    out = fn(x, s)
    (out * torch.tensor(ref["grad_out"])).sum().backward()
    np.testing.assert_allclose(out.detach().numpy(), ref[key], rtol=0, atol=1e-10)
    np.testing.assert_allclose(x.grad.numpy(), ref[key + "_grad"], rtol=0, atol=1e-10)
    assert int(ref["fold"]) == x.shape[1] // 8 and float(ref["ref_thickness"]) == 2.0


@pytest.mark.parametrize("padding", ["zero", "keep"])
def test_gradcheck(padding):
    x = torch.randn(2, 8, 4, 3, 2, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: align_shift(t, s, fold_div=4, padding=padding), (x,))
    assert torch.autograd.gradcheck(lambda t: temporal_shift(t, fold_div=4), (x,))


def test_thin_equals_tsm_and_thick_tends_to_identity():
    x = torch.randn(3, 16, 5, 4, 4, dtype=torch.float64)
    thin = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
    torch.testing.assert_close(align_shift(x, thin, padding="zero"), temporal_shift(x), rtol=0, atol=1e-12)
    huge = align_shift(x, 1e12, padding="zero")
    torch.testing.assert_close(huge, x, rtol=0, atol=1e-10)


def test_hand_computed_value_and_input_untouched():
    x = torch.arange(8 * 3, dtype=torch.float64).reshape(1, 8, 3, 1, 1)
    before = x.clone()
    out = align_shift(x, 4.0, fold_div=8)  # a = 0.5, fold = 1
    # channel 0 (takes the next slice): values 0, 1, 2 -> 0.5, 1.5, 1.0 (zero padded border)
    assert out[0, 0, :, 0, 0].tolist() == [0.5, 1.5, 1.0]
    # channel 1 (takes the previous slice): values 3, 4, 5 -> 1.5, 3.5, 4.5
    assert out[0, 1, :, 0, 0].tolist() == [1.5, 3.5, 4.5]
    torch.testing.assert_close(out[:, 2:], x[:, 2:])
    assert torch.equal(x, before)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"x": torch.zeros(2, 8, 3, 4)}, "x"),
        ({"x": torch.zeros(1, 4, 3, 2, 2)}, "fold_div"),
        ({"x": torch.zeros(1, 8, 3, 2, 2), "slice_interval_mm": 0.0}, "slice_interval_mm"),
        ({"x": torch.zeros(1, 8, 3, 2, 2), "slice_interval_mm": float("nan")}, "slice_interval_mm"),
        ({"x": torch.zeros(2, 8, 3, 2, 2), "slice_interval_mm": torch.ones(3)}, "slice_interval_mm"),
        ({"x": torch.zeros(1, 8, 3, 2, 2), "padding": "reflect"}, "padding"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    kwargs.setdefault("slice_interval_mm", 1.0)
    with pytest.raises(ValueError, match=name):
        align_shift(**kwargs)


def plain_align_shift(x, s, ref_interval_mm=2.0, fold_div=8, padding="zero"):
    """SPEC section 5 written out plainly (shift by pad, blend, concatenate); autograd does the backward."""
    fold = x.shape[1] // fold_div
    a = torch.clamp(ref_interval_mm / s, max=1.0).view(-1, 1, 1, 1, 1)
    first, second, rest = x[:, :fold], x[:, fold : 2 * fold], x[:, 2 * fold :]
    nxt = F.pad(first[:, :, 1:], (0, 0, 0, 0, 0, 1))  # first[:, :, d + 1], zero past the end
    prv = F.pad(second[:, :, :-1], (0, 0, 0, 0, 1, 0))  # second[:, :, d - 1], zero before the start
    out_first = (1 - a) * first + a * nxt
    out_second = (1 - a) * second + a * prv
    if padding == "keep":
        out_first = torch.cat((out_first[:, :, :-1], first[:, :, -1:]), dim=2)
        out_second = torch.cat((second[:, :, :1], out_second[:, :, 1:]), dim=2)
    return torch.cat((out_first, out_second, rest), dim=1)


@pytest.mark.parametrize("padding", ["zero", "keep"])
@pytest.mark.parametrize("shape, fold_div", [((4, 16, 6, 3, 5), 8), ((4, 10, 2, 4, 3), 4), ((4, 8, 1, 2, 2), 4)])
def test_forward_and_backward_match_plain_formulation(padding, shape, fold_div):
    gen = torch.Generator().manual_seed(sum(shape) + len(padding))
    x = torch.randn(shape, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(shape, generator=gen, dtype=torch.float64)
    r = 2.0
    # s < r (a clamped to 1), s = r (a = 1), s > r (0 < a < 1), and one random interval in (0.5, 8).
    s = torch.tensor([0.7, r, 3.3, 0.5 + 7.5 * torch.rand((), generator=gen).item()], dtype=torch.float64)
    out = align_shift(x, s, r, fold_div, padding)
    (grad,) = torch.autograd.grad(out, x, g)
    expected = plain_align_shift(x, s, r, fold_div, padding)
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.parametrize("padding", ["zero", "keep"])
def test_double_backward(padding):
    x = torch.randn(2, 8, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([1.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradgradcheck(lambda t: align_shift(t, s, fold_div=4, padding=padding), (x,))
    assert torch.autograd.gradgradcheck(lambda t: temporal_shift(t, fold_div=4), (x,))


@pytest.mark.parametrize("padding", ["zero", "keep"])
def test_channels_last_gives_same_values_layout_and_gradient(padding):
    x = torch.randn(2, 16, 4, 6, 5, dtype=torch.float64)
    s = torch.tensor([1.0, 5.0], dtype=torch.float64)
    g = torch.randn_like(x)
    results = []
    for fmt in (torch.contiguous_format, torch.channels_last_3d):
        xf = x.to(memory_format=fmt).requires_grad_(True)
        for fn in (lambda t: align_shift(t, s, padding=padding), temporal_shift):
            out = fn(xf)
            (grad,) = torch.autograd.grad(out, xf, g)
            assert out.is_contiguous(memory_format=fmt) and grad.is_contiguous(memory_format=fmt)
            results.append((out, grad))
    for (out_c, grad_c), (out_l, grad_l) in zip(results[:2], results[2:]):
        torch.testing.assert_close(out_l, out_c, rtol=0, atol=0)
        torch.testing.assert_close(grad_l, grad_c, rtol=0, atol=0)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])  # bfloat16 eps = 2**-8
def test_dtype_preserved_and_close_to_float64(dtype, tol):
    x64 = torch.randn(2, 16, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    s = torch.tensor([0.6, 2.5])
    x = x64.to(dtype).requires_grad_(True)
    out = align_shift(x, s)
    (grad,) = torch.autograd.grad(out, x, torch.ones_like(out))
    assert out.dtype == dtype and grad.dtype == dtype and temporal_shift(x).dtype == dtype
    expected = plain_align_shift(x.detach().double(), s.double())
    torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)
    expected_grad = torch.autograd.grad(plain_align_shift(x64.requires_grad_(True), s.double()).sum(), x64)[0]
    torch.testing.assert_close(grad.double(), expected_grad, rtol=tol, atol=tol)


def test_outputs_and_gradients_are_new_tensors():
    x = torch.randn(2, 8, 3, 2, 2, requires_grad=True)
    g = torch.randn_like(x)
    before, g_before = x.detach().clone(), g.clone()
    for out in (align_shift(x, 1.0, padding="keep"), temporal_shift(x)):
        (grad,) = torch.autograd.grad(out, x, g)
        assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
        assert grad.untyped_storage().data_ptr() not in (g.untyped_storage().data_ptr(), out.untyped_storage().data_ptr())
    assert torch.equal(x.detach(), before) and torch.equal(g, g_before)


def _output_sized_allocations(fn):
    """Count allocations of at least the (2, 32, 5, 16, 16) float32 output's bytes in fn's call."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        result = fn()
    nbytes = 2 * 32 * 5 * 16 * 16 * 4
    return result, sum(e.self_cpu_memory_usage >= nbytes for e in prof.events())


def test_one_output_sized_allocation_forward_and_backward():
    x = torch.randn(2, 32, 5, 16, 16, requires_grad=True)
    g = torch.randn_like(x)
    out, forward_allocations = _output_sized_allocations(lambda: align_shift(x, torch.tensor([1.0, 3.0])))
    _, backward_allocations = _output_sized_allocations(lambda: torch.autograd.grad(out, x, g))
    assert (forward_allocations, backward_allocations) == (1, 1)
    # The plain formulation's backward, for contrast, makes more than one: the count is meaningful.
    expected = plain_align_shift(x, torch.tensor([1.0, 3.0]))
    _, plain_backward_allocations = _output_sized_allocations(lambda: torch.autograd.grad(expected, x, g))
    assert plain_backward_allocations > 1


@pytest.mark.slow
@pytest.mark.parametrize("padding", ["zero", "keep"])
def test_torch_compile_matches_eager_on_cpu(padding):
    x = torch.randn(2, 16, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    s = torch.tensor([0.8, 5.0], dtype=torch.float64)
    g = torch.randn_like(x)
    compiled = torch.compile(align_shift, fullgraph=True)
    out = compiled(x, s, padding=padding)
    (grad,) = torch.autograd.grad(out, x, g)
    expected = plain_align_shift(x, s, padding=padding)
    (expected_grad,) = torch.autograd.grad(expected, x, g)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-12)


@pytest.mark.gpu
def test_cuda_matches_cpu_and_compiles():
    x = torch.randn(2, 32, 5, 16, 16, dtype=torch.float64)
    s = torch.tensor([0.8, 5.0], dtype=torch.float64)
    expected = align_shift(x, s)
    torch.testing.assert_close(align_shift(x.cuda(), s.cuda()).cpu(), expected, rtol=0, atol=1e-12)
    compiled = torch.compile(align_shift)
    torch.testing.assert_close(compiled(x.cuda().float(), s.cuda().float()).cpu(), expected.float(), rtol=1e-6,
                               atol=1e-6)
