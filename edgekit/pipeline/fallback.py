"""Accuracy-aware fallback: when INT8 drifts over the threshold, keep the most sensitive layers in float, one
at a time (worst per-layer SQNR first), until the drift passes or the budget of layers is spent."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError
from edgekit.measure.drift import worst_sqnr
from edgekit.routes.device import DeviceModel, model_bytes

if TYPE_CHECKING:
    from edgekit.routes import Route

MAX_FLOAT_LAYERS = 3
LADDER_LAYERS = 8  # the worst layers the ladder tries, at most
FLOAT_STEPS = ("float32", "fp16")  # what --max-float-layers counts
MIN_GAIN_DB = 0.5  # a step that does not make the drift pass is kept only when the output gains this much


def run_fallback(route: Route, target, device: DeviceModel, measured, evaluate: Callable[[DeviceModel], object],
                 bounds: Bounds | None = None, sensitivity: Callable[[list[dict]], dict[str, float]] | None = None,
                 measure: Callable[[DeviceModel], object] | None = None) -> tuple[DeviceModel, object]:
    """Returns the device model to ship and its measurement; every step is recorded in the warnings, and the
    layers moved out of INT8 stay in `layers` with the precision they ship in and why. When the per-layer ladder
    is not possible or not enough, the route's own accuracy control (OpenVINO: NNCF's) has the last word.
    `evaluate` measures drift and per-layer rows; `measure` (default: `evaluate`) the drift alone, for ladder steps."""
    if measured.drift["passed"]:
        return device, measured
    candidate, result = device, measured
    ladder = (device.with_float is not None or device.with_precisions is not None) and bool(measured.layers)
    if ladder:
        candidate, result = _mixed(route, target, device, measured, (measure or evaluate, evaluate),
                                   bounds or Bounds(), sensitivity)
    if result.drift["passed"] or device.own_fallback is None:
        if candidate is device and not ladder:
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


@dataclass(frozen=True)
class Bounds:
    """What a mixed-precision candidate may cost: its size in bytes, its host latency as a ratio of the first
    build's (INT8), and how many layers may be in float."""

    max_size: int | None = None
    max_latency_ratio: float | None = None
    max_float_layers: int = MAX_FLOAT_LAYERS

    def fits(self, size: int, latency_ratio: float | None) -> bool:
        return ((self.max_size is None or size <= self.max_size)
                and (self.max_latency_ratio is None or latency_ratio is None
                     or latency_ratio <= self.max_latency_ratio))


def _ladder(route: Route, target, device: DeviceModel, measured, evaluate: Callable[[DeviceModel], object],
            bounds: Bounds) -> tuple[DeviceModel, object, dict[str, str], list[dict]]:
    """The worst layers, one at a time, up the route's ladder (LiteRT INT8: 16x8, then float; Jetson: FP16): each
    step of a layer is built and measured (drift, size, host latency); the first step within the bounds that makes
    the drift pass is kept, else the most faithful step within them when it gains MIN_GAIN_DB on the worst output
    (a layer whose move does not help stays as it was), and the next layer is tried, until the drift passes.
    Returns the model, its measurement, {tensor: precision} moved and every step tried."""
    chosen: dict[str, str] = {}
    candidate, result, history = device, measured, []
    base_latency = measured.latency_ms.get("host")
    for row in measured.layers[:max(LADDER_LAYERS, bounds.max_float_layers)]:
        best = None
        for step in route.ladder(target):
            if step in FLOAT_STEPS and sum(p in FLOAT_STEPS for p in chosen.values()) >= bounds.max_float_layers:
                continue
            trial, outcome, entry = _step(route, target, device, measured, evaluate, {**chosen, row["tensor"]: step},
                                          (row, step, base_latency, bounds))
            history.append(entry)
            if entry["within_bounds"] and (best is None or _worst_sqnr(outcome) > _worst_sqnr(best[2])):
                best = (step, trial, outcome, entry)
            if entry["within_bounds"] and outcome.drift["passed"]:
                best = (step, trial, outcome, entry)
                break
        if best is None or not (best[2].drift["passed"] or _worst_sqnr(best[2]) >= _worst_sqnr(result) + MIN_GAIN_DB):
            continue  # no step fits, or none measurably helps: the layer stays as it was
        chosen[row["tensor"]], candidate, result = best[0], best[1], best[2]
        best[3]["kept"] = True
        if result.drift["passed"]:
            break
    return candidate, result, chosen, history


