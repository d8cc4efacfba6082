"""Ray's scheduling overhead per matrix cell on a simulated 4-node cluster (Ray's own `ray.cluster_utils.Cluster`:
four raylets on this machine, 1 CPU each), in the same run. The table goes to docs/matrix.md.

    python -m benchmarks.bench_ray [--cache DIR] [--out FILE]

The matrix: the shipped digits CNN x four Android targets x two calibration methods (where they apply): six
cells. Per cell, matrix.json's `ray` block splits the time from submission to the bundle in OUT into `queued_s`
(waiting for a free node), `build_s` (the `edgekit build` on the worker) and `overhead_s`, the rest: the files
from the object store, the worker's process, the bundle's tar archive back and its unpacking. The goal is an
overhead of at most 2 s a cell.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks import markdown_table, write_section

ROOT = Path(__file__).resolve().parents[1]
NODES = 4
MATRIX = """
[[models]]
name = "digits"
model = "examples/01_android_int8/digits_cnn.pt2"
calibration = "examples/01_android_int8/calibration.npz"
eval = "examples/01_android_int8/eval.npz"

[axes]
target = ["android-arm64-int8", "android-arm64-int16x8", "android-arm64-fp16", "android-arm64-fp32"]
calibration_method = ["minmax", "percentile"]
emulator = "host"
"""


def run(cache: Path) -> dict:
    result_file = cache / "result.json"
    if result_file.exists():
        return json.loads(result_file.read_text())
    import ray
    from ray.cluster_utils import Cluster

    import edgekit

    cache.mkdir(parents=True, exist_ok=True)
    (cache / "matrix.toml").write_text(MATRIX)
    os.chdir(ROOT)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "memory": 5 * 2**30})
    for _ in range(NODES - 1):
        cluster.add_node(num_cpus=1, memory=5 * 2**30)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, include_dashboard=False, log_to_driver=False)
    try:
        nodes = len([n for n in ray.nodes() if n["Alive"]])
        start = time.perf_counter()
        result = edgekit.matrix(cache / "matrix.toml", cache / "out", ray=cluster.address)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
        cluster.shutdown()
    cells = [{"cell": c["name"], "exit_code": c["exit_code"], **c["ray"]} for c in result.cells]
    record = {"nodes": nodes, "wall_s": round(wall, 1), "cells": cells}
    result_file.write_text(json.dumps(record, indent=1))
    return record


def table(record: dict) -> str:
    rows = [f"| {c['cell']} | {c['exit_code']} | {c['queued_s']:.2f} | {c['build_s']:.2f} | {c['overhead_s']:.2f} |"
            for c in record["cells"]]
    overheads = [c["overhead_s"] for c in record["cells"]]
    rows.append(f"| **{len(rows)} cells on {record['nodes']} nodes, {record['wall_s']:.1f} s** | | | | "
                f"**mean {sum(overheads) / len(overheads):.2f}, max {max(overheads):.2f}** |")
    return markdown_table(["cell", "exit", "queued (s)", "build on the worker (s)", "Ray overhead (s)"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / ".ray")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "matrix.md")
    args = parser.parse_args(argv)
    text = table(run(args.cache.resolve()))
    print(text)
    write_section(args.out, "bench_ray", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
