"""Quantization groups (edgekit/measure/groups.py): rows one weightless op apart with the same grid move together."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgekit.measure.groups import onnx_links, scale_groups


def _row(tensor: str, scale: float, zero_point: int = -128, dtype: str = "int8") -> dict:
    return {"tensor": tensor, "module": tensor, "scale": scale, "zero_point": zero_point, "dtype": dtype}


def test_linked_rows_on_one_grid_are_one_group_and_equal_grids_elsewhere_are_not():
    rows = [_row("relu", 0.5), _row("pool", 0.5), _row("flat", 0.5), _row("relu6_a", 6 / 255), _row("relu6_b", 6 / 255),
            _row("conv", 0.25)]
    links = [("relu", "pool"), ("pool", "flat"), ("flat", "conv")]  # conv: another grid, so not tied
    groups = scale_groups(rows, links)
    assert [[r["tensor"] for r in g] for g in groups] == [["relu", "pool", "flat"], ["relu6_a"], ["relu6_b"],
                                                         ["conv"]]


def test_a_different_zero_point_or_dtype_is_another_grid():
    rows = [_row("a", 0.5), _row("b", 0.5, zero_point=0), _row("c", 0.5, dtype="int16")]
    assert len(scale_groups(rows, [("a", "b"), ("b", "c")])) == 3


def test_onnx_links_pass_through_weightless_ops_only(tmp_path: Path):
    """Conv (a weight) computes a new range: no link; MaxPool and Reshape (a rank-1 shape constant) pass theirs."""
    weight = numpy_helper.from_array(np.ones((2, 1, 1, 1), "float32"), "w")
    shape = numpy_helper.from_array(np.array([1, -1], "int64"), "shape")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["conv"]), helper.make_node("Relu", ["conv"], ["relu"]),
         helper.make_node("MaxPool", ["relu"], ["pool"], kernel_shape=[2, 2]),
         helper.make_node("Reshape", ["pool", "shape"], ["flat"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("flat", TensorProto.FLOAT, None)], [weight, shape])
    onnx.save(helper.make_model(graph), tmp_path / "m.onnx")
    assert onnx_links(tmp_path / "m.onnx") == [("conv", "relu"), ("relu", "pool"), ("pool", "flat")]
