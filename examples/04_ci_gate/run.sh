#!/usr/bin/env bash
# A release gate, as a CI job runs it: build the candidate bundle, stop on bad input (exit 2) or on drift over the
# thresholds (exit 3), then compare it with the baseline bundle of the last release and stop when it regresses
# (`edgekit diff`, exit 3). Exit 0 means: ship it.
#
#   examples/04_ci_gate/run.sh                      # builds a baseline first when there is none
#   BASELINE=dist/release-1.4 MODEL=new.pt2 examples/04_ci_gate/run.sh
#
# OUT (default dist/ci_gate) receives candidate/ (and baseline/ when it had to build one). EMULATOR=arm64 also runs
# the candidate in the ARM64 emulator (after `edgekit emulator setup`); the default measures on the host.
set -uo pipefail
cd "$(dirname "$0")"
DATA=../01_android_int8
MODEL=${MODEL:-$DATA/digits_cnn.pt2}
OUT=${OUT:-../../dist/ci_gate}
BASELINE=${BASELINE:-$OUT/baseline}
EMULATOR=${EMULATOR:-host}

build() {  # build MODEL OUT_DIR: the thresholds of the release are in this one place
    edgekit build "$1" --target android-arm64-int8 --calibration "$DATA/calibration.npz" --eval "$DATA/eval.npz" \
        --max-drop 1.0 --min-agreement 0.99 --emulator "$EMULATOR" --out "$2" --force
}

if [ ! -f "$BASELINE/report.json" ]; then
    # in CI, download the last release's bundle (an artifact) to $BASELINE instead
    echo "ci-gate: no baseline bundle at $BASELINE, building one from $MODEL"
    build "$MODEL" "$BASELINE" || { code=$?; echo "ci-gate: the baseline build failed (exit $code)" >&2; exit "$code"; }
fi

build "$MODEL" "$OUT/candidate"
code=$?
case $code in
    0) echo "ci-gate: candidate built within its drift thresholds" ;;
    2) echo "ci-gate: FAILED, bad input (exit 2): fix the model, data or options named above" >&2; exit 2 ;;
    3) echo "ci-gate: FAILED, drift over threshold (exit 3): see $OUT/candidate/report.html" >&2; exit 3 ;;
    *) echo "ci-gate: FAILED, the build broke (exit $code)" >&2; exit "$code" ;;
esac

edgekit diff "$BASELINE" "$OUT/candidate" --max-drop-increase 0.5 --max-agreement-decrease 0.01 \
    --max-size-increase 0.10
code=$?
case $code in
    0) echo "ci-gate: PASSED, no regression against $BASELINE: ship it" ;;
    3) echo "ci-gate: FAILED, the candidate regresses against $BASELINE (exit 3)" >&2 ;;
    *) echo "ci-gate: FAILED, cannot compare the bundles (exit $code)" >&2 ;;
esac
exit "$code"
