"""Float32 conversion fidelity: is the float32 device model the ONNX model within rounding, and where does it
first diverge when it is not?

The check compares the float32 TFLite outputs with onnxruntime's (graph optimisations off: they can hide a
difference) by max|device − reference| / max|reference|. Past the tolerance, every intermediate tensor of the two
models is compared by value (layers.onnx_activations / tflite_activations): ONNX tensors that some TFLite tensor
reproduces agree. Walking back from each wrong output through tensors that agree with nothing, the earliest node
reached is the first to diverge; the ONNX-to-PyTorch module map recorded at export names its module. (Where the
converter fused that node with earlier ones into one op, the first node of the fused group is named.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.errors import ConversionError, UnsupportedError
from edgekit.measure.drift import sqnr_db
from edgekit.measure.layers import onnx_activations
from edgekit.measure.mapping import layout_candidates
from edgekit.routes.litert.layers import tflite_activations
from edgekit.runners.binding import Binding

FLOAT_TOLERANCE = {"float32": 1e-4, "float16": 1e-2}  # max relative error a conversion may add, by dtype


def relative_max_error(reference: np.ndarray, device: np.ndarray) -> float:
    """max|device − reference| / max|reference| over the reference's finite values (absolute where those are all
    zero); inf where the device is not finite but the reference is."""
    finite = np.isfinite(reference)
    if not finite.any():
        return 0.0
    error = float(np.max(np.abs(reference[finite].astype(np.float64) - device[finite])))
    peak = float(np.max(np.abs(reference[finite])))
    return float("inf") if not np.isfinite(error) else error / peak if peak else error


@dataclass(frozen=True)
class FloatCheck:
    """Per-output relative errors of the float32 device model, and its first divergence when over tolerance."""

    errors: dict[str, float]
    tolerance: float
    divergence: dict | None = None
    wrong: list[str] = field(default_factory=list)
    sqnr_db: dict[str, float] = field(default_factory=dict)  # of the wrong outputs, float32 device vs ONNX

    @property
    def faithful(self) -> bool:
        return not self.wrong

    def message(self) -> str:
        finite = [name for name in self.wrong if np.isfinite(self.errors[name])]
        worst = ", ".join(f"{name} {self.errors[name]:.3g}" for name in finite)
        text = (f"float32 conversion is wrong beyond rounding: max relative error {worst} > {self.tolerance:g} "
                f"(float32 TFLite vs ONNX in onnxruntime)" if finite else
                f"float32 conversion is wrong: no device output has the shape of {', '.join(self.wrong)}")
        if self.divergence is None:
            return f"{text}; no single ONNX node diverges (the error builds up over the whole graph)"
        d = self.divergence
        module = f" from PyTorch module {d['module']}" if d["module"] else ""
        return f"{text}; first diverging ONNX node {d['onnx_node']} ({d['op_type']}){module}"


def check_float(onnx_path: Path, tflite_path: Path, bindings: list[Binding], samples: dict[str, np.ndarray],
                reference: dict[str, np.ndarray], device: dict[str, np.ndarray], dtype: str = "float32") -> FloatCheck:
    """Compare outputs; only when some are off, compare every intermediate tensor to find where."""
    tolerance = FLOAT_TOLERANCE[dtype]
    errors = {name: relative_max_error(ref, device[name]) for name, ref in reference.items()}
    wrong = [name for name, error in errors.items() if not error <= tolerance]
    if not wrong:
        return FloatCheck(errors, tolerance)
    divergence = first_divergence(onnx_path, tflite_path, bindings, samples, wrong, tolerance)
    sqnr = {name: sqnr_db(reference[name], device[name]) for name in wrong
            if np.shape(reference[name]) == np.shape(device[name])}
    return FloatCheck(errors, tolerance, divergence, wrong, sqnr)


def first_divergence(onnx_path: Path, tflite_path: Path, bindings: list[Binding], samples: dict[str, np.ndarray],
                     wrong_outputs: list[str], tolerance: float) -> dict | None:
    """{"onnx_node", "op_type", "module", "max_rel_err"} of the earliest node behind a wrong output, or None."""
    import onnx

    from edgekit.transform.export import tensor_modules

    graph = onnx.load(str(onnx_path)).graph
    onnx_values = onnx_activations(onnx_path, samples)
    tflite = [a["values"] for a in tflite_activations(tflite_path, bindings, samples)]
    errors = {name: closest_error(values, tflite) for name, values in onnx_values.items()}
    good = {name for name, error in errors.items() if error is not None and error <= tolerance} | static_tensors(graph)
    region = unmatched_region(graph, wrong_outputs, good)
    first = next((node for node in graph.node if node.name in region), None)
    if first is None:
        return None
    error = errors.get(first.output[0])
    return {"onnx_node": first.name, "op_type": first.op_type,
            "module": module_of(graph, first, tensor_modules(onnx_path)),
            "max_rel_err": None if error is None else round(error, 6)}


def module_of(graph, node, modules: dict[str, str]) -> str | None:
    """The PyTorch module behind a node's output; for a node a repair added, that of the first node it feeds."""
    todo, seen = list(node.output), set()
    while todo:
        tensor = todo.pop(0)
        if tensor in modules:
            return modules[tensor]
        if tensor not in seen:
            seen.add(tensor)
            todo.extend(out for other in graph.node if tensor in other.input for out in other.output)
    return None


