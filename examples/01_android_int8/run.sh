#!/usr/bin/env bash
# Build the bundled digits CNN for Android INT8 and print the drift report.
set -euo pipefail
cd "$(dirname "$0")"
edgekit build digits_cnn.pt2 --target android-arm64-int8 --calibration calibration.npz --eval eval.npz \
    --out "${OUT:-../../dist/digits_cnn-android-arm64-int8}" --force "$@"
