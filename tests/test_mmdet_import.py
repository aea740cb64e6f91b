"""Importing the authors' mmdetection-1 AlignShift checkpoints: exactness against their code, safe loading, bad input."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ctlesion.checkpoint import load_detector
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.networks.mmdet_import import (
    config_literals,
    import_mmdet_checkpoint,
    read_mmdet_checkpoint,
    target_key,
)
from ctlesion.preprocess import network_input

TINY = "official_alignshift_x3_tiny"


@pytest.fixture(scope="module")
def reference(shared_reference) -> dict[str, np.ndarray]:
    with np.load(shared_reference / f"{TINY}.npz") as data:
        return {key: data[key] for key in data.files}


@pytest.fixture(scope="module")
def imported(shared_reference, tmp_path_factory) -> tuple[AlignShiftDetector, dict]:
    """The tiny official checkpoint imported, loaded back in float64 (eval mode)."""
    out = tmp_path_factory.mktemp("imported") / "x3.safetensors"
    import_mmdet_checkpoint(shared_reference / f"{TINY}.pth", out)
    model, info = load_detector(out)
    return model.double(), info


def assert_close(ours: torch.Tensor | np.ndarray, theirs: np.ndarray, what: str) -> None:
    ours = ours.detach().numpy() if isinstance(ours, torch.Tensor) else np.asarray(ours)
    assert ours.shape == theirs.shape, what
    np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9 * max(1.0, float(np.abs(theirs).max())),
                               err_msg=what)


def test_configuration_is_inferred_and_the_conventions_recorded(imported):
    model, info = imported
    config = model.config
    assert (config.context, config.num_slices, config.fpn_channels, config.fc_channels, config.mask_channels) == \
        ("alignshift", 3, 64, 256, 32)
    assert (config.padding, config.input_scaling, config.box_convention, config.reduction_bias) == \
        ("keep", "mmdet", "mmdet1", False)
    assert config.image_size_px == 512 and config.hu_window == (-1024.0, 2050.0)
    source = info["training"]["source"]
    assert source["file"] == f"{TINY}.pth" and source["mmdet_version"] and len(source["sha256"]) == 64


def test_network_input_is_their_loaders_windowing(imported, reference):
    model, _ = imported
    assert_close(network_input(reference["hu"], model.config), reference["image"][:, 0], "image")
    assert network_input(reference["hu"].astype(np.float32), model.config).dtype == np.float32


@torch.no_grad()
def test_backbone_and_heads_equal_their_code(imported, reference):
    model, _ = imported
    features = model.backbone(torch.from_numpy(reference["image"]), torch.from_numpy(reference["thickness"]))
    assert_close(features, reference["features"], "features")
    (cls,), (reg,) = model.rpn.head([torch.from_numpy(reference["features"])])
    assert_close(cls, reference["rpn_cls_score"], "rpn_cls_score")
    assert_close(reg, reference["rpn_bbox_pred"], "rpn_bbox_pred")
    scores, deltas = model.roi_heads.box_predictor(model.roi_heads.box_head(torch.from_numpy(reference["pooled_box"])))
    assert_close(scores, reference["roi_cls_score"], "roi_cls_score")
    assert_close(deltas, reference["roi_bbox_pred"], "roi_bbox_pred")
    logits = model.roi_heads.mask_predictor(model.roi_heads.mask_head(torch.from_numpy(reference["pooled_mask"])))
    assert_close(logits, reference["mask_logits"], "mask_logits")


@torch.no_grad()
def test_anchors_and_box_decoding_equal_their_code(imported, reference):
    from torchvision.models.detection.image_list import ImageList

    model, _ = imported
    features = torch.from_numpy(reference["features"])
    images = ImageList(torch.zeros(2, 1, 128, 128, dtype=torch.float64), [(128, 128)] * 2)
    anchors = model.rpn.anchor_generator(images, [features])[0]
    assert_close(anchors, reference["anchors"], "anchors")
    deltas = torch.from_numpy(reference["rpn_bbox_pred"][0]).reshape(-1, 4, 32, 32).permute(2, 3, 0, 1).reshape(-1, 4)
    assert_close(model.rpn.box_coder.decode_single(deltas, anchors), reference["rpn_proposals_0"], "rpn_proposals_0")
    rois = torch.from_numpy(reference["rois"])
    decoded = model.roi_heads.box_coder.decode_single(torch.from_numpy(reference["roi_bbox_pred"][:, 4:8]), rois)
    assert_close(decoded, reference["roi_decoded"][:, 4:8], "roi_decoded")


def test_imported_model_runs_on_a_whole_slice(imported):
    model, _ = imported
    with torch.no_grad():
        (out,) = model.float()(torch.rand(1, 1, 3, 512, 512) * 200 - 50, torch.tensor([5.0]))
    model.double()
    assert out["boxes"].shape[1] == 4 and len(out["boxes"]) <= 50
    assert out["masks"].shape[1:] == (1, 512, 512)
    if len(out["boxes"]):
        assert float(out["masks"].max()) <= 1.0
        assert float(out["boxes"][:, 2].max()) <= 511 and float(out["scores"].min()) > 0.001


def test_config_text_is_read_without_running_it(tmp_path):
    marker = tmp_path / "ran"
    text = (f"import os\nos.system('touch {marker}')\nx = dict(a=[1, 2] * 2, b=-3)\nn = x['b'] * 2 + 1\n"
            "feature = 64\nhead = dict(width=feature // 2, f=open('/etc/passwd'))\n")
    values = config_literals(text)
    assert values["x"] == {"a": [1, 2, 1, 2], "b": -3} and values["n"] == -5 and values["feature"] == 64
    assert "head" not in values and not marker.exists()


def test_key_mapping_covers_the_three_backbones():
    assert target_key("backbone.denseblock2.denselayer12.conv1.weight", "alignshift") == \
        "backbone.block2.layers.11.conv1.conv.weight"
    assert target_key("backbone.reductionz3.reduction_z_conv.weight", "tsm") == "backbone.reduce.2.conv.weight"
    assert target_key("backbone.lateral2.bias", "alignshift") == "backbone.lateral.0.bias"
    assert target_key("backbone.denseblock1.denselayer3.norm2.running_var", "2.5d") == \
        "backbone.block1.denselayer3.norm2.running_var"
    assert target_key("mask_head.convs.3.conv.weight", "2.5d") == "roi_heads.mask_head.3.0.weight"
    assert target_key("backbone.layer1.0.conv1.weight", "alignshift") is None


def _their_keys(model: AlignShiftDetector) -> dict[str, torch.Tensor]:
    """A state dict under the authors' key names, made by inverting the mapping on a ctlesion model."""
    ours = model.state_dict()
    names = {}
    for key in _authors_key_names(model):
        target = target_key(key, model.config.context)
        assert target in ours, key
        tensor = ours[target]
        names[key] = tensor.squeeze(2) if tensor.dim() == 5 and tensor.shape[2] == 1 else tensor
    assert len(names) == len(ours)
    return names


