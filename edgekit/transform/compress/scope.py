"""Which layers a compression step touches, and with what value: scoping rules as data, most specific wins.

Order of precedence for one layer: an `exclude` pattern > a `per_name` rule (an exact name beats a pattern) >
the default protection of the first and last prunable layer > a `per_type` rule > the global value. Every
layer left alone gets a reason, and every rule that matched no layer is listed, so nothing is silent.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import ConfigError

LAYER_TYPES = ("Conv1d", "Conv2d", "Conv3d", "Linear")


@dataclass(frozen=True)
class Layer:
    """A compressible layer: its module name, class name (and base class names) and its place in the forward."""

    name: str
    types: tuple[str, ...]
    position: str = ""  # "first", "last" or ""


@dataclass(frozen=True)
class Decision:
    """The value a layer gets (None = left alone) and the rule that decided it, in words."""

    value: Any
    rule: str
    source: str  # "exclude", "name", "edge", "type" or "global"


@dataclass
class StepReport:
    """What a step did: per applied layer a record, per layer left alone the reason."""

    applied: dict[str, dict] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    unmatched_rules: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Scope:
    """The rules of one step, read from a Prune or Cluster config."""

    step: str
    default: Any
    per_type: tuple[tuple[str, Any], ...] = ()
    per_name: tuple[tuple[str, Any], ...] = ()
    exclude: tuple[str, ...] = ()
    keep_edges: bool = True

    @classmethod
    def of(cls, step: str, config: Any, default: Any) -> Scope:
        return cls(step, default, config.per_type, config.per_name, config.exclude or (), config.keep_edges)

    def resolve(self, layers: list[Layer]) -> tuple[dict[str, Decision], list[str]]:
        """A decision for every layer, and the rules that matched none of them."""
        decisions = {layer.name: self.decide(layer) for layer in layers}
        return decisions, self._unmatched(layers)

    def decide(self, layer: Layer) -> Decision:
        excluded = [p for p in self.exclude if name_matches(p, layer.name)]
        if excluded:
            return Decision(None, f"excluded by {self.step} exclude {excluded[0]!r}", "exclude")
        named = self._by_name(layer.name)
        if named is not None:
            return Decision(named[1], f"{self.step} rule for name {named[0]!r}", "name")
        if self.keep_edges and layer.position:
            return Decision(None, f"{layer.position} layer, kept by default (a {self.step} per_name rule or "
                                  "keep_edges=False includes it)", "edge")
        typed = [(t, v) for t, v in self.per_type if t in layer.types]
        if typed:
            return Decision(typed[0][1], f"{self.step} rule for type {typed[0][0]}", "type")
        return Decision(self.default, f"{self.step} global value", "global")

    def _by_name(self, name: str) -> tuple[str, Any] | None:
        exact = [(p, v) for p, v in self.per_name if p == name]
        if exact:
            return exact[0]
        matched = [(p, v) for p, v in self.per_name if name_matches(p, name)]
        values = {v for _, v in matched}
        if len(values) > 1:
            raise ConfigError(f"{self.step}: layer {name} matches per_name rules with different values: "
                              f"{', '.join(f'{p!r}={v}' for p, v in matched)}",
                              hint=f"add an exact rule for {name!r} or make the patterns disjoint")
        return matched[0] if matched else None

    def _unmatched(self, layers: list[Layer]) -> list[str]:
        names = [layer.name for layer in layers]
        types = {t for layer in layers for t in layer.types}
        unmatched = [f"{self.step} exclude {p!r} matched no layer" for p in self.exclude
                     if not any(name_matches(p, n) for n in names)]
        unmatched += [f"{self.step} per_name {p!r} matched no layer" for p, _ in self.per_name
                      if not any(name_matches(p, n) for n in names)]
        present = ", ".join(sorted({layer.types[0] for layer in layers})) or "none"
        unmatched += [f"{self.step} per_type {t!r} matched no layer (types present: {present})"
                      for t, _ in self.per_type if t not in types]
        return unmatched


def name_matches(pattern: str, name: str) -> bool:
    """A glob ("features.*") or, written "re:<regex>", a regular expression matching the whole name."""
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def find_layers(module: Any, example: Any) -> tuple[list[Layer], dict[str, str]]:
    """Compressible layers in forward order (first and last marked), and layers that cannot take part, with why."""
    import torch

    order = _forward_order(module, example)
    skipped: dict[str, str] = {}
    layers: list[Layer] = []
    for name in order:
        child = module.get_submodule(name)
        types = tuple(c.__name__ for c in type(child).__mro__)
        if types[0] in LAYER_TYPES:
            layers.append(Layer(name, types))
        elif isinstance(getattr(child, "weight", None), torch.Tensor) and child.weight.dim() >= 2:
            skipped[name] = f"{types[0]} is not a compressible layer type ({', '.join(LAYER_TYPES)})"
    skipped.update({n: "not run by the forward pass on the calibration data" for n, m in module.named_modules()
                    if type(m).__name__ in LAYER_TYPES and n not in order})
    return with_edges(layers), skipped


def with_edges(layers: list[Layer]) -> list[Layer]:
    """The layers with the first and the last marked (a single layer is "only")."""
    layers = list(layers)
    if layers:
        layers[-1] = Layer(layers[-1].name, layers[-1].types, "last")
        layers[0] = Layer(layers[0].name, layers[0].types, "first" if len(layers) > 1 else "only")
    return layers


def _forward_order(module: Any, example: Any) -> list[str]:
    """Leaf modules with parameters, in the order the forward pass first calls them."""
    import torch

    order: list[str] = []
    hooks = [child.register_forward_hook(lambda *_, n=name: order.append(n) if n not in order else None)
             for name, child in module.named_modules() if name and not list(child.children())
             and any(True for _ in child.parameters(recurse=False))]
    try:
        with torch.no_grad():
            module(example)
    finally:
        for hook in hooks:
            hook.remove()
    return order
