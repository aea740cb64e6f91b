"""Training at scale on simulated data: kill/resume equality, two-process DDP equivalence, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import ctlesion.training as train_module
from ctlesion.cli.app import app
from ctlesion.data.augment import AugmentConfig
from ctlesion.distributed import DistContext
from ctlesion.errors import CtlesionError
from ctlesion.networks.detector import DetectorConfig
from ctlesion.training import TrainOptions, read_run_options, train
from ctlesion.training.loop import _train

TINY = DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=32, fc_channels=64)
CLI_TINY = ["--slices", "3", "--image-size", "64", "--fpn-channels", "32", "--fc-channels", "64"]
STEPS = ["--epochs", "1", "--max-iters-per-epoch", "4", "--workers", "0", "--warmup-iters", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "data"
    # The shipped sample series as the one background: the same data with or without ../shared/data.
    sample = Path(__file__).resolve().parents[1] / "sample_data" / "abdomen_ct_dicom"
    result = CliRunner().invoke(app, ["simulate", "--out", str(out), "--num-series", "12", "--image-size", "64",
                                      "--seed", "11", "--background", str(sample)])
    assert result.exit_code == 0, result.output
    return out


def _options(dataset: Path, out: Path, **kwargs) -> TrainOptions:
    base = dict(data_dir=dataset, out_dir=out, detector=TINY, epochs=1, batch_size=2, warmup_iters=2,
                num_workers=0, max_iters_per_epoch=4, checkpoint_every=1)
    return TrainOptions(**{**base, **kwargs})


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "state.pt", map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())
    assert worst <= atol, f"largest weight difference {worst:g}"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ctlesion", "train", *args]


def _step_lines(metrics: Path) -> int:
    if not metrics.exists():
        return 0
    return sum('"step"' in line for line in metrics.read_text().splitlines())


@pytest.fixture(scope="module")
def reference_run(dataset, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("ref") / "run"
    train(_options(dataset, run), device="cpu", progress=False)
    return run


def test_killed_run_resumes_exactly(dataset, reference_run, tmp_path):
    run = tmp_path / "killed"
    args = ["--data", str(dataset), "--out", str(run), "--batch-size", "2", "--checkpoint-every", "1", *STEPS,
            *CLI_TINY]
    proc = subprocess.Popen(_cli(*args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while _step_lines(run / "metrics.jsonl") < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert state["run"]["epoch"] == 0 and 1 <= state["run"]["step"] < 4, "the kill must land mid-epoch"
    train(read_run_options(run), resume=True, device="cpu", progress=False)
    _assert_same_weights(_weights(run), _weights(reference_run), atol=1e-6)
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"step"' in line]
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # lines logged after the checkpoint were dropped


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_two_processes_equal_one_with_the_same_global_batch(dataset, tmp_path):
    """gloo on CPU, global batch 2 = 2 processes x 1 image vs 1 process x 2 images.

    Equal up to float round-off (the gradient sums run in another order); compared after two
    steps, because later on round-off can flip which proposals survive NMS and the runs part,
    exactly as two single-process runs with different reduction orders would.
    """
    one, two = tmp_path / "one", tmp_path / "two"
    train(_options(dataset, one, max_iters_per_epoch=2), device="cpu", progress=False)
    steps = [*STEPS]
    steps[steps.index("--max-iters-per-epoch") + 1] = "2"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "ctlesion",
               "train", "--data", str(dataset), "--out", str(two), "--batch-size", "2", *steps, *CLI_TINY]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_weights(_weights(two), _weights(one), atol=2e-5)
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
               if '"step"' in line] for run in (one, two)]
    # The logged loss of two processes is the mean of their per-image losses, each normalised over
    # its own image's sampled anchors and positive RoIs; one process normalises over the whole
    # batch, so the two differ slightly when the images hold different numbers of positives
    # (3e-4 relative here), while the gradients, and so the weights above, agree.
    assert len(losses[0]) == 2 and losses[1][0] == pytest.approx(losses[0][0], rel=1e-3)
    assert losses[1][1] == pytest.approx(losses[0][1], rel=1e-3)
    assert (two / "epoch_001.safetensors").is_file() and not list(two.glob(".*.tmp"))


def test_disk_full_keeps_the_previous_checkpoint(dataset, tmp_path, monkeypatch):
    run = tmp_path / "full"
    real_save, calls = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            Path(path).write_bytes(b"partial")
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CtlesionError, match="No space left on device.*intact"):
        train(_options(dataset, run), device="cpu", progress=False)
    monkeypatch.undo()
    state = torch.load(run / "state.pt", map_location="cpu", weights_only=True)
    assert state["run"]["step"] == 1 and not list(run.glob(".*.tmp"))
    train(read_run_options(run), resume=True, device="cpu", progress=False)  # and the run goes on from it
    assert torch.load(run / "state.pt", map_location="cpu", weights_only=True)["run"]["epoch"] == 1


def test_best_checkpoint_overwrite_and_refusal(dataset, reference_run, tmp_path):
    assert (reference_run / "best.safetensors").is_file()
    best = json.loads((reference_run / "best.json").read_text())
    assert best["training"]["epoch"] == 1 and "all" in best["metrics"]
    run = tmp_path / "again"
    options = _options(dataset, run, max_iters_per_epoch=1)
    train(options, device="cpu", progress=False)
    with pytest.raises(CtlesionError, match="--overwrite"):
        train(options, device="cpu", progress=False)
    (run / "notes.txt").write_text("mine")
    train(options, overwrite=True, device="cpu", progress=False)
    assert (run / "notes.txt").read_text() == "mine"
    assert _step_lines(run / "metrics.jsonl") == 1


def test_global_batch_must_split_evenly():
    options = TrainOptions(data_dir=Path("."), out_dir=Path("."), batch_size=3)
    ctx = DistContext(rank=0, world_size=2, local_rank=0, device=torch.device("cpu"))
    with pytest.raises(CtlesionError, match="divisible"):
        _train(options, ctx, resume=False, overwrite=False, progress=False)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_on_cuda(dataset, tmp_path, precision):
    run = tmp_path / precision
    train(_options(dataset, run, precision=precision, max_iters_per_epoch=2), device="cuda", progress=False)
    assert all(torch.isfinite(v).all() for v in _weights(run).values() if v.is_floating_point())


def test_augmentation_and_mask_cache_options_round_trip(dataset, tmp_path):
    """The paper's augmentation is the default; config.json records it, and older runs (flip_p) read back."""
    from ctlesion.training import prepare_run_dir

    cache = tmp_path / "masks"
    options = _options(dataset, tmp_path / "run", mask_cache_dir=cache)
    assert options.augment == AugmentConfig(shift_frac=0.04, scale_frac=0.2, rotate_deg=15.0, p_affine=0.8, flip_p=0.5)
    prepare_run_dir(options, resume=False)
    back = read_run_options(tmp_path / "run")
    assert back.augment == options.augment and back.mask_cache_dir == cache
    old = json.loads((tmp_path / "run" / "config.json").read_text())
    del old["augment"], old["mask_cache_dir"]
    (tmp_path / "run" / "config.json").write_text(json.dumps({**old, "flip_p": 0.25}))
    assert read_run_options(tmp_path / "run").augment == AugmentConfig.flip_only(0.25)