def _authors_key_names(model: AlignShiftDetector) -> list[str]:
    """The authors' key for each of our keys (inverse of the rules, for a round trip)."""
    import re

    inverse = [
        (r"backbone\.stem\.0\.weight", lambda m: "backbone.conv0.weight"),
        (r"backbone\.stem\.1\.(.+)", lambda m: f"backbone.norm0.{m[1]}"),
        (r"backbone\.block(\d)\.layers\.(\d+)\.(norm[12])\.(.+)",
         lambda m: f"backbone.denseblock{m[1]}.denselayer{int(m[2]) + 1}.{m[3]}.{m[4]}"),
        (r"backbone\.block(\d)\.layers\.(\d+)\.(conv[12])\.conv\.weight",
         lambda m: f"backbone.denseblock{m[1]}.denselayer{int(m[2]) + 1}.{m[3]}.weight"),
        (r"backbone\.block(\d)\.(denselayer.+)", lambda m: f"backbone.denseblock{m[1]}.{m[2]}"),
        (r"backbone\.transition(\d)\.(.+)", lambda m: f"backbone.transition{m[1]}.{m[2]}"),
        (r"backbone\.reduce\.(\d)\.conv\.(.+)", lambda m: f"backbone.reductionz{int(m[1]) + 1}.reduction_z_conv.{m[2]}"),
        (r"backbone\.lateral\.(\d)\.(.+)", lambda m: f"backbone.lateral{int(m[1]) + 2}.{m[2]}"),
        (r"rpn\.head\.conv\.0\.0\.(.+)", lambda m: f"rpn_head.rpn_conv.{m[1]}"),
        (r"rpn\.head\.cls_logits\.(.+)", lambda m: f"rpn_head.rpn_cls.{m[1]}"),
        (r"rpn\.head\.bbox_pred\.(.+)", lambda m: f"rpn_head.rpn_reg.{m[1]}"),
        (r"roi_heads\.box_head\.fc6\.(.+)", lambda m: f"bbox_head.shared_fcs.0.{m[1]}"),
        (r"roi_heads\.box_head\.fc7\.(.+)", lambda m: f"bbox_head.shared_fcs.1.{m[1]}"),
        (r"roi_heads\.box_predictor\.cls_score\.(.+)", lambda m: f"bbox_head.fc_cls.{m[1]}"),
        (r"roi_heads\.box_predictor\.bbox_pred\.(.+)", lambda m: f"bbox_head.fc_reg.{m[1]}"),
        (r"roi_heads\.mask_head\.(\d)\.0\.(.+)", lambda m: f"mask_head.convs.{m[1]}.conv.{m[2]}"),
        (r"roi_heads\.mask_predictor\.conv5_mask\.(.+)", lambda m: f"mask_head.upsample.{m[1]}"),
        (r"roi_heads\.mask_predictor\.mask_fcn_logits\.(.+)", lambda m: f"mask_head.conv_logits.{m[1]}"),
    ]
    keys = []
    for key in model.state_dict():
        for pattern, name in inverse:
            match = re.fullmatch(pattern, key)
            if match:
                keys.append(name(match))
                break
        else:
            raise AssertionError(f"no inverse rule for {key}")
    return keys


