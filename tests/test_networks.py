"""Converter, backbone and detector: equality with the 2D network, contracts, gradients."""

import copy

import numpy as np
import pytest
import torch
from torchvision.models import densenet121, resnet18

from ctlesion.networks.backbone import AlignShiftDenseNet, DenseNet25d
from ctlesion.networks.layers import convert_layers
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig, anchor_sizes_px, dice_loss


def _randomise_bn(model):
    """Give BatchNorm layers non-trivial statistics so that the comparison means something."""
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    return model.eval()


@torch.no_grad()
def test_densenet_backbone_without_shift_equals_2d_network_on_one_slice():
    torch.manual_seed(0)
    net2d = _randomise_bn(densenet121(weights=None)).double()
    backbone = AlignShiftDenseNet(num_slices=1, context="none", densenet_2d=copy.deepcopy(net2d)).double().eval()
    image = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    rgb = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    rgb[:, 1] = image[:, 0]  # the 3D stem takes the middle ImageNet input channel
    feats = net2d.features
    x = feats.pool0(feats.relu0(feats.norm0(feats.conv0(rgb))))
    c2 = feats.denseblock1(x)
    c3 = feats.denseblock2(feats.transition1(c2))
    c4 = feats.denseblock3(feats.transition2(c3))
    ours = backbone.stages(image[:, :, None], torch.tensor([2.0], dtype=torch.float64))
    for ref, out in zip((c2, c3, c4), ours):
        assert out.shape[2] == 1
        torch.testing.assert_close(out[:, :, 0], ref, rtol=0, atol=1e-5)


@torch.no_grad()
def test_resnet_layers_convert_exactly():
    net2d = _randomise_bn(resnet18(weights=None)).double()
    body2d = torch.nn.Sequential(*list(net2d.children())[:-2])
    body3d, converted = convert_layers(body2d)
    assert "0" in converted and any(name.endswith("conv2") for name in converted)
    image = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(body3d(image[:, :, None])[:, :, 0], body2d(image), rtol=0, atol=1e-5)


def test_alignshift_changes_features_with_the_interval():
    torch.manual_seed(0)
    backbone = AlignShiftDenseNet(num_slices=3, context="alignshift", fpn_channels=64).eval()
    images = torch.rand(1, 1, 3, 64, 64)
    with torch.no_grad():
        thin = backbone(images, torch.tensor([2.0]))
        thick = backbone(images, torch.tensor([5.0]))
    assert thin.shape == (1, 64, 16, 16)
    assert (thin - thick).abs().max() > 1e-4


@pytest.fixture(scope="module")
def small_config():
    return DetectorConfig(num_slices=3, image_size_px=128, fpn_channels=64, fc_channels=128)


def _targets(size, with_box=True):
    if not with_box:
        return dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.int64),
                    masks=torch.zeros(0, size, size, dtype=torch.uint8))
    masks = torch.zeros(1, size, size, dtype=torch.uint8)
    masks[0, 40:70, 30:60] = 1
    return dict(boxes=torch.tensor([[30.0, 40.0, 60.0, 70.0]]), labels=torch.ones(1, dtype=torch.int64), masks=masks)


def test_detector_training_step_gradients_and_untouched_inputs(small_config):
    torch.manual_seed(0)
    model = AlignShiftDetector(small_config).train()
    images = torch.rand(2, 1, 3, 128, 128)
    before = images.clone()
    losses = model(images, torch.tensor([2.0, 5.0]), [_targets(128), _targets(128, with_box=False)])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    sum(losses.values()).backward()
    assert torch.equal(images, before)
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, missing[:5]


def test_detector_empty_targets_give_zero_box_losses(small_config):
    torch.manual_seed(0)
    model = AlignShiftDetector(small_config).train()
    losses = model(torch.rand(1, 1, 3, 128, 128), torch.tensor([5.0]), [_targets(128, with_box=False)])
    assert losses["loss_rpn_box_reg"].item() == 0.0
    assert losses["loss_box_reg"].item() == 0.0
    assert losses["loss_mask"].item() == 0.0
    assert losses["loss_objectness"].item() > 0.0


