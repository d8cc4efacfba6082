"""The options of a build, grouped the way a user thinks of them, each group frozen and validated."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.config.checks import choice, fraction, patterns, rules
from edgekit.errors import ConfigError

CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
# how weights are quantized: min/max, or ai-edge-quantizer's own algorithms (LiteRT builds it quantizes)
WEIGHT_METHODS = ("minmax", "mse", "octav")
# onnx2tf / litert-torch: the Android routes; ort-quant: onnxruntime.quantization writes a Q/DQ ONNX (Jetson INT8);
# none: the float ONNX export ships as it is (Jetson FP16: TensorRT lowers it on the device).
CONVERTERS = ("onnx2tf", "litert-torch", "auto", "ort-quant", "none")
EMULATORS = ("host", "arm64")
FALLBACKS = ("none", "auto")
EQUALIZE = ("auto", "on", "off")
TASKS = ("classify", "regress", "embed", "detect")
DETECT_LAYOUTS = ("auto", "ultralytics", "ultralytics-t", "yolov5", "boxes-scores")
PRUNE_MODES = ("unstructured", "structured")


PRUNE_SCOPES = ("layer", "global")

@dataclass(frozen=True)
class Prune:
    """Magnitude pruning: `fraction` of the weights (unstructured) or of the output channels (structured).

    Scoping, most specific rule wins: `exclude` patterns > `per_name` rules > the default protection of the
    first and last prunable layer (`keep_edges`) > `per_type` rules > `fraction`. A rule value of None leaves the
    matched modules alone. `scope="global"` ranks weights (or channels) across all layers that take the global
    `fraction`, instead of pruning each layer to it.
    """

    fraction: float
    mode: str = "unstructured"
    exclude: tuple[str, ...] | None = None
    per_type: tuple[tuple[str, float | None], ...] = ()
    per_name: tuple[tuple[str, float | None], ...] = ()
    scope: str = "layer"
    keep_edges: bool = True

    def __post_init__(self) -> None:
        fraction("prune", self.fraction)
        choice("prune mode", self.mode, PRUNE_MODES)
        choice("prune scope", self.scope, PRUNE_SCOPES)
        object.__setattr__(self, "exclude", patterns("prune exclude", self.exclude))
        object.__setattr__(self, "per_type", rules("prune per_type", self.per_type, lambda v: fraction("prune", v)))
        object.__setattr__(self, "per_name", rules("prune per_name", self.per_name, lambda v: fraction("prune", v)))
        values = [self.fraction, *(v for _, v in self.per_type + self.per_name if v is not None)]
        if self.mode == "structured" and max(values) >= 1.0:
            raise ConfigError("structured pruning cannot remove every channel of a layer (fraction 1.0)",
                              hint="use a fraction below 1, e.g. 0.5")


def _cluster_count(value: int) -> int:
    if isinstance(value, bool) or int(value) != value or not 2 <= int(value) <= 256:
        raise ConfigError(f"clusters = {value} is outside 2..256", hint="16 is a good start")
    return int(value)


CODEBOOKS = ("shared", "channel", "tensor")


@dataclass(frozen=True)
class Cluster:
    """k-means weight clustering: at most `clusters` distinct non-zero values per output channel.

    Zeros stay exactly zero and are not one of the k values. `codebook`: "shared" (one set of k values for the
    layer, relative to each channel's largest |w| and on the INT8 grid: INT8 keeps it exactly and it compresses
    best), "channel" (its own k-means per output channel) or "tensor" (one k-means over the tensor).
    Scoping works as for Prune.
    """

    clusters: int
    codebook: str = "shared"
    exclude: tuple[str, ...] | None = None
    per_type: tuple[tuple[str, int | None], ...] = ()
    per_name: tuple[tuple[str, int | None], ...] = ()
    keep_edges: bool = True

    def __post_init__(self) -> None:
        _cluster_count(self.clusters)
        choice("cluster codebook", self.codebook, CODEBOOKS)
        object.__setattr__(self, "exclude", patterns("cluster exclude", self.exclude))
        object.__setattr__(self, "per_type", rules("cluster per_type", self.per_type, _cluster_count))
        object.__setattr__(self, "per_name", rules("cluster per_name", self.per_name, _cluster_count))


@dataclass(frozen=True)
class Calibration:
    """How activation ranges are measured on the calibration data (`method`), and how weights are quantized
    (`weights`: per-channel min/max, or the quantizer's MSE or OCTAV clipping)."""

    method: str = "minmax"
    percentile: float = 99.99
    max_samples: int = 200
    weights: str = "minmax"

    def __post_init__(self) -> None:
        choice("calibration method", self.method, CALIBRATION_METHODS)
        choice("weight method", self.weights, WEIGHT_METHODS)
        if not 90.0 <= float(self.percentile) <= 100.0:
            raise ConfigError(f"percentile = {self.percentile} is outside 90..100", hint="99.99 is the usual value")
        if int(self.max_samples) < 1:
            raise ConfigError("calibration max_samples must be at least 1", hint="200 is the default")


@dataclass(frozen=True)
class Fallback:
    """`--fallback`: none, or auto = the per-layer precision ladder (LiteRT INT8: 16x8, then float; Jetson INT8:
    FP16; other routes: float) until the drift passes, bounded by the candidate's size in bytes, its host latency
    as a ratio of the first build's, and the number of layers in float."""

    mode: str = "none"
    max_size: int | None = None
    max_latency_ratio: float | None = None
    max_float_layers: int = 3

    def __post_init__(self) -> None:
        choice("fallback", self.mode, FALLBACKS)
        if self.max_size is not None and int(self.max_size) < 1:
            raise ConfigError(f"max_size = {self.max_size} is not a size in bytes", hint="e.g. --max-size 60000")
        if self.max_latency_ratio is not None and not float(self.max_latency_ratio) > 0:
            raise ConfigError(f"max_latency_ratio = {self.max_latency_ratio} is not a positive ratio",
                              hint="e.g. --max-latency-ratio 2 (at most twice the INT8 model's host latency)")
        if int(self.max_float_layers) < 0:
            raise ConfigError(f"max_float_layers = {self.max_float_layers} is negative",
                              hint="e.g. --max-float-layers 3")
        bounded = (self.max_size, self.max_latency_ratio) != (None, None) or self.max_float_layers != 3
        if bounded and self.mode != "auto":
            raise ConfigError("--max-size, --max-latency-ratio and --max-float-layers bound --fallback auto",
                              hint="add --fallback auto, or drop them")


@dataclass(frozen=True)
class Gate:
    """What the device model must hold against the original to pass (exit 0): the accuracy drop in percentage
    points, the top-1 agreement of class scores, the SQNR floor of the other outputs (of their worst part), and a
    detector's recall and precision against the float model's detections (None: the target's)."""

    max_drop: float = 1.0
    min_agreement: float = 0.99
    min_sqnr: float | None = None
    min_recall: float | None = None
    min_precision: float | None = None

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.max_drop) <= 100.0:
            raise ConfigError(f"max_drop = {self.max_drop} is outside 0..100 points",
                              hint="accuracy drop is in percentage points: --max-drop 1.0 means 1 point")
        fraction("min_agreement", self.min_agreement)
        if self.min_sqnr is not None and not -200.0 <= float(self.min_sqnr) <= 200.0:
            raise ConfigError(f"min_sqnr = {self.min_sqnr} dB is outside -200..200", hint="e.g. --min-sqnr 30")
        for name in ("min_recall", "min_precision"):
            if getattr(self, name) is not None:
                fraction(name, getattr(self, name))


