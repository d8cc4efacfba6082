"""Drift metrics between a reference and a device run: accuracy, top-1 agreement, SQNR, cosine, abs errors."""

from __future__ import annotations

import numpy as np

from edgekit.config.options import Gate
from edgekit.errors import DataError
from edgekit.inputs.data import Boxes
from edgekit.measure import parts as joined
from edgekit.measure.detect import Detector, detection_block
from edgekit.measure.detect import parts as layout_parts

SQNR_CAP_DB = 200.0  # identical outputs; JSON has no infinity


def thresholds_block(gate: Gate) -> dict:
    """report.json drift.thresholds: the gate as it was applied (min_sqnr resolved to the target's when unset)."""
    return {"max_drop": gate.max_drop, "min_agreement": gate.min_agreement, "min_sqnr_db": gate.min_sqnr,
            "min_recall": gate.min_recall, "min_precision": gate.min_precision}


def sqnr_db(reference: np.ndarray, device: np.ndarray) -> float:
    reference = reference.astype(np.float64)
    return power_db(float(np.sum(reference**2)), float(np.sum((reference - device) ** 2)))


def power_db(signal: float, noise: float) -> float:
    """10 log10(signal / noise), clipped to ±SQNR_CAP_DB (the cap where either power is 0)."""
    if noise == 0.0:
        return SQNR_CAP_DB
    if signal == 0.0:
        return -SQNR_CAP_DB
    return float(np.clip(10.0 * np.log10(signal / noise), -SQNR_CAP_DB, SQNR_CAP_DB))


def cosine(reference: np.ndarray, device: np.ndarray) -> float:
    a, b = reference.astype(np.float64).ravel(), device.astype(np.float64).ravel()
    norms = float(np.linalg.norm(a) * np.linalg.norm(b))
    if norms == 0.0:
        return 1.0 if np.array_equal(a, b) else 0.0
    return float(np.dot(a, b) / norms)


def output_metrics(reference: dict[str, np.ndarray], device: dict[str, np.ndarray]) -> list[dict]:
    """Per output: SQNR (dB), cosine, max and mean absolute error; device values must be finite."""
    rows = []
    for name, ref in reference.items():
        dev = device[name]
        if dev.shape != ref.shape:
            raise DataError(f"output {name}: device shape {dev.shape} differs from reference {ref.shape}",
                            hint="report this model to edgekit")
        finite = bool(np.all(np.isfinite(dev)))
        err = np.abs(ref.astype(np.float64) - np.nan_to_num(dev))
        rows.append({"name": name, "sqnr_db": round(sqnr_db(ref, np.nan_to_num(dev)), 4) if finite else None,
                     "cosine": round(cosine(ref, np.nan_to_num(dev)), 8) if finite else None,
                     "max_abs_err": float(err.max()) if finite else None,
                     "mean_abs_err": float(err.mean()) if finite else None})
    return rows


def class_output(shapes: dict[str, tuple[int | None, ...]], label_dims: tuple[int, ...] = ()) -> str | None:
    """The first output that holds class scores: shape (batch, classes) with more than one class, or, for
    per-pixel labels of shape (N, *label_dims), (batch, classes, *label_dims)."""
    for name, shape in shapes.items():
        if is_scores(shape, label_dims):
            return name
    return None


def is_scores(shape: tuple, label_dims: tuple[int, ...] = ()) -> bool:
    """Class scores on axis 1: (batch, classes), or (batch, classes, *label_dims) for per-pixel labels."""
    return len(shape) == 2 + len(label_dims) and (shape[1] or 0) >= 2 and tuple(shape[2:]) == tuple(label_dims)