@torch.no_grad()
def test_detector_inference_contract(small_config):
    torch.manual_seed(0)
    model = AlignShiftDetector(small_config).eval()
    out = model(torch.rand(2, 1, 3, 128, 128), torch.tensor([2.0, 2.5]))
    assert len(out) == 2
    for det in out:
        k = det["boxes"].shape[0]
        assert k <= 50 and det["scores"].shape == (k,) and det["masks"].shape == (k, 1, 128, 128)
        assert torch.all(det["scores"] >= 0.001)
        assert torch.all((det["masks"] >= 0) & (det["masks"] <= 1))
        assert torch.all(det["boxes"][:, 2:] >= det["boxes"][:, :2])


def test_state_dict_round_trip(small_config):
    a = AlignShiftDetector(small_config)
    b = AlignShiftDetector(small_config)
    b.load_state_dict(a.state_dict())
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)


def test_dice_loss_values():
    target = torch.zeros(1, 4, 4)
    target[0, :2] = 1
    perfect = torch.where(target > 0, 50.0, -50.0)
    assert dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(-perfect, target).item() == pytest.approx(1 - 1 / 17, abs=1e-6)


def test_config_round_trip_and_validation():
    config = DetectorConfig(num_slices=3, context="tsm")
    assert DetectorConfig.from_dict({**config.to_dict(), "unknown": 1}) == config
    with pytest.raises(ValueError, match="num_slices"):
        DetectorConfig.from_dict({"num_slices": 4})
    soft = DetectorConfig.from_dict({**config.to_dict(), "hu_window": [-175, 275]})
    assert soft.hu_window == (-175.0, 275.0)
    with pytest.raises(ValueError, match="hu_window"):
        DetectorConfig.from_dict({"hu_window": [300, 100]})


@pytest.mark.gpu
@torch.no_grad()
def test_detector_on_cuda_matches_cpu(small_config, monkeypatch):
    # float32 on both sides: CUDA convolutions would otherwise run in TF32 (10-bit mantissa), whose
    # error reached 1.5e-3 on an H200 (torch 2.11).
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    model = AlignShiftDetector(small_config).eval()
    images, intervals = torch.rand(1, 1, 3, 128, 128), torch.tensor([5.0])
    features_cpu = model.backbone(images, intervals)
    features_gpu = model.cuda().backbone(images.cuda(), intervals.cuda()).cpu()
    torch.testing.assert_close(features_gpu, features_cpu, rtol=1e-3, atol=1e-3)


def test_anchor_sizes_follow_the_input_size():
    assert anchor_sizes_px(512) == (16, 24, 32, 48, 96, 192)
    assert anchor_sizes_px(256) == (8, 12, 16, 24, 48, 96)
    model = AlignShiftDetector(DetectorConfig(num_slices=3, image_size_px=256, fpn_channels=32, fc_channels=32))
    assert model.rpn.anchor_generator.sizes == ((8, 12, 16, 24, 48, 96),)


@pytest.mark.parametrize("context, num_slices", [("tsm", 7), ("2.5d", 3), ("2.5d", 7)])
def test_every_context_trains(context, num_slices):
    torch.manual_seed(0)
    config = DetectorConfig(context=context, num_slices=num_slices, image_size_px=64, fpn_channels=32, fc_channels=64)
    model = AlignShiftDetector(config).train()
    images = torch.rand(2, 1, num_slices, 64, 64)
    losses = model(images, torch.tensor([2.0, 5.0]), [_targets(64)] * 2)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(p.grad is not None for p in model.parameters())
    assert config.resample_thick and config.name.endswith(f"x{num_slices}")


@torch.no_grad()
def test_2_5d_backbone_is_the_2d_densenet_on_slices_as_channels():
    torch.manual_seed(0)
    net2d = _randomise_bn(densenet121(weights=None)).double()
    backbone = DenseNet25d(num_slices=3, fpn_channels=16, densenet_2d=copy.deepcopy(net2d)).double().eval()
    torch.testing.assert_close(backbone.stem[0].weight, net2d.features.conv0.weight, rtol=0, atol=0)  # RGB stem as is
    images = torch.randn(1, 1, 3, 64, 64, dtype=torch.float64)
    feats = net2d.features
    c2 = feats.denseblock1(feats.pool0(feats.relu0(feats.norm0(feats.conv0(images[:, 0])))))
    torch.testing.assert_close(backbone.block1(backbone.stem(images[:, 0])), c2, rtol=0, atol=1e-10)
    out = backbone(images, None)
    assert out.shape == (1, 16, 16, 16)
    # The interval is not an input of the 2.5D network.
    torch.testing.assert_close(backbone(images, torch.tensor([5.0], dtype=torch.float64)), out, rtol=0, atol=0)


