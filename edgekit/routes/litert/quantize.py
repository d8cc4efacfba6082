"""Post-training quantization of a float32 .tflite with ai-edge-quantizer, from ranges edgekit measures itself.

ai-edge-quantizer's own `Quantizer.calibrate()` averages per-sample min/max (smoothing 0.95): with batch-1 samples
the ranges land well inside the real ones. Here the ranges are computed over the WHOLE calibration set (global
min/max, or a percentile / entropy / MSE threshold on a histogram of all samples) and handed to
`Quantizer.quantize()` as its QSVs ({tensor name: {"min": array, "max": array}}).
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from edgekit.cache import store as step_cache
from edgekit.cache.keys import arrays_key, fetch_arrays, step_key, store_arrays
from edgekit.config.options import CALIBRATION_METHODS as METHODS
from edgekit.errors import ConfigError, ToolError, UnsupportedError

CHUNK = 16  # samples per histogram update
_VALID = 3e38  # beyond this a value is a padding sentinel (-inf in PADV2), not data: as ai-edge-quantizer does
IO_SCOPE = "(?:)"  # matches every scope; a key of its own, so the I/O rules come after every layer's (the last wins)
WEIGHTED_OPS = ("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D_TRANSPOSE", "EMBEDDING_LOOKUP")


def _aeq() -> SimpleNamespace:
    """ai-edge-quantizer's modules, imported on first use (the onnx2tf-only install does not have them)."""
    try:
        from ai_edge_quantizer import algorithm_manager, calibrator, qtyping, quantizer, recipe
        from ai_edge_quantizer.utils import qsv_utils, tfl_interpreter_utils
    except ImportError as exc:
        raise ToolError(f"ai-edge-quantizer is not importable: {exc}",
                        hint="pip install 'edgekit[litert-torch]'") from exc
    return SimpleNamespace(algorithm_manager=algorithm_manager, calibrator=calibrator, qtyping=qtyping,
                           quantizer=quantizer, recipe=recipe, qsv_utils=qsv_utils, interpreter=tfl_interpreter_utils)


def collect_ranges(float_tflite: Path, samples: list[dict[str, np.ndarray]], method: str = "minmax",
                   percentile: float = 99.99) -> dict[str, dict]:
    """Activation ranges of `float_tflite` over every sample, as QSVs that `Quantizer.quantize()` accepts.

    `samples`: one dict per sample, {signature input name: batch-1 array in the device layout}.
    minmax: global min/max; percentile: the (100-p)/2 and (100+p)/2 percentiles (onnxruntime's histogram);
    entropy: the KL-divergence threshold (onnxruntime's); mse: the clipping range that minimises the INT8
    quantization MSE on the histogram. Tensors outside the main subgraph keep their global min/max.
    """
    if method not in METHODS:
        raise ConfigError(f"calibration method {method!r} is not one of {', '.join(METHODS)}",
                          hint=f"use one of: {', '.join(METHODS)}")
    if not samples:
        raise ConfigError("no calibration samples", hint="give at least one calibration sample")
    ranges = _global_min_max(float_tflite, samples)
    if method == "minmax":
        return ranges
    thresholds = _histogram_thresholds(float_tflite, samples, set(ranges), method, percentile)
    for name, (low, high) in thresholds.items():
        shape = ranges[name]["min"].shape
        ranges[name] = {"min": np.full(shape, low, np.float32), "max": np.full(shape, high, np.float32)}
    return ranges


def _global_min_max(float_tflite: Path, samples: list[dict[str, np.ndarray]]) -> dict[str, dict]:
    """ai-edge-quantizer's own calibrator, with a global min/max update instead of its moving average."""
    aeq = _aeq()
    manager = aeq.quantizer.Quantizer(str(float_tflite), aeq.recipe.static_wi8_ai8())._recipe_manager
    with _quiet():
        calib = aeq.calibrator.Calibrator(str(float_tflite), num_threads=1,
                                          qsv_update_func=aeq.qsv_utils.min_max_update)
        calib.calibrate({_signature_key(float_tflite): samples}, manager)
    return {name: {"min": np.asarray(qsv["min"], np.float32), "max": np.asarray(qsv["max"], np.float32)}
            for name, qsv in calib.get_model_qsvs().items() if "min" in qsv}


def _signature_key(float_tflite: Path) -> str:
    with _quiet():
        keys = list(_aeq().interpreter.create_tfl_interpreter(str(float_tflite), num_threads=1,
                                                              preserve_all_tensors=False).get_signature_list())
    if len(keys) != 1:
        raise UnsupportedError(f"{Path(float_tflite).name} has {len(keys)} signatures {keys}; INT8 calibration "
                               "needs exactly one", hint="convert the model with a single (default) signature")
    return keys[0]


