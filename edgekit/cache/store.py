"""Reuse of a build's shared steps between builds, by content hash: the cells of a matrix convert the same model
for several targets and calibration methods, and the float conversion is the same for all of them.

Off unless $EDGEKIT_STEP_CACHE names a folder (edgekit matrix sets it to OUT/.steps for its cells, so a plain
`edgekit build` never picks up another build's files). An entry is <folder>/<step>/<sha256>/, the sha256 of
everything the step's output depends on (its input files' bytes, its settings, the tool's version); it is
written to a temporary folder and renamed, so a reader sees a whole entry or none, and two builds that miss at
once both compute and one of them keeps its copy.

An entry is data from a folder someone else may have written: it holds entry.json, the sha256 of each of its files,
and every read verifies them (a file missing, changed, truncated or not listed makes the entry a miss: it is
removed, rebuilt, and a warning names it). The folder itself is made private (0700); one that another user owns
or others can write is not used at all (the build says so and computes every step).
"""

from __future__ import annotations

import contextvars
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from edgekit.standalone.check import sha256 as sha256_file
from edgekit.utils.outdir import private_problem

ENV = "EDGEKIT_STEP_CACHE"
INDEX = "entry.json"  # {"files": {name: sha256}}
# the entries one build took from the cache (step, key, files' sha256), for its manifest; set per build by
# edgekit/pipeline/run.py (a context variable: concurrent builds in one process each see their own)
TAKEN: contextvars.ContextVar[list[dict] | None] = contextvars.ContextVar("edgekit_step_cache_taken", default=None)


def cache_root() -> Path | None:
    """The step cache's folder, or None: off, or a folder this user cannot trust (a warning says why)."""
    value = os.environ.get(ENV)
    if not value:
        return None
    try:
        problem = private_problem(Path(value))
    except OSError as exc:
        problem = f"{value}: {exc.strerror or exc}"
    if problem is not None:
        warn(f"step cache not used: {problem}; every step is computed")
        return None
    return Path(value)


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
    """Copy the cached entry's files into `into` once every one matches its sha256 in entry.json; False when there
    is no cache or no entry, or the entry does not verify (then it is removed and a warning names it)."""
    root = cache_root()
    entry = root / step / key if root is not None else None
    if entry is None or not entry.is_dir():
        return False
    problem = _entry_problem(entry)
    if problem is not None:
        warn(f"step cache entry {step}/{key[:12]} is damaged ({problem}): computed again")
        shutil.rmtree(entry, ignore_errors=True)
        return False
    into.mkdir(parents=True, exist_ok=True)
    files = json.loads((entry / INDEX).read_text())["files"]
    for name in files:
        shutil.copy2(entry / name, into / name)
    taken = TAKEN.get()
    if taken is not None:
        taken.append({"step": step, "key": key, "files": dict(sorted(files.items()))})
    return True


def store(step: str, key: str, files: list[Path]) -> None:
    """Keep `files` as the entry with their sha256 in entry.json (a no-op without a cache, or when another build
    stored it first)."""
    root = cache_root()
    if root is None:
        return
    entry = root / step / key
    if entry.is_dir():
        return
    entry.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", dir=entry.parent))
    try:
        for path in files:
            shutil.copy2(path, partial / path.name)
        index = {"files": {path.name: sha256_file(partial / path.name) for path in files}}
        (partial / INDEX).write_text(json.dumps(index))
        partial.rename(entry)
    except OSError:  # another build renamed its copy first (keep that one), or the disk is full (nothing kept)
        pass
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _entry_problem(entry: Path) -> str | None:
    """What is wrong with an entry's files against its entry.json, or None."""
    try:
        index = json.loads((entry / INDEX).read_bytes()[:1 << 16])
        files = index["files"]
        if not isinstance(files, dict) or not files or not all(
                isinstance(n, str) and "/" not in n and n not in (INDEX, ".", "..") and isinstance(d, str)
                for n, d in files.items()):
            return f"{INDEX} does not list its files"
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return f"{INDEX} unreadable: {type(exc).__name__}"
    present = {p.name for p in entry.iterdir()} - {INDEX}
    if present != set(files):
        return f"files {sorted(present ^ set(files))} differ from {INDEX}"
    for name, expected in files.items():
        path = entry / name
        if path.is_symlink() or not path.is_file() or sha256_file(path) != expected:
            return f"{name} does not match its sha256"
    return None


def warn(text: str) -> None:
    """A warning in the build's log (a matrix cell's stderr goes to OUT/<model>/<cell>.log)."""
    print(f"warning: {text}", file=sys.stderr)