@pytest.mark.parametrize("context", ["alignshift", "2.5d"])
def test_gradient_checkpointing_gives_the_same_gradients(context):
    torch.manual_seed(0)
    config = DetectorConfig(context=context, num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32)
    backbone = AlignShiftDetector(config).backbone.double().train()
    images = torch.rand(2, 1, 3, 64, 64, dtype=torch.float64)
    intervals = torch.tensor([1.0, 5.0], dtype=torch.float64)
    grads = []
    for enabled in (False, True):
        backbone.set_gradient_checkpointing(enabled)
        backbone.zero_grad()
        backbone(images, intervals).square().mean().backward()
        grads.append([p.grad.clone() for p in backbone.parameters()])
    for plain, recomputed in zip(*grads):
        torch.testing.assert_close(recomputed, plain, rtol=1e-9, atol=1e-12)


@torch.no_grad()
@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_resnet_backbone_without_shift_equals_2d_network_on_one_slice(arch):
    from ctlesion.networks.backbone import AlignShiftResNet, resnet_stage_channels, torchvision_2d

    torch.manual_seed(0)
    net2d = _randomise_bn(torchvision_2d(arch)).double()
    backbone = AlignShiftResNet(copy.deepcopy(net2d), num_slices=1, context="none", fpn_channels=8).double().eval()
    image = torch.randn(1, 1, 64, 64, dtype=torch.float64)
    rgb = torch.zeros(1, 3, 64, 64, dtype=torch.float64)
    rgb[:, 1] = image[:, 0]  # the 3D stem takes the middle ImageNet input channel
    x = net2d.maxpool(net2d.relu(net2d.bn1(net2d.conv1(rgb))))
    refs = []
    for stage in (net2d.layer1, net2d.layer2, net2d.layer3):
        x = stage(x)
        refs.append(x)
    y, interval = backbone.stem(image[:, :, None]), torch.tensor([2.0], dtype=torch.float64)
    for stage, ref, channels in zip(backbone.stages, refs, resnet_stage_channels(net2d)):
        y = stage(y, interval)
        assert y.shape[1] == channels and y.shape[2] == 1
        torch.testing.assert_close(y[:, :, 0], ref, rtol=0, atol=1e-5)


def test_resnet_backbones_train_and_travel_with_their_checkpoints(tmp_path):
    from ctlesion.checkpoint import load_detector, save_checkpoint
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig

    torch.manual_seed(0)
    for context in ("alignshift", "2.5d"):
        config = DetectorConfig(backbone="resnet18", context=context, num_slices=3, image_size_px=64,
                                fpn_channels=16, fc_channels=32)
        model = AlignShiftDetector(config)
        target = {"boxes": torch.tensor([[10.0, 12.0, 30.0, 34.0]]), "labels": torch.ones(1, dtype=torch.int64),
                  "masks": torch.zeros(1, 64, 64, dtype=torch.uint8)}
        losses = model(torch.rand(2, 1, 3, 64, 64), torch.tensor([2.0, 5.0]), [target, target])
        sum(losses.values()).backward()
        assert all(torch.isfinite(v) for v in losses.values())
        path = save_checkpoint(model, tmp_path / f"{context}.safetensors")
        loaded, _ = load_detector(path)
        assert loaded.config.backbone == "resnet18" and loaded.config == config
    with pytest.raises(ValueError, match="must be one of"):
        DetectorConfig(backbone="vgg16").validate()