@pytest.mark.parametrize("context, backbone_type", [("tsm", "DenseNetCustomTrunc3dTSM"), ("2.5d", "DenseNetCustomTrunc")])
def test_tsm_and_25d_checkpoints_round_trip(context, backbone_type, tmp_path):
    config = DetectorConfig(context=context, num_slices=5 if context == "tsm" else 3, image_size_px=512,
                            fpn_channels=32, fc_channels=64, mask_channels=16, reduction_bias=False)
    source_model = AlignShiftDetector(config)
    text = (f"dataset_transform = dict(WINDOWING=[-1024, 2050], NUM_SLICES={config.num_slices})\n"
            f"model = dict(backbone=dict(type='{backbone_type}', out_dim=32), "
            "bbox_head=dict(fc_out_channels=64, num_classes=2), mask_head=dict(num_convs=4, conv_out_channels=16))\n")
    src = tmp_path / "theirs.pth"
    torch.save({"meta": {"config": text, "mmdet_version": "1.0rc0"}, "state_dict": _their_keys(source_model)}, src)
    report = import_mmdet_checkpoint(src, tmp_path / "ours.safetensors")
    assert report.config.context == context and report.config.num_slices == config.num_slices
    model, _ = load_detector(tmp_path / "ours.safetensors")
    for key, tensor in source_model.state_dict().items():
        assert torch.equal(model.state_dict()[key].to(tensor.dtype), tensor), key


# ---- bad input --------------------------------------------------------------------------------


