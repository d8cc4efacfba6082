"""Loading a model from any of the accepted forms into one description, without converting anything yet."""

from __future__ import annotations

import hashlib
import importlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelError, first_line

TORCH_SUFFIXES = (".pt", ".ts", ".pth", ".jit")


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: its name and shape with the batch dimension first (None where dynamic)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    @property
    def sample_shape(self) -> tuple[int | None, ...]:
        return self.shape[1:]

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}


@dataclass(frozen=True)
class LoadedModel:
    """A model ready for export: a torch module (or an ONNX graph), its identity and what is known of its inputs."""

    name: str
    kind: str  # "exported_program" | "torchscript" | "module" | "onnx"
    sha256: str
    source: str
    module: Any = None
    program: Any = None
    onnx_path: Path | None = None
    inputs: tuple[TensorSpec, ...] | None = None
    metadata: dict[str, str] | None = None  # what the exporter wrote beside the graph (Ultralytics: task, names)

    @property
    def is_torch(self) -> bool:
        return self.kind != "onnx"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_module(module: Any) -> str:
    """Hash of a module's class name and state (names, shapes, dtypes, bytes), stable across runs."""
    digest = hashlib.sha256(type(module).__qualname__.encode())
    update_with_state(digest, module.state_dict())
    return digest.hexdigest()


def update_with_state(digest: Any, state: dict) -> None:
    """Feed `digest` each tensor's name, shape, dtype and bytes, in name order (a bfloat16 tensor, which numpy
    cannot hold, as its 16-bit words; a value that is not a tensor as numpy sees it)."""
    import torch

    for key, value in sorted(state.items()):
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            array = (tensor.view(torch.int16) if tensor.dtype == torch.bfloat16 else tensor).numpy()
        else:
            array = np.asarray(value)
        digest.update(f"{key}:{array.shape}:{array.dtype}".encode())
        digest.update(array.tobytes())


def load_model(source: Any, name: str | None = None) -> LoadedModel:
    """Load `.pt2`, TorchScript, `.onnx`, `package.module:factory` or an `nn.Module`."""
    if isinstance(source, (str, Path)) and _looks_like_factory(str(source)):
        return _load_factory(str(source), name)
    if isinstance(source, (str, Path)):
        return _load_file(Path(source), name)
    return _from_module(source, name or type(source).__name__.lower(), source_desc=f"<{type(source).__name__}>")


def _looks_like_factory(text: str) -> bool:
    module, sep, attr = text.partition(":")
    return bool(sep) and attr.isidentifier() and all(p.isidentifier() for p in module.split(".")) \
        and not Path(text).exists()


def _load_file(path: Path, name: str | None) -> LoadedModel:
    if path.is_dir():
        raise ModelError(f"model {path} is a folder, not a model file",
                         hint="give a .pt2, .pt/.ts (TorchScript), .onnx file or package.module:factory")
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist",
                         hint="give a .pt2, .pt/.ts (TorchScript), .onnx file or package.module:factory")
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ModelError(f"cannot read model file {path}: {exc.strerror}",
                         hint="check the file's permissions") from None
    loaders = {".pt2": _load_pt2, ".onnx": _load_onnx, **dict.fromkeys(TORCH_SUFFIXES, _load_torchscript)}
    loader = loaders.get(path.suffix.lower())
    if loader is None:
        raise ModelError(f"{path}: unknown model format {path.suffix!r}",
                         hint="use .pt2 (torch.export.save), .pt/.ts (torch.jit.save) or .onnx")
    return loader(path, name or path.stem)


def _load_pt2(path: Path, name: str) -> LoadedModel:
    from edgekit.inputs.safe_pt2 import archive_metadata, load_exported_program

    program = load_exported_program(path)
    inputs = tuple(_placeholder_specs(program))
    return LoadedModel(name=name, kind="exported_program", sha256=sha256_file(path), source=str(path),
                       module=program.module(), program=program, inputs=inputs, metadata=archive_metadata(path))


def _placeholder_specs(program: Any) -> list[TensorSpec]:
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user_inputs:
            val = node.meta.get("val")
            shape = tuple(int(d) if str(d).isdigit() else None for d in getattr(val, "shape", ()))
            dtype = str(getattr(val, "dtype", "torch.float32")).replace("torch.", "")
            specs.append(TensorSpec(node.name, shape, dtype))
    return specs


def _load_torchscript(path: Path, name: str) -> LoadedModel:
    import torch

    from edgekit.inputs.safe_pt2 import METADATA_FILES, metadata_from_files

    extra = {name: "" for name in METADATA_FILES}
    try:
        module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception as exc:
        raise ModelError(f"{path} is not a readable TorchScript file: {first_line(exc)}",
                         hint="save it with torch.jit.save(torch.jit.script(model), path), or use .pt2") from None
    module.eval()
    return LoadedModel(name=name, kind="torchscript", sha256=sha256_file(path), source=str(path), module=module,
                       inputs=None, metadata=metadata_from_files(extra))


def _load_onnx(path: Path, name: str) -> LoadedModel:
    import onnx

    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ModelError(f"{path} is not a valid ONNX model: {first_line(exc)}",
                         hint="re-export it with torch.onnx.export and check it with onnx.checker") from None
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(onnx_value_spec(v) for v in model.graph.input if v.name not in initializers)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    return LoadedModel(name=name, kind="onnx", sha256=sha256_file(path), source=str(path), onnx_path=path,
                       inputs=inputs, metadata=metadata or None)


def onnx_value_spec(value_info: Any) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return TensorSpec(value_info.name, shape, dtype)


def _load_factory(spec: str, name: str | None) -> LoadedModel:
    module_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {spec}: {first_line(exc)}",
                         hint="the module must be importable (check PYTHONPATH) and define the factory") from exc
    try:
        module = factory()
    except Exception as exc:
        raise ModelError(f"{spec}() raised {type(exc).__name__}: {first_line(exc)}",
                         hint="the factory must take no arguments and return an nn.Module") from exc
    return _from_module(module, name or attr, source_desc=spec)


def _from_module(module: Any, name: str, source_desc: str) -> LoadedModel:
    import torch

    if isinstance(module, torch.export.ExportedProgram):
        return LoadedModel(name=name, kind="exported_program", sha256=sha256_module(module.module()),
                           source=source_desc, module=module.module(), program=module,
                           inputs=tuple(_placeholder_specs(module)))
    if not isinstance(module, torch.nn.Module):
        raise ModelError(f"{source_desc} is a {type(module).__name__}, not a torch.nn.Module",
                         hint="pass an nn.Module, an ExportedProgram or a path to a model file")
    module.eval()
    return LoadedModel(name=name, kind="module", sha256=sha256_module(module), source=source_desc, module=module)


def forward_input_names(module: Any, count: int) -> list[str]:
    """Names of a module's forward arguments, used as ONNX input names; `input` for a single unnamed one."""
    try:
        params = [p.name for p in inspect.signature(module.forward).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        params = []
    if count == 1:
        return ["input"] if not params or params[0] in ("x", "input", "inputs") else params[:1]
    return params[:count] if len(params) >= count else [f"input_{i}" for i in range(count)]

