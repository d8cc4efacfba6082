"""Build matrices: MATRIX.toml read and checked completely, then expanded into cells (ordinary builds).

```toml
[[models]]
name = "digits"
model = "examples/01_android_int8/digits_cnn.pt2"
calibration = "examples/01_android_int8/calibration.npz"
eval = "examples/01_android_int8/eval.npz"
max_drop = 1.0                      # optional per-model thresholds and settings

[axes]
target = ["android-arm64-int8", "android-arm64-fp16"]
calibration_method = ["minmax", "percentile"]

[[exclude]]                          # as in CI matrices: drop the cells that match every key given
calibration_method = "percentile"
target = "android-arm64-fp16"
```

A cell is one model with one value per axis. An axis value that does not apply to a cell (a calibration method
on a float or weight-only target, a converter on a route that has one) is dropped from it, so such cells collapse
into one instead of building the same thing twice. Paths in the file are relative to the file's folder, or else
to the working directory.
"""

from __future__ import annotations

import itertools
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.config.options import (
    CALIBRATION_METHODS,
    CONVERTERS,
    EQUALIZE,
    FALLBACKS,
    FLAGS,
    PRUNE_MODES,
    WEIGHT_METHODS,
    options_from_flags,
)
from edgekit.config.target import load_target
from edgekit.errors import ConfigError
from edgekit.routes import get_route

# axis -> the values it allows (None: any value of the right type, checked by the build itself)
AXES: dict[str, tuple | None] = {
    "target": None, "calibration_method": CALIBRATION_METHODS, "percentile": None, "weight_method": WEIGHT_METHODS,
    "converter": CONVERTERS, "prune": None, "prune_mode": PRUNE_MODES, "clusters": None, "recover": None,
    "fallback": FALLBACKS, "equalize": EQUALIZE, "max_size": None, "max_latency_ratio": None,
    "max_float_layers": None, "emulator": ("host", "arm64"), "io": ("float32", "int8"), "seed": None, "qat": None,
    "qat_seconds": None}
MODEL_KEYS = ("name", "model", "calibration", "eval", "recipe", "max_drop", "min_agreement", "min_sqnr", "min_recall",
              "min_precision", "task", "ignore_index", "input_shape", "outputs")
SETTINGS = MODEL_KEYS[4:]  # per-model build options
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
OUTPUT_NAMES = ("matrix.json", "matrix.html")  # what a matrix writes in OUT beside the models' folders
MAX_CELLS = 1000  # cells a matrix may build unless told more (--max-cells)
COMBINATIONS_PER_CELL = 100  # the axes may multiply to this many combinations per allowed cell before collapsing
INTEGERS = ("seed", "recover", "clusters", "max_size", "max_float_layers", "ignore_index")
NUMBERS = ("qat_seconds", "percentile", "prune", "max_drop", "min_agreement", "min_sqnr", "min_recall", "min_precision",
           "max_latency_ratio")


@dataclass(frozen=True)
class Model:
    name: str
    model: str
    calibration: str | None = None
    eval: str | None = None
    settings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Cell:
    """One build: the model, the axis values that apply to it (an axis that does not apply: absent)."""

    model: Model
    axes: dict

    @property
    def name(self) -> str:
        return "-".join(_slug(v) for v in self.axes.values()) or "default"

    @property
    def bundle(self) -> str:
        return f"{self.model.name}/{self.name}"


@dataclass(frozen=True)
class Matrix:
    source: Path
    models: tuple[Model, ...]
    axes: dict
    cells: tuple[Cell, ...]


