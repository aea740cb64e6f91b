"""Several HU windows as input channels: the re-windowing, the configuration, and widening a
one-window model without changing what it computes."""

import numpy as np
import pytest
import torch

from ctlesion.networks.detector import AlignShiftDetector, DetectorConfig
from ctlesion.networks.input_windows import STEM_WEIGHT_KEY, WindowChannels, widen_input_windows
from ctlesion.preprocess import network_input


def test_window_channels_rewindow_hu_exactly():
    # the input in the wide window [-1024, 2050]; out: soft tissue [-175, 275] and bone [-450, 1050]
    hu = np.array([-1024.0, -450.0, -175.0, 50.0, 275.0, 300.0, 1050.0, 2050.0])
    wide = DetectorConfig(hu_window=(-1024.0, 2050.0))
    x = torch.from_numpy(network_input(hu, wide).astype(np.float32)).view(1, 1, 1, 1, -1)
    out = WindowChannels(wide.hu_window, ((-175.0, 275.0), (-450.0, 1050.0)))(x)
    assert out.shape == (1, 2, 1, 1, 8)
    soft = np.clip((hu + 175.0) / 450.0, 0, 1)
    bone = np.clip((hu + 450.0) / 1500.0, 0, 1)
    np.testing.assert_allclose(out[0, 0, 0, 0].numpy(), soft, atol=1e-5)
    np.testing.assert_allclose(out[0, 1, 0, 0].numpy(), bone, atol=1e-5)
    # the one-window network input of the soft-tissue window is the first channel
    np.testing.assert_allclose(out[0, 0, 0, 0].numpy(), network_input(hu, DetectorConfig(hu_window=(-175, 275))),
                               atol=1e-5)


def test_configuration_checks_and_round_trips_input_windows():
    config = DetectorConfig(hu_window=(-1024.0, 2050.0), input_windows_hu=((-175.0, 275.0), (-1024.0, 2050.0)))
    assert config.input_channels == 2 and DetectorConfig().input_channels == 1
    assert DetectorConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="inside hu_window"):
        DetectorConfig(hu_window=(-175.0, 275.0), input_windows_hu=((-1024.0, 2050.0),)).validate()
    with pytest.raises(ValueError, match="low < high"):
        DetectorConfig(input_windows_hu=((275.0, -175.0),)).validate()
    with pytest.raises(ValueError, match="input_scaling"):
        DetectorConfig(input_scaling="mmdet", input_windows_hu=((-175.0, 275.0),)).validate()


@pytest.mark.parametrize("context, backbone", [("alignshift", "densenet121"), ("2.5d", "densenet121"),
                                               ("alignshift", "resnet18")])
@torch.no_grad()
def test_widened_model_computes_what_the_one_window_model_did(context, backbone):
    torch.manual_seed(0)
    config = DetectorConfig(context=context, backbone=backbone, num_slices=3, image_size_px=128, fpn_channels=32,
                            fc_channels=64, mask_channels=16, hu_window=(-175.0, 275.0), box_score_min=0.0)
    old = AlignShiftDetector(config).eval()
    new_config, state = widen_input_windows(config, old.state_dict(), ((-1024.0, 2050.0), (-450.0, 1050.0)))
    assert new_config.hu_window == (-1024.0, 2050.0)
    assert new_config.input_windows_hu == ((-175.0, 275.0), (-1024.0, 2050.0), (-450.0, 1050.0))
    stem = state[STEM_WEIGHT_KEY]
    slices = 3 if context == "2.5d" else 1
    assert stem.shape[1] == 3 * slices and stem[:, slices:].abs().sum() == 0
    torch.testing.assert_close(stem[:, :slices], old.state_dict()[STEM_WEIGHT_KEY])
    new = AlignShiftDetector(new_config).eval()
    new.load_state_dict(state)
    hu = np.random.default_rng(1).normal(40.0, 250.0, (2, 1, 3, 128, 128))
    intervals = torch.tensor([2.0, 5.0])
    before = old(torch.from_numpy(network_input(hu, config).astype(np.float32)), intervals)
    after = new(torch.from_numpy(network_input(hu, new_config).astype(np.float32)), intervals)
    for a, b in zip(before, after):
        assert len(a["scores"]) > 0
        torch.testing.assert_close(b["scores"], a["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b["boxes"], a["boxes"], atol=1e-2, rtol=1e-4)
    # once the new channels have weight, the wide window changes the output
    state[STEM_WEIGHT_KEY][:, slices:] = 0.1
    new.load_state_dict(state)
    changed = new(torch.from_numpy(network_input(hu, new_config).astype(np.float32)), intervals)
    assert not torch.allclose(changed[0]["scores"][:5], after[0]["scores"][:5])


def test_widening_refuses_a_model_with_input_windows_or_no_window():
    config = DetectorConfig(hu_window=(-1024.0, 2050.0), input_windows_hu=((-175.0, 275.0),))
    with pytest.raises(ValueError, match="already takes"):
        widen_input_windows(config, {}, ((-1024.0, 2050.0),))
    with pytest.raises(ValueError, match="at least one"):
        widen_input_windows(DetectorConfig(), {}, ())
