"""models/train_demo.sh, the recipe of the shipped demo model.

A whole run takes hours on a CPU; ``SMOKE=1`` runs every step of it at toy size (12 simulated
series, 2 iterations per training run: about 5 minutes on 2 cores). The test then checks that
the weights it ends with have the shipped model's configuration and that each stage's training
record (the ``previous_stage`` chain of the JSON sidecar) holds the options the shipped model's
record holds for that stage, sizes aside: the script is the recipe the card describes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ctlesion.checkpoint import read_checkpoint_info
from ctlesion.detect import DEFAULT_WEIGHTS

REPO = Path(__file__).resolve().parents[1]

# Options that differ between any two runs of one recipe (paths, sizes, file names) or that the
# smoke run sets itself (epochs, iterations, warm-up, batch).
RUN_SPECIFIC = {"data_dir", "out_dir", "init_from", "hard_negatives", "source_checkpoint", "epoch", "epochs",
                "max_iters_per_epoch", "warmup_iters", "batch_size", "num_workers", "mask_cache_dir",
                "mask_sources", "checkpoint_every", "description", "previous_stage"}


def _stages(training: dict) -> list[dict]:
    """A training record and the records of the stages it started from, newest first."""
    chain = []
    while training:
        chain.append(training)
        training = training.get("previous_stage")
    return chain


def _differences(smoke: dict, shipped: dict) -> dict:
    """The recipe options on which two stage records differ.

    Options the shipped record lacks or holds as null (written by an older ctlesion) are not
    compared, nor are the lr drops at or after the last epoch the shipped stage trained (its
    checkpoint's ``epoch``; they never acted on its weights)."""
    out = {}
    for key, value in shipped.items():
        if key in RUN_SPECIFIC or value is None:
            continue
        mine = smoke.get(key)
        if key == "lr_drop_epochs":
            trained = shipped.get("epoch", shipped["epochs"])
            value = [e for e in value if e < trained]
            mine = [e for e in mine or [] if e < trained]
        elif isinstance(value, dict) and isinstance(mine, dict):
            mine = {k: mine.get(k) for k in value}
        if mine != value:
            out[key] = (mine, value)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_train_demo_smoke_run_has_the_shipped_recipe(shared_data, tmp_path):
    if not DEFAULT_WEIGHTS.is_file():
        pytest.skip(f"no shipped model at {DEFAULT_WEIGHTS}")
    shipped_sha = _sha256(DEFAULT_WEIGHTS)
    work = tmp_path / "demo"
    result = subprocess.run(["bash", str(REPO / "models" / "train_demo.sh"), str(work)], cwd=REPO,
                            env=dict(os.environ, SMOKE="1", PYTHON=sys.executable),
                            capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert _sha256(DEFAULT_WEIGHTS) == shipped_sha  # a smoke run leaves models/ alone

    last = re.search(r"^SMOKE: every step ran; last weights (\S+)", result.stdout, re.MULTILINE)
    assert last, result.stdout[-3000:]
    smoke_info = read_checkpoint_info(REPO / last.group(1))
    shipped_info = json.loads(DEFAULT_WEIGHTS.with_suffix(".json").read_text())
    assert smoke_info["config"] == shipped_info["config"]
    smoke_stages, shipped_stages = _stages(smoke_info["training"]), _stages(shipped_info["training"])
    assert len(smoke_stages) == len(shipped_stages)
    assert smoke_stages[0]["max_iters_per_epoch"] == 2  # the smoke sizes did apply
    for index, (smoke, shipped) in enumerate(zip(smoke_stages, shipped_stages)):
        assert _differences(smoke, shipped) == {}, f"stage {index} (0: the shipped weights' own)"
