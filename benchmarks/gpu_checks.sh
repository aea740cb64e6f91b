#!/usr/bin/env bash
# Every GPU check of the project in one run (at most 9 minutes on one H100/H200): the tests marked
# `gpu`, then the operator, detector, training-step, loader and detect benchmarks on CUDA, each
# under its own time limit. Each step's output goes to OUT_DIR/<step>.txt (default: $OUT when
# set, else ./gpu_checks) and to stdout; a failing step does not stop the others, and the exit
# code is the number of failed steps.
#
# Usage: bash benchmarks/gpu_checks.sh [OUT_DIR]
#
# Python packages the project needs beyond torch, torchvision, opencv, matplotlib, rich, typer
# and safetensors (SimpleITK, pydicom, nibabel, pylibjpeg, pylibjpeg-openjpeg, pylibjpeg-libjpeg,
# pyjpegls) are installed from wheels in .whl/ when that folder holds any; the project itself
# runs from this checkout (PYTHONPATH), so nothing is built or downloaded.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-gpu_checks}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ctlesion-site \
        .whl/*.whl || exit 100
    export PYTHONPATH="$PYTHONPATH:/tmp/ctlesion-site"
fi
failed=0

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" >"$out/$name.txt" 2>&1
    local rc=$?
    grep -v -e '^USDT' "$out/$name.txt" | tail -n 40
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
step gpu_tests 120 python3 -m pytest -q -p no:cacheprovider -m gpu
step shift_speed 75 python3 benchmarks/shift_speed.py --device cuda
step context_speed 75 python3 benchmarks/context_speed.py --device cuda --channels-last --repeats 5
step train_speed 120 python3 benchmarks/train_speed.py --device cuda --variants fp32,bf16,bf16-cl,bf16-ckpt,fp16
step loader_speed 110 python3 benchmarks/loader_speed.py --workers 0,4,8 --num-series 48
step detect_speed 45 python3 benchmarks/detect_speed.py --device cuda
echo "failed steps: $failed"
exit "$failed"
