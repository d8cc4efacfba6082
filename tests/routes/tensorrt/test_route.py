"""The Jetson route: Q/DQ ONNX for TensorRT INT8, the float ONNX for FP16, engine scripts, and check.py on the host.

Without an NVIDIA GPU the device model runs in onnxruntime (TensorRT emulation); tests marked gpu run TensorRT itself
and skip where it is not installed. The engine scripts run here against stand-ins for nvidia-smi and trtexec.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import edgekit
from edgekit.config.options import Calibration
from edgekit.config.target import Target, load_target
from edgekit.errors import ConfigError, UnsupportedError
from edgekit.routes.calibrate import mse_range
from edgekit.routes.tensorrt.build import quantize_qdq
from edgekit.routes.tensorrt.engine_scripts import check_profile, trtexec_flags, write_scripts

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
WEIGHTED = ("Conv", "Gemm", "MatMul")


def build(digits, target: str, out: Path, **options) -> edgekit.BuildResult:
    model, data = digits
    return edgekit.build(model, target, calibration=(data["x_calib"], data["y_calib"]),
                         eval_data=(data["x_eval"], data["y_eval"]), out=out, **options)


@pytest.fixture(scope="module")
def int8_result(digits, tmp_path_factory):
    return build(digits, "jetson-orin-int8", tmp_path_factory.mktemp("jetson") / "digits-int8")


@pytest.fixture(scope="module")
def fp16_result(digits, tmp_path_factory):
    return build(digits, "jetson-orin-fp16", tmp_path_factory.mktemp("jetson") / "digits-fp16")


@pytest.fixture(scope="module")
def other_qdq(tmp_path_factory) -> Path:
    """The Q/DQ ONNX of another digits CNN (other seed, other width): same I/O, different function."""
    from examples.digits import train_digits_cnn

    model, data = train_digits_cnn(width=8, epochs=3, seed=1)
    out = tmp_path_factory.mktemp("jetson") / "other-int8"
    edgekit.build(model, "jetson-orin-int8", calibration=data["x_calib"], eval_data=(data["x_eval"], data["y_eval"]),
                  out=out)
    return out / "model.qdq.onnx"


def graph_parts(path: Path):
    graph = onnx.load(str(path)).graph
    inits = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    return graph, inits, producer


def run(command: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


# --- INT8: the bundle and its numbers --------------------------------------------------------------------------------


def test_int8_bundle_holds_the_jetson_files_and_stays_within_drift(int8_result):
    names = {p.name for p in int8_result.out.iterdir()}
    assert {"model.qdq.onnx", "build_engine.sh", "build_engine.py", "check.py", "manifest.json",
            "report.json", "reference.onnx", "golden"} <= names
    report = json.loads((int8_result.out / "report.json").read_text())
    assert report == int8_result.report and int8_result.passed
    assert report["runtime"]["name"] == "tensorrt"
    assert report["runtime"]["where"] == "onnxruntime-cpu (TensorRT INT8 emulation)"
    assert report["runtime"]["converter"] == "onnxruntime.quantization"
    drift = report["drift"]
    assert drift["samples"] == 360 and drift["top1_agreement"] >= 0.99 and drift["accuracy_drop"] <= 0.5
    assert drift["outputs"][0]["sqnr_db"] > 30.0
    assert report["quantization"]["method"] == "minmax"
    assert report["size"]["device_bytes"] < 0.35 * report["size"]["float_device_bytes"]
    manifest = json.loads((int8_result.out / "manifest.json").read_text())
    assert manifest["device"]["model"] == "model.qdq.onnx" and manifest["device"]["runtime"] == "tensorrt"
    assert {"build_engine.sh", "build_engine.py"} <= set(manifest["files"])


def test_qdq_onnx_passes_the_checker_and_runs_in_onnxruntime(int8_result, digits):
    import onnxruntime as ort

    path = int8_result.out / "model.qdq.onnx"
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["input"] and [o.name for o in session.get_outputs()] == ["output"]
    (logits,) = session.run(None, {"input": digits[1]["x_eval"][:1]})
    assert logits.shape == (1, 10) and logits.dtype == np.float32


def test_qdq_is_standard_symmetric_int8_only(int8_result):
    graph, inits, _ = graph_parts(int8_result.out / "model.qdq.onnx")
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert not [op for op in ops if op.startswith("QLinear") or op in ("ConvInteger", "MatMulInteger")]
    assert {n.domain for n in graph.node} <= {"", "ai.onnx"}
    assert {o.domain for o in onnx.load(str(int8_result.out / "model.qdq.onnx")).opset_import} <= {"", "ai.onnx"}
    qdq = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) == 12  # 4 weights (DQ) + 4 activations (Q and DQ)
    for node in qdq:
        zero_point = inits[node.input[2]]
        assert zero_point.dtype == np.int8 and not zero_point.any(), node.name


def test_qdq_sits_on_the_inputs_of_weighted_ops_only(int8_result):
    graph, inits, producer = graph_parts(int8_result.out / "model.qdq.onnx")
    weighted = [n for n in graph.node if n.op_type in WEIGHTED]
    assert [n.op_type for n in weighted] == ["Conv", "Conv", "Gemm", "Gemm"]
    for node in weighted:
        activation, weight = producer[node.input[0]], producer[node.input[1]]
        assert activation.op_type == "DequantizeLinear" and producer[activation.input[0]].op_type == "QuantizeLinear"
        assert inits[activation.input[1]].shape == ()  # per-tensor activation scale
        assert weight.op_type == "DequantizeLinear" and inits[weight.input[0]].dtype == np.int8
        channels = inits[weight.input[0]].shape[0]
        assert inits[weight.input[1]].shape == (channels,)  # per output channel
        assert {a.name: a.i for a in weight.attribute}.get("axis", 1) == 0
        assert node.input[2] in inits and inits[node.input[2]].dtype == np.float32  # float bias, no INT32 DQ
    quantized_tensors = {n.input[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    weighted_outputs = {o for n in weighted for o in n.output}
    assert not quantized_tensors & weighted_outputs  # no Q/DQ around every op: outputs stay float for TensorRT


# --- the engine scripts ----------------------------------------------------------------------------------------------


def test_engine_scripts_parse_and_carry_the_precision_flags(int8_result, fp16_result):
    for result, trtexec, builder in ((int8_result, "--int8 \\\n    --fp16", "('int8', 'fp16')"),
                                     (fp16_result, "--fp16", "('fp16',)")):
        shell, python = result.out / "build_engine.sh", result.out / "build_engine.py"
        assert run(["bash", "-n", str(shell)], result.out).returncode == 0
        compile(python.read_text(), str(python), "exec")  # parses (nothing written into the bundle)
        script = shell.read_text()
        assert trtexec in script and f"FLAGS = {builder}" in python.read_text()
        assert "--memPoolSize=workspace:2048M" in script and "--timingCacheFile=timing.cache" in script
    assert "--int8" not in (fp16_result.out / "build_engine.sh").read_text()


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here: the script would try to build")
def test_build_engine_py_without_tensorrt_refuses_with_exit_2(int8_result):
    result = run([sys.executable, "build_engine.py"], int8_result.out)
    assert result.returncode == 2
    assert result.stderr.startswith("build_engine.py: refusing to build for jetson-orin-int8: the TensorRT Python "
                                    "bindings are not installed")
    assert "compute capability 8.7 (JetPack 6.1+) with TensorRT 10.3 to 10.99" in result.stderr
    assert not (int8_result.out / "model.engine").exists()


def fake_tools(folder: Path, compute_capability: str, banner: str) -> dict:
    """nvidia-smi, trtexec (logs its arguments) and a python3 without TensorRT, first on PATH."""
    folder.mkdir(exist_ok=True)
    tools = {"nvidia-smi": f"echo '{compute_capability}'",
             "trtexec": f'echo "&&&& RUNNING TensorRT.trtexec [TensorRT {banner}] # trtexec"\n'
                        f'[ "$1" = --help ] && exit 0\necho "$@" > "{folder}/trtexec.args"',
             "python3": "exit 1"}
    for name, body in tools.items():
        (folder / name).write_text(f"#!/bin/sh\n{body}\n")
        (folder / name).chmod(0o755)
    return {**os.environ, "PATH": f"{folder}{os.pathsep}/usr/bin{os.pathsep}/bin"}


@pytest.mark.parametrize(("capability", "banner", "refusal"), [
    ("8.7", "v100300", None),
    ("8.7", "v101600", None),
    ("8.9", "v100300", "this GPU has compute capability 8.9, not 8.7"),
    ("8.7", "v8502", "TensorRT 8.5.2 is outside 10.3 to 10.99"),
    ("8.7", "v110000", "TensorRT 11.0.0 is outside 10.3 to 10.99"),
])
def test_build_engine_sh_checks_the_device_then_runs_trtexec(int8_result, tmp_path, capability, banner, refusal):
    bundle = shutil.copytree(int8_result.out, tmp_path / "bundle")
    env = fake_tools(tmp_path / "bin", capability, banner)
    result = run(["bash", "build_engine.sh"], bundle, env)
    if refusal:
        assert result.returncode == 2
        assert result.stderr.startswith(f"build_engine.sh: refusing to build for jetson-orin-int8: {refusal}")
        assert not (tmp_path / "bin" / "trtexec.args").exists()
        return
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "bin" / "trtexec.args").read_text().split()
    assert args == ["--onnx=model.qdq.onnx", "--saveEngine=model.engine", "--int8", "--fp16",
                    "--memPoolSize=workspace:2048M", "--timingCacheFile=timing.cache"]
    stamp = (bundle / "model.engine.source-sha256").read_text().strip()
    assert stamp == hashlib.sha256((bundle / "model.qdq.onnx").read_bytes()).hexdigest()


def test_build_engine_py_reads_the_device_like_the_shell_script(int8_result, tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", fake_tools(tmp_path / "bin", "8.9", "v100300")["PATH"])
    script = Path(shutil.copyfile(int8_result.out / "build_engine.py", tmp_path / "build_engine.py"))
    spec = importlib.util.spec_from_file_location("generated_build_engine", script)  # a copy: the bundle stays as built
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert [module.version_in_range(v) for v in ("10.3.0.26", "10.16.2", "10.2.1", "8.6.2", "11.0.0")] == [
        True, True, False, False, False]
    assert module.compute_capability() == "8.9"
    assert "this GPU has compute capability 8.9, not 8.7" in module.device_problems()
    assert hasattr(module, "run_engine") == (HAS_TENSORRT and module.CUDA_BINDING is not None)


# --- check.py in the bundle ------------------------------------------------------------------------------------------


def test_check_py_runs_the_golden_check_and_passes(int8_result):
    result = run([sys.executable, "check.py", "--json"], int8_result.out)
    assert result.returncode == 0, result.stderr
    verdict = json.loads(result.stdout)
    assert verdict["passed"] and verdict["model_sha256_matches"] and verdict["samples"] == 16
    if not HAS_TENSORRT:
        assert verdict["runtime"].startswith("onnxruntime")  # "(model.qdq.onnx as written: ...)" without VNNI


def test_check_py_exits_3_for_another_models_qdq_onnx(int8_result, other_qdq, tmp_path):
    bundle = shutil.copytree(int8_result.out, tmp_path / "bundle")
    shutil.copyfile(other_qdq, bundle / "model.qdq.onnx")
    result = run([sys.executable, "check.py", "--json"], bundle)
    assert result.returncode == 3, result.stderr
    assert "model.qdq.onnx differs from the sha256 in manifest.json" in result.stderr and result.stdout == ""
    manifest = json.loads((bundle / "manifest.json").read_text())  # a manifest forged to vouch for the new file:
    manifest["files"]["model.qdq.onnx"] = hashlib.sha256(Path(other_qdq).read_bytes()).hexdigest()
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = run([sys.executable, "check.py", "--json"], bundle)
    assert result.returncode == 3, result.stderr
    verdict = json.loads(result.stdout)
    assert not verdict["passed"] and not verdict["outputs"][0]["passed"]  # the outputs themselves moved


# --- FP16 ------------------------------------------------------------------------------------------------------------


def test_fp16_ships_the_float_export_and_drifts_above_40_db(fp16_result):
    out = fp16_result.out
    assert {"model.onnx", "build_engine.sh", "build_engine.py", "check.py"} <= {p.name for p in out.iterdir()}
    assert (out / "model.onnx").read_bytes() == (out / "reference.onnx").read_bytes()
    report = fp16_result.report
    assert fp16_result.passed and report["runtime"]["where"] == "onnxruntime-cpu (TensorRT FP16 emulation)"
    assert report["drift"]["outputs"][0]["sqnr_db"] >= 40.0 and report["drift"]["top1_agreement"] == 1.0
    assert report["quantization"]["outputs"][0]["sqnr_db"] < 100.0  # the emulation did round to float16
    assert run([sys.executable, "check.py"], out).returncode == 0


# --- calibration -----------------------------------------------------------------------------------------------------


def activation_amax(path: Path) -> dict[str, float]:
    graph, inits, _ = graph_parts(path)
    return {n.input[0]: float(inits[n.input[1]]) * 127 for n in graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.slow
def test_calibration_methods_give_different_activation_ranges(int8_result, digits, tmp_path):
    calibration = {"input": digits[1]["x_calib"][:200]}
    amax = {}
    for method in ("minmax", "percentile", "entropy", "mse"):
        folder = tmp_path / method
        folder.mkdir()
        path = quantize_qdq(int8_result.out / "reference.onnx", calibration, Calibration(method), folder)
        amax[method] = activation_amax(path)
        _, inits, _ = graph_parts(path)
        assert all(not v.any() for k, v in inits.items() if k.endswith("zero_point"))
    assert set(amax["minmax"]) == set(amax["percentile"]) == {"input", "relu", "view", "relu_2"}
    for method in ("percentile", "entropy", "mse"):
        assert amax[method] != amax["minmax"], method
        assert all(amax[method][k] <= amax["minmax"][k] * 1.001 for k in amax["minmax"]), method
    assert amax["minmax"]["input"] == pytest.approx(1.0, rel=1e-6)  # digits are scaled to [0, 1]


def test_calibration_method_reaches_the_report(digits, tmp_path):
    result = build(digits, "jetson-orin-int8", tmp_path / "pct",
                   options=edgekit.BuildOptions(calibration=Calibration("percentile", 99.9)))
    assert result.report["quantization"]["method"] == "percentile" and result.passed


def test_mse_threshold_is_as_good_as_a_search_on_the_raw_values():
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 100_000), rng.uniform(-12, 12, 20)]).astype(np.float32)
    peak = float(np.abs(values).max())
    hist, edges = np.histogram(values, 2048, range=(-peak, peak))

    def error(amax: float) -> float:
        step = amax / 127
        return float(np.mean((values - np.clip(np.round(values / step), -127, 127) * step) ** 2))

    low, threshold = mse_range(hist, edges.astype(np.float32), -peak, peak, symmetric=True)
    assert low == -threshold
    best = min(error(t) for t in np.linspace(0.5, peak, 2000))
    assert threshold < 0.8 * peak and error(threshold) <= 1.02 * best < 0.8 * error(peak)
    assert mse_range(np.zeros(2048, np.int64), np.zeros(2049, np.float32), 0.0, 0.0, symmetric=True) == (0.0, 0.0)


# --- targets and their checks ----------------------------------------------------------------------------------------


def test_jetson_targets_load_with_their_tensorrt_profiles(tmp_path):
    orin, xavier = load_target("jetson-orin-int8"), load_target("jetson-xavier-int8")
    assert (orin.platform, orin.format, orin.precision, orin.runtime) == ("jetson", "onnx-qdq", "int8", "tensorrt")
    assert load_target("jetson-orin-fp16").format == "onnx"
    assert (orin.tensorrt.compute_capability, xavier.tensorrt.compute_capability) == ("8.7", "7.2")
    assert (xavier.tensorrt.min_version, xavier.tensorrt.jetpack) == ("8.5", "5.1")
    # TensorRT 8.x reads --memPoolSize in MiB without a unit
    assert "--memPoolSize=workspace:1024" in trtexec_flags(xavier.tensorrt)
    scripts = write_scripts(xavier, "model.qdq.onnx", tmp_path)
    assert "COMPUTE_CAPABILITY = '7.2'" in scripts["build_engine.py"].read_text()
    assert run(["bash", "-n", str(scripts["build_engine.sh"])], tmp_path).returncode == 0


def test_dla_core_adds_dla_flags():
    raw = {"name": "x", "description": "", "platform": "jetson", "arch": "orin", "format": "onnx-qdq",
           "route": "tensorrt",
           "precision": "int8", "runtime": "tensorrt", "converter": "ort-quant",
           "tensorrt": {"flags": ["int8", "fp16"], "dla_core": 1}}
    flags = trtexec_flags(check_profile(Target.from_dict(raw)))
    assert flags[-2:] == ["--useDLACore=1", "--allowGPUFallback"]


@pytest.mark.parametrize(("precision", "flags", "message"), [
    ("int8", ["int4"], "target x: unknown [tensorrt] flags int4"),
    ("int8", ["fp16"], "target x: precision int8 needs flag 'int8' in [tensorrt] flags"),
    ("fp32", [], "target x: precision fp32 has no Jetson route"),
])
def test_bad_tensorrt_profiles_are_refused(precision, flags, message):
    raw = {"name": "x", "description": "", "platform": "jetson", "arch": "orin", "format": "onnx-qdq",
           "route": "tensorrt",
           "precision": precision, "runtime": "tensorrt", "converter": "ort-quant", "tensorrt": {"flags": flags}}
    with pytest.raises(ConfigError) as info:
        check_profile(Target.from_dict(raw))
    assert info.value.message == message and info.value.exit_code == 2


def test_an_android_converter_is_refused_for_jetson(digits, tmp_path):
    with pytest.raises(UnsupportedError, match="converter onnx2tf does not apply to jetson-orin-int8"):
        build(digits, "jetson-orin-int8", tmp_path / "x",
              options=edgekit.BuildOptions(conversion=edgekit.Conversion(converter="onnx2tf")))
    assert not (tmp_path / "x").exists()


# --- on a real GPU ---------------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TENSORRT, reason="needs TensorRT and a CUDA GPU")
def test_on_a_gpu_the_build_measures_tensorrt_itself(digits, tmp_path):
    result = build(digits, "jetson-orin-int8", tmp_path / "gpu")
    if not result.report["runtime"]["where"].startswith("tensorrt-gpu"):
        pytest.skip("TensorRT is installed but no CUDA GPU or CUDA binding answered")
    assert result.report["drift"]["top1_agreement"] >= 0.99 and result.report["drift"]["accuracy_drop"] <= 0.5
    built = run([sys.executable, "build_engine.py"], result.out)
    assert built.returncode in (0, 2), built.stderr  # 2 where this GPU is not an Orin's
    if built.returncode == 0:
        assert (result.out / "model.engine").is_file()
        check = run([sys.executable, "check.py", "--json"], result.out)
        assert check.returncode == 0 and json.loads(check.stdout)["runtime"] == "tensorrt"
