"""Frozen configuration: targets (one TOML file each) and the options of a build, validated at the door."""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8", "int16x8", "dynamic-int8", "w4")
CALIBRATED = ("int8", "int16x8")  # activation ranges measured on the calibration data
# what a quantized layer ships in, per target precision (report.json layers[].precision)
LAYER_PRECISION = {"int8": "int8", "int16x8": "int16x8", "dynamic-int8": "int8", "w4": "int4"}
CALIBRATION_METHODS = ("minmax", "percentile", "entropy", "mse")
# how weights are quantized: min/max, or ai-edge-quantizer's own algorithms (LiteRT builds it quantizes)
WEIGHT_METHODS = ("minmax", "mse", "octav")
# onnx2tf / litert-torch: the Android routes; ort-quant: onnxruntime.quantization writes a Q/DQ ONNX (Jetson INT8);
# none: the float ONNX export ships as it is (Jetson FP16: TensorRT lowers it on the device).
CONVERTERS = ("onnx2tf", "litert-torch", "auto", "ort-quant", "none")
EMULATORS = ("host", "arm64")
FALLBACKS = ("none", "auto")
EQUALIZE = ("auto", "on", "off")
TASKS = ("classify", "regress", "embed")
PRUNE_MODES = ("unstructured", "structured")


TARGET_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")


def _choice(field_name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{field_name} = {value!r} is not one of {', '.join(allowed)}",
                          hint=f"use one of: {', '.join(allowed)}")
    return value


def _fraction(field_name: str, value: float, *, open_low: bool = False) -> float:
    value = float(value)
    if not (0.0 < value <= 1.0 if open_low else 0.0 <= value <= 1.0):
        raise ConfigError(f"{field_name} = {value} is outside [0, 1]",
                          hint="ratios are fractions: write 0.5 for 50 %")
    return value


@dataclass(frozen=True)
class TensorRTProfile:
    """What a Jetson target needs from TensorRT on the device."""

    min_version: str = "10.0"
    max_version: str = "10.99"  # TensorRT 11 dropped the --int8/--fp16 flags these scripts use
    compute_capability: str = "8.7"
    jetpack: str = "6"
    flags: tuple[str, ...] = ()
    workspace_mib: int = 2048
    dla_core: int | None = None


@dataclass(frozen=True)
class Target:
    """One deployment target, read from targets/<name>.toml; the only place a target is described."""

    name: str
    description: str
    platform: str
    arch: str
    format: str
    precision: str
    runtime: str
    route: str  # the module under edgekit/routes/ that converts and checks it
    converter: str = "onnx2tf"
    io: str = "float32"
    emulator: str | None = None
    cpu: str | None = None
    cpu_little: str | None = None
    min_sqnr_db: float = 20.0
    tensorrt: TensorRTProfile | None = None

    def __post_init__(self) -> None:
        _target_name(self.name)
        from edgekit.routes import route_names

        _choice("route", self.route, tuple(route_names()))
        _choice("precision", self.precision, PRECISIONS)
        _choice("io", self.io, ("float32", "int8"))
        if not isinstance(self.platform, str) or not TARGET_NAME.fullmatch(self.platform):
            raise ConfigError(f"platform = {self.platform!r} must be a plain name (lowercase, digits, dashes)",
                              hint="e.g. android, jetson, onnxruntime: the route decides how it is built")
        if not isinstance(self.converter, str) or not TARGET_NAME.fullmatch(self.converter):
            raise ConfigError(f"converter = {self.converter!r} must be a plain name", hint="its route checks it")
        if self.io == "int8" and self.precision != "int8":
            raise ConfigError(f"target {self.name}: io = 'int8' needs precision = 'int8'",
                              hint="set precision = 'int8' or io = 'float32'")

    @classmethod
    def from_toml(cls, path: Path) -> Target:
        """Read and validate a target file; unknown keys are an error so that a typo never passes."""
        try:
            raw = tomllib.loads(Path(path).read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read target file {path}: {exc}", hint="fix the TOML syntax") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict, source: str = "<dict>") -> Target:
        raw = dict(raw)
        trt = raw.pop("tensorrt", None)
        _reject_unknown(raw, cls, source, skip={"tensorrt"})
        if trt is not None:
            _reject_unknown(trt, TensorRTProfile, f"{source} [tensorrt]")
            trt = TensorRTProfile(**{**trt, "flags": tuple(trt.get("flags", ()))})
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.default is dataclasses.MISSING and f.name not in raw]
        if missing:
            raise ConfigError(f"{source}: missing keys {', '.join(missing)}", hint="see targets/*.toml for examples")
        return cls(**raw, tensorrt=trt)

    @property
    def calibrated(self) -> bool:
        """Activation ranges come from calibration data (static INT8, 16x8); weight-only and dynamic-range
        precisions quantize the weights alone and need no calibration."""
        return self.precision in CALIBRATED

    def summary(self) -> dict:
        return {"name": self.name, "platform": self.platform, "format": self.format,
                "precision": self.precision, "runtime": self.runtime, "route": self.route}


