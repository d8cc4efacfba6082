"""The ONNX repairs: each matches only its pattern, computes the same function in onnxruntime, and is gone after
it ran. (That onnx2tf converts the pattern wrongly without the repair, and right with it, is measured by the op
conformance suite: tests/conformance/test_conformance.py::test_without_its_repair_the_case_converts_wrong.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgekit.routes.litert.repairs import (
    REGISTRY,
    Applied,
    apply_repairs,
    avgpool_pads,
    by_name,
    repair_export,
    resize_matmul,
)
from edgekit.routes.litert.repairs.graph import ambiguous_layout
from tests.conformance.cases import BY_NAME, REPAIRED

# repair -> (a case it must rewrite, a close case it must leave alone)
PATTERNS = {
    "maxpool-pads-as-edge-pad": ("maxpool2d/k3-s2-pad1", "maxpool2d/k3-pad1-dilation2"),
    "avgpool-pads-as-depthwise-conv": ("avgpool2d/k3-s2-pad1-exclude-pad", "avgpool2d/k3-s2-ceil"),
    "resize-as-matmul": ("resize/bilinear-x2-align-corners", "resize/nearest-x2"),
    "slice-channels-as-gather": ("slice/channels-and-strided-hw", "slice/hw-only"),
    "wrap-pad-as-concat": ("conv2d/padding-mode-circular", "pad/reflect"),
    "erf-as-polynomial": ("gelu/erf", "gelu/tanh"),
    "layernorm-as-reductions": ("layernorm/chw", "layernorm/last-dim"),
    "recurrent-unrolled": ("gru/one-layer", "lstm/65-steps-not-unrolled"),
}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """case name -> (path of its exported ONNX, test inputs); exported once per module."""
    from edgekit.inputs.model import load_model
    from edgekit.transform.export import export_onnx, resolve_inputs
    from tests.conformance.harness import draw_inputs

    folder, found = tmp_path_factory.mktemp("repairs"), {}

    def export(name: str) -> tuple[Path, dict]:
        if name not in found:
            case = BY_NAME[name]
            loaded = load_model(case.module())
            specs = resolve_inputs(loaded, {f"x{i}": s for i, s in enumerate(case.shapes)})
            path = export_onnx(loaded, specs, folder / f"{name.replace('/', '__')}.onnx").path
            found[name] = (path, draw_inputs(case, specs, 8, seed=3))
        return found[name]

    return export


def run_onnx(model, inputs: dict) -> dict:
    """onnxruntime with graph optimisations off (they could hide a difference)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    rows = [session.run(names, {k: v[i:i + 1] for k, v in inputs.items()}) for i in range(8)]
    return {name: np.concatenate([row[j] for row in rows]) for j, name in enumerate(names)}


def test_every_repair_has_a_pattern_here_and_a_conformance_case():
    assert set(PATTERNS) == {r.NAME for r in REGISTRY} == set(REPAIRED.values())
    for repair in REGISTRY:
        assert repair.PROBLEM and callable(repair.matches) and callable(repair.apply) and callable(repair.targets)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_repair_matches_its_pattern_and_leaves_the_close_case_alone(name, exported):
    repair = by_name(name)
    target, other = PATTERNS[name]
    assert repair.matches(onnx.load(str(exported(target)[0])))
    assert not repair.matches(onnx.load(str(exported(other)[0])))


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_repair_computes_the_same_function_and_is_gone_afterwards(name, exported):
    repair = by_name(name)
    path, inputs = exported(PATTERNS[name][0])
    model = onnx.load(str(path))
    repaired = repair.apply(model)
    onnx.checker.check_model(repaired)
    assert repair.matches(model) and not repair.matches(repaired)  # the original is left as it was
    before, after = run_onnx(model, inputs), run_onnx(repaired, inputs)
    for key, value in before.items():
        assert np.abs(after[key] - value).max() <= 1e-6 * np.abs(value).max()


def test_apply_repairs_records_name_and_nodes_and_repair_export_writes_a_copy(exported, tmp_path):
    from edgekit.transform.export import OnnxExport

    path, _ = exported("maxpool2d/k3-s2-pad1")
    _, applied = apply_repairs(onnx.load(str(path)))
    assert applied == [Applied("maxpool-pads-as-edge-pad", ("node_max_pool2d",), by_name(
        "maxpool-pads-as-edge-pad").PROBLEM)]
    assert applied[0].to_dict()["nodes"] == ["node_max_pool2d"]
    assert "repaired before conversion: maxpool-pads-as-edge-pad on node_max_pool2d" in applied[0].note()
    export = OnnxExport(path, (), (), "test")
    repaired, again = repair_export(export, tmp_path / "r")
    assert repaired.path == tmp_path / "r" / path.name and repaired.path.is_file() and again == applied
    clean = OnnxExport(exported("conv2d/3x3-pad1")[0], (), (), "test")
    assert repair_export(clean, tmp_path / "c") == (clean, []) and not (tmp_path / "c").exists()


def test_unknown_repair_names_the_known_ones():
    with pytest.raises(KeyError, match="known: maxpool-pads-as-edge-pad"):
        by_name("nope")


def test_avgpool_window_counts_and_correction():
    assert list(avgpool_pads.window_counts(10, 3, 2, 1, 1)) == [2, 3, 3, 3, 3]
    assert list(avgpool_pads.window_counts(16, 3, 1, 1, 1)) == [2] + [3] * 14 + [2]


def test_resize_coordinates_follow_onnx():
    assert list(resize_matmul.source_coordinates("align_corners", 8, 16, 2.0)[[0, -1]]) == [0.0, 7.0]
    assert list(resize_matmul.source_coordinates("asymmetric", 8, 12, 1.5)[:3]) == pytest.approx([0, 2 / 3, 4 / 3])
    nearest = resize_matmul._nearest(np.floor(resize_matmul.source_coordinates("asymmetric", 8, 12, 1.5)), 8)
    assert (nearest.sum(axis=1) == 1).all() and list(nearest.argmax(axis=1)[:4]) == [0, 0, 1, 2]


def test_ambiguous_layouts_are_recognised():
    assert ambiguous_layout((1, 4, 4, 4)) and ambiguous_layout((1, 8, 10, 8))
    assert not ambiguous_layout((1, 4, 10, 12)) and not ambiguous_layout((1, 16))
