"""Compression: pruning, clustering, scoping and recovery at the torch level (fast), and on the real INT8 TFLite
that onnx2tf makes of the compressed model (slow): zeros and k values survive, size, accuracy.

The model is the digits CNN at width 48 / hidden 256 (438,378 parameters) with the trained weights that ship with
example 03 (the same on every machine; training it here would not be). Recovery fine-tunes on the spot, so what
follows it is checked with bounds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from benchmarks.bench_compress import HIDDEN, WIDTH, convert_module, device_accuracy
from edgekit.config.options import Cluster, Prune
from edgekit.errors import ConfigError
from edgekit.measure.size import gzip_size
from edgekit.routes.litert.weights import device_weights
from edgekit.transform.compress.cluster import cluster_array, kmeans_1d, max_distinct
from edgekit.transform.compress.common import match_weights, preservation
from edgekit.transform.compress.torch import compress
from examples.digits import load_digits_split
from tests.helpers import shipped_wide_digits_cnn

COMPRESSED = ("features.3", "classifier.1")  # the first and last layer are left alone by default


@pytest.fixture(scope="module")
def trained():
    return shipped_wide_digits_cnn(), load_digits_split(seed=0)


def torch_accuracy(model, data) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(data["x_eval"])).argmax(1).numpy() == data["y_eval"]).mean())


def rows_by_module(block: dict) -> dict[str, dict]:
    return {row["module"]: row for row in block["per_layer"]}


def weight(model, name: str) -> np.ndarray:
    return model.get_submodule(name).weight.detach().numpy()


# --- torch level ---------------------------------------------------------------------------------------------


def test_model_is_big_enough(trained):
    model, data = trained
    assert (WIDTH, HIDDEN) == (48, 256)
    assert sum(p.numel() for p in model.parameters()) == 438_378
    assert torch_accuracy(model, data) >= 0.98


def test_unstructured_pruning_is_exact_per_layer_and_leaves_the_original_alone(trained):
    model, data = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruned, block = compress(model, Prune(0.5), None, data["x_calib"], recover_steps=0, seed=0)
    rows = rows_by_module(block)
    assert pruned is not model and not pruned.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for name in COMPRESSED:
        assert rows[name]["requested_sparsity"] == 0.5 and rows[name]["measured_sparsity"] == 0.5
        assert np.mean(weight(pruned, name) == 0) == 0.5
    assert rows["features.0"]["skipped"].startswith("prune: first layer, kept by default")
    assert rows["classifier.3"]["skipped"].startswith("prune: last layer, kept by default")
    assert block["sparsity"] == 0.5 and block["mode"] == "unstructured" and block["clusters"] is None
    assert block["params_after"] == block["params_before"] and block["nonzero_params_after"] < block["params_before"]


def test_compression_block_fits_the_report_schema(trained):
    import json

    import jsonschema

    from edgekit.bundle.report import report_schema

    model, data = trained
    schema = report_schema()
    compression = {"$defs": schema.get("$defs", {}), **schema["properties"]["compression"]}
    for prune, cluster in ((Prune(0.5), Cluster(16)), (Prune(0.5, mode="structured"), None), (None, Cluster(8))):
        block = compress(model, prune, cluster, data["x_calib"])[1]
        jsonschema.validate(json.loads(json.dumps(block)), compression)
        assert {"sparsity", "clusters", "mode", "params_before", "params_after", "flops_before", "flops_after",
                "recovered_steps", "per_layer", "skipped"} <= set(block)


def test_global_scope_ranks_weights_across_layers(trained):
    model, data = trained
    pruned, block = compress(model, Prune(0.5, scope="global"), None, data["x_calib"])
    zeros = sum(int((weight(pruned, n) == 0).sum()) for n in COMPRESSED)
    total = sum(weight(pruned, n).size for n in COMPRESSED)
    assert zeros == round(0.5 * total)
    measured = [rows_by_module(block)[n]["measured_sparsity"] for n in COMPRESSED]
    assert measured[0] != pytest.approx(measured[1], abs=0.01)


def test_most_specific_rule_wins(trained):
    model, data = trained
    prune = Prune(0.3, per_type={"Conv2d": 0.4, "Linear": 0.6}, per_name={"features.0": 0.2, "classifier.1": 0.7})
    rows = rows_by_module(compress(model, prune, None, data["x_calib"])[1])
    assert {n: r["requested_sparsity"] for n, r in rows.items()} == {
        "features.0": 0.2,  # a name rule beats the default protection of the first layer
        "features.3": 0.4,  # type rule
        "classifier.1": 0.7,  # a name rule beats a type rule
        "classifier.3": None}  # the last layer's protection beats a type rule
    excluded = Prune(0.3, per_type={"Linear": 0.6}, per_name={"features.0": 0.2}, exclude=("features.*",),
                     keep_edges=False)
    rows = rows_by_module(compress(model, excluded, None, data["x_calib"])[1])
    assert rows["features.0"]["skipped"] == "prune: excluded by prune exclude 'features.*'"
    assert rows["classifier.3"]["requested_sparsity"] == 0.6


def test_rules_that_match_nothing_are_listed_and_conflicts_raise(trained):
    model, data = trained
    block = compress(model, Prune(0.5, per_name={"feature.3": 0.5}, per_type={"Conv3d": 0.1}), None,
                     data["x_calib"])[1]
    assert block["unmatched_rules"] == ["prune per_name 'feature.3' matched no layer",
                                        "prune per_type 'Conv3d' matched no layer (types present: Conv2d, Linear)"]
    with pytest.raises(ConfigError, match=r"layer classifier.1 matches per_name rules with different values"):
        compress(model, Prune(0.5, per_name={"classifier.*": 0.5, "*.1": 0.7}), None, data["x_calib"])
    regex = rows_by_module(compress(model, Prune(0.5, per_name={r"re:features\.\d+": 0.25}), None,
                                    data["x_calib"])[1])
    assert regex["features.0"]["requested_sparsity"] == regex["features.3"]["requested_sparsity"] == 0.25


@pytest.mark.parametrize("make, message", [
    (lambda: Prune(0.5, per_type={"Linear": 1.5}), "prune = 1.5 is outside [0, 1]"),
    (lambda: Prune(1.0, mode="structured"), "structured pruning cannot remove every channel of a layer (fraction 1.0)"),
    (lambda: Prune(0.5, scope="model"), "prune scope = 'model' is not one of layer, global"),
    (lambda: Prune(0.5, exclude=("re:[",)), "prune exclude: 're:[' is not a valid regular expression: "
                                            "unterminated character set at position 0"),
    (lambda: Cluster(16, codebook="row"), "cluster codebook = 'row' is not one of shared, channel, tensor"),
    (lambda: Cluster(16, per_name={"features.3": 300}), "clusters = 300 is outside 2..256"),
])
def test_compression_options_are_validated(make, message):
    with pytest.raises(ConfigError) as info:
        make()
    assert info.value.message == message


def test_rules_are_frozen_data():
    prune = Prune(0.5, per_name={"b": 0.1, "a": None})
    assert prune.per_name == (("a", None), ("b", 0.1))
    with pytest.raises(AttributeError):
        prune.fraction = 0.2  # type: ignore[misc]


def test_structured_pruning_removes_channels(trained):
    model, data = trained
    pruned, block = compress(model, Prune(0.5, mode="structured"), None, data["x_calib"])
    rows = rows_by_module(block)
    assert block["params_after"] <= 0.6 * block["params_before"]
    assert block["flops_after"] < 0.6 * block["flops_before"]
    assert rows["features.3"]["out_channels"] == [96, 48] and rows["classifier.1"]["out_channels"] == [256, 128]
    assert rows["classifier.1"]["in_channels"] == [1536, 768]  # coupled through the flatten
    assert rows["classifier.3"]["out_channels"] == [10, 10] and rows["features.0"]["out_channels"] == [48, 48]
    assert sum(p.numel() for p in pruned.parameters()) == block["params_after"]
    assert block["sparsity"] is None and block["mode"] == "structured"


def test_clustering_keeps_zeros_and_at_most_k_values_per_channel(trained):
    model, data = trained
    pruned, _ = compress(model, Prune(0.5), None, data["x_calib"])
    clustered, block = compress(model, Prune(0.5), Cluster(16), data["x_calib"])
    for name in COMPRESSED:
        assert np.array_equal(weight(pruned, name) == 0, weight(clustered, name) == 0)
        assert max_distinct(weight(clustered, name)) == rows_by_module(block)[name]["max_distinct"] <= 16
        rows = weight(clustered, name).reshape(weight(clustered, name).shape[0], -1)
        codes = np.round(rows / np.abs(rows).max(1, keepdims=True) * 127)
        assert np.unique(codes[codes != 0]).size <= 16  # shared codebook: one set of INT8 codes for the layer
    assert torch_accuracy(clustered, data) >= torch_accuracy(model, data) - 0.01


@pytest.mark.parametrize("codebook", ["channel", "tensor"])
def test_other_codebooks(codebook):
    rng = np.random.default_rng(0)
    array = rng.normal(size=(8, 4, 3, 3)).astype(np.float32) * (rng.random((8, 4, 3, 3)) > 0.3)
    clustered, tied = cluster_array(array, 5, codebook)
    assert np.array_equal(clustered == 0, array == 0) and np.array_equal(tied.labels < 0, array == 0)
    assert max_distinct(clustered) <= 5
    if codebook == "tensor":
        assert np.unique(clustered[clustered != 0]).size <= 5


def test_kmeans_1d_is_deterministic_and_its_centroids_are_means():
    values = np.random.default_rng(1).laplace(size=2000)
    centroids, labels = kmeans_1d(values, 16)
    again = kmeans_1d(values, 16)
    assert np.array_equal(centroids, again[0]) and np.array_equal(labels, again[1])
    assert centroids.size == 16 and np.all(np.diff(centroids) > 0)
    assert np.allclose(centroids, [values[labels == j].mean() for j in range(16)])
    pinned, _ = kmeans_1d(values / np.abs(values).max(), 8, fixed=(-1.0, 1.0))
    assert pinned[0] == -1.0 and pinned[-1] == 1.0


def test_recovery_keeps_zeros_and_clusters(trained):
    model, data = trained
    plain, _ = compress(model, Prune(0.5), Cluster(16), data["x_calib"])
    recovered, block = compress(model, Prune(0.5), Cluster(16), data["x_calib"], recover_steps=40, seed=0)
    assert block["recovered_steps"] == 40 and block["recovery"]["loss_last"] < block["recovery"]["loss_first"]
    for name in COMPRESSED:
        assert np.array_equal(weight(plain, name) == 0, weight(recovered, name) == 0)
        assert max_distinct(weight(recovered, name)) <= 16
        assert not np.array_equal(weight(plain, name), weight(recovered, name))  # the centroids did move


class _Odd(nn.Module):
    """A conv, a layer type compression does not handle, and a linear layer the forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.up = nn.ConvTranspose2d(4, 4, 2)
        self.unused = nn.Linear(4, 4)
        self.head = nn.Linear(4 * 9 * 9, 3)

    def forward(self, x):
        return self.head(self.up(self.conv(x)).flatten(1))