@dataclass(frozen=True)
class Compression:
    """Compression before export: pruning, clustering, then `recover` distillation steps."""

    prune: Prune | None = None
    cluster: Cluster | None = None
    recover: int = 0

    def __post_init__(self) -> None:
        if int(self.recover) < 0:
            raise ConfigError(f"recover = {self.recover} is negative", hint="e.g. --recover 200")


@dataclass(frozen=True)
class Conversion:
    """How the device model is made: the converter (None: the target's), its I/O type (None: the target's),
    equalization before INT8 and bias correction after it, and whether a float32 conversion that is wrong beyond
    rounding may still ship (warned)."""

    converter: str | None = None
    io: str | None = None
    equalize: str = "auto"
    accept_conversion_error: bool = False

    def __post_init__(self) -> None:
        choice("equalize", self.equalize, EQUALIZE)
        if self.converter is not None:
            choice("converter", self.converter, CONVERTERS)
        if self.io is not None:
            choice("io", self.io, ("float32", "int8"))


@dataclass(frozen=True)
class Verify:
    """Where and how much drift is measured besides the host: the emulator (None: arm64 once set up), the most
    samples it runs and its time budget; and how many golden samples the bundle keeps for check.py."""

    emulator: str | None = None
    emulator_samples: int = 64
    emulator_seconds: float = 60.0
    golden_samples: int = 16

    def __post_init__(self) -> None:
        if self.emulator is not None:
            choice("emulator", self.emulator, EMULATORS)
        if not 0 < float(self.emulator_seconds) <= 86400:
            raise ConfigError(f"emulator_seconds = {self.emulator_seconds} is not a time budget in seconds",
                              hint="e.g. --emulator-seconds 60 (at least 8 samples always run)")
        if int(self.emulator_samples) < 1 or int(self.golden_samples) < 1:
            raise ConfigError("emulator_samples and golden_samples must be at least 1",
                              hint="e.g. --emulator-samples 64")