@torch.no_grad()
def test_detector_thresholds_come_from_the_configuration_and_travel_with_checkpoints(tmp_path):
    from ctlesion.checkpoint import load_detector, save_checkpoint
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig

    torch.manual_seed(0)
    config = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32, box_score_min=0.0,
                            detections_per_image=3, rpn_proposals=20, box_nms_iou=0.3, rpn_nms_iou=0.6)
    model = AlignShiftDetector(config).eval()
    assert (model.roi_heads.detections_per_img, model.roi_heads.score_thresh, model.roi_heads.nms_thresh) == (3, 0.0, 0.3)
    assert model.rpn.nms_thresh == 0.6 and model.rpn._post_nms_top_n["testing"] == 20
    outputs = model(torch.rand(2, 1, 3, 64, 64), torch.tensor([2.0, 5.0]))
    assert all(len(out["boxes"]) <= 3 for out in outputs)
    loaded, _ = load_detector(save_checkpoint(model, tmp_path / "m.safetensors"))
    assert loaded.config == config and loaded.roi_heads.detections_per_img == 3
    # A checkpoint written before the thresholds were configurable gets the values it had.
    assert DetectorConfig.from_dict({"num_slices": 3}).detections_per_image == 50
    with pytest.raises(ValueError, match="box_nms_iou"):
        DetectorConfig(box_nms_iou=0.0).validate()


@torch.no_grad()
def test_every_backbone_builds_and_runs():
    from ctlesion.choices import BACKBONES
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig

    for backbone in BACKBONES:
        model = AlignShiftDetector(DetectorConfig(backbone=backbone, num_slices=3, image_size_px=64, fpn_channels=8,
                                                  fc_channels=16)).eval()
        out = model.backbone(torch.rand(1, 1, 3, 64, 64), torch.tensor([5.0]))
        assert out.shape == (1, 8, 16, 16), backbone


@torch.no_grad()
def test_score_min_and_without_masks_keep_exactly_the_same_detections():
    """Dropping low scores before the mask head, or skipping masks, changes nothing of what is kept."""
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig

    torch.manual_seed(0)
    for convention in ("torchvision", "mmdet1"):
        config = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32,
                                box_convention=convention, input_scaling="mmdet" if convention == "mmdet1" else "unit",
                                padding="keep" if convention == "mmdet1" else "zero")
        model = AlignShiftDetector(config).eval()
        images, intervals = torch.rand(2, 1, 3, 64, 64), torch.tensor([2.0, 5.0])
        full = model(images, intervals)
        threshold = float(torch.cat([d["scores"] for d in full]).median())
        kept = model(images, intervals, score_min=threshold)
        boxes_only = model(images, intervals, with_masks=False)
        for every, some, plain in zip(full, kept, boxes_only):
            above = every["scores"] >= threshold
            assert 0 < int(above.sum()) < len(every["scores"]) or len(every["scores"]) <= 1
            torch.testing.assert_close(some["boxes"], every["boxes"][above], rtol=0, atol=0)
            torch.testing.assert_close(some["scores"], every["scores"][above], rtol=0, atol=0)
            torch.testing.assert_close(some["masks"], every["masks"][above], rtol=0, atol=1e-6)
            torch.testing.assert_close(plain["boxes"], every["boxes"], rtol=0, atol=0)
            assert "masks" not in plain


@torch.no_grad()
def test_detect_in_bf16_runs_and_returns_source_pixel_arrays():
    from ctlesion.detect import DetectOptions, detect_slices
    from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
    from ctlesion.volume import Volume

    torch.manual_seed(0)
    model = AlignShiftDetector(DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=16, fc_channels=32)).eval()
    volume = Volume(hu=np.random.default_rng(0).integers(-1000, 400, (4, 48, 40)).astype(np.int16),
                    spacing_zyx_mm=(5.0, 0.8, 0.8))
    fp32 = detect_slices(model, volume, options=DetectOptions(score_threshold=0.0))
    bf16 = detect_slices(model, volume, options=DetectOptions(score_threshold=0.0, precision="bf16"))
    assert len(bf16) == len(fp32) == 4
    for a, b in zip(fp32, bf16):
        assert b.boxes_px.dtype == np.float32 and b.masks.dtype == np.float32 and b.masks.shape[1:] == (48, 40)
        assert (b.boxes_px[:, 2] <= 40).all() and len(b.scores) > 0 and len(a.scores) > 0