@pytest.mark.parametrize(("choice", "expected"), [("none", None), ("affine", AugmentConfig(flip_p=0.0))])
def test_training_fills_the_named_mask_cache_and_refuses_a_bad_augment_choice(dataset, tmp_path, choice, expected):
    cache = tmp_path / "masks"
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(run), "--batch-size", "2",
                                      "--mask-cache", str(cache), "--mask-source", "grabcut", "--augment", choice,
                                      *STEPS[:3], "1",
                                      *STEPS[4:], *CLI_TINY])
    assert result.exit_code == 0, result.output
    assert list(cache.rglob("*.npz"))  # the masks went to the named cache
    assert read_run_options(run).augment == expected  # affine: the paper's ranges, never flipped
    bad = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(tmp_path / "b"), "--augment", "x"])
    assert bad.exit_code == 2 and "'x' is not one of 'paper', 'affine', 'flip'," in bad.output


def test_channels_last_gives_the_same_features_and_trains(dataset, tmp_path):
    from ctlesion.checkpoint import load_detector
    from ctlesion.networks.detector import build_detector, to_channels_last

    torch.manual_seed(0)
    plain = build_detector(TINY).eval()
    last = build_detector(TINY).eval()
    last.load_state_dict(plain.state_dict())
    to_channels_last(last)
    convs = [m for m in last.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d))]
    assert {m.weight.dim() for m in convs} == {4, 5}
    assert all(m.weight.is_contiguous(memory_format=torch.channels_last_3d if m.weight.dim() == 5
                                      else torch.channels_last) for m in convs)
    assert not all(m.weight.is_contiguous() for m in convs)
    images, intervals = torch.rand(2, 1, 3, 64, 64), torch.tensor([1.0, 5.0])
    with torch.no_grad():
        expected = plain.backbone(images, intervals)
        got = last.backbone(images.contiguous(memory_format=torch.channels_last_3d), intervals)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    run = tmp_path / "cl"
    train(_options(dataset, run, channels_last=True, max_iters_per_epoch=2), device="cpu", progress=False)
    model, info = load_detector(run / "epoch_001.safetensors")
    assert info["training"]["channels_last"] is True


