"""Quantization groups: the activations that one INT8 scale covers together, read from the built model.

A quantizer ties some activations to one scale and zero point: a max-pool, a reshape or a concat inherits its
input's (onnxruntime, TFLite, XNNPACK each do it their own way), and the next layer reads that same quantized
tensor. Moving one of them to float alone changes nothing — the others still carry the ruined range. So the ladder
of `--fallback auto` moves groups: `layers` rows one weightless op apart in the model the route quantized (a
route's `DeviceModel.layer_links`) whose quantization parameters in the built model are the same. What ties them is
read from the built model, not assumed from op types: two rows of a pool the quantizer gave scales of their own
stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SAME_SCALE = 1e-6  # relative difference under which two scales are one (they are copied, not recomputed)


def onnx_links(path: Path) -> list[tuple[str, str]]:
    """(input, output) tensor pairs of every node of an ONNX graph that has no weight (no initializer of rank >= 2
    among its inputs): pools, reshapes, concats, activations. A weighted op computes a new range: no link."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    weights = {i.name for i in graph.initializer if len(i.dims) >= 2}
    constants = {i.name for i in graph.initializer}
    return [(source, out) for node in graph.node if not weights & set(node.input)
            for source in node.input if source and source not in constants for out in node.output]


def scale_groups(rows: list[dict], links: Iterable[tuple[str, str]]) -> list[list[dict]]:
    """`rows` in groups: linked rows with the same dtype, zero point and scale share one grid. Each group keeps
    its rows in the order given; groups come in the order of their first row."""
    index = {row["tensor"]: i for i, row in enumerate(rows)}
    parent = list(range(len(rows)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in links:
        if a in index and b in index and same_grid(rows[index[a]], rows[index[b]]):
            parent[root(index[b])] = root(index[a])
    groups: dict[int, list[dict]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(root(i), []).append(row)
    return sorted(groups.values(), key=lambda group: index[group[0]["tensor"]])


def same_grid(a: dict, b: dict) -> bool:
    scales = a.get("scale"), b.get("scale")
    if not all(scales) or a.get("dtype") != b.get("dtype") or a.get("zero_point") != b.get("zero_point"):
        return False
    return abs(scales[0] - scales[1]) <= SAME_SCALE * max(abs(scales[0]), abs(scales[1]))


def group_names(group: list[dict]) -> list[str]:
    """The group's members by module (the tensor where no module is known), in order, each once."""
    return list(dict.fromkeys(row.get("module") or row["tensor"] for row in group))