@dataclass(frozen=True)
class Detect:
    """How a detector's outputs are read (edgekit/measure/detect.py): the layout (auto: from the model's metadata
    or its output shapes), and the confidence and NMS IoU its app applies (Ultralytics' defaults)."""

    layout: str = "auto"
    confidence: float = 0.25
    iou: float = 0.7

    def __post_init__(self) -> None:
        choice("detect layout", self.layout, DETECT_LAYOUTS)
        for name in ("confidence", "iou"):
            if not 0.0 < float(getattr(self, name)) < 1.0:
                raise ConfigError(f"detect {name} = {getattr(self, name)} is outside (0, 1)",
                                  hint="Ultralytics predicts with confidence 0.25 and NMS IoU 0.7")


@dataclass(frozen=True)
class Outputs:
    """What each model output is (docs/outputs.md): one task for every output, or one per output name
    (`per_output`, a dict or the path of an --outputs TOML file, whose [detect] table sets `detect`); None: edgekit
    decides."""

    task: str | None = None
    per_output: dict[str, str] | None = None
    detect: Detect = field(default_factory=Detect)

    def __post_init__(self) -> None:
        if isinstance(self.per_output, (str, Path)):
            table, detect = load_outputs_file(self.per_output)
            object.__setattr__(self, "per_output", table)
            if detect is not None:
                object.__setattr__(self, "detect", detect)
        if self.task is not None:
            choice("task", self.task, TASKS)
        for name, task in (self.per_output or {}).items():
            choice(f"task of output {name}", task, TASKS)


@dataclass(frozen=True)
class Data:
    """How the data is read and used: the image recipe, the input shape when the data cannot tell, the held-out
    share of calibration data when no eval data is given, an eval label left out of accuracy (segmentation's -100),
    and whether fewer calibration samples than the floor may be used (warned)."""

    recipe: str | None = None
    input_shape: tuple[int, ...] | None = None
    holdout: float = 0.2
    ignore_index: int | None = None
    allow_small_calibration: bool = False

    def __post_init__(self) -> None:
        if self.recipe is not None:
            object.__setattr__(self, "recipe", str(self.recipe))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        fraction("holdout", self.holdout, open_low=True)


QAT_AUTO_STEPS = 300  # the step budget of `--qat auto` (the last rung of --fallback auto)


