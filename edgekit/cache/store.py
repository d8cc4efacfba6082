"""Reuse of a build's shared steps between builds, by content hash: the cells of a matrix convert the same model
for several targets and calibration methods, and the float conversion is the same for all of them.

Off unless $EDGEKIT_STEP_CACHE names a folder (edgekit matrix sets it to OUT/.steps for its cells, so a plain
`edgekit build` never picks up another build's files). An entry is <folder>/<step>/<sha256>/, the sha256 of
everything the step's output depends on (its input files' bytes, its settings, the tool's version); it is
written to a temporary folder and renamed, so a reader sees a whole entry or none, and two builds that miss at
once both compute and one of them keeps its copy.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

ENV = "EDGEKIT_STEP_CACHE"


def cache_root() -> Path | None:
    value = os.environ.get(ENV)
    return Path(value) if value else None


def digest(*parts: bytes | str | Path) -> str:
    """sha256 over the parts in order: bytes and text as they are, a Path by its file's bytes."""
    hasher = hashlib.sha256()
    for part in parts:
        if isinstance(part, Path):
            with open(part, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hasher.update(block)
        else:
            hasher.update(part.encode() if isinstance(part, str) else part)
        hasher.update(b"\0")
    return hasher.hexdigest()


def fetch(step: str, key: str, into: Path) -> bool:
    """Copy the cached entry's files into `into`; False when there is no cache or no entry."""
    root = cache_root()
    entry = root / step / key if root is not None else None
    if entry is None or not entry.is_dir():
        return False
    into.mkdir(parents=True, exist_ok=True)
    for item in entry.iterdir():
        if item.is_file():
            shutil.copy2(item, into / item.name)
    return True


def store(step: str, key: str, files: list[Path]) -> None:
    """Keep `files` as the entry (a no-op without a cache, or when another build stored it first)."""
    root = cache_root()
    if root is None:
        return
    entry = root / step / key
    if entry.is_dir():
        return
    entry.parent.mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=entry.parent))
    try:
        for path in files:
            shutil.copy2(path, partial / path.name)
        partial.rename(entry)
    except OSError:  # another build renamed its copy first: keep that one
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)
