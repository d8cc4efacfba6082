"""The keys of the step cache (edgekit/cache/store.py): the steps a matrix's cells share are reused by a digest of
what they compute from. The steps themselves live with their owners: the ONNX export (transform/export.py: the
model), the PyTorch reference outputs (measure/reference.py: the model and the eval inputs), litert-torch's
conversion and the calibration statistics (routes/litert: the float32 device model, the inputs and the method).

A model's digest is what it computes, read from the model itself, never from its file name: the exported
program's graph code and tensors; a TorchScript module's code and tensors; an `nn.Module`'s printed structure,
its tensors and the source files of its classes (forward code that lives in another file is not seen: edit a
model's helper module between two runs into the same OUT and the first run's files would be reused; edgekit's
own code, torch's and the converters' versions are part of every key). A step that cannot tell its inputs apart
is never reused.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.inputs.model import update_with_state
from edgekit.standalone.check import CheckError, npz_declared

PACKAGE = Path(__file__).resolve().parents[1]  # edgekit/: its whole source is in every key


def code_version() -> str:
    """A digest of edgekit's own source: a cached step from another edgekit is never taken."""
    return step_cache.digest(*sorted(PACKAGE.rglob("*.py")))


def tool_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("torch", "onnx", "onnxscript", "onnxslim", "onnxruntime", "numpy"):
        try:
            found.append(f"{name}={version(name)}")
        except PackageNotFoundError:
            found.append(f"{name}=none")
    return ",".join(found)


def model_key(model: Any) -> str | None:
    """The digest of what `model` (a LoadedModel) computes, or None when it cannot be told."""
    if model.kind == "onnx":
        return step_cache.digest("onnx", model.onnx_path, *_external_files(model.onnx_path))
    if model.program is not None:  # a .pt2, or a model that equalization traced
        program = model.program
        return step_cache.digest("program", program.graph_module.code, _tensors(program.state_dict),
                                 _tensors(getattr(program, "constants", {}) or {}))
    module = model.module
    if module is None:
        return None
    if model.kind == "torchscript":
        code = "\n".join(f"{name}:{getattr(sub, 'code', '')}" for name, sub in module.named_modules())
        return step_cache.digest("torchscript", code, _tensors(module.state_dict()))
    sources = sorted({path for sub in module.modules() if (path := _source_file(type(sub)))})
    return step_cache.digest("module", repr(module), _tensors(module.state_dict()), *map(Path, sources))


def file_step(step: str, key: str | None, path: Path, make: Any) -> bool:
    """`path` copied from the step cache's entry `key` (True), else written by `make(path)` and stored there (False;
    a None key is never stored)."""
    staging = path.parent / f".{path.stem}.cached"
    if key is not None and step_cache.fetch(step, key, staging):
        next(staging.iterdir()).replace(path)
        return True
    make(path)
    if key is not None:
        step_cache.store(step, key, [path])
    return False


def step_key(step: str, model: str | None, *parts: str) -> str | None:
    """The step's cache key; None without a model digest (nothing is reused)."""
    if model is None:
        return None
    return step_cache.digest(step, model, *parts, tool_versions(), code_version())


def arrays_key(arrays: dict[str, np.ndarray]) -> str:
    hasher = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        hasher.update(f"{name}:{array.shape}:{array.dtype}\0".encode())
        hasher.update(array.tobytes())
    return hasher.hexdigest()


def fetch_arrays(step: str, key: str) -> dict[str, np.ndarray] | None:
    """A cached dict of arrays (names kept in an index, arrays never unpickled), or None."""
    with tempfile.TemporaryDirectory() as folder:
        if not step_cache.fetch(step, key, Path(folder)):
            return None
        try:
            names = json.loads((Path(folder) / "names.json").read_text())
            npz_declared(Path(folder) / "arrays.npz", f"step cache entry {step}/{key[:12]}")
            with np.load(Path(folder) / "arrays.npz", allow_pickle=False) as data:
                return {name: data[f"a{i}"] for i, name in enumerate(names)}
        except (OSError, ValueError, KeyError, TypeError, CheckError) as exc:  # verified, yet not what we store
            step_cache.warn(f"step cache entry {step}/{key[:12]} is unreadable ({exc}): computed again")
            return None


def store_arrays(step: str, key: str, arrays: dict[str, np.ndarray]) -> None:
    if step_cache.cache_root() is None:
        return
    with tempfile.TemporaryDirectory() as folder:
        names = list(arrays)
        (Path(folder) / "names.json").write_text(json.dumps(names))
        np.savez(Path(folder) / "arrays.npz", **{f"a{i}": np.asarray(arrays[n]) for i, n in enumerate(names)})
        step_cache.store(step, key, [Path(folder) / "names.json", Path(folder) / "arrays.npz"])


def _tensors(state: dict) -> bytes:
    hasher = hashlib.sha256()
    update_with_state(hasher, state)
    return hasher.digest()


def _source_file(cls: type) -> str | None:
    try:
        return inspect.getsourcefile(cls)
    except (TypeError, OSError):
        return None


def _external_files(path: Path) -> list[Path]:
    """The external-data files an ONNX model names (only inside its folder: edgekit never follows a path out)."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    names = {entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
             if entry.key == "location"}
    folder = path.resolve().parent
    return [folder / name for name in sorted(names) if (folder / name).resolve().parent == folder]
