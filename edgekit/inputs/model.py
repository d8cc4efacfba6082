"""Loading a model from any of the accepted forms into one description, without converting anything yet."""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ModelError, first_line
from edgekit.standalone.check import sha256 as sha256_file  # one reader of a file's sha256, the one bundles ship
from edgekit.utils.user_code import call_user

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
        external = _external_data(path, onnx.load(str(path), load_external_data=False))
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"{path} is not a valid ONNX model: {first_line(exc)}",
                         hint="re-export it with torch.onnx.export and check it with onnx.checker") from None
    _runtime_reads(path, model)
    initializers = {init.name for init in model.graph.initializer}
    inputs = tuple(onnx_value_spec(v) for v in model.graph.input if v.name not in initializers)
    metadata = {prop.key: prop.value for prop in model.metadata_props}
    digest = sha256_file(path) if not external else hashlib.sha256("\0".join(
        [sha256_file(path), *(f"{name}:{sha256_file(file)}" for name, file in external)]).encode()).hexdigest()
    return LoadedModel(name=name, kind="onnx", sha256=digest, source=str(path), onnx_path=path,
                       inputs=inputs, metadata=metadata or None)


def _runtime_reads(path: Path, model: Any) -> None:
    """onnxruntime (which measures every route) opens a model of this IR version and default-domain opset: checked
    on a one-node model of the same versions, so a file newer than the runtime is refused here, not after export."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    probe = helper.make_model(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [value],
                                                [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])]),
                              opset_imports=[helper.make_opsetid("", opset or 13)])
    probe.ir_version = model.ir_version
    try:
        ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own words: "Unsupported model IR version: 12, max supported ..."
        reason = str(exc).split(" : ")[-1].strip().rsplit(") ", 1)[-1]
        raise ModelError(f"{path}: onnxruntime {ort.__version__} cannot read this model (IR version "
                         f"{model.ir_version}, opset {opset}): {reason[:200]}",
                         hint="export it again with an older IR version/opset (torch.onnx.export(..., opset_version="
                              "17)), or onnx.version_converter") from None


def _external_data(path: Path, proto: Any) -> list[tuple[str, Path]]:
    """The external-data files an ONNX model names, each a regular file inside the model's folder once links are
    resolved; a location that leads out of it (`..`, an absolute path, a symlink) is refused before it is read."""
    folder = path.resolve().parent
    names = sorted({entry.value for tensor in proto.graph.initializer for entry in tensor.external_data
                    if entry.key == "location"})
    found = []
    for name in names:
        resolved = (folder / name).resolve()
        if folder not in resolved.parents:
            raise ModelError(f"{path}: external data {name!r} resolves outside the model's folder "
                             f"({resolved}): refused", hint="keep the model's external data files beside it, as "
                             "regular files (not links to elsewhere)")
        if not resolved.is_file():
            raise ModelError(f"{path}: external data {name!r} is missing", hint="copy it beside the model")
        found.append((name, resolved))
    return found


def onnx_value_spec(value_info: Any) -> TensorSpec:
    from onnx import helper

    tensor_type = value_info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor_type.shape.dim)
    dtype = str(helper.tensor_dtype_to_np_dtype(tensor_type.elem_type))
    return TensorSpec(value_info.name, shape, dtype)


def _load_factory(spec: str, name: str | None) -> LoadedModel:
    module_name, _, attr = spec.partition(":")

    def build(factory: Any) -> Any:
        try:
            return factory()
        except Exception as exc:
            raise ModelError(f"{spec}() raised {type(exc).__name__}: {first_line(exc)}",
                             hint="the factory must take no arguments and return an nn.Module") from exc

    try:
        module = call_user(module_name, attr, build)
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"cannot import {spec}: {first_line(exc)}", hint="the module must be importable (from "
                         "PYTHONPATH or the working directory) and define the factory") from exc
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

