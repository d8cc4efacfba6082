"""One conformance case through edgekit's own pipeline, measured against PyTorch.

load_model -> resolve_inputs -> export_onnx -> fidelity.convert_checked (repairs, one onnx2tf run writing float32
and INT8 for target android-arm64-int8, the float32 check against onnxruntime) -> the INT8 file bound by
bind_inputs/bind_outputs and run in LiteRT. Inputs are standard normal (negative values included), calibration
and test samples are drawn apart.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.measure.drift import sqnr_db
from edgekit.routes.litert.fidelity import FLOAT_TOLERANCE, relative_max_error
from tests.conformance.cases import Case

MIN_INT8_SQNR_DB = 20.0
CALIBRATION_SAMPLES = 32
TEST_SAMPLES = 16


@dataclass(frozen=True)
class CaseResult:
    """status: ok | repaired | unsupported (a clear edgekit error; `message`) | failed (the suite fails)."""

    name: str
    status: str
    float_rel_err: float | None = None
    int8_sqnr_db: float | None = None
    repairs: list[str] = field(default_factory=list)
    message: str = ""
    hint: str = ""
    seconds: float = 0.0

    def label(self) -> str:
        if self.status == "repaired":
            return f"repaired ({', '.join(self.repairs)})"
        return f"{self.status} ({self.message})" if self.message else self.status


def draw_inputs(case: Case, specs, count: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {s.name: rng.standard_normal((count, *s.shape[1:])).astype(np.float32) for s in specs}
    return {k: np.abs(v) + 0.1 for k, v in inputs.items()} if case.positive else inputs


def run_case(case: Case, workdir: Path, run_worker=None, registry: tuple | None = None) -> CaseResult:
    """Never raises for an edgekit error: that is the case's `unsupported` result, with its message."""
    from edgekit.errors import EdgekitError

    start = time.perf_counter()
    try:
        result = _measure(case, workdir, run_worker, registry)
    except EdgekitError as exc:
        result = CaseResult(case.name, "unsupported", message=" ".join(exc.message.split()), hint=exc.hint)
    return CaseResult(**{**result.__dict__, "seconds": round(time.perf_counter() - start, 2)})


def _measure(case: Case, workdir: Path, run_worker, registry) -> CaseResult:
    from edgekit.config.target import load_target
    from edgekit.inputs.model import load_model
    from edgekit.routes.litert.fidelity import convert_checked
    from edgekit.transform.export import export_onnx, resolve_inputs

    loaded = load_model(case.module(), name=case.name.replace("/", "-"))
    specs = resolve_inputs(loaded, {f"x{i}": shape for i, shape in enumerate(case.shapes)})
    workdir.mkdir(parents=True, exist_ok=True)
    export = export_onnx(loaded, specs, workdir / "reference.onnx")
    calibration = draw_inputs(case, specs, CALIBRATION_SAMPLES, seed=0)
    test = draw_inputs(case, specs, TEST_SAMPLES, seed=1)
    checked = convert_checked(export, calibration, load_target("android-arm64-int8"), "float32", workdir, test,
                              accept=True, run_worker=run_worker, registry=registry)
    repairs = [applied.name for applied in checked.repairs]
    if not checked.check.faithful:  # what a build raises as UnsupportedError (exit 2)
        return CaseResult(case.name, "unsupported", repairs=repairs, message=checked.check.message(),
                          hint="build raises UnsupportedError (exit 2) unless --accept-conversion-error",
                          float_rel_err=max(checked.check.errors.values()))
    reference = _torch_outputs(loaded, specs, [o.name for o in export.outputs], test)
    int8 = _int8_outputs(checked, test)
    float_err = max(relative_max_error(reference[n], checked.float_outputs[n]) for n in reference)
    sqnr = min(sqnr_db(reference[n], int8[n]) for n in reference)
    return _verdict(case.name, float_err, sqnr, repairs)


def _verdict(name: str, float_err: float, sqnr: float, repairs: list[str]) -> CaseResult:
    problems = []
    if not float_err <= FLOAT_TOLERANCE["float32"]:
        problems.append(f"float32 vs PyTorch {float_err:.3g} > {FLOAT_TOLERANCE['float32']:g} (but exact vs ONNX)")
    if not sqnr >= MIN_INT8_SQNR_DB:
        problems.append(f"INT8 SQNR {sqnr:.1f} dB < {MIN_INT8_SQNR_DB:g} dB")
    status = "failed" if problems else "repaired" if repairs else "ok"
    return CaseResult(name, status, round(float_err, 9), round(sqnr, 2), repairs, "; ".join(problems))


def _torch_outputs(loaded, specs, names: list[str], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from edgekit.runners.torch import TorchRunner

    with TorchRunner(loaded.module, [s.name for s in specs], names) as runner:
        return runner.run(inputs)


def _int8_outputs(checked, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from edgekit.routes.litert import onnx2tf
    from edgekit.routes.litert.runner import LiteRTRunner

    device = checked.files.device
    device_in = onnx2tf.bind_inputs(device, checked.export)
    device_out, _ = onnx2tf.bind_outputs(device, device_in, inputs, checked.float_outputs)
    with LiteRTRunner(device, device_in, device_out) as runner:
        return runner.run(inputs)

