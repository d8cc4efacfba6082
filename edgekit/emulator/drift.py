"""Drift measured where the model will run: the device model in the ARM64 emulator, next to the host run."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from edgekit.config.options import Gate
from edgekit.emulator import qemu as emulator
from edgekit.errors import ConfigError, EdgekitError, ToolError
from edgekit.measure.drift import drift_block, worst_sqnr
from edgekit.measure.tasks import Reading
from edgekit.standalone import check as check_script

if TYPE_CHECKING:
    from edgekit.config.target import Target
    from edgekit.routes import Route

EMULATED_RUNTIMES = ("litert", "onnxruntime", "openvino")  # what the emulator's guest python can run
MIN_EMULATED = 8  # samples that always run in the emulator, whatever the time budget
CPU_NAME = re.compile(r"[a-z0-9-]+")  # a QEMU CPU model read from a manifest is data: a plain name or the default
NOT_SET_UP_NOTE = ("drift measured on the host (x86_64): the ARM64 emulator is not set up; "
                   "run `edgekit emulator setup` to measure where the model runs")


def choose(requested: str | None, target: Target, route: Route) -> tuple[str, str | None]:
    """`arm64` or `host`, and a note when the default fell back to the host; an explicit arm64 must be ready."""
    if "arm64" not in route.emulators or target.emulator != "qemu-aarch64":
        if requested == "arm64":
            raise ConfigError(f"--emulator arm64 does not apply to {target.name}: route {route.name} measures drift "
                              "on the host", hint="drop --emulator")
        return "host", None
    ready = emulator.is_ready()
    if requested == "arm64" and not ready:
        raise ToolError(f"the ARM64 emulator is not set up at {emulator.default_root()}",
                        hint="run `edgekit emulator setup` once (about 300 MB, under a minute), or use --emulator host")
    if requested is None:
        return ("arm64", None) if ready else ("host", NOT_SET_UP_NOTE)
    return requested, None


def run_bindings(model: Path, device: dict, inputs: dict[str, np.ndarray], cpu: str) -> dict[str, np.ndarray]:
    """Run model-layout float inputs through the emulator with the bundle's bindings; model-layout outputs."""
    feed = {b["device_name"]: check_script.encode(b, inputs[b["model_name"]]) for b in device["inputs"]}
    raw = emulator.run_model(model, feed, cpu=cpu)
    return {b["model_name"]: check_script.decode(b, raw[b["device_name"]]) for b in device["outputs"]}


def measure(model: Path, device: dict, inputs: dict[str, np.ndarray], reference: dict[str, np.ndarray],
            host: dict[str, np.ndarray], reading: Reading, gate: Gate, cpu: str,
            budget_s: float = 60.0) -> dict:
    """The report's `emulator` block; an emulator failure is recorded (passed false), never raised. `inputs` holds
    at most --emulator-samples samples; MIN_EMULATED run first, and the rest only as many as the time budget fits
    at the per-sample time those took (start-up included, so the estimate errs on the safe side)."""
    where = f"qemu-aarch64 {cpu}"
    upper = len(next(iter(inputs.values())))
    try:
        outputs, seconds = _budgeted(model, device, inputs, cpu, upper, budget_s)
    except EdgekitError as exc:
        return {"where": where, "samples": 0, "bit_exact_with_host": None, "top1_agreement": None,
                "passed": False, "error": str(exc), "budget_s": budget_s, "seconds": None}
    count = len(next(iter(outputs.values())))
    subset = {k: v[:count] for k, v in reference.items()}
    block = drift_block(subset, outputs, None, reading.tasks, gate, detectors=reading.detectors)
    on_host = drift_block(subset, {k: v[:count] for k, v in host.items()}, None, reading.tasks, gate,
                          detectors=reading.detectors)
    diffs = {k: float(np.max(np.abs(outputs[k] - host[k][:count]))) for k in outputs}
    rounding = all(diffs[k] <= ROUNDING * (float(np.max(np.abs(host[k][:count]))) + 1e-6) for k in outputs)
    return {"where": where, "samples": count,
            "bit_exact_with_host": all(np.array_equal(outputs[k], host[k][:count]) for k in outputs),
            "max_abs_diff_vs_host": diffs, "top1_agreement": block["top1_agreement"],
            "outputs": block["outputs"], "passed": rounding or block["passed"] or _no_worse(block, on_host),
            "error": None, "budget_s": budget_s, "seconds": round(seconds, 3)}


ROUNDING = 1e-5  # relative: what two runtimes' float rounding leaves between the same model's outputs


def _no_worse(emulated: dict, host: dict) -> bool:
    """The emulator's metrics on its subset at least those of the host on the same samples: a subset's SQNR or
    recall is never held to a full-set threshold (a subset of hard samples measures lower on the host too)."""
    if emulated["samples"] == 0 or _below(emulated["top1_agreement"], host["top1_agreement"]):
        return False
    for dev, ref in zip(emulated["outputs"], host["outputs"]):
        if dev["sqnr_db"] is None or (ref["sqnr_db"] is not None and worst_sqnr(dev) < worst_sqnr(ref) - 0.1):
            return False
        if _below(dev.get("neighbour_agreement"), ref.get("neighbour_agreement")):
            return False
        found, wanted = dev.get("detection") or {}, ref.get("detection") or {}
        if any(_below(found.get(k), wanted.get(k)) for k in ("recall", "precision")):
            return False
    return True


def _below(value: float | None, floor: float | None) -> bool:
    return value is not None and floor is not None and value < floor - 1e-9


def _budgeted(model: Path, device: dict, inputs: dict[str, np.ndarray], cpu: str, upper: int,
              budget_s: float) -> tuple[dict[str, np.ndarray], float]:
    """Outputs of the first samples that fit the budget (at least MIN_EMULATED), and the seconds it took."""
    import time

    first = min(MIN_EMULATED, upper)
    start = time.perf_counter()
    outputs = run_bindings(model, device, {k: v[:first] for k, v in inputs.items()}, cpu)
    spent = time.perf_counter() - start
    more = min(upper - first, int(max(budget_s - spent, 0.0) / (spent / first)))
    if more > 0:
        rest = run_bindings(model, device, {k: v[first:first + more] for k, v in inputs.items()}, cpu)
        outputs = {k: np.concatenate([outputs[k], rest[k]]) for k in outputs}
    return outputs, time.perf_counter() - start


def check_golden_in_emulator(verified: check_script.Verified) -> dict:
    """check.py's golden comparison of a verified bundle, with the device model run in the emulator."""
    manifest, device = verified.manifest, verified.manifest["device"]
    if device["runtime"] not in EMULATED_RUNTIMES:
        raise ConfigError(f"--emulator arm64 checks {' and '.join(EMULATED_RUNTIMES)} bundles only",
                          hint="use --emulator host")
    if not emulator.is_ready():
        raise ToolError("the ARM64 emulator is not set up", hint="run `edgekit emulator setup`")
    target = manifest.get("target")
    cpu = target.get("cpu") if isinstance(target, dict) else None
    cpu = cpu if isinstance(cpu, str) and CPU_NAME.fullmatch(cpu) else "cortex-a76"
    outputs = run_bindings(verified.model, device, verified.inputs, cpu)
    result = check_script.compare(verified.golden, outputs, device["tolerances"])
    result.update({"model": str(verified.model), "runtime": f"{device['runtime']} (emulated)",
                   "where": f"qemu-aarch64 {cpu}", "samples": len(next(iter(verified.inputs.values()))),
                   "model_sha256_matches": True})
    return result
