"""Recovery after compression: a short knowledge-distillation fine-tune from the original model on the
calibration data that keeps what compression made: pruned weights stay exactly zero, and clustered weights stay
on at most k values (after each step every cluster is set to the mean of its weights, i.e. the centroid moves by
the average update of its members)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedError
from edgekit.transform.compress.cluster import INT8_LEVELS, Clustering

TEMPERATURE = 3.0
LEARNING_RATE = 3e-4
BATCH_SIZE = 64


@dataclass(frozen=True)
class Constraint:
    """What recovery keeps in one layer's weight: `mask` False where it stays zero; `labels` the cluster of each
    weight (-1 at zeros), clusters counted per output channel when `per_row`; for a shared codebook, `scales`
    (each channel's largest |w|, fixed) and `pinned` (label -> normalised centroid that must not move: ±1)."""

    mask: Any = None
    labels: Any = None
    per_row: bool = False
    scales: Any = None
    pinned: dict[int, float] | None = None


def constraints_for(module: Any, names: list[str], clusterings: dict[str, Clustering]) -> dict[str, Constraint]:
    """Freeze the zeros of every named layer, and the cluster assignment of those that were clustered."""
    import torch

    constraints = {}
    for name in names:
        weight = module.get_submodule(name).weight.detach()
        tied = clusterings.get(name)
        if tied is None:
            constraints[name] = Constraint(mask=weight != 0)
            continue
        scales = None if tied.scales is None else torch.from_numpy(tied.scales)
        constraints[name] = Constraint(weight != 0, torch.from_numpy(tied.labels), tied.per_row, scales,
                                       _pinned(weight, tied) if scales is not None else None)
    return constraints


def _pinned(weight: Any, tied: Clustering) -> dict[int, float]:
    """The labels of the ±1 centroids of a shared codebook (each channel's largest |w|)."""
    rows = weight.reshape(weight.shape[0], -1).numpy() / np.where(tied.scales > 0, tied.scales, 1)[:, None]
    values, labels = rows.ravel(), tied.labels.ravel()
    hit = (labels >= 0) & (np.abs(np.abs(values) - 1.0) < 1e-6)
    return {int(label): float(np.sign(value)) for label, value in zip(labels[hit], values[hit])}


def enforce(module: Any, constraints: dict[str, Constraint], on_grid: bool = False) -> None:
    """Snap clustered weights to their cluster means (on the INT8 grid when `on_grid`), then zero masked ones."""
    import torch

    with torch.no_grad():
        for name, constraint in constraints.items():
            weight = module.get_submodule(name).weight
            if constraint.labels is not None:
                weight.copy_(snap_to_clusters(weight, constraint, on_grid))
            if constraint.mask is not None:
                weight.mul_(constraint.mask)


def snap_to_clusters(weight: Any, constraint: Constraint, on_grid: bool = False) -> Any:
    """Every clustered weight replaced by the mean of its cluster; a shared codebook is averaged on weights
    divided by their channel's scale, keeps its pinned centroids, and lands on the INT8 grid when `on_grid`."""
    import torch

    values = weight.reshape(weight.shape[0], -1)
    if constraint.scales is not None:
        values = values / constraint.scales.clamp(min=1e-30).unsqueeze(1)
    groups = values.shape[0] if constraint.per_row else 1
    labels = constraint.labels.reshape(groups, -1)
    k = int(labels.max()) + 1 if labels.numel() else 1
    valid = labels >= 0
    ids = torch.where(valid, labels + torch.arange(groups).unsqueeze(1) * k, groups * k).reshape(-1)
    flat = values.reshape(-1)
    sums = torch.zeros(groups * k + 1, dtype=flat.dtype).index_add_(0, ids, flat)
    counts = torch.zeros(groups * k + 1, dtype=flat.dtype).index_add_(0, ids, torch.ones_like(flat))
    means = sums / counts.clamp(min=1)
    if constraint.scales is not None:
        means = _shared_codebook(means, constraint.pinned or {}, on_grid)
    snapped = torch.where(valid.reshape(-1), means[ids], torch.zeros_like(flat)).reshape(values.shape)
    if constraint.scales is not None:
        snapped = snapped * constraint.scales.unsqueeze(1)
    return snapped.reshape(weight.shape)


def _shared_codebook(means: Any, pinned: dict[int, float], on_grid: bool) -> Any:
    import torch

    means = means.clamp(-1.0, 1.0)  # a channel's largest |w| stays its scale
    for label, value in pinned.items():
        means[label] = value
    if not on_grid:
        return means
    codes = torch.round(means * INT8_LEVELS)
    return torch.where(codes == 0, torch.sign(means), codes) / INT8_LEVELS


def distillation_loss(student_out: Any, teacher_out: Any, temperature: float, mse_weight: float) -> Any:
    """KL divergence of the softened class scores (times T², Hinton et al.) plus `mse_weight` x MSE of the raw
    outputs; outputs that are not [N, classes] scores get the MSE alone."""
    import torch.nn.functional as F

    mse = F.mse_loss(student_out, teacher_out)
    if student_out.dim() != 2:
        return mse
    kl = F.kl_div(F.log_softmax(student_out / temperature, dim=1), F.log_softmax(teacher_out / temperature, dim=1),
                  reduction="batchmean", log_target=True)
    return kl * temperature**2 + mse_weight * mse


def _single_output(output: Any) -> Any:
    import torch

    if not isinstance(output, torch.Tensor):
        raise UnsupportedError(f"recovery needs a model with one tensor output, not {type(output).__name__}",
                               hint="build without --recover, or wrap the model so it returns one tensor")
    return output


def recover(student: Any, teacher: Any, data_inputs: np.ndarray, steps: int, seed: int,
            masks: dict[str, Constraint], temperature: float = TEMPERATURE, mse_weight: float = 0.1,
            learning_rate: float = LEARNING_RATE, batch_size: int = BATCH_SIZE) -> dict:
    """Fine-tune `student` in place for `steps` Adam steps to match `teacher` on `data_inputs` (one input, the
    model's layout). BatchNorm statistics stay frozen (eval mode); `masks` are enforced after every step."""
    import torch

    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.from_numpy(np.ascontiguousarray(data_inputs, dtype=np.float32))
    with torch.no_grad():
        targets = torch.cat([_single_output(teacher.eval()(part)) for part in inputs.split(256)])
    student.eval()
    optimizer = torch.optim.Adam([p for p in student.parameters() if p.requires_grad], lr=learning_rate)
    losses = []
    for _ in range(steps):
        batch = torch.randint(len(inputs), (min(batch_size, len(inputs)),), generator=generator)
        loss = distillation_loss(_single_output(student(inputs[batch])), targets[batch], temperature, mse_weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        enforce(student, masks)
        losses.append(loss.item())
    enforce(student, masks, on_grid=True)
    return {"steps": int(steps), "temperature": temperature, "loss_first": losses[0] if losses else None,
            "loss_last": float(np.mean(losses[-10:])) if losses else None}
