"""LiteRT (TFLite) on the host: the same kernels an Android app runs, with the model's I/O bound by name."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.errors import ToolError, UnsupportedError
from edgekit.runners.base import Runner
from edgekit.runners.binding import Binding
from edgekit.utils.quiet import quiet_runtimes


def interpreter_class() -> tuple[Any, str, str]:
    """The LiteRT interpreter, in the order that serves old and new devices; (class, module name, version)."""
    try:
        from ai_edge_litert import interpreter as mod

        return mod.Interpreter, "ai-edge-litert", _version("ai-edge-litert")
    except ImportError:
        pass
    try:
        from tflite_runtime import interpreter as mod

        return mod.Interpreter, "tflite-runtime", _version("tflite-runtime")
    except ImportError:
        pass
    try:
        import tensorflow as tf

        return tf.lite.Interpreter, "tensorflow", tf.__version__
    except ImportError as exc:
        raise ToolError("no TFLite interpreter is installed",
                        hint="pip install 'edgekit[android]' (ai-edge-litert)") from exc


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def quiet_litert():
    """Drop LiteRT's known INFO lines from stderr (edgekit/utils/quiet.py: RUNTIME_NOISE)."""
    return quiet_runtimes()


def open_interpreter(path: Path, num_threads: int | None = None) -> Any:
    cls, _, _ = interpreter_class()
    try:
        with quiet_litert():  # the INFO line comes with allocate_tensors (the default delegate is applied lazily)
            interpreter = cls(model_path=str(path), num_threads=num_threads)
            interpreter.allocate_tensors()
    except (RuntimeError, ValueError) as exc:
        text = str(exc)
        if "Select TensorFlow op" in text or "Flex" in text or "custom op" in text.lower():
            raise UnsupportedError(f"{path.name} needs TensorFlow ops that LiteRT on a phone does not have: "
                                   f"{text.splitlines()[0][:200]}",
                                   hint="replace the op in the model; see `edgekit inspect` for the op list") from exc
        missing = _missing_kernel(text)
        if missing:
            raise UnsupportedError(f"{Path(path).name} does not run in LiteRT {interpreter_class()[2]}: no kernel for "
                                   f"{missing} (the op converts, but the runtime has no kernel for it in these types)",
                                   hint="build a target of another precision (android-arm64-int8 or -fp32), or "
                                        "keep that op out of the quantized model") from exc
        raise
    return interpreter


NO_KERNEL = (re.compile(r"Didn't find op for builtin opcode '(\w+)' version '(\d+)'"),
             re.compile(r"Node number \d+ \((\w+)\) failed to prepare"))


def _missing_kernel(text: str) -> str | None:
    """The op (and version) LiteRT has no kernel for, from its registration or prepare error; None if not one."""
    for pattern in NO_KERNEL:
        found = pattern.search(text)
        if found:
            return f"{found.group(1)} version {found.group(2)}" if found.lastindex == 2 else found.group(1)
    return None


def tensor_details(path: Path) -> tuple[list[dict], list[dict]]:
    interpreter = open_interpreter(path)
    return interpreter.get_input_details(), interpreter.get_output_details()


class LiteRTRunner(Runner):
    where = "host-x86_64"

    def __init__(self, path: Path, inputs: list[Binding], outputs: list[Binding],
                 num_threads: int | None = None) -> None:
        super().__init__([b.model_name for b in inputs], [b.model_name for b in outputs])
        self.interpreter = open_interpreter(path, num_threads)
        self.in_bindings, self.out_bindings = inputs, outputs
        in_details, out_details = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        self._in_index = [in_details[b.device_index]["index"] for b in inputs]
        self._out_index = [out_details[b.device_index]["index"] for b in outputs]

    def _run_one(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        for binding, index in zip(self.in_bindings, self._in_index):
            self.interpreter.set_tensor(index, binding.encode(inputs[binding.model_name]))
        self.interpreter.invoke()
        return {b.model_name: b.decode(self.interpreter.get_tensor(i)) for b, i in zip(self.out_bindings,
                                                                                      self._out_index)}


def output_step(path: Path, output_index: int) -> float | None:
    """The INT8 step (scale) behind a float output: the input scale of the DEQUANTIZE that produces it."""
    interpreter = open_interpreter(path)
    tensor = interpreter.get_output_details()[output_index]
    if tensor["quantization"][0]:
        return float(tensor["quantization"][0])
    scales = {t["index"]: t["quantization"][0] for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():  # no public API lists the graph's ops
        if op["op_name"] == "DEQUANTIZE" and tensor["index"] in op["outputs"]:
            return float(scales[op["inputs"][0]]) or None
    return None