def test_layers_that_cannot_take_part_are_recorded():
    block = compress(_Odd().eval(), Prune(0.5, keep_edges=False), None, np.zeros((4, 1, 10, 10), np.float32))[1]
    assert block["skipped"] == {"up": "ConvTranspose2d is not a compressible layer type (Conv1d, Conv2d, Conv3d, "
                                      "Linear)", "unused": "not run by the forward pass on the calibration data"}
    assert [r["module"] for r in block["per_layer"]] == ["conv", "head"]
    with pytest.raises(ConfigError, match="compress needs prune or cluster"):
        compress(_Odd(), None, None, np.zeros((4, 1, 10, 10), np.float32))


def test_device_tensors_are_matched_through_layouts_and_scales():
    rng = np.random.default_rng(0)
    conv = rng.normal(size=(8, 4, 3, 3)) * (rng.random((8, 4, 3, 3)) > np.linspace(0.1, 0.8, 8)[:, None, None, None])
    other = rng.normal(size=(4, 8, 3, 3))
    scale = rng.uniform(0.5, 2.0, size=(8, 1, 1, 1))
    as_int8 = np.round(conv * scale / np.abs(conv * scale).max(axis=(1, 2, 3), keepdims=True) * 127).astype(np.int8)
    device = [("other", other.transpose(0, 2, 3, 1)), ("conv", as_int8.transpose(0, 2, 3, 1))]
    matched = match_weights({"features.3": conv, "features.x": other}, device)
    assert matched["features.3"][0] == "conv" and matched["features.3"][2] == 0
    assert matched["features.x"][0] == "other"