def _reject_unknown(raw: dict, cls: type, source: str, skip: set[str] = frozenset()) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(unknown)}",
                          hint=f"allowed keys: {', '.join(sorted(known))}")


def target_dirs() -> list[Path]:
    """Where target files are looked up: $EDGEKIT_TARGETS (os.pathsep separated), then the shipped ones."""
    extra = [Path(p) for p in os.environ.get("EDGEKIT_TARGETS", "").split(os.pathsep) if p]
    here = Path(__file__).resolve().parent
    return [*extra, here / "_targets", here.parent / "targets"]


def list_targets() -> list[Target]:
    found: dict[str, Target] = {}
    for folder in target_dirs():
        for path in sorted(folder.glob("*.toml")) if folder.is_dir() else ():
            found.setdefault(path.stem, Target.from_toml(path))
    return sorted(found.values(), key=lambda t: t.name)


def _target_name(name: object) -> str:
    """Target names end up in file names and generated scripts: lowercase letters, digits and dashes only."""
    if not isinstance(name, str) or not TARGET_NAME.fullmatch(name):
        raise ConfigError(f"target name {str(name)[:60]!r} is not valid",
                          hint="use lowercase letters, digits and dashes, e.g. android-arm64-int8")
    return name


def load_target(name_or_path: str | Path) -> Target:
    """A target by name (targets/<name>.toml) or by the path of a TOML file."""
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise ConfigError(f"target file {path} does not exist", hint="give a path to a targets/*.toml file")
        return Target.from_toml(path)
    _target_name(str(name_or_path))
    for folder in target_dirs():
        candidate = folder / f"{name_or_path}.toml"
        if candidate.is_file():
            return Target.from_toml(candidate)
    names = ", ".join(t.name for t in list_targets())
    raise ConfigError(f"unknown target {name_or_path!r}", hint=f"known targets: {names} (see `edgekit targets`)")


PRUNE_SCOPES = ("layer", "global")


def _rules(field_name: str, raw, check) -> tuple[tuple[str, object], ...]:
    """Scoping rules {pattern: value} (or pairs) as sorted pairs; value None = leave those modules alone."""
    pairs = raw.items() if isinstance(raw, dict) else raw
    try:
        rules = tuple(sorted((str(key), None if value is None else check(value)) for key, value in pairs))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{field_name} must map module types or names to values: {exc}",
                          hint=f"e.g. {field_name}={{'Linear': ...}}; None leaves the matched modules alone") from exc
    for pattern, _ in rules:
        _pattern(field_name, pattern)
    return rules


def _pattern(field_name: str, pattern: str) -> str:
    """Module name patterns are fnmatch globs ("features.*"), or regular expressions written "re:<regex>"."""
    if pattern.startswith("re:"):
        try:
            re.compile(pattern[3:])
        except re.error as exc:
            raise ConfigError(f"{field_name}: {pattern!r} is not a valid regular expression: {exc}",
                              hint="write a glob like 'features.*' or a valid 're:<regex>'") from exc
    return pattern


