"""build_engine.sh and build_engine.py for a Jetson bundle, filled from the target's [tensorrt] section."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from edgekit.config.target import Target, TensorRTProfile
from edgekit.errors import ConfigError

TEMPLATES = Path(__file__).resolve().parent / "templates"
BUILDER_FLAGS = ("int8", "fp16")  # the precisions a Q/DQ or float ONNX needs; both exist in TensorRT 8.5 to 10.x
ENGINE = "model.engine"
_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")


def check_profile(target: Target) -> TensorRTProfile:
    """The target's [tensorrt] section, checked before any work: flags must match the precision."""
    profile = target.tensorrt
    if profile is None:
        raise ConfigError(f"target {target.name} has no [tensorrt] section", hint="see targets/jetson-orin-int8.toml")
    unknown = [f for f in profile.flags if f not in BUILDER_FLAGS]
    if unknown:
        raise ConfigError(f"target {target.name}: unknown [tensorrt] flags {', '.join(unknown)}",
                          hint=f"use some of: {', '.join(BUILDER_FLAGS)}")
    if target.precision not in BUILDER_FLAGS:
        raise ConfigError(f"target {target.name}: precision {target.precision} has no Jetson route",
                          hint="use precision = 'int8' (Q/DQ ONNX) or 'fp16'")
    if target.precision not in profile.flags:
        raise ConfigError(f"target {target.name}: precision {target.precision} needs flag {target.precision!r} in "
                          "[tensorrt] flags", hint=f"flags = {list(dict.fromkeys([target.precision, *profile.flags]))}")
    return profile


def write_scripts(target: Target, model_name: str, folder: Path) -> dict[str, Path]:
    """Both scripts in `folder`, keyed by their bundle names."""
    profile = check_profile(target)
    scripts = {"build_engine.sh": fill("build_engine.sh.tmpl", _shell_values(target, profile, model_name)),
               "build_engine.py": fill("build_engine.py.tmpl", _python_values(target, profile, model_name))}
    for name, text in scripts.items():
        (folder / name).write_text(text)
    return {name: folder / name for name in scripts}


def fill(template: str, values: dict[str, str]) -> str:
    """Replace every {{name}}; a placeholder without a value is a bug in edgekit, not a user error."""
    text = (TEMPLATES / template).read_text()
    missing = sorted(set(_PLACEHOLDER.findall(text)) - set(values))
    if missing:
        raise KeyError(f"{template}: no value for {', '.join(missing)}")
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def trtexec_flags(profile: TensorRTProfile) -> list[str]:
    """trtexec's options for the profile: precisions, workspace, timing cache, DLA."""
    # TensorRT 8.x reads a bare --memPoolSize number as MiB; the M suffix arrived with 10.x
    unit = "M" if _major(profile.min_version) >= 10 else ""
    flags = [f"--{f}" for f in profile.flags]
    flags += [f"--memPoolSize=workspace:{profile.workspace_mib}{unit}", "--timingCacheFile=timing.cache"]
    if profile.dla_core is not None:
        flags += [f"--useDLACore={profile.dla_core}", "--allowGPUFallback"]
    return flags


def _major(version: str) -> int:
    return int(version.split(".")[0])


def _shell_values(target: Target, profile: TensorRTProfile, model_name: str) -> dict[str, str]:
    common = _common(target, profile, model_name)
    values = {key: shlex.quote(value) for key, value in common.items()}
    values["trtexec_flags"] = " \\\n    ".join(shlex.quote(flag) for flag in trtexec_flags(profile))
    return values


def _python_values(target: Target, profile: TensorRTProfile, model_name: str) -> dict[str, str]:
    values = {key: repr(value) for key, value in _common(target, profile, model_name).items()}
    dla_core = None if profile.dla_core is None else int(profile.dla_core)
    values.update(target_name=target.name, flags=repr(tuple(profile.flags)),  # name: [a-z0-9-]+ (config.py)
                  workspace_mib=str(int(profile.workspace_mib)), dla_core=repr(dla_core))
    return values


def _common(target: Target, profile: TensorRTProfile, model_name: str) -> dict[str, str]:
    return {"target": target.name, "model": model_name, "engine": ENGINE, "min_version": profile.min_version,
            "max_version": profile.max_version, "compute_capability": profile.compute_capability,
            "jetpack": profile.jetpack}
