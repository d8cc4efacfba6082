"""Which converter builds an Android bundle: the one asked for, the target's default, or `auto`'s measured choice.

`auto` builds the model with every installed converter, compares each float32 model with PyTorch on the eval
data (conversion SQNR) and keeps the more faithful one. When both are exact within rounding, a quantized target
compares what ships: each candidate's device model against PyTorch (the INT8 model of one converter can be a few
dB worse than the other's over the same float model); within TIE_DB of each other, the faster build.
The choice, its reason and every converter that could not be tried are recorded (manifest and report warnings).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgekit.errors import EdgekitError, ToolError, UnsupportedError
from edgekit.inputs.plan import Plan
from edgekit.routes.device import DeviceModel
from edgekit.transform.export import OnnxExport

ROUTES = ("onnx2tf", "litert-torch")
FAITHFUL_DB = 80.0  # float32 vs PyTorch at or above this: the converter is exact within float rounding
TIE_DB = 1.0  # closer than this, two conversions are equally faithful
WRONG_FLOAT = "float32 conversion is wrong"  # how fidelity.py's refusal of a wrong float32 model begins


@dataclass(frozen=True)
class Candidate:
    """One converter's attempt: the device model it built (or the error), how faithful and how fast it was."""

    name: str
    device: DeviceModel | None = None
    version: str | None = None
    seconds: float | None = None
    float_sqnr_db: float | None = None  # the worst output's SQNR, float32 device model vs PyTorch
    error: str | None = None
    shipped_sqnr_db: float | None = None  # the same for the device model that would ship (quantized targets)

    def to_dict(self) -> dict:
        return {"name": self.name, "version": self.version, "float_sqnr_db": self.float_sqnr_db,
                "shipped_sqnr_db": self.shipped_sqnr_db,
                "seconds": None if self.seconds is None else round(self.seconds, 2), "error": self.error}


def requested(plan: Plan) -> str:
    """The converter asked for (--converter), else the target's own."""
    return plan.options.conversion.converter or plan.target.converter


def check_converter(plan: Plan) -> None:
    """Before any expensive step: the asked-for converter is installed and can take this model (exit 2 if not)."""
    name = requested(plan)
    if name not in (*ROUTES, "auto"):
        raise UnsupportedError(f"converter {name} does not build Android models",
                               hint="use --converter onnx2tf, litert-torch or auto")
    if name != "auto":
        try:
            _check(name, plan)
        except ToolError as exc:
            raise _with_alternative(exc, name, plan) from exc
        except UnsupportedError:
            other = next(route for route in ROUTES if route != name)
            if plan.options.conversion.converter or other in _unavailable(plan):
                raise
            # the target's default cannot take this model: build_android gives way to the other converter
        return
    problems = _unavailable(plan)
    if len(problems) == len(ROUTES):
        raise ToolError(f"no Android converter can build this model: {'; '.join(problems.values())}",
                        hint="pip install 'edgekit[android]' or 'edgekit[litert-torch]'")


def _check(name: str, plan: Plan) -> None:
    if name == "onnx2tf":
        from edgekit.routes.litert.onnx2tf import check_inputs, onnx2tf_version

        onnx2tf_version()
        check_inputs(plan.inputs, plan.target.precision)
        if plan.target.precision in ("int16x8", "dynamic-int8", "w4"):  # quantized by ai-edge-quantizer
            _quantizer_installed()
    elif name == "litert-torch":
        from edgekit.routes.litert import litert_torch

        litert_torch.check_model(plan)
        litert_torch.litert_torch_version()


def _quantizer_installed() -> None:
    import importlib.util

    if importlib.util.find_spec("ai_edge_quantizer") is None:
        raise ToolError("this precision is quantized with ai-edge-quantizer, which is not installed",
                        hint="pip install 'edgekit[litert-torch]'")


def _with_alternative(exc: ToolError, name: str, plan: Plan) -> ToolError:
    """The asked-for converter is missing: name the extra, and the other converter when that one is installed."""
    other = next(route for route in ROUTES if route != name)
    if other in _unavailable(plan):
        return exc
    return ToolError(exc.message, hint=f"{exc.hint}, or build with --converter {other} (installed)")


def _unavailable(plan: Plan) -> dict[str, str]:
    problems = {}
    for name in ROUTES:
        try:
            _check(name, plan)
        except EdgekitError as exc:
            problems[name] = f"{name}: {exc}"
    return problems


