"""Compression's framework-free core: the scoped prune and cluster steps over layers (a torch module, or ONNX
initializers held as one), the report's `compression` block, and the check that the converted device model still
has the zeros and the k values (`preservation`); torch.py and onnx.py are its two backends."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edgekit.config.options import Cluster, Prune
from edgekit.transform.compress.cluster import Clustering, cluster_weights, max_distinct
from edgekit.transform.compress.prune import prune_structured, prune_unstructured, zero_fraction
from edgekit.transform.compress.scope import Layer, Scope, StepReport

SPARSITY_TOLERANCE = 0.01


def prune_layers(student: Any, prune: Prune, layers: list[Layer], example: Any) -> StepReport:
    decisions, unmatched = Scope.of("prune", prune, prune.fraction).resolve(layers)
    if prune.mode == "unstructured":
        report = prune_unstructured(student, decisions, prune.scope)
    else:
        report = prune_structured(student, decisions, example, prune.scope)
    report.unmatched_rules = unmatched
    return report


def cluster_layers(student: Any, cluster: Cluster, layers: list[Layer]) -> tuple[StepReport, dict[str, Clustering]]:
    decisions, unmatched = Scope.of("cluster", cluster, cluster.clusters).resolve(layers)
    report, tied = cluster_weights(student, decisions, cluster.codebook)
    report.unmatched_rules = unmatched
    return report, tied


def layer_channels(module: Any, name: str) -> tuple[int, int]:
    shape = module.get_submodule(name).weight.shape
    return int(shape[0]), int(shape[1])


def as_dict(config: Any) -> dict | None:
    return None if config is None else dataclasses.asdict(config)


def compression_block(student: Any, layers: list[Layer], channels: dict, reports: dict[str, StepReport],
                      structured: bool, not_compressible: dict[str, str], before: tuple[int, int],
                      after: tuple[int, int]) -> dict:
    rows = [_row(student, layer, channels[layer.name], reports, structured) for layer in layers]
    skipped = {name: "; ".join(f"{step}: {r.skipped[name]}" for step, r in reports.items() if name in r.skipped)
               for name in (layer.name for layer in layers) if any(name in r.skipped for r in reports.values())}
    return {"sparsity": None if structured else _sparsity(student, reports),
            "params_before": before[1], "params_after": after[1], "flops_before": before[0], "flops_after": after[0],
            "nonzero_params_after": int(sum(int((p.detach() != 0).sum()) for p in student.parameters())),
            "per_layer": rows, "skipped": {**skipped, **not_compressible},
            "unmatched_rules": [u for r in reports.values() for u in r.unmatched_rules]}


def _sparsity(student: Any, reports: dict[str, StepReport]) -> float | None:
    """Fraction of exact zeros over all the weights of the pruned layers; None when no layer was pruned."""
    pruned = [student.get_submodule(name).weight.detach() for name in reports.get("prune", StepReport()).applied]
    total = sum(w.numel() for w in pruned)
    return float(sum(int((w == 0).sum()) for w in pruned)) / total if total else None


def _row(student: Any, layer: Layer, channels: tuple[int, int], reports: dict[str, StepReport],
         structured: bool) -> dict:
    weight = student.get_submodule(layer.name).weight.detach().cpu().numpy()
    pruned = reports["prune"].applied.get(layer.name, {}) if "prune" in reports else {}
    clustered = reports["cluster"].applied.get(layer.name, {}) if "cluster" in reports else {}
    reasons = [f"{step}: {r.skipped[layer.name]}" for step, r in reports.items() if layer.name in r.skipped]
    row = {"module": layer.name, "type": layer.types[0], "requested_sparsity": pruned.get("requested_sparsity"),
           "measured_sparsity": zero_fraction(weight), "clusters": clustered.get("clusters"),
           "max_distinct": max_distinct(weight), "skipped": None if pruned or clustered else "; ".join(reasons)}
    if structured:
        row.update(requested_channel_fraction=pruned.get("requested_channel_fraction"),
                   out_channels=[channels[0], int(weight.shape[0])], in_channels=[channels[1], int(weight.shape[1])])
    return row


# --- preservation: does the converted device model still have the zeros and the k values? -------------------


def preservation(compression: dict, device: list[tuple[str, np.ndarray]], weights: Any) -> tuple[list[dict], list[str]]:
    """Per-layer rows of `compression` with `device_tensor`, `device_sparsity` and `device_max_distinct` added
    (measured in the .tflite), and a warning for every compressed layer whose zeros or k values did not survive.
    `weights`: the compressed torch module, or its layers' weights by name (a model compressed as ONNX)."""
    rows = [dict(row) for row in compression["per_layer"]]
    if hasattr(weights, "get_submodule"):
        weights = {row["module"]: weights.get_submodule(row["module"]).weight.detach().cpu().numpy() for row in rows}
    matches = match_weights(weights, device)
    notes = []
    for row in rows:
        found = matches.get(row["module"])
        array, axis = (found[1], found[2]) if found else (None, None)
        row.update(device_tensor=found[0] if found else None,
                   device_sparsity=None if array is None else float(np.mean(array == 0)),
                   device_max_distinct=None if array is None else max_distinct(array, axis))
        notes += _differences(row, weights[row["module"]].shape)
    return rows, notes


