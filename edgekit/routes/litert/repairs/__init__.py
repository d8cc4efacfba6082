"""ONNX rewrites applied before onnx2tf, for op/attribute combinations it converts wrongly.

Each repair is one module with `NAME`, `PROBLEM` (what onnx2tf gets wrong, for the report), `targets(model)` (the
nodes it would rewrite), `matches(model) -> bool` and `apply(model) -> model` (a rewritten copy that computes the
same function). A repair runs only where its pattern is present; every one applied is recorded in the manifest and
the report's warnings. The op conformance suite (tests/conformance) measured every problem named here.

No repair rewrites a tensor whose channel count equals one of its spatial sizes (e.g. (1, 4, 4, 4)): onnx2tf
guesses layouts from sizes and gets such tensors wrong either way; the float32 check then names the op.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from types import ModuleType

from edgekit.routes.litert.repairs import (
    avgpool_pads,
    erf_polynomial,
    layernorm_axes,
    maxpool_pads,
    pad_wrap,
    recurrent_unroll,
    resize_matmul,
    slice_channels,
)


@dataclass(frozen=True)
class Applied:
    """One repair applied to a model: which, on which nodes, and why."""

    name: str
    nodes: tuple[str, ...]
    problem: str

    def to_dict(self) -> dict:
        return {"name": self.name, "nodes": list(self.nodes), "problem": self.problem}

    def note(self) -> str:
        return f"repaired before conversion: {self.name} on {', '.join(self.nodes)} ({self.problem})"


REGISTRY: tuple[ModuleType, ...] = (maxpool_pads, avgpool_pads, resize_matmul, slice_channels, pad_wrap,
                                    erf_polynomial, layernorm_axes, recurrent_unroll)


def by_name(name: str) -> ModuleType:
    for repair in REGISTRY:
        if name == repair.NAME:
            return repair
    raise KeyError(f"no repair named {name!r}; known: {', '.join(r.NAME for r in REGISTRY)}")


def apply_repairs(model, registry: tuple[ModuleType, ...] = REGISTRY):
    """Every repair whose pattern is present, in registry order; returns (model, [Applied])."""
    applied = []
    for repair in registry:
        if repair.matches(model):
            nodes = tuple(node.name for node in repair.targets(model))
            model = repair.apply(model)
            applied.append(Applied(repair.NAME, nodes, repair.PROBLEM))
    return model, applied


def repair_export(export, workdir: Path, registry: tuple[ModuleType, ...] = REGISTRY):
    """The export as onnx2tf should see it: unchanged when no repair applies, else a checked, rewritten copy in
    `workdir` (same file name, so onnx2tf's output names stay the same). Returns (export, [Applied])."""
    import onnx

    repaired, applied = apply_repairs(onnx.load(str(export.path)), registry)
    if not applied:
        return export, []
    onnx.checker.check_model(repaired)
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / export.path.name
    onnx.save(repaired, str(path))
    return replace(export, path=path), applied