# --- on the real converted model (onnx2tf, INT8 per channel) --------------------------------------------------


@pytest.fixture(scope="module")
def original_tflite(trained, tmp_path_factory):
    model, data = trained
    return convert_module(model, data["x_calib"], tmp_path_factory.mktemp("original"))


@pytest.fixture(scope="module")
def pruned_clustered(trained, tmp_path_factory):
    """Prune 50 % + 16 clusters + a short recovery, converted to INT8."""
    model, data = trained
    compressed, block = compress(model, Prune(0.5), Cluster(16), data["x_calib"], recover_steps=100, seed=0)
    return compressed, block, convert_module(compressed, data["x_calib"], tmp_path_factory.mktemp("pc"))


@pytest.fixture(scope="module")
def structured(trained, tmp_path_factory):
    model, data = trained
    compressed, block = compress(model, Prune(0.5, mode="structured"), None, data["x_calib"], recover_steps=100)
    return compressed, block, convert_module(compressed, data["x_calib"], tmp_path_factory.mktemp("structured"))


@pytest.mark.slow
def test_int8_keeps_the_zeros_and_the_k_values(pruned_clustered):
    compressed, block, converted = pruned_clustered
    rows, warnings = preservation(block, device_weights(converted.int8), compressed)
    assert warnings == []
    by_module = {r["module"]: r for r in rows}
    for name in COMPRESSED:
        row = by_module[name]
        assert row["device_tensor"] is not None
        assert abs(row["device_sparsity"] - row["requested_sparsity"]) <= 0.01
        assert row["device_sparsity"] == pytest.approx(0.5, abs=1e-9)  # exact: INT8 keeps every zero
        assert row["device_max_distinct"] <= 16
    int8 = dict(device_weights(converted.int8))
    fc = int8[by_module["classifier.1"]["device_tensor"]]
    assert fc.dtype == np.int8 and np.unique(fc[fc != 0]).size <= 16  # one code set for the whole layer


