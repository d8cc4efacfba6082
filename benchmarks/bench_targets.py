"""Every target side by side on the same model: size, drift, host latency, emulator time and build time.

Each target builds the shipped digits CNN (examples/01_android_int8) through the CLI in a fresh process, so build
times include each route's imports. Targets whose route offers the ARM64 emulator run there too when it is set up
(`edgekit emulator setup`); the emulator column is that step's wall time for its samples.

    python benchmarks/bench_targets.py [--out docs/targets.md] [--emulator-samples 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "01_android_int8"


def build(target: str, out: Path, emulator_samples: int) -> tuple[dict, float]:
    command = [sys.executable, "-m", "edgekit.cli", "build", str(EXAMPLE / "digits_cnn.pt2"), "--target", target,
               "--calibration", str(EXAMPLE / "calibration.npz"), "--eval", str(EXAMPLE / "eval.npz"), "--out",
               str(out), "--emulator-samples", str(emulator_samples), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 3):
        raise SystemExit(f"{target}: exit {done.returncode}\n{done.stderr[-2000:]}")
    return json.loads(done.stdout), seconds


def row(target: str, report: dict, seconds: float) -> str:
    drift, size = report["drift"], report["size"]
    sqnr = min(o["sqnr_db"] for o in drift["outputs"])
    emulator = report.get("emulator") or {}
    emulated = f"{report['timings_s'].get('emulator', 0):.1f} s ({emulator.get('samples')} samples, bit-exact " \
               f"{emulator.get('bit_exact_with_host')})" if emulator else "n/a"
    return (f"| `{target}` | {report['runtime']['name']} | {size['device_bytes']:,} | {size['device_gzip_bytes']:,} "
            f"| {drift['accuracy_drop']:.2f} | {drift['top1_agreement']:.4f} | {sqnr:.1f} "
            f"| {report['latency_ms']['host']:.3f} | {emulated} | {seconds:.1f} |")


def table(rows: list[str]) -> str:
    header = ("| target | runtime | device bytes | gzip bytes | accuracy drop (points) | top-1 agreement | "
              "SQNR vs PyTorch (dB) | host latency (ms/sample) | ARM64 emulator | build (s) |")
    return "\n".join([header, "|" + "---|" * 10, *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "targets.md")
    parser.add_argument("--emulator-samples", type=int, default=32)
    args = parser.parse_args()
    from edgekit.config.target import list_targets

    rows = []
    with tempfile.TemporaryDirectory() as work:
        for target in list_targets():
            report, seconds = build(target.name, Path(work) / target.name, args.emulator_samples)
            rows.append(row(target.name, report, seconds))
            print(rows[-1], flush=True)
    text = args.out.read_text() if args.out.is_file() else ""
    start, end = "<!-- bench_targets:start -->", "<!-- bench_targets:end -->"
    block = f"{start}\n{table(rows)}\n{end}"
    text = text[:text.index(start)] + block + text[text.index(end) + len(end):] if start in text else \
        text + "\n" + block + "\n"
    args.out.write_text(text)


if __name__ == "__main__":
    main()