def _route(name: str) -> Callable[[Plan, OnnxExport, Path], DeviceModel]:
    if name == "onnx2tf":
        from edgekit.routes.litert.from_onnx import build_tflite

        return build_tflite
    from edgekit.routes.litert.litert_torch import build_litert

    return build_litert


def build_android(plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
    """Build with the requested converter, or with `auto`'s choice; the manifest records which and why. Without
    --converter, a target default whose float32 model is wrong beyond rounding gives way to the other installed
    converter when that one converts exactly (an explicit --converter is obeyed: exit 2 as the check says)."""
    name = requested(plan)
    if name == "auto":
        return _auto(plan, export, workdir)
    if not plan.options.conversion.converter:  # check_converter let a default that cannot take this model through
        try:
            _check(name, plan)
        except UnsupportedError as exc:
            return _instead_of_default(plan, export, workdir, name, exc, "cannot build this model")
    try:
        device = _route(name)(plan, export, workdir)
    except UnsupportedError as exc:
        if plan.options.conversion.converter or not exc.message.startswith(WRONG_FLOAT):
            raise
        return _instead_of_default(plan, export, workdir, name, exc)
    asked = plan.options.conversion.converter
    why = "asked for with --converter" if asked else f"the default of target {plan.target.name}"
    return _recorded(device, {"requested": name, "name": name, "version": device.runtime["converter_version"],
                              "reason": why, "candidates": []}, [])


def _instead_of_default(plan: Plan, export: OnnxExport, workdir: Path, name: str, exc: UnsupportedError,
                        why: str = "") -> DeviceModel:
    """The target's default converter got the float32 model wrong (or cannot build it, `why`): the other one, if it
    is installed and exact."""
    from edgekit.measure.reference import reference_runner

    other = next(route for route in ROUTES if route != name)
    if other in _unavailable(plan):
        raise exc
    candidate = _attempt(other, plan, export, workdir / other)
    if candidate.device is None:
        raise exc
    with reference_runner(plan, export) as runner:
        candidate = _scored(candidate, plan, runner.run(plan.evaluation.inputs))
    if _db(candidate) < FAITHFUL_DB:
        raise UnsupportedError(f"{exc.message}; {other} is not exact either ({_show(candidate)})", hint=exc.hint)
    reason = (f"the target's default {name} {why or 'converts the float32 model wrongly'} ({exc.message}); "
              f"{other} converts it exactly ({_show(candidate)} vs PyTorch)")
    record = {"requested": name, "name": other, "version": candidate.version, "reason": reason,
              "candidates": [Candidate(name, error=_describe(exc)).to_dict(), candidate.to_dict()]}
    warning = (f"converter: {name}, the target's default, {why or 'converts this model wrongly beyond rounding'} "
               f"({exc.message}); built with {other} instead, exact within rounding ({_show(candidate)})")
    return _recorded(candidate.device, record, [warning])


def _recorded(device: DeviceModel, record: dict, warnings: list[str]) -> DeviceModel:
    return dataclasses.replace(device, bindings={**device.bindings, "converter": record},
                               notes=[*device.notes, *warnings])


def _auto(plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
    from edgekit.measure.reference import reference_runner

    candidates = [_attempt(name, plan, export, workdir / name) for name in ROUTES]
    if not any(c.device for c in candidates):
        raise _all_failed(candidates)
    with reference_runner(plan, export) as runner:
        reference = runner.run(plan.evaluation.inputs)
    candidates = [_scored(c, plan, reference) for c in candidates]
    chosen, reason, warnings = choose(candidates)
    record = {"requested": "auto", "name": chosen.name, "version": chosen.version, "reason": reason,
              "candidates": [c.to_dict() for c in candidates]}
    return _recorded(chosen.device, record, warnings)


def _attempt(name: str, plan: Plan, export: OnnxExport, workdir: Path) -> Candidate:
    """Build with one converter; any failure is kept as that candidate's error (auto then uses the other)."""
    start = time.perf_counter()
    try:
        _check(name, plan)
        device = _route(name)(plan, export, workdir)
    except Exception as exc:  # auto falls back to the other converter, and says why
        return Candidate(name, error=_describe(exc))
    return Candidate(name, device, device.runtime["converter_version"], time.perf_counter() - start)


def _describe(exc: Exception) -> str:
    if isinstance(exc, EdgekitError):
        return f"{exc.message} ({exc.hint})" if exc.hint else exc.message
    return f"{type(exc).__name__}: {exc}"


def _all_failed(candidates: list[Candidate]) -> EdgekitError:
    text = "; ".join(f"{c.name}: {c.error}" for c in candidates)
    if all("not installed" in (c.error or "") for c in candidates):
        return ToolError(f"no Android converter is installed: {text}",
                         hint="pip install 'edgekit[android]' or 'edgekit[litert-torch]'")
    return UnsupportedError(f"no converter could build this model: {text}", hint="see each converter's error above")


def _scored(candidate: Candidate, plan: Plan, reference: dict) -> Candidate:
    from edgekit.measure.drift import output_metrics

    if candidate.device is None:
        return candidate
    with candidate.device.open_float_runner() as runner:
        worst = _worst(output_metrics(reference, runner.run(plan.evaluation.inputs)))
    shipped = None
    if plan.target.precision != "fp32":
        with candidate.device.open_runner(candidate.device.path) as runner:
            shipped = _worst(output_metrics(reference, runner.run(plan.evaluation.inputs)))
    return dataclasses.replace(candidate, float_sqnr_db=worst, shipped_sqnr_db=shipped)


def _worst(rows: list[dict]) -> float | None:
    values = [r["sqnr_db"] for r in rows]
    return None if any(v is None for v in values) else round(min(values), 2)


def choose(candidates: list[Candidate]) -> tuple[Candidate, str, list[str]]:
    """The more faithful float32 conversion; within rounding of each other, the faster. Returns (chosen, reason,
    report warnings)."""
    built = [c for c in candidates if c.device is not None]
    failed = [f"{c.name} could not be used: {c.error}" for c in candidates if c.device is None]
    if len(built) == 1:
        return built[0], f"only {built[0].name} could build the model: {'; '.join(failed)}", \
            [f"converter auto: {text}; built with {built[0].name}" for text in failed]
    best, other = sorted(built, key=lambda c: -_db(c))
    scores = f"float32 SQNR vs PyTorch: {best.name} {_show(best)}, {other.name} {_show(other)}"
    if _tied(best, other):
        shipped = _by_shipped(built, scores)
        if shipped is not None:
            return shipped
        fastest, slowest = sorted(built, key=lambda c: c.seconds)
        reason = (f"both convert faithfully within rounding ({scores}); {fastest.name} built faster "
                  f"({fastest.seconds:.1f} s vs {slowest.seconds:.1f} s)")
        warnings = [] if _db(other) >= FAITHFUL_DB else [f"converter auto: both converters drift from PyTorch "
                                                         f"alike ({scores}); built with {fastest.name}"]
        return fastest, reason, warnings
    return best, f"{best.name} is more faithful ({scores})", [
        f"converters disagree beyond rounding: {other.name}'s float32 model drifts from PyTorch ({scores}); "
        f"built with {best.name}"]


def _by_shipped(built: list[Candidate], scores: str) -> tuple[Candidate, str, list[str]] | None:
    """Both float32 models are equally faithful: the one whose shipped (quantized) model drifts less, when they
    differ by more than TIE_DB; None when they do not (or nothing is quantized)."""
    if any(c.shipped_sqnr_db is None for c in built):
        return None
    best, other = sorted(built, key=lambda c: -c.shipped_sqnr_db)
    if best.shipped_sqnr_db - other.shipped_sqnr_db <= TIE_DB:
        return None
    shipped = (f"shipped model SQNR vs PyTorch: {best.name} {best.shipped_sqnr_db:.1f} dB, {other.name} "
               f"{other.shipped_sqnr_db:.1f} dB")
    return best, f"both convert faithfully within rounding ({scores}); {best.name}'s shipped model is more " \
                 f"faithful ({shipped})", []


def _db(candidate: Candidate) -> float:
    return float("-inf") if candidate.float_sqnr_db is None else candidate.float_sqnr_db


def _show(candidate: Candidate) -> str:
    return "non-finite" if candidate.float_sqnr_db is None else f"{candidate.float_sqnr_db:.1f} dB"


def _tied(best: Candidate, other: Candidate) -> bool:
    return _db(other) >= FAITHFUL_DB or _db(best) - _db(other) <= TIE_DB


__all__ = ["Candidate", "build_android", "check_converter", "choose", "requested"]