def drift_block(reference: dict[str, np.ndarray], device: dict[str, np.ndarray], labels: np.ndarray | None,
                tasks: dict[str, str] | str | None, gate: Gate, ignore_index: int | None = None,
                detectors: tuple[Detector, ...] = (), truth: Boxes | None = None) -> dict:
    """The report's `drift` block; zero samples never pass. `tasks`: {output: classify | regress | embed | detect}
    (edgekit/measure/tasks.py; a single name means that output classifies and the others regress). Classify outputs are
    gated by top-1 agreement (the lowest over them) and, with labels, the accuracy drop of the first one; the others
    by SQNR, of their worst part when they join parts (edgekit/measure/parts.py); embed outputs also by
    nearest-neighbour agreement, detect outputs by recall and precision against the float model's detections.
    Samples (or, with per-pixel labels, pixels) labelled `ignore_index` count for agreement and output errors, not
    for accuracy."""
    tasks = as_tasks(tasks, list(reference))
    samples = len(next(iter(reference.values()))) if reference else 0
    outputs = [{**row, **_task_metrics(tasks[row["name"]], reference, device, row["name"], detectors, truth)}
               for row in output_metrics(reference, device)] if samples else []
    ref_acc = dev_acc = drop = agreement = None
    classify = [name for name in reference if tasks[name] == "classify"]
    if samples and classify:
        agreement = min(float(np.mean(reference[n].argmax(1) == device[n].argmax(1))) for n in classify)
        scores = classify[0]
        ref_top, dev_top = reference[scores].argmax(1), device[scores].argmax(1)
        keep = labels != ignore_index if labels is not None and ignore_index is not None else slice(None)
        if labels is not None and ref_top.shape == labels.shape and np.size(labels[keep]):  # per sample or pixel
            ref_acc = float(np.mean(ref_top[keep] == labels[keep]))
            dev_acc = float(np.mean(dev_top[keep] == labels[keep]))
            drop = round((ref_acc - dev_acc) * 100.0, 6)
    passed = _passed(samples, outputs, drop, agreement, gate)
    return {"samples": samples, "reference_accuracy": ref_acc, "device_accuracy": dev_acc, "accuracy_drop": drop,
            "top1_agreement": agreement, "outputs": outputs, "thresholds": thresholds_block(gate), "passed": passed}


def as_tasks(tasks: dict[str, str] | str | None, names: list[str]) -> dict[str, str]:
    """A task per output; a single output name (older manifests' `class_output`) classifies, the rest regress."""
    if isinstance(tasks, dict):
        return {name: tasks.get(name, "regress") for name in names}
    return {name: "classify" if name == tasks else "regress" for name in names}


def _task_metrics(task: str, reference: dict[str, np.ndarray], device: dict[str, np.ndarray], name: str,
                  detectors: tuple[Detector, ...], truth: Boxes | None) -> dict:
    """The output's task; its parts' SQNR when it joins parts; per-sample cosine and nearest-neighbour agreement
    for embeddings; detections for detectors."""
    ref, dev = reference[name], device[name]
    row: dict = {"task": task, "parts": None, "cosine_min": None, "cosine_mean": None, "neighbour_agreement": None,
                 "detection": None}
    if not np.all(np.isfinite(dev)):
        return row
    detector = next((d for d in detectors if d.outputs[0] == name and all(o in device for o in d.outputs)),
                    None) if task == "detect" else None
    row["parts"] = _parts(ref, dev, detector)
    if task == "embed":
        per_sample = [cosine(r, d) for r, d in zip(ref, dev)]
        row.update({"cosine_min": round(float(np.min(per_sample)), 8),
                    "cosine_mean": round(float(np.mean(per_sample)), 8),
                    "neighbour_agreement": joined.neighbour_agreement(ref, dev)})
    if detector is not None and all(np.all(np.isfinite(device[o])) for o in detector.outputs):
        row["detection"] = detection_block([reference[o] for o in detector.outputs],
                                           [device[o] for o in detector.outputs], detector, truth)
    return row


def _parts(reference: np.ndarray, device: np.ndarray, detector: Detector | None) -> list[dict] | None:
    """One SQNR per part of a joined output (the layout's parts for a detector, else parts by range)."""
    found = layout_parts(detector.layout, reference.shape) if detector is not None else None
    found = found or joined.split_by_range(reference)
    if not found:
        return None
    rows = []
    for part in found:
        ref, dev = joined.take(reference, part), joined.take(device, part)
        rows.append({"name": part[0], "axis": part[1], "start": part[2], "stop": part[3],
                     "sqnr_db": round(sqnr_db(ref, dev), 4), "cosine": round(cosine(ref, dev), 8)})
    return rows


