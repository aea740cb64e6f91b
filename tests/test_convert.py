"""convert_to_3d on torchvision DenseNet / ResNet, the stem rule, and pretrained 2D weights."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models import densenet121, resnet18, resnet50, vgg11

from ctlesion.errors import CtlesionError
from ctlesion.networks.convert import convert_to_3d
from ctlesion.networks.layers import ShiftConv3d, adapt_stem_weight
from ctlesion.networks.pretrained import imagenet_cache_path, load_pretrained_2d, read_state_dict_2d

FAMILIES = {"densenet121": densenet121, "resnet18": resnet18, "resnet50": resnet50}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return FAMILIES[name](weights=None).double().eval()


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics and affine parameters (random init has 0 / 1)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.running_mean.dtype) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.running_var.dtype) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=gen, dtype=m.weight.dtype) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=m.bias.dtype) * 0.1)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_context_none_on_one_slice_equals_the_2d_network(name):
    net2d = _model(name)
    _randomise_bn(net2d)
    net3d = convert_to_3d(net2d, "none")
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        expected = net2d(x)
        got = net3d(x[:, :, None])
    assert got.shape == expected.shape == (2, 1000)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert net3d.shifted_convs == () and len(net3d.converted_layers) > 40


@pytest.mark.parametrize("name, num_shifted", [("densenet121", 116), ("resnet18", 8), ("resnet50", 16)])
def test_shifts_sit_where_spec_puts_them(name, num_shifted):
    net3d = convert_to_3d(_model(name), "tsm")
    shifted = {n: m for n, m in net3d.named_modules() if isinstance(m, ShiftConv3d)}
    assert len(net3d.shifted_convs) == len(shifted) == num_shifted
    if name == "densenet121":  # before the 1x1 and the 3x3 conv of each of the 58 dense layers
        assert sorted({m.conv.kernel_size for m in shifted.values()}) == [(1, 1, 1), (1, 3, 3)]
        assert not any(n.startswith(("stem", "transitions")) for n in shifted)
    else:  # before the first 3x3 conv of each residual block, never in the downsample path
        assert {m.conv.kernel_size for m in shifted.values()} == {(1, 3, 3)}
        assert all(".downsample" not in n for n in shifted)
    # Depth is never strided or pooled: 5 slices in, 5 slices out.
    with torch.no_grad():
        assert net3d.forward_features(torch.randn(1, 3, 5, 64, 64, dtype=torch.float64)).shape[2] == 5


def test_alignshift_limits_and_interval_dependence():
    net2d = _model("resnet18")
    _randomise_bn(net2d)
    x = torch.randn(2, 1, 5, 32, 32, dtype=torch.float64)
    nets = {c: convert_to_3d(net2d, c, in_channels=1) for c in ("alignshift", "tsm", "none")}
    with torch.no_grad():
        thin = nets["alignshift"](x, torch.tensor([1.0, 2.0], dtype=torch.float64))
        huge = nets["alignshift"](x, 1e12)
        mid = nets["alignshift"](x, 4.0)
        torch.testing.assert_close(thin, nets["tsm"](x), rtol=0, atol=1e-10)
        torch.testing.assert_close(huge, nets["none"](x), rtol=0, atol=1e-8)
    assert (mid - huge).abs().max() > 1e-4 and (mid - thin).abs().max() > 1e-4
    with pytest.raises(ValueError, match="slice_interval_mm"):
        nets["alignshift"](x)


def test_gradients_state_dict_devices_and_inputs_untouched(tmp_path):
    torch.manual_seed(0)
    net3d = convert_to_3d(resnet18(weights=None, num_classes=3), "alignshift", in_channels=1).train()
    x = torch.randn(2, 1, 3, 32, 32)
    before = x.clone()
    net3d(x, torch.tensor([0.8, 5.0])).square().sum().backward()
    assert torch.equal(x, before)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net3d.parameters())
    path = tmp_path / "net.pt"
    torch.save(net3d.state_dict(), path)
    other = convert_to_3d(resnet18(weights=None, num_classes=3), "alignshift", in_channels=1)
    other.load_state_dict(torch.load(path, weights_only=True))
    net3d.eval(), other.eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x, 3.0), net3d(x, 3.0), rtol=0, atol=0)
        half = other.to(torch.float64)(x.double(), 3.0)
    assert half.dtype == torch.float64


def test_sync_batchnorm_and_unsupported_family():
    net3d = convert_to_3d(resnet18(weights=None), "tsm", sync_batchnorm=True)
    norms = [m for m in net3d.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(isinstance(m, nn.SyncBatchNorm) for m in norms)
    with pytest.raises(ValueError, match="VGG"):
        convert_to_3d(vgg11(weights=None))
    with pytest.raises(ValueError, match="context"):
        convert_to_3d(resnet18(weights=None), "2d")


def test_stem_rule():
    w = torch.arange(2 * 3, dtype=torch.float64).reshape(2, 3, 1, 1)  # channels (0, 1, 2) and (3, 4, 5)
    assert adapt_stem_weight(w, 1)[:, :, 0, 0].tolist() == [[1.0], [4.0]]  # the middle channel (SPEC 6)
    assert torch.equal(adapt_stem_weight(w, 3), w)  # 2.5D x3: the RGB stem as is
    five = adapt_stem_weight(w, 5)[:, :, 0, 0]  # positions 0, .5, 1, 1.5, 2, scaled by 3 / 5
    torch.testing.assert_close(five[0], torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0], dtype=torch.float64) * 0.6)
    net3d = convert_to_3d(_model("densenet121"), "none", in_channels=7)
    assert net3d.stem[0].weight.shape == (64, 7, 1, 7, 7)


def _legacy_densenet_file(tmp_path, model: nn.Module):
    """A state dict as torchvision's ImageNet DenseNet files store it (legacy 'norm.1' names), DDP-wrapped."""
    state = {}
    for key, value in model.state_dict().items():
        for old, new in (("norm1", "norm.1"), ("conv1", "conv.1"), ("norm2", "norm.2"), ("conv2", "conv.2")):
            if ".denselayer" in key and f".{old}." in key:
                key = key.replace(f".{old}.", f".{new}.")
        state["module." + key] = value
    path = tmp_path / "densenet121_2d.pth"
    torch.save({"state_dict": state, "epoch": 90}, path)
    return path