def _back_off(route: Route, target, device: DeviceModel, measured, evaluate, bounds: Bounds,
              history: list[dict]) -> tuple | None:
    """When no per-layer climb passes: every layer in the route's back-off precision (LiteRT: INT8 weights, float
    compute; onnxruntime: float), then layers back to the target's own precision, least sensitive first, as long
    as the drift passes and the bounds hold: a run of layers at once, halved when it fails (so the builds grow with
    the layers that must stay, times the log of all of them, not with every layer). None when even the first
    model does not pass within the bounds."""
    rows, base_latency = measured.layers, measured.latency_ms.get("host")
    every = {"module": "(every layer)", "tensor": "*", "sensitivity_db": None}
    for rung in back_off_rungs(route, target):  # the cheapest start that passes
        chosen = {row["tensor"]: rung for row in rows}
        trial, outcome, entry = _step(route, target, device, measured, evaluate, chosen,
                                      (every, rung, base_latency, bounds))
        history.append(entry)
        if trial is not None and entry["within_bounds"] and outcome.drift["passed"]:
            break
    else:
        return None
    entry["kept"], best = True, (trial, outcome)
    default = next(iter(rows), {}).get("precision", "int8")
    ordered = sorted(rows, key=lambda r: -(r.get("sensitivity_db") or 0.0))  # the least sensitive first
    # all of them back is the first build, which failed: start from its halves
    pending = [ordered[:len(ordered) // 2], ordered[len(ordered) // 2:]] if len(ordered) > 1 else [ordered]
    while pending:
        run = pending.pop(0)
        fewer = {t: p for t, p in chosen.items() if t not in {r["tensor"] for r in run}}
        first = run[0]["module"] or run[0]["tensor"]
        label = run[0] if len(run) == 1 else {"module": f"{len(run)} layers from {first}",
                                              "tensor": ",".join(r["tensor"] for r in run), "sensitivity_db": None}
        trial, outcome, entry = _step(route, target, device, measured, evaluate, fewer,
                                      (label, default, base_latency, bounds))
        history.append(entry)
        if trial is not None and entry["within_bounds"] and outcome.drift["passed"]:
            chosen, best, entry["kept"] = fewer, (trial, outcome), True
        elif len(run) > 1:
            pending[:0] = [run[:len(run) // 2], run[len(run) // 2:]]
    return best[0], best[1], chosen


def back_off_rungs(route: Route, target) -> list[str]:
    """Where the back-off may start: the route's own back-off precision (LiteRT: INT8 weights with float compute),
    then the ladder's last step (float) when INT8 weights alone cost too much."""
    own = route.back_off(target)
    steps = route.ladder(target) if own is not None else ()  # routes with a back-off of their own (LiteRT, ORT)
    return [r for r in dict.fromkeys([own, steps[-1] if steps else None]) if r]


def _step(route: Route, target, device: DeviceModel, measured, evaluate, precisions: dict[str, str], about: tuple):
    """One ladder step built and measured: (model, measurement, ladder entry). A step the route cannot build or
    the runtime cannot run (a 16x8 op without a kernel) is recorded with its error and never kept."""
    row, step, base_latency, bounds = about
    try:
        trial = route.set_precisions(device, precisions, measured.layers, target)
        outcome = evaluate(trial)
    except EdgekitError as exc:
        return None, None, {**_entry(row, step, None, None, base_latency, bounds), "error": exc.message}
    return trial, outcome, _entry(row, step, trial, outcome, base_latency, bounds)


def _entry(row: dict, step: str, trial: DeviceModel | None, outcome, base_latency: float | None,
           bounds: Bounds) -> dict:
    entry = {"module": row["module"], "tensor": row["tensor"], "sensitivity_db": row.get("sensitivity_db"),
             "precision": step, "passed": False, "sqnr_db": None, "accuracy_drop": None, "device_bytes": None,
             "host_latency_ms": None, "latency_ratio": None, "within_bounds": False, "kept": False, "error": None}
    if trial is None:
        return entry
    latency = outcome.latency_ms.get("host")
    ratio = latency / base_latency if latency and base_latency else None
    size = model_bytes(trial)
    return {**entry, "passed": outcome.drift["passed"], "sqnr_db": _rounded(_worst_sqnr(outcome)),
            "accuracy_drop": outcome.drift["accuracy_drop"], "device_bytes": size,
            "host_latency_ms": None if latency is None else round(latency, 4),
            "latency_ratio": None if ratio is None else round(ratio, 2), "within_bounds": bounds.fits(size, ratio)}


def _rounded(value: float) -> float | None:
    return round(value, 2) if value != float("-inf") else None


def _worst_sqnr(measured) -> float:
    """The worst output's SQNR vs PyTorch, of its worst part when it joins parts (a detector's scores); -inf when
    an output is not finite (its SQNR is null)."""
    values = [worst_sqnr(o) for o in measured.drift["outputs"]]
    return float("-inf") if any(v is None for v in values) else min(values, default=0.0)


def _mixed(route: Route, target, device: DeviceModel, measured, evaluators: tuple, bounds: Bounds,
           sensitivity=None):
    """The ladder's model, with `layers` saying what each moved layer ships in and why, and the steps tried. The
    layers are tried most sensitive first (`sensitivity`: output SQNR with only that layer quantized), else worst
    local SQNR first."""
    scores = sensitivity(measured.layers) if sensitivity is not None else {}
    ordered = sorted(measured.layers, key=lambda r: (r["tensor"] not in scores, scores.get(r["tensor"], 0.0),
                                                    r["sqnr_db"] if r["sqnr_db"] is not None else 0.0))
    ordered = [{**r, "sensitivity_db": scores.get(r["tensor"])} for r in ordered]
    measure, evaluate = evaluators
    candidate, result, chosen, history = _ladder(route, target, device, replace(measured, layers=ordered), measure,
                                                 bounds)
    backed_off = False
    if not result.drift["passed"] and back_off_rungs(route, target):
        climbed = len(history)
        found = _back_off(route, target, device, replace(measured, layers=ordered), measure, bounds, history)
        if found is not None:  # it replaces what the climb kept
            candidate, result, chosen = found
            backed_off = True
            for entry in history[:climbed]:
                entry["kept"] = False
    if chosen and measure is not evaluate:
        result = evaluate(candidate)  # the shipped model, with its per-layer rows
    if not chosen:
        note = (f"fallback auto: none of the {len(history)} ladder step(s) tried ({', '.join(route.ladder(target))}) "
                "fits the bounds (--max-size, --max-latency-ratio, --max-float-layers) and helps; shipped as first "
                "built")
        return device, replace(measured, ladder=history, warnings=[*measured.warnings, note])
    rows = {row["tensor"]: row for row in ordered}
    moved = [{**rows[t], "precision": p,
              "chosen_because": _backed_off(rows[t], history) if backed_off else _because(rows[t], p, history)}
             for t, p in chosen.items()]
    others = [row for row in result.layers or [] if row["tensor"] not in chosen]
    kept = [rows[t] for t in chosen]
    in_float = [rows[t] for t, p in chosen.items() if p in FLOAT_STEPS]
    if in_float and not candidate.float_modules:  # routes whose rebuild does not name them
        candidate = replace(candidate, float_modules=tuple(_names(in_float)))
    return candidate, replace(result, layers=moved + others, ladder=history, warnings=[
        *result.warnings, _summary(measured, result, kept, chosen, device, candidate, bounds)])


def _because(row: dict, precision: str, history: list[dict]) -> str:
    tried = [e for e in history if e["tensor"] == row["tensor"]]
    steps = "; ".join(_tried(e) for e in tried)
    why = (f"output SQNR {row['sensitivity_db']:.1f} dB with only this layer in INT8" if row.get("sensitivity_db")
           is not None else f"worst local SQNR ({row['sqnr_db']:.1f} dB)")
    return f"mixed precision (fallback auto): drift over the threshold, {why}; tried {steps}; kept {precision}"


def _backed_off(row: dict, history: list[dict]) -> str:
    every = next(e for e in history if e["tensor"] == "*" and e["kept"])
    back = next((e for e in history if row["tensor"] in e["tensor"].split(",") and e is not every and
                 e["precision"] == row.get("precision", "int8")), None)
    return ("mixed precision (fallback auto, back-off): no single layer's climb passed; every layer went to "
            f"{every['precision']} ({_tried(every)}), and this one stays there"
            + (f": back to INT8 activations it gave {_tried(back)}" if back else ""))


def _tried(entry: dict) -> str:
    if entry["error"]:
        return f"{entry['precision']}: could not be built or run ({entry['error']})"
    sqnr = "non-finite output" if entry["sqnr_db"] is None else f"{entry['sqnr_db']:.1f} dB"
    ratio = "n/a" if entry["latency_ratio"] is None else entry["latency_ratio"]
    return (f"{entry['precision']}: {sqnr}, {entry['device_bytes']:,} bytes, latency x{ratio}"
            f"{'' if entry['within_bounds'] else ' (over the bounds)'}")


def _ladder_notes(result) -> list[str]:
    return [w for w in result.warnings if w.startswith("fallback auto kept")]


def _names(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["module"] or r["tensor"] for r in rows))


def _summary(before, after, kept: list[dict], chosen: dict[str, str], device: DeviceModel, candidate: DeviceModel,
             bounds: Bounds) -> str:
    drop = f"{_pts(before.drift['accuracy_drop'])} -> {_pts(after.drift['accuracy_drop'])} points"
    agreement = f"agreement {_frac(before.drift['top1_agreement'])} -> {_frac(after.drift['top1_agreement'])}"
    agreement += "".join(f", {name} {key} {_frac(old[key])} -> {_frac(new[key])}"
                         for name, old, new in _detections(before, after) for key in ("recall", "precision"))
    size_before, size_after = model_bytes(device), model_bytes(candidate)
    latency = f"host latency {_ms(before.latency_ms.get('host'))} -> {_ms(after.latency_ms.get('host'))}"
    verdict = "passes" if after.drift["passed"] else "still over the threshold within the ladder's bounds"
    moves = ", ".join(f"{row['module'] or row['tensor']} -> {chosen[row['tensor']]}" for row in kept)
    floats = f", computing {', '.join(candidate.float_modules)} in float" if candidate.float_modules else ""
    return (f"fallback auto kept {len(kept)} activation(s) out of INT8 ({moves}){floats}: accuracy drop {drop}, "
            f"{agreement}, size {size_before:,} -> {size_after:,} bytes, {latency}; {verdict}")


def _detections(before, after) -> list[tuple[str, dict, dict]]:
    new = {o["name"]: o.get("detection") for o in after.drift["outputs"]}
    return [(o["name"], o["detection"], new[o["name"]]) for o in before.drift["outputs"]
            if o.get("detection") and new.get(o["name"])]


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _frac(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"