def _patterns(field_name: str, raw) -> tuple[str, ...] | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        raw = (raw,)
    return tuple(_pattern(field_name, str(p)) for p in raw)


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
        _fraction("prune", self.fraction)
        _choice("prune mode", self.mode, PRUNE_MODES)
        _choice("prune scope", self.scope, PRUNE_SCOPES)
        object.__setattr__(self, "exclude", _patterns("prune exclude", self.exclude))
        object.__setattr__(self, "per_type", _rules("prune per_type", self.per_type, lambda v: _fraction("prune", v)))
        object.__setattr__(self, "per_name", _rules("prune per_name", self.per_name, lambda v: _fraction("prune", v)))
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
        _choice("cluster codebook", self.codebook, CODEBOOKS)
        object.__setattr__(self, "exclude", _patterns("cluster exclude", self.exclude))
        object.__setattr__(self, "per_type", _rules("cluster per_type", self.per_type, _cluster_count))
        object.__setattr__(self, "per_name", _rules("cluster per_name", self.per_name, _cluster_count))


@dataclass(frozen=True)
class Calibration:
    """How activation ranges are measured on the calibration data (`method`), and how weights are quantized
    (`weights`: per-channel min/max, or the quantizer's MSE or OCTAV clipping)."""

    method: str = "minmax"
    percentile: float = 99.99
    max_samples: int = 200
    weights: str = "minmax"

    def __post_init__(self) -> None:
        _choice("calibration method", self.method, CALIBRATION_METHODS)
        _choice("weight method", self.weights, WEIGHT_METHODS)
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
        _choice("fallback", self.mode, FALLBACKS)
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
class BuildOptions:
    """Everything a build is asked to do besides the model, the target and the data."""

    max_drop: float = 1.0
    min_agreement: float = 0.99
    calibration: Calibration = field(default_factory=Calibration)
    prune: Prune | None = None
    cluster: Cluster | None = None
    recover: int = 0
    fallback: str = "none"
    ladder: Fallback = field(default_factory=Fallback)  # the bounds of --fallback auto (mode repeated in it)
    converter: str | None = None
    emulator: str | None = None
    emulator_samples: int = 64  # the upper bound of the emulator run
    emulator_seconds: float = 60.0  # its time budget: samples beyond the first 8 run only as far as it goes
    io: str | None = None
    seed: int = 0
    golden_samples: int = 16
    holdout: float = 0.2
    accept_conversion_error: bool = False  # ship a float32 conversion that is wrong beyond rounding (warned)
    ignore_index: int | None = None  # an eval label left out of accuracy (segmentation's -100)
    allow_small_calibration: bool = False  # calibrate on fewer than MIN_CALIBRATION_FLOOR samples (warned)
    equalize: str = "auto"  # equalization before INT8, bias correction after: auto keeps each when better
    task: str | None = None  # every output's task (classify | regress | embed); None: edgekit decides (tasks.py)
    outputs: dict[str, str] | None = None  # per output name, its task (--outputs FILE.toml)
    min_sqnr: float | None = None  # SQNR floor (dB) for regress/embed outputs; None: the target's min_sqnr_db

    def __post_init__(self) -> None:
        if not 0.0 <= float(self.max_drop) <= 100.0:
            raise ConfigError(f"max_drop = {self.max_drop} is outside 0..100 points",
                              hint="accuracy drop is in percentage points: --max-drop 1.0 means 1 point")
        _fraction("min_agreement", self.min_agreement)
        _choice("fallback", self.fallback, FALLBACKS)
        _choice("equalize", self.equalize, EQUALIZE)
        if not 0 < float(self.emulator_seconds) <= 86400:
            raise ConfigError(f"emulator_seconds = {self.emulator_seconds} is not a time budget in seconds",
                              hint="e.g. --emulator-seconds 60 (at least 8 samples always run)")
        if self.task is not None:
            _choice("task", self.task, TASKS)
        for name, task in (self.outputs or {}).items():
            _choice(f"task of output {name}", task, TASKS)
        if self.min_sqnr is not None and not -200.0 <= float(self.min_sqnr) <= 200.0:
            raise ConfigError(f"min_sqnr = {self.min_sqnr} dB is outside -200..200", hint="e.g. --min-sqnr 30")
        if self.converter is not None:
            _choice("converter", self.converter, CONVERTERS)
        if self.emulator is not None:
            _choice("emulator", self.emulator, EMULATORS)
        if self.io is not None:
            _choice("io", self.io, ("float32", "int8"))
        if int(self.recover) < 0 or int(self.emulator_samples) < 1:
            raise ConfigError("recover must be >= 0 and emulator_samples >= 1", hint="e.g. --recover 200")
        _fraction("holdout", self.holdout, open_low=True)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