def closest_error(reference: np.ndarray, candidates: list[np.ndarray]) -> float | None:
    """The smallest relative error of any candidate with the reference's shape in some layout; None if none fits."""
    best = None
    for values in (v for v in candidates if v.shape[0] == reference.shape[0]):  # both stacked over the samples
        for perm in layout_candidates((1, *reference.shape[1:]), (1, *values.shape[1:])):
            view = values.transpose(np.argsort(perm)) if perm else values
            error = relative_max_error(reference, view)
            best = error if best is None or error < best else best
    return best


def static_tensors(graph) -> set[str]:
    """Tensors that do not depend on a graph input (weights, constants, folded shapes): never the divergence."""
    dynamic = {value.name for value in graph.input} - {init.name for init in graph.initializer}
    for node in graph.node:
        if any(name in dynamic for name in node.input):
            dynamic.update(node.output)
    produced = {name for node in graph.node for name in node.output}
    return (produced | {init.name for init in graph.initializer}) - dynamic


def unmatched_region(graph, starts: list[str], good: set[str]) -> set[str]:
    """Names of the nodes reached walking back from `starts` through tensors outside `good`."""
    producers = {name: node for node in graph.node for name in node.output}
    region, todo = set(), list(starts)
    while todo:
        node = producers.get(todo.pop())
        if node is None or node.name in region:
            continue
        region.add(node.name)
        todo.extend(name for name in node.input if name and name not in good)
    return region


@dataclass(frozen=True)
class CheckedConversion:
    """onnx2tf's output with what edgekit did around it: repairs before, the float32 check after."""

    files: object  # onnx2tf.TfliteFiles
    export: object  # the OnnxExport onnx2tf converted: the repaired copy when a repair applied
    repairs: list  # [repairs.Applied]
    check: FloatCheck
    float_in: list[Binding]
    float_out: list[Binding]
    float_outputs: dict[str, np.ndarray]

    @property
    def notes(self) -> list[str]:
        """Report warnings: every repair, and an accepted conversion error."""
        sqnr = "".join(f", {name} SQNR {value:.1f} dB" for name, value in self.check.sqnr_db.items())
        accepted = [] if self.check.faithful else [
            f"{self.check.message()} (accepted: --accept-conversion-error{sqnr})"]
        return [applied.note() for applied in self.repairs] + accepted

    @property
    def conversion(self) -> dict:
        """Extra keys of report.json's `conversion` block."""
        return {"repairs": [a.to_dict() for a in self.repairs],
                "first_divergence": None if self.check.faithful else self.check.divergence,
                "reused": self.files.reused}