@dataclass(frozen=True)
class Qat:
    """`--qat`: quantization-aware fine-tuning before conversion, simulating the route's own INT8 quantization:
    `steps` Adam steps (0: none; "auto": only as the last rung of `--fallback auto`, with QAT_AUTO_STEPS steps), at
    most `seconds` of training; on the calibration data, plus the samples of `train` when given."""

    steps: int | str = 0
    seconds: float = 1800.0
    train: str | None = None

    def __post_init__(self) -> None:
        steps = self.steps
        if isinstance(steps, str) and steps.strip() != "auto":
            if not steps.strip().isdigit():
                raise ConfigError(f"qat = {steps!r} is neither a number of steps nor 'auto'",
                                  hint="e.g. --qat 500, or --qat auto with --fallback auto")
            steps = int(steps)
        if isinstance(steps, bool) or (not isinstance(steps, str) and (int(steps) != steps or steps < 0)):
            raise ConfigError(f"qat = {self.steps} is not a number of steps", hint="e.g. --qat 500")
        object.__setattr__(self, "steps", "auto" if isinstance(steps, str) else int(steps))
        if not 0 < float(self.seconds) <= 7 * 86400:
            raise ConfigError(f"qat_seconds = {self.seconds} is not a time budget in seconds",
                              hint="e.g. --qat-seconds 600")
        if self.train is not None:
            object.__setattr__(self, "train", str(self.train))

    @property
    def enabled(self) -> bool:
        return self.steps != 0

    def budget(self) -> int:
        """The steps one fine-tune may take."""
        return QAT_AUTO_STEPS if self.steps == "auto" else int(self.steps)


@dataclass(frozen=True)
class BuildOptions:
    """Everything a build is asked to do besides the model, the target, the data and OUT, in groups."""

    gate: Gate = field(default_factory=Gate)
    calibration: Calibration = field(default_factory=Calibration)
    compression: Compression = field(default_factory=Compression)
    fallback: Fallback = field(default_factory=Fallback)
    conversion: Conversion = field(default_factory=Conversion)
    verify: Verify = field(default_factory=Verify)
    outputs: Outputs = field(default_factory=Outputs)
    data: Data = field(default_factory=Data)
    qat: Qat = field(default_factory=Qat)
    seed: int = 0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = GROUPS.get(f.name)
            if expected is not None and not isinstance(value, expected):
                raise ConfigError(f"options.{f.name} must be an edgekit.{expected.__name__}, not "
                                  f"{type(value).__name__}", hint=f"e.g. BuildOptions({f.name}={expected.__name__}())")

    def to_dict(self) -> dict:
        """The resolved options as manifest.json `config.options` records them: one key per build flag."""
        values = {name: _get(self, path) for name, path in FLAGS.items()}
        values.update(prune=_plain(self.compression.prune), cluster=_plain(self.compression.cluster),
                      calibration=_plain(self.calibration), ladder=_plain(self.fallback))
        inside_blocks = ("prune_mode", "clusters", "cluster_codebook", "calibration_method", "percentile",
                         "weight_method", "calibration_samples", "max_size", "max_latency_ratio", "max_float_layers")
        for name in inside_blocks:
            values.pop(name)
        return values


GROUPS = {"gate": Gate, "calibration": Calibration, "compression": Compression, "fallback": Fallback,
          "conversion": Conversion, "verify": Verify, "outputs": Outputs, "data": Data, "qat": Qat}

# Every `edgekit build` flag (by its click name) -> the BuildOptions field it sets. The CLI builds its options
# through this table alone, and tests/config/test_options.py checks it against the command and the dataclasses.
FLAGS: dict[str, str] = {
    "max_drop": "gate.max_drop", "min_agreement": "gate.min_agreement", "min_sqnr": "gate.min_sqnr",
    "min_recall": "gate.min_recall", "min_precision": "gate.min_precision",
    "calibration_method": "calibration.method", "percentile": "calibration.percentile",
    "weight_method": "calibration.weights", "calibration_samples": "calibration.max_samples",
    "prune": "compression.prune.fraction", "prune_mode": "compression.prune.mode",
    "clusters": "compression.cluster.clusters", "cluster_codebook": "compression.cluster.codebook",
    "recover": "compression.recover",
    "fallback": "fallback.mode", "max_size": "fallback.max_size", "max_latency_ratio": "fallback.max_latency_ratio",
    "max_float_layers": "fallback.max_float_layers",
    "converter": "conversion.converter", "io": "conversion.io", "equalize": "conversion.equalize",
    "accept_conversion_error": "conversion.accept_conversion_error",
    "emulator": "verify.emulator", "emulator_samples": "verify.emulator_samples",
    "emulator_seconds": "verify.emulator_seconds", "golden_samples": "verify.golden_samples",
    "task": "outputs.task", "outputs": "outputs.per_output",
    "recipe": "data.recipe", "input_shape": "data.input_shape", "holdout": "data.holdout",
    "ignore_index": "data.ignore_index", "allow_small_calibration": "data.allow_small_calibration",
    "qat": "qat.steps", "qat_seconds": "qat.seconds", "train": "qat.train",
    "seed": "seed",
}
# Fields set from Python only (rule tables have no flag form): tests check every other field has a flag.
PYTHON_ONLY = ("outputs.detect", "compression.prune.exclude", "compression.prune.per_type",
               "compression.prune.per_name", "compression.prune.scope", "compression.prune.keep_edges",
               "compression.cluster.exclude", "compression.cluster.per_type", "compression.cluster.per_name",
               "compression.cluster.keep_edges")