def load_matrix(path: str | Path, max_cells: int = MAX_CELLS) -> Matrix:
    """Read MATRIX.toml and check all of it (keys, models, files, targets, axis values, cell names) before any
    build: every problem is a ConfigError (exit 2)."""
    path = Path(path).resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, ValueError) as exc:  # TOMLDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"cannot read matrix file {path}: {exc}", hint="fix the TOML syntax") from exc
    _known(raw, ("models", "axes", "exclude", "include"), str(path))
    models = tuple(_model(entry, path.parent, i) for i, entry in enumerate(_list(raw, "models", path)))
    _unique([m.name for m in models], "model name", path)
    axes = _axes(raw.get("axes", {}), path)
    excludes = [_rule(rule, path, "exclude") for rule in raw.get("exclude", [])]
    includes = [_rule(rule, path, "include") for rule in raw.get("include", [])]
    combinations = len(models) * math.prod(len(values) for values in axes.values()) + len(models) * len(includes)
    if combinations > COMBINATIONS_PER_CELL * max_cells:
        raise ConfigError(f"{path}: the axes multiply to {combinations:,} combinations for {len(models)} model(s), "
                          f"more than {COMBINATIONS_PER_CELL} for each of the --max-cells {max_cells:,} cells a "
                          "matrix may build", hint="narrow the axes or split the file; raise --max-cells only for "
                          "a matrix that really builds that many cells")
    cells = _expand(models, axes, excludes, includes, path)
    if not cells:
        raise ConfigError(f"{path}: every cell is excluded", hint="loosen the [[exclude]] entries")
    if len(cells) > max_cells:
        raise ConfigError(f"{path}: {len(cells):,} cells, more than --max-cells {max_cells:,}",
                          hint="narrow the axes or [[exclude]] more, or raise --max-cells")
    for cell in cells:
        _check_cell(cell, path)
    return Matrix(path, models, axes, tuple(cells))


def _check_cell(cell: Cell, path: Path) -> None:
    """Every value of the cell's build checked as its build would check it, before any build: types first, then
    the build options' own ranges (ConfigError naming the cell)."""
    where = f"{path}: cell {cell.bundle}"
    values = {**cell.model.settings, **cell.axes}
    for key, value in values.items():
        if key in INTEGERS and type(value) is not int:
            raise ConfigError(f"{where}: {key} = {value!r} is not an integer", hint=f"e.g. {key} = 0")
        if key in NUMBERS and (type(value) not in (int, float) or not math.isfinite(value)):
            raise ConfigError(f"{where}: {key} = {value!r} is not a number", hint=f"e.g. {key} = 1.0")
    shape = values.get("input_shape")
    if shape is not None and not (isinstance(shape, list) and shape and all(type(d) is int and d > 0
                                                                            for d in shape)):
        raise ConfigError(f"{where}: input_shape = {shape!r} is not a list of positive sizes",
                          hint="e.g. input_shape = [1, 3, 224, 224]")
    flags = {key: value for key, value in values.items() if key in FLAGS and key not in ("recipe", "outputs",
                                                                                         "input_shape")}
    try:
        options_from_flags(**flags)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc.message}", hint=exc.hint) from None


def _list(raw: dict, key: str, path: Path) -> list:
    entries = raw.get(key)
    if not isinstance(entries, list) or not entries:
        raise ConfigError(f"{path}: no [[{key}]] entries", hint="add at least one [[models]] with name and model")
    return entries


