#!/usr/bin/env bash
# Build the bundled digits CNN (examples/01_android_int8) for Jetson Orin INT8 and print the drift report.
# The bundle holds model.qdq.onnx (explicit Q/DQ INT8) and build_engine.sh / build_engine.py, which build the
# TensorRT engine on the Jetson itself; here the Q/DQ model is measured in onnxruntime (TensorRT INT8 emulation).
set -euo pipefail
cd "$(dirname "$0")"
DATA=../01_android_int8
edgekit build "$DATA/digits_cnn.pt2" --target jetson-orin-int8 --calibration "$DATA/calibration.npz" \
    --eval "$DATA/eval.npz" --out "${OUT:-../../dist/digits_cnn-jetson-orin-int8}" --force "$@"