def test_possibly_noisy_lesions_are_dropped_unless_kept(dataset, tmp_path):
    import csv
    import shutil

    from ctlesion.training import train_dataset

    data = tmp_path / "data"
    shutil.copytree(dataset / "Images_png", data / "Images_png")
    with (dataset / "DL_info.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [r for r in rows if r["Train_Val_Test"] == "1"]
    train_rows[0]["Possibly_noisy"] = "1"
    with (data / "DL_info.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lesions = {keep: sum(k.num_lesions for k in train_dataset(_options(data, tmp_path / "r", keep_noisy=keep)).keys)
               for keep in (False, True)}
    assert lesions[True] == len(train_rows) and lesions[False] == len(train_rows) - 1


def test_crop_training_resumes_exactly_and_records_its_choices(dataset, tmp_path, monkeypatch):
    """Crops are drawn from (seed, index, epoch): a run cut short mid-epoch resumes to the same weights."""
    from ctlesion.data.augment import CropConfig

    crop = CropConfig(32, negative_fraction=0.5)
    reference = tmp_path / "reference"
    train(_options(dataset, reference, crop=crop), device="cpu", progress=False)
    run = tmp_path / "cut"
    real_save, calls = torch.save, []

    def failing_save(obj, path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 3:
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(CtlesionError, match="No space left"):
        train(_options(dataset, run, crop=crop), device="cpu", progress=False)
    monkeypatch.undo()
    assert torch.load(run / "state.pt", map_location="cpu", weights_only=True)["run"]["step"] == 2
    options = read_run_options(run)
    assert options.crop == crop and options.mask_source == "auto"
    train(options, resume=True, device="cpu", progress=False)
    _assert_same_weights(_weights(run), _weights(reference), atol=1e-6)
    training = json.loads((run / "epoch_001.json").read_text())["training"]
    assert training["crop"] == {"size_px": 32, "negative_fraction": 0.5, "min_visible_fraction": 0.5,
                                "hard_negative_fraction": 0.0}
    assert training["hard_negatives"] is None
    assert training["mask_source"] == "auto"
    sources = train_module.train_dataset(options).mask_sources()
    assert training["mask_sources"] == sources and sum(sources.values()) > 0
    # Runs made before crops (no "crop" in config.json) read back as whole-slice runs.
    config = json.loads((run / "config.json").read_text())
    del config["crop"], config["mask_source"]
    (run / "config.json").write_text(json.dumps(config))
    old = read_run_options(run)
    assert old.crop is None and old.mask_source == "auto"


def test_crop_and_mask_source_options_on_the_command_line(dataset, tmp_path, monkeypatch):
    from ctlesion.data.augment import CropConfig

    seen = []
    monkeypatch.setattr(train_module, "train", lambda options, **kwargs: seen.append(options) or Path("last"))
    base = ["train", "--data", str(dataset), "--out", str(tmp_path / "run"), *CLI_TINY]
    result = CliRunner().invoke(app, [*base, "--crop-size", "32", "--negative-crop-fraction", "0.4",
                                      "--mask-source", "grabcut"])
    assert result.exit_code == 0, result.output
    assert seen[-1].crop == CropConfig(32, negative_fraction=0.4) and seen[-1].mask_source == "grabcut"
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0 and seen[-1].crop is None and seen[-1].mask_source == "auto"
    for bad, message in ((["--crop-size", "48"], "multiple of 32"), (["--crop-size", "96"], "exceeds --image-size"),
                         (["--crop-size", "32", "--negative-crop-fraction", "1.5"], "1.5"),
                         (["--mask-source", "truth"], "'auto', 'grabcut'")):
        result = CliRunner().invoke(app, [*base, *bad])
        assert result.exit_code == 2 and message in result.output, result.output
    with pytest.raises(CtlesionError, match="exceeds the network input size"):
        train_module.train_dataset(_options(dataset, tmp_path / "r", crop=CropConfig(96)))


def test_init_from_a_checkpoint_fine_tunes_its_whole_detector(dataset, reference_run, tmp_path, monkeypatch):
    from ctlesion.checkpoint import load_detector, save_checkpoint

    source, _ = load_detector(reference_run / "epoch_001.safetensors")
    checkpoint = save_checkpoint(source, tmp_path / "start.safetensors", half=True)
    # build_model: every weight is the checkpoint's (float16 stored, float32 loaded).
    model = train_module.build_model(_options(dataset, tmp_path / "r", init_from=str(checkpoint)), resume=False)
    start, _ = load_detector(checkpoint)
    _assert_same_weights(model.state_dict(), start.state_dict(), atol=0.0)
    with pytest.raises(CtlesionError, match="configuration differs"):
        train_module.build_model(_options(dataset, tmp_path / "r", init_from=str(checkpoint),
                                          detector=DetectorConfig(num_slices=3, image_size_px=64, fpn_channels=32,
                                                                  fc_channels=32)), resume=False)
    # The command line takes the checkpoint's architecture; typed options must agree with it.
    seen = []
    monkeypatch.setattr(train_module, "train", lambda options, **kwargs: seen.append(options) or Path("last"))
    base = ["train", "--data", str(dataset), "--out", str(tmp_path / "run"), "--init-from", str(checkpoint)]
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0, result.output
    assert seen[-1].detector == TINY and seen[-1].init_from == str(checkpoint)
    result = CliRunner().invoke(app, [*base, "--slices", "3", "--image-size", "64"])
    assert result.exit_code == 0, result.output
    for bad, message in ((["--slices", "7"], "--slices 7 differs from the checkpoint's 3"),
                         (["--pretrained", "imagenet"], "exclude each other"),
                         (["--hu-window", "-100", "200"], "--hu-window")):
        result = CliRunner().invoke(app, [*base, *bad])
        assert result.exit_code == 1 and message in result.output, result.output
    result = CliRunner().invoke(app, ["train", "--data", str(dataset), "--init-from", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 1 and "checkpoint does not exist" in result.output


def test_frozen_parts_keep_their_weights_and_batchnorm_statistics(dataset, reference_run, tmp_path, monkeypatch):
    """--freeze backbone rpn box-head: only the mask head trains; the detector's boxes and scores
    stay the checkpoint's exactly (BatchNorm statistics included), while its masks change."""
    from ctlesion.checkpoint import load_detector

    start = reference_run / "epoch_001.safetensors"
    frozen = ("backbone", "rpn", "box-head")
    run = tmp_path / "mask_only"
    train(_options(dataset, run, init_from=str(start), freeze=frozen, max_iters_per_epoch=3, mask_loss="dice+bce"),
          device="cpu", progress=False)
    assert read_run_options(run).freeze == frozen and read_run_options(run).mask_loss == "dice+bce"
    before, after = load_detector(start)[0].state_dict(), load_detector(run / "epoch_001.safetensors")[0].state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith(("roi_heads.mask_head.", "roi_heads.mask_predictor.")) for k in changed)
    assert any("running_mean" in k for k in before if k.startswith("backbone."))  # BatchNorm present, and kept
    # An unknown part, or nothing left to train, is refused.
    with pytest.raises(CtlesionError, match="nothing to train"):
        train(_options(dataset, tmp_path / "all", freeze=("backbone", "rpn", "box-head", "mask-head")), device="cpu",
              progress=False)
    with pytest.raises(CtlesionError, match="unknown part"):
        train(_options(dataset, tmp_path / "bad", freeze=("neck",)), device="cpu", progress=False)
    # The command line: repeatable --freeze, choices checked by the parser.
    seen = []
    monkeypatch.setattr(train_module, "train", lambda options, **kwargs: seen.append(options) or Path("last"))
    base = ["train", "--data", str(dataset), "--out", str(tmp_path / "cli"), "--init-from", str(start)]
    result = CliRunner().invoke(app, [*base, "--freeze", "backbone", "--freeze", "box-head", "--mask-loss", "dice+bce"])
    assert result.exit_code == 0, result.output
    assert seen[-1].freeze == ("backbone", "box-head") and seen[-1].mask_loss == "dice+bce"
    result = CliRunner().invoke(app, base)
    assert result.exit_code == 0 and seen[-1].freeze == () and seen[-1].mask_loss == "dice"
    result = CliRunner().invoke(app, [*base, "--freeze", "neck"])
    assert result.exit_code == 2 and "neck" in result.output


def test_norm_eval_trains_weights_but_keeps_every_batchnorm_statistic(dataset, reference_run, tmp_path, monkeypatch):
    """--norm-eval: every part trains, but no BatchNorm running statistic moves (crops and small
    batches do not replace whole slices' statistics); without it they move."""
    from ctlesion.checkpoint import load_detector

    start = reference_run / "epoch_001.safetensors"
    before = load_detector(start)[0].state_dict()
    statistics = [k for k in before if k.endswith(("running_mean", "running_var"))]
    assert statistics
    for norm_eval in (True, False):
        run = tmp_path / f"norm_eval_{norm_eval}"
        train(_options(dataset, run, init_from=str(start), norm_eval=norm_eval, max_iters_per_epoch=2),
              device="cpu", progress=False)
        assert read_run_options(run).norm_eval is norm_eval
        after = load_detector(run / "epoch_001.safetensors")[0].state_dict()
        moved = [k for k in statistics if not torch.equal(before[k], after[k])]
        assert (moved == []) is norm_eval
        backbone_weights = [k for k in before if k.startswith("backbone.") and k.endswith("weight")]
        assert any(not torch.equal(before[k], after[k]) for k in backbone_weights)
    seen = []
    monkeypatch.setattr(train_module, "train", lambda options, **kwargs: seen.append(options) or Path("last"))
    result = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(tmp_path / "cli"), "--norm-eval"])
    assert result.exit_code == 0 and seen[-1].norm_eval, result.output


def test_dice_plus_bce_mask_loss_keeps_a_gradient_where_the_mask_head_saturates():
    """The Dice loss's gradient vanishes with the sigmoid (a head stuck at probability 1 over whole
    boxes stays there); binary cross-entropy's does not: d/dlogit = p - target."""
    from ctlesion.networks.detector import AlignShiftDetector

    heads = AlignShiftDetector(TINY).roi_heads
    target = torch.zeros(1, 4, 4, dtype=torch.uint8)
    target[0, 1:3, 1:3] = 1
    boxes = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]
    gradients = {}
    for loss in ("dice", "dice+bce"):
        heads.mask_loss = loss
        logits = torch.full((1, 2, 28, 28), 12.0, requires_grad=True)  # probability 0.999994 everywhere
        heads._mask_loss(logits, boxes, [{"masks": target}], [torch.tensor([0])]).backward()
        gradients[loss] = logits.grad.abs().max().item()
    assert gradients["dice"] < 1e-5 and gradients["dice+bce"] > 1e-3