@contextlib.contextmanager
def _quiet():
    """The libraries print progress bars, per-call notes and a debug-mode warning; a build keeps its own progress."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _histogram_thresholds(float_tflite: Path, samples: list[dict[str, np.ndarray]], names: set[str], method: str,
                          percentile: float) -> dict[str, tuple[float, float]]:
    """The method's ranges (routes/calibrate.py, shared by every route) over every sample's activations."""
    from edgekit.routes.calibrate import RangeCollector

    collector = RangeCollector(method, percentile, symmetric=False)
    key = _signature_key(float_tflite)
    with _quiet():
        interpreter = _aeq().interpreter.create_tfl_interpreter(str(float_tflite), num_threads=1)
    for start in range(0, len(samples), CHUNK):
        collector.collect(_tensor_values(interpreter, key, samples[start:start + CHUNK], names))
    return collector.ranges()


def _tensor_values(interpreter, key: str, samples: list[dict[str, np.ndarray]],
                   names: set[str]) -> dict[str, np.ndarray]:
    """Float activations among `names`, flattened and concatenated over the samples (sentinel values dropped)."""
    utils = _aeq().interpreter
    subgraph = utils.get_signature_main_subgraph_index(interpreter, key)
    rows: dict[str, list[np.ndarray]] = {}
    for sample in samples:
        utils.invoke_interpreter_signature(interpreter, sample, key)
        for name, value in utils.get_tensor_name_to_content_map(interpreter, subgraph).items():
            if name in names and np.issubdtype(np.asarray(value).dtype, np.floating):
                flat = np.asarray(value, np.float32).ravel()
                rows.setdefault(name, []).append(flat[np.isfinite(flat) & (np.abs(flat) < _VALID)])
    return {name: np.concatenate(parts) for name, parts in rows.items()}


# ai-edge-quantizer's recipe per precision (INT4 is channelwise: 0.10 refuses blockwise for float compute)
RECIPES = {"int8": "static_wi8_ai8", "int16x8": "static_wi8_ai16", "dynamic-int8": "dynamic_wi8_afp32",
           "w4": "weight_only_wi4_afp32"}
# --weight-method -> ai-edge-quantizer's algorithm. Left out, measured on the digits CNN: GPTQ (0.10's static GPTQ
# wrote an unquantized model that drifted to -0.3 dB; its weight-only form needs statistics the recipes do not
# collect) and Hadamard rotation (a custom op, aeq.hadamard_rotation, that LiteRT on a phone need not have; the
# decomposed form made the model 23x larger; both were less faithful than min/max there).
WEIGHT_ALGORITHMS = {"minmax": "MIN_MAX_UNIFORM_QUANT", "mse": "MSE", "octav": "OCTAV"}


def quantize_tflite(float_tflite: Path, ranges: dict[str, dict] | None, out_path: Path, *, io: str = "float32",
                    float_ops: tuple[str, ...] = (), precision: str = "int8",
                    int16_ops: tuple[str, ...] = (), weights: str = "minmax",
                    weight_only_ops: tuple[str, ...] = ()) -> Path:
    """The float32 model in `precision` with ai-edge-quantizer's recipe for it (RECIPES); float32 I/O unless
    io="int8" (INT8 only).

    int8: per-channel INT8 weights, INT8 activations from `ranges`; int16x8: the same weights, INT16 activations
    (symmetric) from `ranges`; dynamic-int8: INT8 weights, activations quantized at run time (no ranges);
    w4: INT4 weights (per channel) dequantized to float, float compute (no ranges).
    `float_ops`: regular expressions left in float; a pattern that is a TFLite op type (e.g. "SOFTMAX") keeps
    every op of that type, any other pattern keeps the ops whose output tensor names it matches. `int16_ops`
    (int8 only): op scopes computed 16x8 inside the INT8 model (the quantizer requantizes at their edges).
    `weights`: the weight algorithm (WEIGHT_ALGORITHMS) of the weighted ops (WEIGHTED_OPS; 16x8 layers of a
    mixed model keep min/max weights). `weight_only_ops` (int8 only): op scopes computed in float, their weights
    INT8 per channel (dequantized when the model loads).
    """
    if int16_ops and precision != "int8":
        raise ConfigError(f"16x8 layers inside a {precision} model", hint="int16_ops apply to int8 models only")
    if precision not in RECIPES:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(RECIPES)}",
                          hint=f"use one of: {', '.join(RECIPES)}")
    if io not in ("float32", "int8") or (io == "int8" and precision != "int8"):
        raise ConfigError(f"io = {io!r} is not available in {precision}", hint="use io = 'float32'")
    if weights not in WEIGHT_ALGORITHMS:
        raise ConfigError(f"weight method {weights!r} is not one of {', '.join(WEIGHT_ALGORITHMS)}",
                          hint=f"use one of: {', '.join(WEIGHT_ALGORITHMS)}")
    aeq = _aeq()
    ops = aeq.qtyping.TFLOperationName
    base = getattr(aeq.recipe, RECIPES[precision])()
    q = aeq.quantizer.Quantizer(str(float_tflite), base)
    if weights != "minmax":  # the weighted ops only: the other ops stay on min/max (MSE has no rule for them)
        config = aeq.qtyping.OpQuantizationConfig.from_dict(base[0]["op_config"])
        algorithm = aeq.algorithm_manager.AlgorithmName[WEIGHT_ALGORITHMS[weights]]
        for op in WEIGHTED_OPS:
            with contextlib.suppress(ValueError):  # an op this recipe does not quantize (EMBEDDING_LOOKUP in int8)
                q.update_quantization_recipe(".*", ops(op), config, algorithm_key=algorithm)
    keep = aeq.algorithm_manager.AlgorithmName.NO_QUANTIZE
    for pattern in float_ops:
        op_type = next((op for op in ops if op.value == pattern and op.value.isupper()), None)
        q.update_quantization_recipe(".*" if op_type else _checked_regex(pattern), op_type or ops.ALL_SUPPORTED,
                                     algorithm_key=keep)
    for pattern in int16_ops:
        q.update_quantization_recipe(_checked_regex(pattern), ops.ALL_SUPPORTED, _config_16x8(aeq.qtyping))
    weight_only = _config_weight_only(aeq.qtyping)
    for pattern in weight_only_ops:
        q.update_quantization_recipe(_checked_regex(pattern), ops.ALL_SUPPORTED, algorithm_key=keep)
        for op in WEIGHTED_OPS:
            with contextlib.suppress(ValueError):  # an op type without a weight-only rule
                q.update_quantization_recipe(pattern, ops(op), weight_only,
                                             algorithm_key=aeq.algorithm_manager.AlgorithmName.MIN_MAX_UNIFORM_QUANT)
    if io == "float32" and ranges is not None:  # a QUANTIZE after each input and a DEQUANTIZE before each output
        for edge in (ops.INPUT, ops.OUTPUT):  # last, under a scope of its own: no layer's rule overrides the I/O
            q.update_quantization_recipe(IO_SCOPE, edge, algorithm_key=keep)
    return _write(q, ranges, out_path)


def _config_weight_only(types) -> object:
    """INT8 per-channel weights, dequantized at load; float compute (ai-edge-quantizer's weight-only config)."""
    return types.OpQuantizationConfig(
        weight_tensor_config=types.TensorQuantizationConfig(num_bits=8, symmetric=True,
                                                            granularity=types.QuantGranularity.CHANNELWISE),
        compute_precision=types.ComputePrecision.FLOAT, explicit_dequantize=True)


def _config_16x8(types) -> object:
    """static_wi8_ai16's op config: INT8 per-channel weights, symmetric INT16 activations, integer compute."""
    return types.OpQuantizationConfig(
        activation_tensor_config=types.TensorQuantizationConfig(num_bits=16, symmetric=True),
        weight_tensor_config=types.TensorQuantizationConfig(num_bits=8, symmetric=True,
                                                            granularity=types.QuantGranularity.CHANNELWISE),
        compute_precision=types.ComputePrecision.INTEGER, explicit_dequantize=False)


def _checked_regex(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"float_ops pattern {pattern!r} is not a valid regular expression: {exc}",
                          hint="give a TFLite op type (SOFTMAX) or a regex over tensor names") from exc
    return pattern


def _write(q, qsvs: dict[str, dict] | None, out_path: Path) -> Path:
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with _quiet():
        result = q.quantize(qsvs, enable_progress_report=False)
    out_path.write_bytes(bytes(result.quantized_model))
    return out_path


def float16_weights(float_tflite: Path, out_path: Path) -> Path:
    """FP16 weights (dequantized to float32 at load time), float32 compute and I/O: as onnx2tf's float16 file."""
    aeq = _aeq()
    types = aeq.qtyping
    q = aeq.quantizer.Quantizer(str(float_tflite))
    config = types.OpQuantizationConfig(
        weight_tensor_config=types.TensorQuantizationConfig(num_bits=16, dtype=types.TensorDataType.FLOAT),
        compute_precision=types.ComputePrecision.FLOAT, explicit_dequantize=True)
    for op in WEIGHTED_OPS:
        q.update_quantization_recipe(".*", types.TFLOperationName(op), config,
                                     algorithm_key=aeq.algorithm_manager.AlgorithmName.FLOAT_CASTING)
    return _write(q, None, out_path)


def calibration_ranges(float_tflite: Path, samples: list[dict[str, np.ndarray]], method: str,
                       percentile: float) -> tuple[dict[str, dict], bool]:
    """collect_ranges (edgekit/routes/litert/quantize.py) of the float32 model over the samples, or the ranges
    cached from a build of the same file, samples and method; True when cached."""
    if step_cache.cache_root() is None:
        return collect_ranges(float_tflite, samples, method, percentile), False
    parts = [arrays_key({f"{i}:{k}": v for i, sample in enumerate(samples) for k, v in sample.items()})]
    key = step_key("ranges", step_cache.digest(float_tflite), *parts, method, repr(percentile))
    cached = fetch_arrays("ranges", key)
    if cached is not None:
        names = sorted({name.rsplit("\0", 1)[0] for name in cached})
        return {n: {"min": cached[f"{n}\0min"], "max": cached[f"{n}\0max"]} for n in names}, True
    ranges = collect_ranges(float_tflite, samples, method, percentile)
    if key is not None:
        store_arrays("ranges", key, {f"{n}\0{side}": r[side] for n, r in ranges.items() for side in ("min", "max")})
    return ranges, False
