#!/usr/bin/env bash
# `make gpu-check`: what only a CUDA machine can check, in about 5 minutes (docs/distributed.md).
#   1. the tests that exercise CUDA (they skip on a CPU-only machine; here they must run);
#   2. one bf16 FSDP training step on one GPU (a one-rank group), with a sharded checkpoint, exported;
#   3. the same on every GPU of the machine when there are several (torchrun).
set -euo pipefail
PY=${PY:-python}
$PY -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu-check: no CUDA device here')"
$PY -m pytest -q -x -rs tests/test_torch_steps.py tests/test_model.py tests/test_graphs.py tests/test_sedd.py \
    -k "cuda or gpu"
tmp=$(mktemp -d)
common=(--model small --seq-len 1024 --batch-size 8 --steps 2 --warmup-steps 1 --eval-every 0
        --eval-sequences 1 --eval-num-t 1 --no-plot --no-progress --device cuda --bf16
        --parallel fsdp --checkpoint-format sharded)
$PY -m ddm train "${common[@]}" --run-dir "$tmp/one"
$PY -m ddm export "$tmp/one" "$tmp/one-plain"
n=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$n" -gt 1 ]; then
    $PY -m ddm train --nproc "$n" "${common[@]}" --batch-size $((8 * n)) --run-dir "$tmp/all"
fi
$PY -m ddm sample --checkpoint "$tmp/one-plain" --num 2 --steps 16 --seq-len 64 --device cuda --no-progress > /dev/null
echo "gpu-check: ok ($n GPU(s)); runs in $tmp"
