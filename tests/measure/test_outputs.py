"""Several outputs keep the names the PyTorch model gives them (dict keys, namedtuple fields) in report.json,
manifest.json and the golden files; a plain tuple gets output_0..k."""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import edgekit

Face = collections.namedtuple("Face", ["landmarks", "face_prob"])


class Heads(torch.nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.box, self.cls = torch.nn.Linear(8, 4), torch.nn.Linear(8, 5)

    def forward(self, x):
        h = self.conv(x).relu().mean((2, 3))
        box, scores = self.box(h), self.cls(h).softmax(1)
        if self.kind == "dict":
            return {"bbox_reg": box, "scores": scores}
        if self.kind == "namedtuple":
            return Face(box, scores)
        return box, scores


def _model(kind: str) -> Heads:
    torch.manual_seed(0)
    return Heads(kind).eval()


@pytest.mark.parametrize(("kind", "target", "names"), [
    ("dict", "android-arm64-int8", ["bbox_reg", "scores"]),
    ("namedtuple", "onnxruntime-arm64-int8", ["landmarks", "face_prob"]),
    ("tuple", "onnxruntime-arm64-fp32", ["output_0", "output_1"]),
])
@pytest.mark.slow
def test_output_names_come_from_the_model(kind, target, names, tmp_path: Path):
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    result = edgekit.build(_model(kind), target, x[:32], x[32:], tmp_path / kind,
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        gate=edgekit.Gate(max_drop=100.0, min_agreement=0.0)))
    assert [o["name"] for o in result.report["drift"]["outputs"]] == names
    assert [o["name"] for o in result.report["conversion"]["outputs"]] == names
    assert [o["name"] for o in result.manifest["device"]["signature"]["outputs"]] == names
    with np.load(tmp_path / kind / "golden" / "outputs.npz") as golden:
        assert sorted(golden) == sorted(f"{side}/{n}" for side in ("reference", "device") for n in names)


def test_tasks_are_decided_by_name_then_shape_and_ambiguity_is_said():
    from edgekit.measure.tasks import output_tasks

    assert output_tasks({"bbox_reg": (1, 4), "scores": (1, 5)}, None)[0] == {"bbox_reg": "regress",
                                                                           "scores": "classify"}
    assert output_tasks({"output": (1, 10)}, None)[0] == {"output": "classify"}
    assert output_tasks({"output_0": (1, 3234, 4), "output_1": (1, 3234, 91)}, None)[0] == {
        "output_0": "regress", "output_1": "regress"}
    assert output_tasks({"embedding": (1, 128)}, None)[0] == {"embedding": "embed"}
    # an unnamed face model: box regression (4 values) beside a face probability (2): nothing tells them apart
    tasks, [warning] = output_tasks({"output_0": (1, 4), "output_1": (1, 2)}, np.array([0, 1, 1]))
    assert tasks == {"output_0": "regress", "output_1": "regress"}
    assert warning.startswith("outputs output_0, output_1 could each be class scores: none is gated by top-1")
    # labels up to 7 fit only the 10-class output
    assert output_tasks({"output_0": (1, 4), "output_1": (1, 10)}, np.array([7, 2]))[0]["output_1"] == "classify"
    asked = output_tasks({"output_0": (1, 4), "output_1": (1, 2)}, None, per_output={"output_1": "classify"})[0]
    assert asked == {"output_0": "regress", "output_1": "classify"}
    assert set(output_tasks({"a": (1, 4), "b": (1, 8)}, None, task="embed")[0].values()) == {"embed"}


def test_unknown_or_impossible_tasks_are_refused(tmp_path: Path):
    from edgekit.config.options import load_outputs_file
    from edgekit.errors import ConfigError
    from edgekit.measure.tasks import output_tasks

    with pytest.raises(ConfigError, match="--outputs names box, which the model does not have") as info:
        output_tasks({"bbox_reg": (1, 4)}, None, per_output={"box": "regress"})
    assert info.value.exit_code == 2 and "bbox_reg" in info.value.hint
    with pytest.raises(ConfigError, match=r"output out has shape \(1,\): class scores need an axis 1"):
        output_tasks({"out": (1,)}, None, task="classify")
    (tmp_path / "o.toml").write_text('[outputs]\nbbox_reg = "regression"\n')
    with pytest.raises(ConfigError, match=r"bbox_reg = .regression. is not one of classify, regress, embed, detect"):
        load_outputs_file(tmp_path / "o.toml")