def _one_line_error(src: Path, dst: Path, match: str, **kwargs) -> None:
    with pytest.raises(CtlesionError, match=match) as caught:
        import_mmdet_checkpoint(src, dst, **kwargs)
    assert "\n" not in str(caught.value) and str(src) in str(caught.value)
    assert not dst.exists() and not dst.with_suffix(".json").exists()


def test_not_a_checkpoint_and_a_truncated_one_are_refused(shared_reference, tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    _one_line_error(text, tmp_path / "a.safetensors", "not a readable PyTorch checkpoint")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((shared_reference / f"{TINY}.pth").read_bytes()[:1_000_000])
    _one_line_error(truncated, tmp_path / "b.safetensors", "not a readable PyTorch checkpoint|not a plain checkpoint")
    _one_line_error(tmp_path / "missing.pth", tmp_path / "c.safetensors", "does not exist")


class _Payload:
    """A pickle that would run code (create a file) when loaded without restrictions."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_a_pickle_that_needs_code_is_refused_without_running(tmp_path):
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.pth"
    buffer = io.BytesIO()
    torch.save({"state_dict": {"backbone.conv0.weight": torch.zeros(1)}, "meta": {"x": _Payload(marker)}}, buffer)
    evil.write_bytes(buffer.getvalue())
    _one_line_error(evil, tmp_path / "d.safetensors", "needs code to unpickle")
    assert not marker.exists()
    plain = tmp_path / "plain.pkl"
    plain.write_bytes(pickle.dumps(_Payload(marker)))
    _one_line_error(plain, tmp_path / "e.safetensors", "not a readable|not a plain")
    assert not marker.exists()


def test_another_detector_is_refused(tmp_path):
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=2)
    src = tmp_path / "resnet_maskrcnn.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {}}, src)
    _one_line_error(src, tmp_path / "f.safetensors", "not an AlignShift/TSM/2.5D DenseNet detector")


def test_unmatched_keys_and_config_disagreements(shared_reference, tmp_path):
    state, meta = read_mmdet_checkpoint(shared_reference / f"{TINY}.pth")
    extra = tmp_path / "extra.pth"
    torch.save({"meta": meta, "state_dict": {**state, "neck.fpn_convs.0.weight": torch.zeros(1)}}, extra)
    _one_line_error(extra, tmp_path / "g.safetensors", "1 unmatched key.*neck.fpn_convs.0.weight")
    report = import_mmdet_checkpoint(extra, tmp_path / "partial.safetensors", allow_partial=True)
    assert report.unmatched == ["neck.fpn_convs.0.weight"] and report.missing == []
    ddp = tmp_path / "ddp.pth"
    torch.save({"meta": meta, "state_dict": {f"module.{k}": v for k, v in state.items()}}, ddp)
    assert import_mmdet_checkpoint(ddp, tmp_path / "ddp.safetensors").num_mapped == len(state)
    wrong = tmp_path / "wrong.pth"
    torch.save({"meta": {**meta, "config": meta["config"].replace("NUM_SLICES = 3", "NUM_SLICES = 7")},
                "state_dict": state}, wrong)
    _one_line_error(wrong, tmp_path / "h.safetensors", "NUM_SLICES = 7")


def test_a_model_with_the_authors_conventions_trains():
    """An imported model can be fine-tuned: the legacy components work in training mode too."""
    torch.manual_seed(0)
    config = DetectorConfig(num_slices=3, image_size_px=128, fpn_channels=16, fc_channels=32, mask_channels=8,
                            padding="keep", input_scaling="mmdet", box_convention="mmdet1", reduction_bias=False)
    model = AlignShiftDetector(config).train()
    masks = torch.zeros(1, 128, 128, dtype=torch.uint8)
    masks[0, 40:70, 30:80] = 1
    targets = [{"boxes": torch.tensor([[30.0, 40.0, 79.0, 69.0]]), "labels": torch.ones(1, dtype=torch.int64),
                "masks": masks}]
    losses = model(torch.rand(1, 1, 3, 128, 128) * 200 - 50, torch.tensor([2.0]), targets)
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert model.backbone.lateral[0].weight.grad is not None
