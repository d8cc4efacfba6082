"""Accuracy-aware fallback: when INT8 drifts over the threshold, move the most sensitive groups of activations (what
one INT8 scale covers) up the route's precision ladder, one group at a time, until the drift passes or the bounds
are spent; when no climb passes, the back-off starts from every layer out of INT8 and gives groups back."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from edgekit.errors import EdgekitError
from edgekit.measure.drift import worst_sqnr
from edgekit.measure.groups import group_names, scale_groups
from edgekit.routes.device import DeviceModel, model_bytes

if TYPE_CHECKING:
    from edgekit.routes import Route

MAX_FLOAT_LAYERS = 3
LADDER_LAYERS = 8  # the worst groups the ladder tries, at most
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
            bounds: Bounds, groups: list[dict]) -> tuple[DeviceModel, object, dict[str, str], list[dict]]:
    """The worst groups (the activations one INT8 grid covers, edgekit/measure/groups.py), one at a time, up the
    route's ladder (LiteRT INT8: 16x8, then float; Jetson: FP16): each step of a group is built and measured
    (drift, size, host latency); the first step within the bounds that makes the drift pass is kept, else the most
    faithful step within them when it gains MIN_GAIN_DB on the worst output (a group whose move does not help stays
    as it was), and the next group is tried, until the drift passes. Returns the model, its measurement,
    {tensor: precision} moved and every step tried."""
    chosen: dict[str, str] = {}
    floats = 0  # groups in float, what --max-float-layers counts
    candidate, result, history = device, measured, []
    base_latency = measured.latency_ms.get("host")
    for group in groups[:max(LADDER_LAYERS, bounds.max_float_layers)]:
        best = None
        for step in route.ladder(target):
            if step in FLOAT_STEPS and floats >= bounds.max_float_layers:
                continue
            moved = {**chosen, **{t: step for t in group["tensors"]}}
            trial, outcome, entry = _step(route, target, device, measured, evaluate, moved,
                                          (group, step, base_latency, bounds))
            history.append(entry)
            if entry["within_bounds"] and (best is None or _worst_sqnr(outcome) > _worst_sqnr(best[2])):
                best = (step, trial, outcome, entry)
            if entry["within_bounds"] and outcome.drift["passed"]:
                best = (step, trial, outcome, entry)
                break
        if best is None or not (best[2].drift["passed"] or _worst_sqnr(best[2]) >= _worst_sqnr(result) + MIN_GAIN_DB):
            continue  # no step fits, or none measurably helps: the group stays as it was
        chosen.update({t: best[0] for t in group["tensors"]})
        floats += best[0] in FLOAT_STEPS
        candidate, result = best[1], best[2]
        best[3]["kept"] = True
        if result.drift["passed"]:
            break
    return candidate, result, chosen, history


def _back_off(route: Route, target, device: DeviceModel, measured, evaluate, bounds: Bounds,
              history: list[dict], groups: list[dict]) -> tuple | None:
    """When no per-layer climb passes: every layer in the route's back-off precision (LiteRT: INT8 weights, float
    compute; onnxruntime: float), then groups back to the target's own precision, least sensitive first, as long
    as the drift passes and the bounds hold: a run of groups at once, halved when it fails (so the builds grow with
    the groups that must stay, times the log of all of them, not with every group). None when even the first
    model does not pass within the bounds. --max-float-layers bounds the climb, not the back-off (its cost is
    measured as size and latency), except that 0 refuses a float start."""
    rows, base_latency = measured.layers, measured.latency_ms.get("host")
    every = {"module": "(every layer)", "tensor": "*", "sensitivity_db": None, "group": None}
    rungs = [r for r in back_off_rungs(route, target) if r not in FLOAT_STEPS or bounds.max_float_layers > 0]
    for rung in rungs:  # the cheapest start that passes
        chosen = {row["tensor"]: rung for row in rows}
        trial, outcome, entry = _step(route, target, device, measured, evaluate, chosen,
                                      (every, rung, base_latency, bounds))
        history.append(entry)
        if trial is not None and entry["within_bounds"] and outcome.drift["passed"]:
            break
    else:
        return None
    entry["kept"], best = True, (trial, outcome)
    default = _default_precision(rows)
    ordered = sorted(groups, key=lambda g: -(g.get("sensitivity_db") or 0.0))  # the least sensitive first
    # all of them back is the first build, which failed: start from its halves
    pending = [ordered[:len(ordered) // 2], ordered[len(ordered) // 2:]] if len(ordered) > 1 else [ordered]
    while pending:
        run = pending.pop(0)
        fewer = {t: p for t, p in chosen.items() if t not in {t for g in run for t in g["tensors"]}}
        label = run[0] if len(run) == 1 else {
            "module": f"{len(run)} groups from {run[0]['module']}", "tensor": ",".join(g["tensor"] for g in run),
            "sensitivity_db": None, "group": [name for g in run for name in g["group"]]}
        trial, outcome, entry = _step(route, target, device, measured, evaluate, fewer,
                                      (label, default, base_latency, bounds))
        history.append(entry)
        if trial is not None and entry["within_bounds"] and outcome.drift["passed"]:
            chosen, best, entry["kept"] = fewer, (trial, outcome), True
        elif len(run) > 1:
            pending[:0] = [run[:len(run) // 2], run[len(run) // 2:]]
    return best[0], best[1], chosen


def back_off_rungs(route: Route, target) -> list[str]:
    """Where the back-off may start: the route's back-off precision (LiteRT: INT8 weights with float compute; the
    others: float, or FP16 on Jetson), then the ladder's last step (float) when INT8 weights alone cost too much."""
    own = route.back_off(target)
    steps = route.ladder(target) if own is not None else ()
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
    """A ladder entry; `row` a group (module, tensor, group: the modules moved together) or a run of them."""
    entry = {"module": row["module"], "tensor": row["tensor"], "group": row.get("group"),
             "sensitivity_db": row.get("sensitivity_db"),
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
    rows move in groups (edgekit/measure/groups.py: what one INT8 grid of the built model covers), tried most
    sensitive first (`sensitivity`: output SQNR with only that group quantized), else worst local SQNR first."""
    found_groups = scale_groups(measured.layers, device.layer_links() if device.layer_links else [])
    scores = sensitivity(found_groups) if sensitivity is not None else {}
    groups = sorted((_group(g, scores.get(g[0]["tensor"])) for g in found_groups),
                    key=lambda g: (g["sensitivity_db"] is None, g["sensitivity_db"] or 0.0, g["sqnr_db"]))
    sensitivities = {t: g["sensitivity_db"] for g in groups for t in g["tensors"]}
    ordered = [{**r, "sensitivity_db": sensitivities.get(r["tensor"])} for g in groups for r in g["rows"]]
    measure, evaluate = evaluators
    candidate, result, chosen, history = _ladder(route, target, device, replace(measured, layers=ordered), measure,
                                                 bounds, groups)
    backed_off = False
    if not result.drift["passed"] and back_off_rungs(route, target):
        climbed = len(history)
        found = _back_off(route, target, device, replace(measured, layers=ordered), measure, bounds, history,
                          groups)
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
    default = _default_precision(measured.layers)
    others = [row if row.get("precision", default) == default else {
        **row, "chosen_because": f"{row['precision']} along with the layers the fallback moved: it reads one of them "
                                 "(the quantizer requantizes at the group's edges)"}
              for row in result.layers or [] if row["tensor"] not in chosen]
    kept = [rows[t] for t in chosen]
    in_float = [rows[t] for t, p in chosen.items() if p in FLOAT_STEPS]
    if in_float and not candidate.float_modules:  # routes whose rebuild does not name them
        candidate = replace(candidate, float_modules=tuple(group_names(in_float)))
    start = route.back_off(target)
    cannot = [f"fallback auto (back-off): route {route.name} has no form with INT8 weights and float compute, so the "
              f"back-off started from every layer in {start}; the layers left there keep {start} weights"
              ] if backed_off and start in FLOAT_STEPS else []
    return candidate, replace(result, layers=moved + others, ladder=history, warnings=[
        *result.warnings, _summary(measured, result, kept, chosen, (device, candidate), groups), *cannot])


def _group(rows: list[dict], score: float | None) -> dict:
    """A ladder group: its rows, tensors, the modules it names, its sensitivity and worst local SQNR."""
    local = [r["sqnr_db"] for r in rows if r.get("sqnr_db") is not None]
    return {"rows": rows, "tensors": [r["tensor"] for r in rows], "module": rows[0]["module"] or rows[0]["tensor"],
            "tensor": ",".join(r["tensor"] for r in rows), "group": group_names(rows), "sensitivity_db": score,
            "sqnr_db": min(local, default=0.0)}


def _because(row: dict, precision: str, history: list[dict]) -> str:
    tried = [e for e in history if row["tensor"] in e["tensor"].split(",")]
    steps = "; ".join(_tried(e) for e in tried)
    shared = [name for name in (tried[0]["group"] or []) if name != (row["module"] or row["tensor"])] if tried else []
    what = "this layer" if not shared else f"this layer and {', '.join(shared)} (one INT8 scale)"
    why = (f"output SQNR {row['sensitivity_db']:.1f} dB with only {what} in INT8" if row.get("sensitivity_db")
           is not None else f"worst local SQNR ({row['sqnr_db']:.1f} dB)")
    return f"mixed precision (fallback auto): drift over the threshold, {why}; tried {steps}; kept {precision}"


def _backed_off(row: dict, history: list[dict]) -> str:
    every = next(e for e in history if e["tensor"] == "*" and e["kept"])
    back = next((e for e in history if row["tensor"] in e["tensor"].split(",") and e is not every and
                 e["precision"] == row.get("precision", "int8")), None)
    return ("mixed precision (fallback auto, back-off): no group's climb passed; every layer went to "
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


def _default_precision(rows: list[dict]) -> str:
    """What the build's layers ship in unless the fallback moved them (the first build's rows say it)."""
    return next(iter(rows), {}).get("precision", "int8")


def _summary(before, after, kept: list[dict], chosen: dict[str, str], models: tuple[DeviceModel, DeviceModel],
             groups: list[dict]) -> str:
    device, candidate = models
    drift = [f"worst output SQNR {_db(_worst_sqnr(before))} -> {_db(_worst_sqnr(after))}"]
    if before.drift["top1_agreement"] is not None:  # class scores: what the app reads
        drift = [f"accuracy drop {_pts(before.drift['accuracy_drop'])} -> {_pts(after.drift['accuracy_drop'])} "
                 f"points", f"agreement {_frac(before.drift['top1_agreement'])} -> "
                            f"{_frac(after.drift['top1_agreement'])}"]
    drift += [f"{name} {key} {_frac(old[key])} -> {_frac(new[key])}"
              for name, old, new in _detections(before, after) for key in ("recall", "precision")]
    size_before, size_after = model_bytes(device), model_bytes(candidate)
    latency = f"host latency {_ms(before.latency_ms.get('host'))} -> {_ms(after.latency_ms.get('host'))}"
    verdict = "passes" if after.drift["passed"] else "still over the threshold within the ladder's bounds"
    moved = [[row for row in group["rows"] if row["tensor"] in chosen] for group in groups]
    moves = ", ".join(f"{' + '.join(group_names(rows))} -> {chosen[rows[0]['tensor']]}" for rows in moved if rows)
    floats = f", computing {', '.join(candidate.float_modules)} in float" if candidate.float_modules else ""
    return (f"fallback auto kept {len(kept)} activation(s) out of INT8 ({moves}){floats}: {', '.join(drift)}, "
            f"size {size_before:,} -> {size_after:,} bytes, {latency}; {verdict}")


def _detections(before, after) -> list[tuple[str, dict, dict]]:
    new = {o["name"]: o.get("detection") for o in after.drift["outputs"]}
    return [(o["name"], o["detection"], new[o["name"]]) for o in before.drift["outputs"]
            if o.get("detection") and new.get(o["name"])]


def _pts(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def _frac(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _db(value: float) -> str:
    return "non-finite" if value == float("-inf") else f"{value:.1f} dB"


def _ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} ms"
