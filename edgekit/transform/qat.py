"""Quantization-aware fine-tuning with PT2E (torchao): the model is exported once at a fixed batch, the route's own
QAT quantizer inserts the fake quantization its INT8 build applies (`prepare_qat_pt2e`), and the weights are
fine-tuned against the float model: distillation of every output, plus cross-entropy on the class scores when the
data has labels. The fine-tuned weights are then copied back into the float module, which the route quantizes as
usual; the prepared graph, observers frozen, stays as the simulation the device model is compared with."""

from __future__ import annotations

import copy
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit.errors import UnsupportedError, first_line

BATCH = 32
LEARNING_RATE = 2e-4
TEMPERATURE = 2.0
CURVE_POINTS = 100  # the loss curve the report keeps, averaged into at most this many points
OBSERVE_EVERY = 25  # steps between two observations of the activation ranges on the weights as they are then
CHECKS = 10  # how often the held-out loss is measured over a fine-tune (and the best weights kept)
HELD_OUT = 0.2  # the share of the samples kept out of training to measure it on


@dataclass(frozen=True)
class Data:
    """What the fine-tune reads: the model's inputs by position, integer labels (-1 for a sample without one) or
    None, which output holds the class scores (None: no output does), and how many leading samples the device
    quantizer calibrates its ranges on."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None = None
    class_output: int | None = None
    observe: int | None = None  # the leading samples the device quantizer calibrates on (None: all)


@dataclass(frozen=True)
class Tuned:
    """The float module with the fine-tuned weights, the QAT simulation (a prepared graph at batch `batch`,
    observers and BatchNorm frozen) and the report's `qat` block so far."""

    module: Any
    simulation: Any
    batch: int
    block: dict
    before: list[np.ndarray] | None = None  # the simulation's outputs on `held_out` before the fine-tune


def fine_tune(module: Any, data: Data, quantizer: Any, steps: int, seconds: float, seed: int,
              note: Callable[[str], None] = lambda text: None, held_out: tuple[np.ndarray, ...] | None = None) -> Tuned:
    """Fine-tune a copy of `module` (eval mode, so BatchNorm statistics stay as trained) under `quantizer`'s fake
    quantization for at most `steps` Adam steps and `seconds`; `module` itself is untouched.

    Activation ranges are those the device quantizer will take: the global min/max over the samples it calibrates
    on (`data.observe`), observed before the fine-tune, every OBSERVE_EVERY steps on the weights as they are then,
    and with the final weights after it; in between they stay fixed while weight ranges follow the weights (a range
    fixed for the whole fine-tune would hide from it what the device's calibration of the new weights will take).
    `held_out` runs once before the fine-tune, as `before`."""
    import torch

    torch.manual_seed(seed)
    teacher = copy.deepcopy(module).eval()
    simulation, batch = _prepared_at_some_batch(teacher, data.inputs, quantizer)
    targets = [torch.from_numpy(t) for t in run(teacher, batch, data.inputs)]  # what every step distils towards
    observed = tuple(x[:data.observe] for x in data.inputs)
    _observe_ranges(simulation, batch, observed)
    before = run(simulation, batch, held_out) if held_out is not None else None
    started = time.perf_counter()
    losses, stopped_by, skipped, checked = _train(simulation, batch, data, targets, (int(steps), seconds, seed), note,
                                                  lambda: _observe_ranges(simulation, batch, observed))
    _observe_ranges(simulation, batch, observed, weights=True)  # the ranges the device takes from the final weights
    block = {"steps": int(steps), "steps_done": len(losses), "skipped_steps": skipped, "stopped_by": stopped_by,
             **checked,
             "batch": min(BATCH, len(data.inputs[0])), "learning_rate": LEARNING_RATE,
             "seconds": round(time.perf_counter() - started, 3), "samples": len(data.inputs[0]),
             "labels": data.labels is not None,
             "labelled_samples": 0 if data.labels is None else int((data.labels >= 0).sum()),
             "loss": "distillation + cross-entropy" if data.labels is not None and data.class_output is not None
             else "distillation", "loss_curve": curve(losses), "seed": int(seed)}
    return Tuned(_copy_back(simulation, module), simulation, batch, block, before)


