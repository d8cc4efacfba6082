#!/usr/bin/env bash
# Prune 50 % + 16 clusters + INT8 for Android, with the sparsity and clusters checked in the converted model.
# The model is given as a factory (package.module:factory): compression works on the nn.Module itself.
set -euo pipefail
cd "$(dirname "$0")"
DATA=../01_android_int8
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" edgekit build model:make_net --target android-arm64-int8 \
    --calibration "$DATA/calibration.npz" --eval "$DATA/eval.npz" --prune 0.5 --clusters 16 \
    --out "${OUT:-../../dist/digits_cnn_wide-android-arm64-int8-compressed}" --force "$@"
