"""AlignShift / TSM against the authors' reference figures, gradcheck and limits."""

from pathlib import Path

import numpy as np
import pytest
import torch

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
        (dict(x=torch.zeros(2, 8, 3, 4)), "x"),
        (dict(x=torch.zeros(1, 4, 3, 2, 2)), "fold_div"),
        (dict(x=torch.zeros(1, 8, 3, 2, 2), slice_interval_mm=0.0), "slice_interval_mm"),
        (dict(x=torch.zeros(1, 8, 3, 2, 2), slice_interval_mm=float("nan")), "slice_interval_mm"),
        (dict(x=torch.zeros(2, 8, 3, 2, 2), slice_interval_mm=torch.ones(3)), "slice_interval_mm"),
        (dict(x=torch.zeros(1, 8, 3, 2, 2), padding="reflect"), "padding"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs, name):
    kwargs.setdefault("slice_interval_mm", 1.0)
    with pytest.raises(ValueError, match=name):
        align_shift(**kwargs)


def test_float32_and_channels_last():
    x = torch.randn(2, 16, 3, 8, 8).to(memory_format=torch.channels_last_3d)
    out = align_shift(x, torch.tensor([1.0, 5.0]))
    assert out.dtype == torch.float32 and out.shape == x.shape
    torch.testing.assert_close(out, align_shift(x.contiguous(), torch.tensor([1.0, 5.0])))


@pytest.mark.gpu
def test_cuda_matches_cpu_and_compiles():
    x = torch.randn(2, 32, 5, 16, 16, dtype=torch.float64)
    s = torch.tensor([0.8, 5.0], dtype=torch.float64)
    expected = align_shift(x, s)
    torch.testing.assert_close(align_shift(x.cuda(), s.cuda()).cpu(), expected, rtol=0, atol=1e-12)
    compiled = torch.compile(align_shift)
    torch.testing.assert_close(compiled(x.cuda().float(), s.cuda().float()).cpu(), expected.float(), rtol=1e-6,
                               atol=1e-6)
