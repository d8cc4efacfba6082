"""Accuracy-aware fallback: when INT8 drifts over the threshold, keep the most sensitive layers in float, one
at a time (worst per-layer SQNR first), until the drift passes or the budget of layers is spent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from edgekit.device import DeviceModel

MAX_FLOAT_LAYERS = 3


def run_fallback(device: DeviceModel, measured, evaluate: Callable[[DeviceModel], object],
                 budget: int = MAX_FLOAT_LAYERS) -> tuple[DeviceModel, object]:
    """Returns the device model to ship and its measurement; every step is recorded in the warnings."""
    if measured.drift["passed"]:
        return device, measured
    if (device.with_float is None or not measured.layers) and device.own_fallback is not None:
        candidate = device.own_fallback()
        result = evaluate(candidate)
        note = (f"fallback auto (the route's own accuracy control) kept {', '.join(candidate.float_modules) or 'no'} "
                f"op(s) out of INT8: accuracy drop {_pts(measured.drift['accuracy_drop'])} -> "
                f"{_pts(result.drift['accuracy_drop'])} points, agreement {_frac(measured.drift['top1_agreement'])} "
                f"-> {_frac(result.drift['top1_agreement'])}; {'passes' if result.drift['passed'] else 'still fails'}")
        return candidate, replace(result, warnings=[*result.warnings, note])
    if device.with_float is None or not measured.layers:
        note = "fallback auto: this route cannot keep layers in float; the INT8 model is shipped as measured"
        return device, replace(measured, warnings=[*measured.warnings, note])
    kept: list[dict] = []
    candidate, result = device, measured
    for row in measured.layers[:budget]:
        kept.append(row)
        candidate = device.with_float(list(kept))
        if not candidate.float_modules:
            candidate = replace(candidate, float_modules=tuple(_names(kept)))
        result = evaluate(candidate)
        if result.drift["passed"]:
            break
    return candidate, replace(result, warnings=[*result.warnings, _summary(measured, result, kept, device,
                                                                            candidate, budget)])


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["module"] or r["tensor"] for r in rows))


def _summary(before, after, kept: list[dict], device: DeviceModel, candidate: DeviceModel, budget: int) -> str:
    drop = f"{_pts(before.drift['accuracy_drop'])} -> {_pts(after.drift['accuracy_drop'])} points"
    agreement = f"agreement {_frac(before.drift['top1_agreement'])} -> {_frac(after.drift['top1_agreement'])}"
    size_before, size_after = device.path.stat().st_size, candidate.path.stat().st_size
    latency = f"host latency {_ms(before.latency_ms.get('host'))} -> {_ms(after.latency_ms.get('host'))}"
    verdict = "passes" if after.drift["passed"] else f"still over the threshold after the budget of {budget} layers"
    return (f"fallback auto kept {len(kept)} activation(s) out of INT8 ({', '.join(_names(kept))}), computing "
            f"{', '.join(candidate.float_modules)} in float: accuracy drop {drop}, "
            f"{agreement}, size {size_before:,} -> {size_after:,} bytes, {latency}; {verdict}")


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _frac(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"
