"""The compression step on a torch module: prune, then cluster, then (optionally) recover by distillation, on a copy
of the model (the steps themselves and the preservation check are in common.py)."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from edgekit.config.options import Cluster, Prune
from edgekit.errors import ConfigError, DataError, ToolError
from edgekit.transform.compress.cluster import Clustering
from edgekit.transform.compress.common import (
    as_dict,
    cluster_layers,
    compression_block,
    layer_channels,
    prune_layers,
)
from edgekit.transform.compress.recover import constraints_for, recover
from edgekit.transform.compress.scope import StepReport, find_layers


def compress(module: Any, prune: Prune | None, cluster: Cluster | None, calibration: np.ndarray,
             recover_steps: int = 0, seed: int = 0) -> tuple[Any, dict]:
    """A compressed copy of `module` (eval mode; `module` itself is untouched) and the report.json
    `compression` block. `calibration` is the model's single input, in its own layout (NCHW for images)."""
    import torch

    if prune is None and cluster is None:
        raise ConfigError("compress needs prune or cluster", hint="pass Prune(...) and/or Cluster(...)")
    if int(recover_steps) < 0:
        raise ConfigError(f"recover = {recover_steps} is negative", hint="give a number of fine-tune steps, e.g. 200")
    example = torch.from_numpy(_checked(calibration)[:1])
    student = copy.deepcopy(module).eval()
    layers, not_compressible = find_layers(student, example)
    before = _ops_and_params(student, example)
    channels = {layer.name: layer_channels(student, layer.name) for layer in layers}
    reports: dict[str, StepReport] = {}
    tied: dict[str, Clustering] = {}
    if prune is not None:
        reports["prune"] = prune_layers(student, prune, layers, example)
    if cluster is not None:
        reports["cluster"], tied = cluster_layers(student, cluster, layers)
    recovery = _recover(student, module, calibration, recover_steps, seed, prune, reports, tied)
    structured = prune is not None and prune.mode == "structured"
    block = compression_block(student, layers, channels, reports, structured, not_compressible, before,
                              _ops_and_params(student, example))
    block.update(recovered_steps=int(recover_steps), recovery=recovery, mode=prune.mode if prune else None,
                 clusters=cluster.clusters if cluster else None,
                 config={"prune": as_dict(prune), "cluster": as_dict(cluster)})
    return student.eval(), block


def _checked(calibration: np.ndarray) -> np.ndarray:
    array = np.asarray(calibration)
    if array.ndim < 2 or len(array) == 0 or not np.all(np.isfinite(array)):
        raise DataError(f"compression needs finite calibration inputs [N, ...], got shape {list(array.shape)}",
                        hint="pass the model's single input as a float32 array, e.g. NCHW images")
    return np.ascontiguousarray(array, dtype=np.float32)


def _recover(student: Any, original: Any, calibration: np.ndarray, steps: int, seed: int, prune: Prune | None,
             reports: dict[str, StepReport], tied: dict[str, Clustering]) -> dict | None:
    if not steps:
        return None
    zeroed = list(reports["prune"].applied) if prune is not None and prune.mode == "unstructured" else []
    constraints = constraints_for(student, list(dict.fromkeys(zeroed + list(tied))), tied)
    teacher = copy.deepcopy(original).eval()
    return recover(student, teacher, _checked(calibration), int(steps), seed, constraints)


def _ops_and_params(module: Any, example: Any) -> tuple[int, int]:
    """(MACs, parameters) as torch-pruning counts them."""
    import torch

    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise ToolError("compression needs torch-pruning", hint="pip install 'edgekit[compress]'") from exc
    with torch.no_grad():
        ops, params = tp.utils.count_ops_and_params(module, example)
    return int(ops), int(params)


