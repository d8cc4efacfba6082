"""manifest.json: where a device model came from (model, data, config, code, tools) and what the bundle holds."""

from __future__ import annotations

import datetime as dt
import hashlib
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from edgekit.inputs.model import sha256_file

MANIFEST_SCHEMA = "edgekit.manifest/1"
TRACKED_PACKAGES = ("edgekit", "torch", "onnx", "onnxruntime", "onnxslim", "tensorflow", "onnx2tf",
                    "ai-edge-litert", "tflite-runtime", "numpy", "litert-torch", "ai-edge-quantizer", "torch-pruning")


def package_versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def git_sha(start: Path | None = None) -> str | None:
    """The commit of the caller's repository (the working directory's), with `+dirty` when it has changes."""
    cwd = str(start or Path.cwd())
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def file_hashes(folder: Path, skip: tuple[str, ...] = ("manifest.json",)) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and str(p.relative_to(folder)) not in skip}


def now_utc() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def config_digest(config: dict) -> str:
    import json

    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