@pytest.mark.slow
def test_pruned_clustered_int8_is_an_eighth_of_the_float_model_gzipped(original_tflite, pruned_clustered):
    baseline = gzip_size(original_tflite.float32)
    compressed = gzip_size(pruned_clustered[2].int8)
    assert compressed * 8 <= baseline, f"gzip {compressed} B vs float32 {baseline} B (1/{baseline / compressed:.2f})"


@pytest.mark.slow
def test_pruned_clustered_int8_accuracy_within_one_point(trained, pruned_clustered):
    model, data = trained
    compressed, _, converted = pruned_clustered
    device = device_accuracy(converted.int8, converted, compressed, data["x_eval"], data["y_eval"])
    assert (torch_accuracy(model, data) - device) * 100 <= 1.0


@pytest.mark.slow
def test_structured_int8_model_has_fewer_weights_and_keeps_accuracy(trained, original_tflite, structured):
    model, data = trained
    compressed, block, converted = structured
    assert block["params_after"] <= 0.6 * block["params_before"]
    before = sum(a.size for _, a in device_weights(original_tflite.int8))
    after = sum(a.size for _, a in device_weights(converted.int8))
    assert after <= 0.6 * before
    rows, warnings = preservation(block, device_weights(converted.int8), compressed)
    assert warnings == [] and all(r["device_tensor"] for r in rows)
    device = device_accuracy(converted.int8, converted, compressed, data["x_eval"], data["y_eval"])
    assert (torch_accuracy(model, data) - device) * 100 <= 1.0


@pytest.mark.slow
def test_a_device_model_without_the_compression_is_reported(trained, original_tflite, pruned_clustered):
    compressed, block, _ = pruned_clustered
    rows, warnings = preservation(block, device_weights(original_tflite.int8), compressed)
    sparsity = {r["module"]: r["device_sparsity"] for r in rows}
    assert f"conversion lost sparsity in features.3: requested 0.50, device {sparsity['features.3']:.2f}" in warnings
    assert any(w.startswith("conversion lost clustering in classifier.1: k = 16, device has up to ") for w in warnings)


def test_lifting_a_saved_graph_gives_layer_modules_with_the_same_function_and_names():
    """A .pt2's graph, conv / linear / batch-norm calls turned back into modules on the same parameters."""
    import torch

    from edgekit.transform.compress.lift import lifted_module

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv1d(4, 8, 3, padding=1), torch.nn.BatchNorm1d(8), torch.nn.ReLU(),
                              torch.nn.Conv1d(8, 8, 3, groups=2), torch.nn.Flatten(), torch.nn.Linear(8 * 14, 3))
    net[1].running_mean.normal_()
    net.eval()
    example = torch.randn(1, 4, 16)
    lifted = lifted_module(torch.export.export(net, (example,)))
    kinds = {name: type(module).__name__ for name, module in lifted.named_modules() if name}
    assert kinds == {"0": "Conv1d", "1": "BatchNorm1d", "3": "Conv1d", "5": "Linear"}
    assert lifted.get_submodule("3").groups == 2
    batch = torch.randn(5, 4, 16)  # the export's batch-1 guard is gone: any batch runs
    with torch.no_grad():
        assert torch.allclose(lifted(batch), net(batch), atol=1e-6)