# The objects a flag's field lives in, made only when their first flag is given (--prune without --prune-mode)
OPTIONAL = {"compression.prune": (Prune, "fraction"), "compression.cluster": (Cluster, "clusters")}


def options_from_flags(**flags) -> BuildOptions:
    """BuildOptions from `edgekit build` flags (names as in FLAGS; None or absent: the default)."""
    unknown = sorted(set(flags) - set(FLAGS))
    if unknown:
        raise ConfigError(f"unknown build option {unknown[0]!r}", hint=f"known: {', '.join(sorted(FLAGS))}")
    tree: dict = {}
    for name, value in flags.items():
        if value is not None:
            *parents, leaf = FLAGS[name].split(".")
            node = tree
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = value
    return _make(BuildOptions, tree, "")


def options_from_keywords(**keywords) -> BuildOptions:
    """The flat keywords `edgekit.build` took before `options=` (deprecated): the flags' names, with `prune` and
    `cluster` as Prune and Cluster, and `calibration_method` and `fallback` as a name or a Calibration / Fallback."""
    objects = {name: keywords.pop(name) for name in ("prune", "cluster", "calibration_method", "fallback")
               if name in keywords and not isinstance(keywords[name], str)}
    options = options_from_flags(**keywords)
    compression = dataclasses.replace(options.compression, prune=objects.get("prune"), cluster=objects.get("cluster"))
    return dataclasses.replace(options, compression=compression,
                               calibration=objects.get("calibration_method") or options.calibration,
                               fallback=objects.get("fallback") or options.fallback)


def _make(cls: type, values: dict, prefix: str):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        path = f"{prefix}{f.name}"
        value = values[f.name]
        if path in OPTIONAL:
            sub, key = OPTIONAL[path]
            value = _make(sub, value, f"{path}.") if key in value else None
        elif isinstance(value, dict) and f.name in GROUPS and not prefix:
            value = _make(GROUPS[f.name], value, f"{path}.")
        kwargs[f.name] = value
    return cls(**kwargs)


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part) if obj is not None else None
    return obj


def _plain(value):
    return None if value is None else dataclasses.asdict(value)


def load_outputs_file(path: str | Path) -> tuple[dict[str, str], Detect | None]:
    """`--outputs FILE.toml`: `[outputs]` with `name = "classify" | "regress" | "embed" | "detect"` per output, and
    an optional `[detect]` table (layout, confidence, iou)."""
    path = Path(path)
    example = 'write [outputs] with one line per output: bbox_reg = "regress"'
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read --outputs {path}: {exc}", hint=example) from None
    table = raw.get("outputs", {}) if isinstance(raw, dict) else None
    if not isinstance(table, dict) or not set(raw) <= {"outputs", "detect"} or not raw:
        raise ConfigError(f"--outputs {path} must hold an [outputs] table (and optionally [detect])", hint=example)
    for name, task in table.items():
        if task not in TASKS:
            raise ConfigError(f"--outputs {path}: {name} = {task!r} is not one of {', '.join(TASKS)}",
                              hint=f"use one of: {', '.join(TASKS)}")
    detect = raw.get("detect")
    if detect is None:
        return dict(table), None
    known = {f.name for f in dataclasses.fields(Detect)}
    if not isinstance(detect, dict) or set(detect) - known:
        raise ConfigError(f"--outputs {path}: [detect] takes {', '.join(sorted(known))}",
                          hint='e.g. [detect] layout = "ultralytics", confidence = 0.25, iou = 0.7')
    return dict(table), Detect(**detect)
