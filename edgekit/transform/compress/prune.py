"""Magnitude pruning: unstructured (the smallest weights set to exact zeros, for good) or structured (whole
channels removed through the dependency graph with torch-pruning, so parameters and FLOPs really drop)."""

from __future__ import annotations

from typing import Any

import numpy as np

from edgekit.transform.compress.scope import Decision, StepReport


def chosen_values(decisions: dict[str, Decision], report: StepReport, what: str) -> dict[str, Any]:
    """Layers a rule gave a non-zero value; the others go to `report.skipped` with the rule that left them alone."""
    chosen = {}
    for name, decision in decisions.items():
        if decision.value is None:
            report.skipped[name] = decision.rule
        elif not decision.value:
            report.skipped[name] = f"{decision.rule} asks for {what} 0"
        else:
            chosen[name] = decision.value
    return chosen


def prune_unstructured(module: Any, decisions: dict[str, Decision], scope: str = "layer") -> StepReport:
    """Zero the smallest-magnitude weights in place: each layer to its fraction, or with `scope="global"` one
    magnitude ranking across all layers that take the global fraction."""
    report = StepReport()
    chosen = chosen_values(decisions, report, "sparsity")
    joint = [n for n in chosen if scope == "global" and decisions[n].source == "global"]
    if joint:
        _zero_smallest([module.get_submodule(n).weight for n in joint], chosen[joint[0]])
    for name in (n for n in chosen if n not in joint):
        _zero_smallest([module.get_submodule(name).weight], chosen[name])
    for name, fraction in chosen.items():
        weight = module.get_submodule(name).weight
        report.applied[name] = {"requested_sparsity": float(fraction), "measured_sparsity": zero_fraction(weight),
                                "rule": decisions[name].rule + (" (ranked globally)" if name in joint else "")}
    return report


def _zero_smallest(weights: list[Any], fraction: float) -> None:
    """Set round(fraction * size) weights with the smallest |w| (ranked over all `weights` together) to 0."""
    import torch

    with torch.no_grad():
        magnitudes = torch.cat([w.detach().abs().reshape(-1) for w in weights])
        count = round(float(fraction) * magnitudes.numel())
        keep = torch.ones(magnitudes.numel(), dtype=torch.bool)
        keep[torch.argsort(magnitudes, stable=True)[:count]] = False
        for weight, part in zip(weights, keep.split([w.numel() for w in weights])):
            weight.mul_(part.view_as(weight))


def zero_fraction(weight: Any) -> float:
    """Fraction of exact zeros in a tensor or an array."""
    values = weight.detach().cpu().numpy() if hasattr(weight, "detach") else np.asarray(weight)
    return float(np.mean(values == 0)) if values.size else 0.0


def prune_structured(module: Any, decisions: dict[str, Decision], example: Any, scope: str = "layer") -> StepReport:
    """Remove output channels by L2 magnitude with torch-pruning; coupled layers (BatchNorm, the inputs of the
    next layers) shrink with them. Layers left alone keep their output channels (their inputs may still shrink)."""
    import torch_pruning as tp

    report = StepReport()
    chosen = chosen_values(decisions, report, "channel fraction")
    modules = {name: module.get_submodule(name) for name in decisions}
    before = {name: tuple(m.weight.shape[:2]) for name, m in modules.items()}
    joint = [n for n in chosen if scope == "global" and decisions[n].source == "global"]
    pruner = tp.pruner.MagnitudePruner(
        module, example, tp.importance.MagnitudeImportance(p=2), global_pruning=bool(joint),
        pruning_ratio=float(chosen[joint[0]]) if joint else 0.0, max_pruning_ratio=0.9,
        pruning_ratio_dict={modules[n]: float(v) for n, v in chosen.items() if n not in joint},
        ignored_layers=[m for n, m in modules.items() if n not in chosen])
    pruner.step()
    for name, fraction in chosen.items():
        weight = modules[name].weight
        report.applied[name] = {
            "requested_channel_fraction": float(fraction),
            "measured_channel_fraction": 1.0 - weight.shape[0] / before[name][0],
            "out_channels": [before[name][0], int(weight.shape[0])], "in_channels": [before[name][1],
                                                                                     int(weight.shape[1])],
            "rule": decisions[name].rule + (" (ranked globally)" if name in joint else "")}
    return report