def _known(raw: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {', '.join(unknown)}", hint=f"allowed keys: {', '.join(allowed)}")


def _model(entry: dict, folder: Path, index: int) -> Model:
    where = f"[[models]] #{index + 1}"
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} is not a table", hint="write [[models]] then name = ..., model = ...")
    _known(entry, MODEL_KEYS, where)
    for key in ("name", "model"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            raise ConfigError(f"{where}: {key} is missing", hint="every model needs a name and a model")
    if not NAME.fullmatch(entry["name"]):
        raise ConfigError(f"{where}: name {entry['name']!r} is not a plain name",
                          hint="letters, digits, '-', '_' and '.': it names the model's folder under OUT")
    if entry["name"].lower() in OUTPUT_NAMES:
        raise ConfigError(f"{where}: name {entry['name']!r} is the name of a file the matrix writes in OUT",
                          hint="name the model otherwise: it names the model's folder under OUT")
    model = _located(entry["model"], folder, where, factory_ok=True)
    data = {key: _located(entry[key], folder, where, factory_ok=True) for key in ("calibration", "eval")
            if key in entry}
    settings = {key: entry[key] for key in SETTINGS if key in entry}
    for key in ("recipe", "outputs"):
        if key in settings:
            settings[key] = _located(settings[key], folder, where)
    if not data:
        raise ConfigError(f"{where} ({entry['name']}): no calibration or eval data",
                          hint="give calibration = 'FILE' (and eval = 'FILE')")
    return Model(entry["name"], model, data.get("calibration"), data.get("eval"), settings)


def _located(value: str, folder: Path, where: str, factory_ok: bool = False) -> str:
    """A path relative to the matrix file's folder (else to the working directory), which must exist;
    `package.module:callable` as it is."""
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {value!r} is not a path", hint="write paths as strings")
    path = Path(value) if Path(value).is_absolute() else folder / value
    for candidate in (path, Path.cwd() / value):
        if candidate.exists():
            return str(candidate.resolve())
    if factory_ok and re.fullmatch(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*", value):
        return value
    raise ConfigError(f"{where}: {value} does not exist (looked for {path} and {Path.cwd() / value})",
                      hint="paths in a matrix file are relative to the file's folder or the working directory")


def _axes(raw: dict, path: Path) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [axes] is not a table", hint="write [axes] then target = [...]")
    _known(raw, tuple(AXES), f"{path} [axes]")
    axes = {}
    for key, values in raw.items():
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path} [axes]: {key} has no values", hint="give at least one value or drop the axis")
        for value in values:
            _value(key, value, f"{path} [axes]")
        axes[key] = values
    return axes


def _value(key: str, value, where: str) -> None:
    if key == "target":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: target {value!r} is not a target name", hint="see `edgekit targets`")
        load_target(value)  # unknown target: ConfigError naming the known ones
    elif AXES[key] is not None and value not in AXES[key]:
        raise ConfigError(f"{where}: {key} = {value!r} is not one of {', '.join(map(str, AXES[key]))}",
                          hint=f"use one of: {', '.join(map(str, AXES[key]))}")


def _rule(rule: dict, path: Path, kind: str) -> dict:
    where = f"{path} [[{kind}]]"
    if not isinstance(rule, dict) or not rule:
        raise ConfigError(f"{where}: an empty entry", hint="give the axis values it matches, e.g. target = '...'")
    _known(rule, (*AXES, "model"), where)
    for key, value in rule.items():
        if key != "model":
            _value(key, value, where)
    return rule


def _expand(models: tuple[Model, ...], axes: dict, excludes: list[dict], includes: list[dict],
            path: Path) -> list[Cell]:
    cells, seen, targets = [], {}, {}
    keys = list(axes)
    for model in models:
        combos = (dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys)))
        for combo in [*(c for c in combos if not any(_matches(model, c, rule) for rule in excludes)),
                      *(_included(model, rule) for rule in includes if rule.get("model", model.name) == model.name)]:
            if "target" not in combo:
                raise ConfigError(f"{path}: a cell of {model.name} has no target ({combo or 'no axes'})",
                                  hint="add target = [...] to [axes], or a target to every [[include]]")
            cell = Cell(model, _applicable(combo, targets))
            if cell.bundle in seen:  # the same build (an axis that does not apply collapses cells into one)
                if seen[cell.bundle] != cell.axes:
                    raise ConfigError(f"{path}: duplicate cell name {cell.bundle} ({seen[cell.bundle]} and "
                                      f"{cell.axes})", hint="cells are named by their axis values: make them differ")
                continue
            seen[cell.bundle] = cell.axes
            cells.append(cell)
    return cells


def _matches(model: Model, combo: dict, rule: dict) -> bool:
    return all(model.name == v if k == "model" else combo.get(k) == v for k, v in rule.items())


def _included(model: Model, rule: dict) -> dict:
    return {k: v for k, v in rule.items() if k != "model"}


def _applicable(combo: dict, targets: dict) -> dict:
    """The combo without the values that do not apply to its target (`targets`: each target and its route read
    once)."""
    if "target" not in combo:
        return dict(combo)
    if combo["target"] not in targets:
        found = load_target(combo["target"])
        targets[combo["target"]] = (found, get_route(found.route))
    target, route = targets[combo["target"]]
    dropped = set()
    if not target.calibrated:
        dropped |= {"calibration_method", "percentile"}
    if target.precision in ("fp32", "fp16"):
        dropped |= {"weight_method", "fallback"}
    if not route.converters:  # the route converts one way: a converter axis does not apply
        dropped.add("converter")
    if route.weight_methods == ("minmax",):
        dropped.add("weight_method")
    if target.precision != "int8":  # equalization only measures itself for INT8
        dropped.add("equalize")
    if combo.get("calibration_method", "minmax") != "percentile":
        dropped.add("percentile")
    if combo.get("fallback", "none") != "auto" or "fallback" in dropped:  # the bounds of --fallback auto
        dropped |= {"max_size", "max_latency_ratio", "max_float_layers"}
    return {k: v for k, v in combo.items() if k not in dropped}


def _unique(names: list[str], what: str, path: Path) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(f"{path}: duplicate {what} {', '.join(repeated)}",
                          hint=f"every {what} must be unique (cells are named by their axis values)")


def _slug(value) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(value))
