"""Cross-layer equalization's framework-free core (Nagel et al. 2019, section 4.1): the pairs, the scales s_c and
how they are applied, and the simulated INT8 used to measure it; torch.py and onnx.py are its two backends."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from edgekit.inputs.model import LoadedModel

ROUNDS = 20  # chains (a -> b -> c) are equalized pair by pair until the scales settle
TOLERANCE = 1e-4
MEASURE_SAMPLES = 16


@dataclass(frozen=True)
class Pair:
    """Two weighted layers in a row: parameter prefixes (PyTorch module paths) and the batch norm between."""

    first: str
    second: str
    norm: str | None  # the batch norm after `first`: its weight and bias take the scaling
    activation: str  # the graph node whose output feeds `second` (quantized between the two on the device)
    axis: int = 1  # the channel axis of that activation (1 after a conv, -1 after a linear layer)
    depthwise: bool = False  # `second` is a depthwise conv: input channel c is its output channel c


@dataclass(frozen=True)
class Equalized:
    """The outcome: the model to build (equalized or not) and the report's `quantization.equalization` block."""

    model: LoadedModel
    block: dict
    note: str | None


def not_applied(mode: str) -> dict:
    return {"mode": mode, "applied": False, "pairs": [], "sqnr_db": None}


def scale_pairs(params: dict[str, Any], pairs: list[Pair]) -> tuple[dict[str, Any], dict[str, Any]]:
    """New parameter values with every pair equalized (rounds repeat until chains settle), and per pair the total
    scale s_c: the activation between the two layers is the original one divided by it, channel by channel."""
    values, totals = dict(params), {}
    for _ in range(ROUNDS):
        largest = 0.0
        for pair in pairs:
            scale = _scale(values, pair)
            largest = max(largest, float((scale - 1).abs().max()))
            _apply(values, pair, scale)
            totals[pair.activation] = totals.get(pair.activation, 1.0) * scale
        if largest < TOLERANCE:
            break
    return values, totals


def _scale(values: dict[str, Any], pair: Pair) -> Any:
    """s_c = sqrt(r1_c / r2_c), r1 the first layer's effective output-channel range (batch norm folded)."""
    import torch

    w1 = values[f"{pair.first}.weight"]
    r1 = w1.abs().reshape(w1.shape[0], -1).amax(1)
    if pair.norm is not None:
        var = values[f"{pair.norm}.running_var"]
        r1 = r1 * values[f"{pair.norm}.weight"].abs() / torch.sqrt(var + 1e-5)
    w2 = values[f"{pair.second}.weight"]
    channels = w2 if pair.depthwise else w2.transpose(0, 1)  # input channel c: row c of a depthwise weight
    r2 = channels.abs().reshape(channels.shape[0], -1).amax(1)
    scale = torch.sqrt(r1 / r2.clamp_min(1e-12))
    usable = (r1 > 1e-12) & (r2 > 1e-12) & torch.isfinite(scale)
    return torch.where(usable, scale, torch.ones_like(scale))


def _apply(values: dict[str, Any], pair: Pair, scale: Any) -> None:
    """Output channel c of `first` (its batch norm's affine part when there is one) / s_c; `second`'s input *."""
    owner = pair.norm or pair.first
    for name in ("weight", "bias"):
        key = f"{owner}.{name}"
        if key in values and values[key] is not None:
            value = values[key]
            values[key] = value / scale.reshape(-1, *([1] * (value.dim() - 1)))
    w2 = values[f"{pair.second}.weight"]
    shape = (-1, *([1] * (w2.dim() - 1))) if pair.depthwise else (1, -1, *([1] * (w2.dim() - 2)))
    values[f"{pair.second}.weight"] = w2 * scale.reshape(shape)


def fake_quant_weight(weight: Any) -> Any:
    """Per-output-channel symmetric INT8, as every route quantizes weights."""
    peak = weight.abs().reshape(weight.shape[0], -1).amax(1).clamp_min(1e-12)
    step = (peak / 127).reshape(-1, *([1] * (weight.dim() - 1)))
    return (weight / step).round().clamp(-127, 127) * step
