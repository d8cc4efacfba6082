"""Accuracy-aware fallback: when INT8 drifts over the threshold, keep the most sensitive layers in float, one
at a time (worst per-layer SQNR first), until the drift passes or the budget of layers is spent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from edgekit.device import DeviceModel, model_bytes

if TYPE_CHECKING:
    from edgekit.routes import Route

MAX_FLOAT_LAYERS = 3


def run_fallback(route: Route, device: DeviceModel, measured, evaluate: Callable[[DeviceModel], object],
                 budget: int = MAX_FLOAT_LAYERS) -> tuple[DeviceModel, object]:
    """Returns the device model to ship and its measurement; every step is recorded in the warnings, and the
    layers moved out of INT8 stay in `layers` with the precision they ship in and why. When the per-layer ladder
    is not possible or not enough, the route's own accuracy control (OpenVINO: NNCF's) has the last word."""
    if measured.drift["passed"]:
        return device, measured
    candidate, result = device, measured
    if device.with_float is not None and measured.layers:
        candidate, result = _ladder(route, device, measured, evaluate, budget)
    if result.drift["passed"] or device.own_fallback is None:
        if candidate is device:
            note = "fallback auto: this route cannot keep layers in float; the INT8 model is shipped as measured"
            return device, replace(measured, warnings=[*measured.warnings, note])
        return candidate, result
    own = device.own_fallback()
    after = evaluate(own)
    note = (f"fallback auto (the route's own accuracy control) kept {', '.join(own.float_modules) or 'no'} "
            f"op(s) out of INT8: accuracy drop {_pts(measured.drift['accuracy_drop'])} -> "
            f"{_pts(after.drift['accuracy_drop'])} points, agreement {_frac(measured.drift['top1_agreement'])} "
            f"-> {_frac(after.drift['top1_agreement'])}; {'passes' if after.drift['passed'] else 'still fails'}")
    if not after.drift["passed"] and candidate is not device:  # neither passes: ship the per-layer one, say both
        return candidate, replace(result, warnings=[*result.warnings, note])
    return own, replace(after, warnings=[*after.warnings, *_ladder_notes(result), note])


def _ladder(route: Route, device: DeviceModel, measured, evaluate: Callable[[DeviceModel], object],
            budget: int) -> tuple[DeviceModel, object]:
    """The worst layers to the route's fallback precision, one more at a time, until the drift passes."""
    kept: list[dict] = []
    candidate, result = device, measured
    step = route.fallback_precision
    for row in measured.layers[:budget]:
        kept.append(row)
        candidate = route.set_precisions(device, {r["tensor"]: step for r in kept}, measured.layers)
        if not candidate.float_modules:
            candidate = replace(candidate, float_modules=tuple(_names(kept)))
        result = evaluate(candidate)
        if result.drift["passed"]:
            break
    moved = [{**row, "precision": step, "chosen_because": f"fallback auto: drift over the threshold in INT8, "
              f"worst local SQNR ({row['sqnr_db']:.1f} dB)"} for row in kept]
    others = [row for row in result.layers or [] if row["tensor"] not in {r["tensor"] for r in kept}]
    return candidate, replace(result, layers=moved + others,
                              warnings=[*result.warnings, _summary(measured, result, kept, device, candidate, budget)])


def _ladder_notes(result) -> list[str]:
    return [w for w in result.warnings if w.startswith("fallback auto kept")]


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["module"] or r["tensor"] for r in rows))


def _summary(before, after, kept: list[dict], device: DeviceModel, candidate: DeviceModel, budget: int) -> str:
    drop = f"{_pts(before.drift['accuracy_drop'])} -> {_pts(after.drift['accuracy_drop'])} points"
    agreement = f"agreement {_frac(before.drift['top1_agreement'])} -> {_frac(after.drift['top1_agreement'])}"
    size_before, size_after = model_bytes(device), model_bytes(candidate)
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