def convert_checked(export, calibration: dict[str, np.ndarray], target, io: str, workdir: Path,
                    samples: dict[str, np.ndarray], accept: bool = False, run_worker=None,
                    registry: tuple | None = None) -> CheckedConversion:
    """Repair, convert with onnx2tf, bind and run the float32 model on `samples`, and check it against
    onnxruntime; a float32 model wrong beyond rounding stops here (UnsupportedError) unless `accept`.
    `registry`: the repairs to try (default: all); `run_worker`: see onnx2tf.convert."""
    from edgekit.routes.litert import onnx2tf
    from edgekit.routes.litert.repairs import REGISTRY, repair_export
    from edgekit.routes.litert.runner import LiteRTRunner
    from edgekit.runners.onnxrt import OnnxRunner

    converted, repairs = repair_export(export, workdir / "repaired", REGISTRY if registry is None else registry)
    files = onnx2tf.convert(converted, calibration, target, io, workdir, run_worker=run_worker)
    refuse_flex_ops(files.float32)
    with OnnxRunner(export.path, optimize=False) as runner:  # the reference: the export as PyTorch made it
        reference = runner.run(samples)
    float_in = onnx2tf.bind_inputs(files.float32, converted)
    float_out = _bind_float_outputs(converted.path, files.float32, float_in, samples, reference)
    with LiteRTRunner(files.float32, float_in, float_out) as runner:
        float_outputs = runner.run(samples)
    check = check_float(converted.path, files.float32, float_in, samples, reference, float_outputs)
    if not check.faithful and not accept:
        raise _unsupported(check, acceptable=True)
    return CheckedConversion(files, converted, repairs, check, float_in, float_out, float_outputs)


def _bind_float_outputs(onnx_path: Path, float_path: Path, float_in: list[Binding], samples: dict[str, np.ndarray],
                        reference: dict[str, np.ndarray]) -> list[Binding]:
    """Output bindings by shape and values; when some output has no device output of its shape, the conversion is
    as wrong as it gets: say where it diverges (this cannot be accepted, there is nothing to bind)."""
    from edgekit.routes.litert import onnx2tf

    try:
        return onnx2tf.bind_outputs(float_path, float_in, samples, reference)[0]
    except ConversionError:
        tolerance = FLOAT_TOLERANCE["float32"]
        wrong = {name: float("inf") for name in reference}
        divergence = first_divergence(onnx_path, float_path, float_in, samples, list(wrong), tolerance)
        raise _unsupported(FloatCheck(wrong, tolerance, divergence, list(wrong)), acceptable=False) from None


def refuse_flex_ops(path: Path) -> None:
    """A TFLite file with Select TensorFlow (Flex) ops does not load in LiteRT on a phone: name them."""
    found = [code for code in custom_op_codes(path) if code.startswith("Flex")]
    if found:
        raise UnsupportedError(f"onnx2tf turned part of the model into TensorFlow Select ops that LiteRT on a phone "
                               f"cannot run: {', '.join(found)}",
                               hint="replace that operation in the model, or try --converter litert-torch")


def custom_op_codes(path: Path) -> list[str]:
    """The custom (non-builtin) op codes a TFLite file declares, read from its flatbuffer."""
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # tflite-runtime or tensorflow instead: they load the model and say so themselves
        return []
    model = schema.Model.GetRootAsModel(path.read_bytes(), 0)
    codes = (model.OperatorCodes(i).CustomCode() for i in range(model.OperatorCodesLength()))
    return sorted({code.decode() for code in codes if code})


def _unsupported(check: FloatCheck, acceptable: bool) -> UnsupportedError:
    op = f"the {check.divergence['op_type']} op" if check.divergence else "an op"
    hint = (f"onnx2tf converts {op} wrongly and edgekit has no repair for it: change it in the model or try "
            "--converter litert-torch")
    return UnsupportedError(check.message(), hint=hint + (
        "; or pass --accept-conversion-error (accept_conversion_error=True) to build anyway" if acceptable else ""))
