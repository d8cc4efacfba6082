"""Fuzz of the bundle readers: 200 seeded single-byte corruptions and key deletions of a real bundle's manifest.json,
report.json, golden npz files and model file, each run through `edgekit check` and `edgekit diff` in-process.

Every run ends in exit 0, 2 or 3 with edgekit's own message (never 1, never a traceback), and a change to a file
that the manifest hashes never gives exit 0. manifest.json itself is not hashed by the bundle (pin it with
--expect-digest), so a change there that keeps it well formed may pass.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edgekit.cli import main

RUNS = 200
TARGETS = ("manifest.json", "report.json", "golden/inputs.npz", "golden/outputs.npz", "model.tflite")


def flip_byte(data: bytes, rng: random.Random) -> bytes:
    offset = rng.randrange(len(data))
    return data[:offset] + bytes([(data[offset] + rng.randrange(1, 256)) % 256]) + data[offset + 1:]


def delete_json_key(data: bytes, rng: random.Random) -> bytes:
    """Remove one key chosen among all keys at every depth."""
    document = json.loads(data)
    found: list[tuple[dict, str]] = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            found.extend((node, key) for key in node)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(document)
    parent, key = rng.choice(found)
    del parent[key]
    return json.dumps(document).encode()


def delete_npz_key(data: bytes, rng: random.Random) -> bytes:
    with np.load(io.BytesIO(data)) as npz:
        arrays = {k: npz[k] for k in npz.files}
    del arrays[rng.choice(sorted(arrays))]
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def mutate(name: str, data: bytes, rng: random.Random) -> tuple[str, bytes]:
    if name.endswith(".tflite") or rng.random() < 0.6:
        return "byte", flip_byte(data, rng)
    return "key", (delete_json_key if name.endswith(".json") else delete_npz_key)(data, rng)


@pytest.fixture(scope="module")
def fuzz_bundle(int8_bundle, tmp_path_factory) -> Path:
    return Path(shutil.copytree(int8_bundle.out, tmp_path_factory.mktemp("fuzz") / "bundle"))


def test_corrupted_bundles_end_in_0_2_or_3_and_hashed_files_never_pass(fuzz_bundle: Path, int8_bundle):
    runner, outcomes = CliRunner(), Counter()
    originals = {name: (fuzz_bundle / name).read_bytes() for name in TARGETS}
    for seed in range(RUNS):
        rng = random.Random(seed)
        name = rng.choice(TARGETS)
        how, changed = mutate(name, originals[name], rng)
        (fuzz_bundle / name).write_bytes(changed)
        try:
            for command in (["check", str(fuzz_bundle)], ["diff", str(int8_bundle.out), str(fuzz_bundle)]):
                result = runner.invoke(main, command)
                where = f"seed {seed}: {how} change of {name}, edgekit {command[0]}:\n{result.output}"
                assert result.exit_code in (0, 2, 3), where
                assert "Traceback" not in result.output and "unexpected error" not in result.output, where
                if name != "manifest.json" and changed != originals[name]:
                    assert result.exit_code != 0, where
                if result.exit_code:
                    assert sum(line.startswith("error:") for line in result.output.splitlines()) <= 1, where
                outcomes[(command[0], result.exit_code)] += 1
        finally:
            (fuzz_bundle / name).write_bytes(originals[name])
    print(dict(sorted(outcomes.items())))
    assert sum(outcomes.values()) == 2 * RUNS
    assert outcomes[("check", 3)] > 0 and outcomes[("check", 2)] > 0 and outcomes[("diff", 3)] > 0