def test_pretrained_file_loads_into_the_2d_network_before_conversion(tmp_path):
    torch.manual_seed(5)
    source = densenet121(weights=None, num_classes=10)
    path = _legacy_densenet_file(tmp_path, source)
    assert any(".norm.1." in k for k in torch.load(path, weights_only=True)["state_dict"])
    assert all(k in source.state_dict() for k in read_state_dict_2d(path))
    target = densenet121(weights=None)  # 1000 classes: the classifier does not fit
    report = load_pretrained_2d(target, path, "densenet121")
    assert report.shape_mismatch == ("classifier.weight", "classifier.bias")
    assert report.missing == () and report.unexpected == ()
    torch.testing.assert_close(target.features.denseblock2.denselayer3.conv2.weight,
                               source.features.denseblock2.denselayer3.conv2.weight, rtol=0, atol=0)
    net3d = convert_to_3d(target, "alignshift", in_channels=1)
    torch.testing.assert_close(net3d.stem[0].weight[:, 0, 0], source.features.conv0.weight[:, 1], rtol=0, atol=0)


def test_pretrained_bad_sources_fail_clearly(tmp_path, monkeypatch):
    garbage = tmp_path / "weights.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CtlesionError, match="cannot read pretrained weights"):
        load_pretrained_2d(resnet18(weights=None), garbage, "resnet18")
    other = tmp_path / "resnet.pth"
    torch.save(resnet18(weights=None).state_dict(), other)
    with pytest.raises(CtlesionError, match="no tensor of the file matches"):
        load_pretrained_2d(densenet121(weights=None), other, "densenet121")
    with pytest.raises(CtlesionError, match="not found"):
        load_pretrained_2d(resnet18(weights=None), tmp_path / "absent.pth", "resnet18")
    # "imagenet" reads torchvision's local cache only, and says how to fill it when empty.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cached = imagenet_cache_path("resnet18")
    assert cached.parent == tmp_path / "torch_home" / "hub" / "checkpoints"
    with pytest.raises(CtlesionError, match="never downloads") as err:
        load_pretrained_2d(resnet18(weights=None), "imagenet", "resnet18")
    assert cached.name in str(err.value)
    cached.parent.mkdir(parents=True)
    torch.manual_seed(2)
    source = resnet18(weights=None)
    torch.save(source.state_dict(), cached)
    target = resnet18(weights=None)
    assert len(load_pretrained_2d(target, "imagenet", "resnet18").loaded) == len(source.state_dict())
    torch.testing.assert_close(target.layer3[1].conv2.weight, source.layer3[1].conv2.weight, rtol=0, atol=0)