def _train(simulation: Any, batch: int, data: Data, targets: list[Any], budget: tuple[int, float, int],
           note: Callable[[str], None], observe: Callable[[], None]) -> tuple[list[float], str, int, dict]:
    """Adam steps of BATCH samples each (micro-batches when the graph's batch is smaller) on all but the held-out
    samples: the losses, what stopped it ("steps" or "time"), how many steps were not taken (a non-finite
    gradient), and the held-out checks. The loss on the held-out samples is measured before the first step and
    CHECKS times over the fine-tune; the weights with the lowest one are those kept (the original ones, when no
    step improved on them: on a model INT8 already suits, a fine-tune can only add noise). `observe` takes the
    activation ranges afresh, every OBSERVE_EVERY steps."""
    import torch

    steps, seconds, seed = budget
    scales = [target.var().clamp(min=1e-12) for target in targets]  # each output's MSE relative to its spread
    held = _held_out(len(data.inputs[0]), batch, seed)
    pool = np.setdiff1d(np.arange(len(data.inputs[0])), held)
    step_samples = min(BATCH, len(pool))
    parameters = [p for p in simulation.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=LEARNING_RATE)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))  # to 0 at the last step
    checks = [[0, _held_loss(simulation, batch, data, (targets, scales), held)]] if len(held) else []
    best = (checks[0][1], 0, _snapshot(parameters)) if checks else None
    losses, skipped, started, rng = [], 0, time.perf_counter(), np.random.default_rng(seed)
    stopped_by, every = "steps", max(1, steps // CHECKS)
    for step in range(steps):
        rows = pool[rng.choice(len(pool), size=step_samples, replace=len(pool) < step_samples)]
        optimizer.zero_grad()
        total = 0.0
        for part in np.split(rows, len(rows) // batch):
            loss = _loss(simulation, data, targets, scales, part) * (len(part) / len(rows))
            loss.backward()
            total += float(loss.detach())
        if _finite(parameters):
            optimizer.step()
            losses.append(total)
        else:  # one non-finite gradient would make every weight NaN: the step is not taken, and counted
            skipped += 1
        schedule.step()
        if (step + 1) % OBSERVE_EVERY == 0 and step + 1 < steps:
            observe()
        elapsed = time.perf_counter() - started
        _progress(note, step + 1, steps, losses, elapsed)
        if elapsed > seconds and step + 1 < steps:
            stopped_by = "time"
        if best is not None and ((step + 1) % every == 0 or step + 1 == steps or stopped_by == "time"):
            checks.append([step + 1, _held_loss(simulation, batch, data, (targets, scales), held)])
            if checks[-1][1] < best[0]:
                best = (checks[-1][1], step + 1, _snapshot(parameters))
        if stopped_by == "time":
            break
    if best is not None:
        with torch.no_grad():
            for parameter, kept in zip(parameters, best[2]):
                parameter.copy_(kept)
    checked = {"held_out_samples": len(held), "best_step": best[1] if best else len(losses),
               "held_out_loss": [[step, round(value, 6)] for step, value in checks]}
    return losses, stopped_by, skipped, checked


def _held_out(count: int, batch: int, seed: int) -> np.ndarray:
    """The samples kept out of training to choose the weights by: HELD_OUT of them, in whole graph batches, when
    that leaves at least a step's worth to train on; none otherwise."""
    size = int(count * HELD_OUT) // batch * batch
    if size == 0 or count - size < min(BATCH, count):
        return np.zeros(0, dtype=np.int64)
    return np.sort(np.random.default_rng(seed + 1).permutation(count)[:size])


def _held_loss(simulation: Any, batch: int, data: Data, distilled: tuple[list[Any], list[Any]],
               held: np.ndarray) -> float:
    """The training loss on the held-out samples, without gradients."""
    import torch

    targets, scales = distilled
    with torch.no_grad():
        return float(sum(float(_loss(simulation, data, targets, scales, part)) * len(part)
                         for part in np.split(held, len(held) // batch)) / len(held))


def _snapshot(parameters: list[Any]) -> list[Any]:
    return [p.detach().clone() for p in parameters]


def _finite(parameters: list[Any]) -> bool:
    """Whether the loss's gradient is finite everywhere."""
    import torch

    return bool(torch.isfinite(torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])))


def _observe_ranges(simulation: Any, batch: int, inputs: tuple[np.ndarray, ...], weights: bool = False) -> None:
    """Activation ranges observed afresh over `inputs` on the float values, as the device's calibration takes them
    from the float model, then fixed; weight ranges follow the weights (their observers stay on for training). With
    `weights`, the weight ranges too are taken afresh from the weights as they are, and every range is fixed: the
    finished simulation."""
    from torchao.quantization.pt2e.fake_quantize import (
        disable_fake_quant,
        disable_observer,
        enable_fake_quant,
        enable_observer,
    )

    quantizers = [m for m in simulation.modules() if hasattr(m, "observer_enabled")]
    observed = [m for m in quantizers if weights or not getattr(m, "is_per_channel", False)]
    for module in quantizers:
        disable_fake_quant(module)
    for module in observed:
        if hasattr(module.activation_post_process, "reset_min_max_vals"):
            module.activation_post_process.reset_min_max_vals()
        enable_observer(module)
    run(simulation, batch, inputs)
    for module in quantizers:
        enable_fake_quant(module)
    for module in quantizers if weights else observed:
        disable_observer(module)


def _prepared_at_some_batch(module: Any, inputs: tuple[np.ndarray, ...], quantizer: Any) -> tuple[Any, int]:
    """The simulation at the step's batch, or at batch 1 for a graph whose batch is written into it (a `.pt2`
    exported at batch 1 reshapes to it): then each step runs its samples one by one."""
    import torch

    batch = min(BATCH, len(inputs[0]))
    try:
        return prepared(module, tuple(torch.from_numpy(x[:batch]) for x in inputs), quantizer), batch
    except UnsupportedError:
        if batch == 1:
            raise
    return prepared(module, tuple(torch.from_numpy(x[:1]) for x in inputs), quantizer), 1


def prepared(module: Any, example: tuple, quantizer: Any) -> Any:
    """`module` exported at the example's batch with `quantizer`'s QAT fake quantization inserted."""
    import torch
    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    try:
        graph = torch.export.export(module, example).module()
        # eval: BatchNorm keeps its trained statistics (few samples would estimate worse ones), dropout is off
        simulation = move_exported_model_to_eval(prepare_qat_pt2e(graph, quantizer))
        return getattr(quantizer, "after_prepare", lambda model: model)(simulation)
    except Exception as exc:
        raise UnsupportedError(f"quantization-aware training cannot prepare this model: {first_line(exc)}",
                               hint="build without --qat (post-training quantization and --fallback auto still "
                                    "apply)") from None


def simulate(tuned: Tuned, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """The QAT simulation's outputs on `inputs`."""
    return run(tuned.simulation, tuned.batch, inputs)


def run(graph: Any, batch: int, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
    """`graph`'s outputs on `inputs`, in its fixed batch (the last one padded with copies of its last sample)."""
    import torch

    count, outputs = len(inputs[0]), []
    with torch.no_grad():
        for start in range(0, count, batch):
            taken = min(batch, count - start)
            result = _flat(graph(*_padded(inputs, start, batch)))
            outputs.append([r.numpy()[:taken] for r in result])
    return [np.concatenate(parts) for parts in zip(*outputs)]


def _padded(inputs: tuple[np.ndarray, ...], start: int, batch: int) -> list[Any]:
    """Samples start..start+batch of each input as tensors, a short last batch padded with copies of its last
    sample."""
    import torch

    chunks = [x[start:start + batch] for x in inputs]
    return [torch.from_numpy(np.ascontiguousarray(np.concatenate([c, np.repeat(c[-1:], batch - len(c), axis=0)])))
            for c in chunks]


def curve(losses: list[float]) -> list[list[float]]:
    """[step, mean loss] pairs: the losses averaged over at most CURVE_POINTS equal windows."""
    if not losses:
        return []
    edges = np.linspace(0, len(losses), min(CURVE_POINTS, len(losses)) + 1).astype(int)
    return [[int(end), round(float(np.mean(losses[start:end])), 6)] for start, end in itertools.pairwise(edges)]


def _loss(simulation: Any, data: Data, targets: list[Any], scales: list[Any], rows: np.ndarray) -> Any:
    """Distillation of every output (scale-free MSE; softened KL on class scores), plus cross-entropy with labels."""
    import torch
    import torch.nn.functional as F

    index = torch.from_numpy(rows)
    outputs = _flat(simulation(*(torch.from_numpy(x[rows]) for x in data.inputs)))
    loss = 0.0
    for position, (out, target, scale) in enumerate(zip(outputs, targets, scales)):
        wanted = target[index]
        loss = loss + F.mse_loss(out, wanted) / scale
        if position == data.class_output:
            soft = F.kl_div(F.log_softmax(out / TEMPERATURE, dim=1), F.log_softmax(wanted / TEMPERATURE, dim=1),
                            reduction="batchmean", log_target=True)
            loss = loss + soft * TEMPERATURE**2
            labels = None if data.labels is None else torch.from_numpy(data.labels[rows]).long()
            if labels is not None and bool((labels >= 0).any()):  # -1: a sample without a label
                loss = loss + F.cross_entropy(out, labels, ignore_index=-1)
    return loss


def _flat(output: Any) -> list[Any]:
    import torch

    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _flat(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in _flat(value)]
    raise UnsupportedError(f"quantization-aware training reads tensor outputs, not {type(output).__name__}",
                           hint="wrap the model so it returns tensors (a tuple or dict of them)")


def _copy_back(simulation: Any, module: Any) -> Any:
    """A copy of `module` holding the simulation's fine-tuned parameters, matched by their qualified names."""
    import torch

    tuned = copy.deepcopy(module).eval()
    trained = simulation.state_dict()
    wanted = {name for name, p in tuned.named_parameters() if p.requires_grad}
    missing = sorted(wanted - set(trained))
    if missing:
        raise UnsupportedError(f"quantization-aware training lost track of {len(missing)} weight(s) "
                               f"({', '.join(missing[:3])})", hint="build without --qat")
    with torch.no_grad():
        for name, parameter in tuned.named_parameters():
            if name in wanted:
                parameter.copy_(trained[name])
    return tuned


def _progress(note: Callable[[str], None], done: int, total: int, losses: list[float], elapsed: float) -> None:
    every = max(1, total // 10)
    if done % every and done != total:
        return
    eta = elapsed / done * (total - done)
    loss = f"{np.mean(losses[-every:]):.4g}" if losses else "n/a (no step taken)"
    note(f"qat step {done}/{total}: loss {loss}, {elapsed:.0f} s, ETA {eta:.0f} s")


def layer_errors(tuned: Tuned, inputs: tuple[np.ndarray, ...]) -> list[dict]:
    """Each fake-quantized activation of the simulation against its float value (every fake quantization off), in
    graph order: the module and op that produced it, and the float value's power (`signal`) and the error's
    (`noise`) accumulated up to there, summed over the whole batches of `inputs` (one padded batch when there are
    fewer samples)."""
    from torchao.quantization.pt2e.fake_quantize import disable_fake_quant, enable_fake_quant

    graph = tuned.simulation
    nodes = _activation_quantizers(graph)
    quantizers = [m for m in graph.modules() if hasattr(m, "fake_quant_enabled")]
    count = len(inputs[0])
    whole = count // tuned.batch * tuned.batch or count  # whole batches, or one padded one
    power = {node: [0.0, 0.0] for node in nodes}  # signal, noise
    for start in range(0, whole, tuned.batch):
        feed = _padded(inputs, start, tuned.batch)
        simulated = _captured(graph, nodes, feed)
        for module in quantizers:
            disable_fake_quant(module)
        try:
            floats = _captured(graph, nodes, feed)
        finally:
            for module in quantizers:
                enable_fake_quant(module)
        for node in nodes:
            reference = floats[node].double()
            power[node][0] += float((reference**2).sum())
            power[node][1] += float(((reference - simulated[node].double()) ** 2).sum())
    return [{"module": _node_module(node.args[0]), "op": _op_name(node.args[0]), "signal": power[node][0],
             "noise": power[node][1]} for node in nodes]


def _activation_quantizers(graph: Any) -> list[Any]:
    """The fake-quantize nodes on values computed from the inputs (not on weights or constants: per-channel ones
    are weights, whatever feeds them), in graph order."""
    fed: set[Any] = set()
    found = []
    for node in graph.graph.nodes:
        if node.op == "placeholder" or any(arg in fed for arg in node.all_input_nodes):
            fed.add(node)
        if node.op == "call_module" and node in fed:
            module = graph.get_submodule(node.target)
            if hasattr(module, "fake_quant_enabled") and not getattr(module, "is_per_channel", False):
                found.append(node)
    return found


def _captured(graph: Any, nodes: list[Any], feed: list[Any]) -> dict[Any, Any]:
    import torch

    wanted, seen = set(nodes), {}

    class Capture(torch.fx.Interpreter):
        def run_node(self, node):
            out = super().run_node(node)
            if node in wanted:
                seen[node] = out.detach()
            return out

    with torch.no_grad():
        Capture(graph).run(*feed)
    return seen


def _node_module(node: Any) -> str | None:
    """The innermost PyTorch module that produced `node` (None for a model input); for an op in the model's own
    forward, the op's node name, as the ONNX export names it ("relu_2", "max_pool2d")."""
    if node.op == "placeholder":
        return None
    stack = node.meta.get("nn_module_stack") or {}
    return (list(stack.values())[-1][0] if stack else "") or node.name


def _op_name(node: Any) -> str:
    if node.op == "placeholder":
        return "input"
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]