def worst_sqnr(row: dict) -> float | None:
    """The output's SQNR as gated: its worst part's when it joins parts."""
    if row["sqnr_db"] is None:
        return None
    return min([row["sqnr_db"], *(p["sqnr_db"] for p in row.get("parts") or [])])


def _passed(samples: int, outputs: list[dict], drop: float | None, agreement: float | None,
            gate: Gate) -> bool:
    if samples == 0 or any(o["sqnr_db"] is None for o in outputs):
        return False
    if drop is not None and drop > gate.max_drop:
        return False
    if agreement is not None and agreement < gate.min_agreement:
        return False
    return not any(_output_failures(o, gate.min_sqnr, gate.min_agreement, gate.min_recall, gate.min_precision)
                   for o in outputs)


def _output_failures(row: dict, min_sqnr: float, min_agreement: float, min_recall: float | None,
                     min_precision: float | None) -> list[str]:
    """What fails in one output beyond class agreement, as sentences."""
    name, task = row["name"], row.get("task", "regress")
    if row["sqnr_db"] is None:
        return [f"output {name} has NaN/inf values on the device"]
    if task == "classify":
        return []
    reasons = []
    parts = row.get("parts") or []
    worst = min(parts, key=lambda p: p["sqnr_db"]) if parts else None
    if worst is not None and worst["sqnr_db"] < min_sqnr:
        others = ", ".join(f"{p['name']} {p['sqnr_db']:.1f} dB" for p in parts if p is not worst)
        reasons.append(f"output {name} part {worst['name']} SQNR {worst['sqnr_db']:.1f} dB < min {min_sqnr} dB "
                       f"(whole tensor {row['sqnr_db']:.1f} dB; {others})")
    elif worst is None and row["sqnr_db"] < min_sqnr:
        reasons.append(f"output {name} SQNR {row['sqnr_db']:.1f} dB < min {min_sqnr} dB")
    nearest = row.get("neighbour_agreement")
    if task == "embed" and nearest is not None and nearest < min_agreement:
        reasons.append(f"output {name}: nearest-neighbour agreement {nearest:.4f} < min {min_agreement}")
    detection = row.get("detection")
    if detection is not None:
        path = f" (score path: {worst['name']} at {worst['sqnr_db']:.1f} dB)" if worst is not None else ""
        if min_recall is not None and detection["recall"] < min_recall:
            reasons.append(f"output {name}: detection recall vs float {detection['recall']:.3f} < min {min_recall} "
                           f"({detection['matched']} of {detection['float_detections']} float detections found)"
                           f"{path}")
        if min_precision is not None and detection["precision"] < min_precision:
            reasons.append(f"output {name}: detection precision vs float {detection['precision']:.3f} < min "
                           f"{min_precision} ({detection['device_detections'] - detection['matched']} of "
                           f"{detection['device_detections']} device detections not in the float model's){path}")
    return reasons


def failure_reasons(drift: dict) -> list[str]:
    """Plain sentences for what failed, for the console and the DriftError message."""
    t, reasons = drift["thresholds"], []
    if drift["samples"] == 0:
        reasons.append("no samples were compared")
    if drift["accuracy_drop"] is not None and drift["accuracy_drop"] > t["max_drop"]:
        reasons.append(f"accuracy drop {drift['accuracy_drop']:.2f} points > max {t['max_drop']}")
    if drift["top1_agreement"] is not None and drift["top1_agreement"] < t["min_agreement"]:
        reasons.append(f"top-1 agreement {drift['top1_agreement']:.4f} < min {t['min_agreement']}")
    for row in drift["outputs"]:
        row = {"task": "regress" if drift["top1_agreement"] is None else "classify", **row}
        reasons.extend(_output_failures(row, t["min_sqnr_db"], t["min_agreement"], t.get("min_recall"),
                                        t.get("min_precision")))
    return reasons