def test_regress_outputs_are_gated_by_sqnr_beside_the_classify_one(tmp_path: Path):
    """bbox_reg (regress) must reach --min-sqnr while scores (classify) is gated by agreement: an unreachable
    floor fails the build on the box output alone, named in the reason."""
    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    result = edgekit.build(_model("dict"), "onnxruntime-arm64-int8", x[:32], x[32:], tmp_path / "b",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        gate=edgekit.Gate(min_agreement=0.0, min_sqnr=150.0)))
    rows = {o["name"]: o for o in result.report["drift"]["outputs"]}
    assert (rows["bbox_reg"]["task"], rows["scores"]["task"]) == ("regress", "classify")
    assert result.report["drift"]["top1_agreement"] is not None and not result.passed
    reasons = edgekit.measure.drift.failure_reasons(result.report["drift"])
    assert reasons == [f"output bbox_reg SQNR {rows['bbox_reg']['sqnr_db']:.1f} dB < min 150.0 dB"]
    assert result.manifest["device"]["tolerances"]["tasks"] == {"bbox_reg": "regress", "scores": "classify"}


def test_outputs_file_and_embed_task_through_the_cli(tmp_path: Path):
    from click.testing import CliRunner

    from edgekit.cli import main

    x = np.random.default_rng(0).standard_normal((40, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x[:32])
    np.savez(tmp_path / "eval.npz", x=x[32:])
    (tmp_path / "outputs.toml").write_text('[outputs]\nbbox_reg = "embed"\nscores = "regress"\n')
    done = CliRunner().invoke(main, ["build", "tests.measure.test_outputs:dict_heads", "--target",
                                     "onnxruntime-arm64-fp32",
                                     "--calibration", str(tmp_path / "calib.npz"), "--eval", str(tmp_path / "eval.npz"),
                                     "--outputs", str(tmp_path / "outputs.toml"), "--out", str(tmp_path / "b"),
                                     "--emulator", "host", "--json"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    report = json.loads((tmp_path / "b" / "report.json").read_text())
    rows = {o["name"]: o for o in report["drift"]["outputs"]}
    assert (rows["bbox_reg"]["task"], rows["scores"]["task"]) == ("embed", "regress")
    assert rows["bbox_reg"]["cosine_min"] > 0.9999 and report["drift"]["top1_agreement"] is None


def dict_heads() -> Heads:
    return _model("dict")


def _segmenter() -> tuple[torch.nn.Module, np.ndarray, np.ndarray]:
    """A small fully convolutional net trained on the spot to label each pixel of the digits images as
    background (0), faint stroke (1) or stroke (2); the border pixels carry the ignore label 255."""
    from examples.digits import load_digits_split

    data = load_digits_split(seed=0)
    x = np.concatenate([data["x_calib"], data["x_eval"]]).astype(np.float32)
    y = np.digitize(x[:, 0], [0.25, 0.6]).astype(np.int64)
    y[:, [0, -1], :] = 255
    y[:, :, [0, -1]] = 255
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(16, 3, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    inputs, targets = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(150):
        loss = torch.nn.functional.cross_entropy(model(inputs), targets, ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), x, y


def test_per_pixel_labels_with_an_ignore_index_gate_pixel_accuracy(tmp_path: Path):
    model, x, y = _segmenter()
    result = edgekit.build(model, "onnxruntime-arm64-int8", calibration=x[:200], eval_data=(x[200:400], y[200:400]),
                           out=tmp_path / "seg",
                           options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host"),
                                                        data=edgekit.Data(ignore_index=255)))
    drift = result.report["drift"]
    assert drift["outputs"][0]["task"] == "classify"  # (N, 3, 8, 8) scores for (N, 8, 8) labels
    assert drift["reference_accuracy"] > 0.95  # over the labelled pixels only: the border is left out
    assert drift["top1_agreement"] > 0.95 and drift["accuracy_drop"] <= 1.0 and result.passed
    inner = x[200:400, 0, 1:-1, 1:-1]
    expected = np.mean(model(torch.from_numpy(x[200:400])).argmax(1).numpy()[:, 1:-1, 1:-1]
                       == np.digitize(inner, [0.25, 0.6]))
    assert drift["reference_accuracy"] == pytest.approx(expected, abs=1e-6)
    assert "labelled pixels change their top-1 class" in (tmp_path / "seg" / "report.html").read_text()


def test_per_pixel_labels_outside_the_classes_are_refused_with_the_ignore_hint(tmp_path: Path):
    model, x, y = _segmenter()
    with pytest.raises(edgekit.DataError, match=r"labels outside the model's 3 classes .*255") as info:
        edgekit.build(model, "onnxruntime-arm64-int8", calibration=x[:200], eval_data=(x[200:400], y[200:400]),
                      out=tmp_path / "seg", options=edgekit.BuildOptions(verify=edgekit.Verify(emulator="host")))
    assert "--ignore-index 255" in info.value.hint and not (tmp_path / "seg").exists()
