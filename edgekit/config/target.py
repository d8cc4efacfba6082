"""Targets: one TOML file each, validated at the door; unknown keys are refused."""

from __future__ import annotations

import dataclasses
import os
import pkgutil
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from edgekit.config.checks import choice
from edgekit.errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8", "int16x8", "dynamic-int8", "w4")
CALIBRATED = ("int8", "int16x8")  # activation ranges measured on the calibration data
# what a quantized layer ships in, per target precision (report.json layers[].precision)
LAYER_PRECISION = {"int8": "int8", "int16x8": "int16x8", "dynamic-int8": "int8", "w4": "int4"}
TARGET_NAME = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
PACKAGE = Path(__file__).resolve().parents[1]  # edgekit/


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
    min_recall: float = 0.95  # detectors: the device's detections against the float model's
    min_precision: float = 0.95
    tensorrt: TensorRTProfile | None = None

    def __post_init__(self) -> None:
        _target_name(self.name)
        choice("route", self.route, tuple(route_names()))
        choice("precision", self.precision, PRECISIONS)
        choice("io", self.io, ("float32", "int8"))
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
        except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
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


def route_names() -> list[str]:
    """Every route: each sub-package of edgekit/routes/ is one (the registry is the folder; listing it runs no
    route code, so config stays below the routes that use it)."""
    return sorted(m.name for m in pkgutil.iter_modules([str(PACKAGE / "routes")]) if m.ispkg)


def _reject_unknown(raw: dict, cls: type, source: str, skip: set[str] = frozenset()) -> None:
    known = {f.name for f in dataclasses.fields(cls)} - skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown keys {', '.join(unknown)}",
                          hint=f"allowed keys: {', '.join(sorted(known))}")


def target_dirs() -> list[Path]:
    """Where target files are looked up: $EDGEKIT_TARGETS (os.pathsep separated), then the shipped ones."""
    extra = [Path(p) for p in os.environ.get("EDGEKIT_TARGETS", "").split(os.pathsep) if p]
    return [*extra, PACKAGE / "_targets", PACKAGE.parent / "targets"]


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