def _differences(row: dict, shape: tuple[int, ...]) -> list[str]:
    if row["skipped"] is not None:
        return []
    name = row["module"]
    if row["device_tensor"] is None:
        return [f"no weight tensor of the device model matches {name} (shape {list(shape)}): preservation not checked"]
    notes = []
    requested = row["requested_sparsity"] if row["requested_sparsity"] is not None else row["measured_sparsity"]
    if row["device_sparsity"] < row["measured_sparsity"] - SPARSITY_TOLERANCE:
        notes.append(f"conversion lost sparsity in {name}: requested {requested:.2f}, "
                     f"device {row['device_sparsity']:.2f}")
    elif row["device_sparsity"] > row["measured_sparsity"] + SPARSITY_TOLERANCE:
        notes.append(f"conversion added zeros in {name} (weights rounded to 0): requested {requested:.2f}, "
                     f"device {row['device_sparsity']:.2f}")
    if row["clusters"] is not None and row["device_max_distinct"] > row["clusters"]:
        notes.append(f"conversion lost clustering in {name}: k = {row['clusters']}, device has up to "
                     f"{row['device_max_distinct']} distinct values per output channel")
    return notes


def match_weights(weights: dict[str, np.ndarray], device: list[tuple[str, np.ndarray]]) -> dict[str, tuple]:
    """Torch layer -> (device tensor name, array, output-channel axis), one to one, by size and output channels.

    Converters reorder the elements inside an output channel (layouts, flattening) but not the channels, so a
    per-channel fingerprint (zero fraction, mean|w| / max|w|) that ignores element order and scale decides."""
    scored = []
    for name, weight in weights.items():
        reference = _fingerprint(weight, 0)
        for index, (_, array) in enumerate(device):
            if array.size != weight.size:
                continue
            for axis in (a for a in range(array.ndim) if array.shape[a] == weight.shape[0]):
                scored.append((float(np.mean(np.abs(_fingerprint(array, axis) - reference))), name, index, axis))
    chosen: dict[str, tuple] = {}
    used: set[int] = set()
    for _, name, index, axis in sorted(scored, key=lambda s: s[0]):
        if name not in chosen and index not in used:
            chosen[name] = (device[index][0], device[index][1], axis)
            used.add(index)
    return chosen


def _fingerprint(array: np.ndarray, axis: int) -> np.ndarray:
    rows = np.abs(np.moveaxis(np.asarray(array, dtype=np.float64), axis, 0).reshape(array.shape[axis], -1))
    peak = rows.max(axis=1)
    return np.concatenate([np.mean(rows == 0, axis=1), rows.mean(axis=1) / np.where(peak > 0, peak, 1.0)])