def test_input_windows_train_and_travel_with_the_checkpoint(dataset, tmp_path):
    """--input-window gives the network one input channel per HU window; the checkpoint keeps them,
    a fine-tuning run must agree, and a malformed window is a one-line usage error."""
    from ctlesion.checkpoint import load_detector

    run = tmp_path / "windows"
    windows = ["--hu-window", "-1024", "2050", "--input-window", "-175,275", "--input-window", "-450,1050"]
    result = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(run), "--batch-size", "2",
                                      "--mask-source", "grabcut", *windows, *STEPS[:3], "1", *STEPS[4:], *CLI_TINY])
    assert result.exit_code == 0, result.output
    model, _ = load_detector(sorted(run.glob("epoch_*.safetensors"))[-1])
    assert model.config.input_windows_hu == ((-175.0, 275.0), (-450.0, 1050.0))
    assert model.backbone.stem[0].weight.shape[1] == 2
    checkpoint = sorted(run.glob("epoch_*.safetensors"))[-1]
    differs = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(tmp_path / "ft"),
                                       "--init-from", str(checkpoint), "--input-window", "-175,275"])
    assert differs.exit_code != 0 and "--input-window" in differs.output and "differs" in differs.output
    for bad, message in (("-175", "expected LOW,HIGH"), ("-1400,100", "inside hu_window")):
        result = CliRunner().invoke(app, ["train", "--data", str(dataset), "--out", str(tmp_path / "bad"),
                                          "--hu-window", "-1024", "2050", "--input-window", bad])
        assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
        assert not (tmp_path / "bad").exists()
