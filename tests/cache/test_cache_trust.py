"""The step cache as data someone else may write: every entry verified against its sha256 on every read, a damaged
or truncated one is a miss (computed again, with a warning naming it), never a crash and never other arrays; a
folder others can write is not used at all. (A matrix whose cache entries were all damaged rebuilds its cells with
the same drift: tests/build_matrix/test_matrix_trust.py.)"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from edgekit.cache import store as step_cache
from edgekit.cache.keys import fetch_arrays, store_arrays

ARRAYS = {"logits": np.arange(40, dtype=np.float32).reshape(4, 10), "names": np.array([3, 1, 4], dtype=np.int64)}


def _mutations(entry: Path) -> list[tuple[str, callable]]:
    """Ways an entry's files get damaged on disk: truncated, bytes changed, emptied, removed, a file added, the
    index rewritten badly."""
    files = sorted(p for p in entry.iterdir())
    rng = np.random.default_rng(0)
    found = []
    for path in files:
        data = path.read_bytes()
        found += [
            (f"{path.name} truncated", lambda p=path, d=data: p.write_bytes(d[:len(d) // 2])),
            (f"{path.name} emptied", lambda p=path: p.write_bytes(b"")),
            (f"{path.name} removed", lambda p=path: p.unlink()),
        ]
        for k in range(4):
            at = int(rng.integers(0, len(data)))
            found.append((f"{path.name} byte {at} flipped ({k})",
                          lambda p=path, d=data, a=at: p.write_bytes(d[:a] + bytes([d[a] ^ 0xFF]) + d[a + 1:])))
    found.append(("a file added", lambda: (entry / "extra.bin").write_bytes(b"x")))
    found.append(("index not json", lambda: (entry / step_cache.INDEX).write_text("{")))
    found.append(("index lists a path out", lambda: (entry / step_cache.INDEX).write_text(
        json.dumps({"files": {"../../x": "0" * 64}}))))
    return found


def test_a_damaged_entry_is_a_miss_never_a_crash_or_other_arrays(tmp_path: Path, monkeypatch, capfd):
    monkeypatch.setenv(step_cache.ENV, str(tmp_path / "steps"))
    store_arrays("reference", "k" * 64, ARRAYS)
    entry = tmp_path / "steps" / "reference" / ("k" * 64)
    pristine = {p.name: p.read_bytes() for p in entry.iterdir()}
    got = fetch_arrays("reference", "k" * 64)
    assert got is not None and all(np.array_equal(got[n], ARRAYS[n]) for n in ARRAYS)
    for name, damage in _mutations(entry):
        damage()
        got = fetch_arrays("reference", "k" * 64)
        assert got is None, name  # never arrays other than the stored ones
        assert f"step cache entry reference/{'k' * 12} is damaged" in capfd.readouterr().err, name
        assert not entry.exists(), name  # removed, so the next build stores a good one
        entry.mkdir()
        for file_name, data in pristine.items():
            (entry / file_name).write_bytes(data)


def test_a_cache_folder_others_can_write_is_not_used(tmp_path: Path, monkeypatch, capfd):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv(step_cache.ENV, str(shared))
    store_arrays("reference", "k" * 64, ARRAYS)
    assert list(shared.iterdir()) == [] and fetch_arrays("reference", "k" * 64) is None
    assert f"step cache not used: {shared} is writable by others" in capfd.readouterr().err
    monkeypatch.setenv(step_cache.ENV, str(tmp_path / "fresh"))
    store_arrays("reference", "k" * 64, ARRAYS)
    assert (os.stat(tmp_path / "fresh").st_mode & 0o777) == 0o700


@pytest.mark.parametrize("seed", range(3))
def test_fuzzed_entries_are_a_miss_or_exactly_what_was_stored(seed: int, tmp_path: Path, monkeypatch, capfd):
    monkeypatch.setenv(step_cache.ENV, str(tmp_path / "steps"))
    rng = np.random.default_rng(seed)
    store_arrays("reference", "f" * 64, ARRAYS)
    entry = tmp_path / "steps" / "reference" / ("f" * 64)
    for path in entry.iterdir():
        data = bytearray(path.read_bytes())
        for at in rng.integers(0, len(data), size=int(rng.integers(1, 5))):
            data[at] = int(rng.integers(0, 256))
        if rng.random() < 0.3:
            data = data[:int(rng.integers(0, len(data)))]
        path.write_bytes(bytes(data))
    got = fetch_arrays("reference", "f" * 64)
    assert got is None or all(np.array_equal(got[n], ARRAYS[n]) for n in ARRAYS)
