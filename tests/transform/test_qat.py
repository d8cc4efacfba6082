"""Quantization-aware fine-tuning on its own (edgekit/transform/qat.py): the simulation, the copy back into the float
module, determinism, the budgets; what QAT gains is measured in tests/pipeline/test_qat.py and benchmarks/."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgekit.measure.drift import sqnr_db
from edgekit.routes import get_route
from edgekit.transform.qat import CURVE_POINTS, Data, curve, fine_tune, simulate


@pytest.fixture(scope="module")
def setting(digits):
    model, data = digits
    quantizer, _ = get_route("litert").qat_quantizer(None)
    return model, data, quantizer


def test_the_loss_curve_is_averaged_into_at_most_its_points():
    assert curve([]) == []
    assert curve([4.0, 2.0]) == [[1, 4.0], [2, 2.0]]
    long = curve([float(i) for i in range(1000)])
    assert len(long) == CURVE_POINTS and long[0] == [10, 4.5] and long[-1] == [1000, 994.5]


def _tuned(setting):
    model, data, quantizer = setting
    return fine_tune(model, Data((data["x_calib"][:96],), data["y_calib"][:96], 0), quantizer, 6, 600, 0,
                     held_out=(data["x_eval"][:40],))


@pytest.fixture(scope="module")
def tuned(setting):
    model = setting[0]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    return _tuned(setting), before


def test_fine_tune_leaves_the_model_alone_and_copies_its_weights_back(setting, tuned):
    model, data, _ = setting
    tuned, before = tuned
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    moved = [k for k, v in tuned.module.state_dict().items() if not torch.equal(before[k], v)]
    assert moved, "six Adam steps changed no weight"
    trained = tuned.simulation.state_dict()
    assert all(torch.equal(tuned.module.state_dict()[k], trained[k]) for k in moved)
    block = tuned.block
    assert (block["steps_done"], block["stopped_by"], block["loss"]) == (6, "steps", "distillation + cross-entropy")
    assert len(block["loss_curve"]) == 6 and block["batch"] == 32 and block["samples"] == 96
    # the simulation is fixed once trained: the same outputs on every run, INT8-close to the float model
    first, second = simulate(tuned, (data["x_eval"][:40],)), simulate(tuned, (data["x_eval"][:40],))
    assert np.array_equal(first[0], second[0]) and first[0].shape == (40, 10)
    with torch.no_grad():
        reference = model(torch.from_numpy(data["x_eval"][:40])).numpy()
    assert 25.0 < sqnr_db(reference, first[0]) < 60.0  # quantized (not float-exact), and not broken
    assert 25.0 < sqnr_db(reference, tuned.before[0]) < 60.0


@pytest.mark.slow
def test_the_same_seed_gives_the_same_weights_and_the_budget_stops_it(setting, tuned):
    model, data, quantizer = setting
    again = _tuned(setting)
    assert all(torch.equal(v, again.module.state_dict()[k]) for k, v in tuned[0].module.state_dict().items())
    stopped = fine_tune(model, Data((data["x_calib"][:64],), None, 0), quantizer, 50, 1e-9, 3)
    assert stopped.block["loss"] == "distillation"
    assert (stopped.block["steps_done"], stopped.block["stopped_by"]) == (1, "time")


class _BatchOne(torch.nn.Module):
    """Reshapes to batch 1 explicitly, as a graph exported at batch 1 does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.fc = torch.nn.Linear(4 * 6 * 6, 10)

    def forward(self, x):
        return self.fc(torch.relu(self.conv(x)).reshape(1, -1))


@pytest.mark.slow
def test_a_graph_exported_at_batch_one_trains_in_samples_of_one(setting):
    """The graph only runs at batch 1: the simulation runs at batch 1, and a step still averages 32 samples."""
    _, data, quantizer = setting
    torch.manual_seed(0)
    module = torch.export.export(_BatchOne().eval(), (torch.zeros(1, 1, 8, 8),)).module(check_guards=False)
    tuned = fine_tune(module, Data((data["x_calib"][:40],), None, 0), quantizer, 2, 600, 0,
                      held_out=(data["x_eval"][:5],))
    assert tuned.batch == 1 and tuned.block["batch"] == 32 and tuned.block["steps_done"] == 2
    assert simulate(tuned, (data["x_eval"][:5],))[0].shape == (5, 10)


class _ShortNorm(torch.nn.Module):
    """A LayerNorm over rows of 4 features, some of them constant: their variance + eps rounds to 0 on INT8."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.norm, self.head = torch.nn.Linear(6, 4), torch.nn.LayerNorm(4, eps=1e-6), torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.norm(self.up(x)))


def test_a_layernorm_whose_variance_rounds_to_zero_trains_with_finite_weights(setting):
    """LiteRT's LayerNorm is RSQRT of an INT8 variance: a row whose variance rounds to 0 saturates there. The
    simulation's gradient stays finite at that point (rsqrt(0) would make every weight NaN after one step)."""
    quantizer = setting[2]
    torch.manual_seed(0)
    model = _ShortNorm().eval()
    with torch.no_grad():  # rows where x's first feature is 0 give the same value on every feature
        model.up.weight.zero_(), model.up.weight[:, 0].copy_(torch.tensor([2.0, -1.0, 0.5, 3.0]))
        model.up.bias.fill_(0.25)
    x = np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32)
    x[::2, 0] = 0.0
    tuned = fine_tune(model, Data((x,), None, None), quantizer, 3, 600, 0)
    assert tuned.block["skipped_steps"] == 0 and tuned.block["steps_done"] == 3
    assert all(torch.isfinite(p).all() for p in tuned.module.parameters())
    assert np.isfinite(simulate(tuned, (x[:8],))[0]).all()


@pytest.mark.slow
def test_the_weights_kept_are_those_with_the_lowest_held_out_loss(setting, tuned, monkeypatch):
    """A fifth of the samples is held out; the weights with the lowest loss there are kept: the fine-tuned ones when
    the steps help (a small learning rate on this model), the original ones when they only hurt (a huge one)."""
    import edgekit.transform.qat as qat

    model, data, quantizer = setting
    helped, _ = tuned
    block = helped.block
    assert block["held_out_samples"] == 0  # 96 samples at batch 32: a batch out would leave too few to train on
    more = Data((data["x_calib"][:160],), data["y_calib"][:160], 0)
    monkeypatch.setattr(qat, "LEARNING_RATE", 1e-5)
    good = fine_tune(model, more, quantizer, 6, 600, 0)
    checks = good.block["held_out_loss"]
    assert good.block["held_out_samples"] == 32 and [step for step, _ in checks] == [0, 1, 2, 3, 4, 5, 6]
    best = good.block["best_step"]
    assert best > 0 and dict(checks)[best] == min(value for _, value in checks)  # (rounded: ties are possible)
    monkeypatch.setattr(qat, "LEARNING_RATE", 0.1)
    bad = fine_tune(model, more, quantizer, 6, 600, 0)
    assert bad.block["best_step"] == 0 and min(v for _, v in bad.block["held_out_loss"][1:]) > bad.block[
        "held_out_loss"][0][1]
    assert all(torch.equal(p, q) for p, q in zip(bad.module.parameters(), model.parameters()))
