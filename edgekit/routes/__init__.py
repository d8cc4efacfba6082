"""Routes: the convert-and-verify end of a build, one sub-package per runtime family behind one interface.

A target names its route in TOML (`route = "litert"`); the route's sub-package `edgekit/routes/<name>/` owns
everything only that route uses (converter, quantizer, runner, per-layer probe, repairs), and its `route.py`
defines `ROUTE`, an instance of a `Route` subclass. Adding a route is adding that sub-package (and its target
files): the registry is the package folder itself, so nothing else is edited. Route modules import their tools
lazily, inside methods, so listing routes and targets stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgekit.config.target import LAYER_PRECISION, route_names
from edgekit.errors import ConfigError, ToolError, UnsupportedError
from edgekit.measure.size import gzip_size
from edgekit.routes.device import check_io
from edgekit.transform.export import export_onnx

if TYPE_CHECKING:
    from edgekit.config.target import Target
    from edgekit.inputs.plan import Plan
    from edgekit.routes.device import DeviceModel
    from edgekit.transform.export import OnnxExport

ROUTE_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Route:
    """What every route provides. Subclasses set the class attributes and implement `check` and `build`."""

    name: ClassVar[str]
    runtime: ClassVar[str]  # the runtime check.py uses for this route's device models
    extra: ClassVar[str | None]  # `pip install 'edgekit[<extra>]'` installs what it needs (None: edgekit itself)
    requires: ClassVar[tuple[str, ...]]  # import names that must be importable (any one of each "a|b" group)
    emulators: ClassVar[tuple[str, ...]] = ("host",)  # where drift can be measured: "host", "arm64"
    precisions: ClassVar[tuple[str, ...]] = ("int8", "fp32")
    methods: ClassVar[tuple[str, ...]] = ("minmax", "percentile", "entropy", "mse")  # calibration, for INT8
    weight_methods: ClassVar[tuple[str, ...]] = ("minmax",)  # how its quantizer can quantize weights
    reads: ClassVar[tuple[str, ...]] = ()  # device-model suffixes `edgekit inspect` hands to this route
    converters: ClassVar[tuple[str, ...]] = ()  # what --converter may choose (empty: the route converts one way)
    converted_by: ClassVar[str] = ""  # what converts (for the hint when another --converter is asked for)
    layer_precisions: ClassVar[tuple[str, ...]] = ("int8", "float32")  # what one layer of an INT8 build can ship in
    fallback_precision: ClassVar[str] = "float32"  # where `--fallback auto` moves a sensitive layer

    def check(self, plan: Plan) -> None:
        """Before any expensive step: the tools are installed, and the request (converter, I/O, precision,
        calibration method) is one the route has (exit 2 if not). Routes with more choices override it."""
        self.check_installed()
        self.check_request(plan)

    def check_installed(self) -> None:
        missing = self.missing()
        if missing:
            raise ToolError(f"route {self.name} needs {' and '.join(missing)}: not installed",
                            hint=f"pip install 'edgekit[{self.extra}]'" if self.extra else "reinstall edgekit")

    def check_request(self, plan: Plan) -> None:
        target, options = plan.target, plan.options
        if options.conversion.converter not in (None, "auto", target.converter):
            raise UnsupportedError(f"converter {options.conversion.converter} does not apply to {target.name}",
                                   hint=f"drop --converter: this route converts with {self.converted_by}")
        if plan.io != "float32":
            raise UnsupportedError(f"io = {plan.io!r} is not available on {target.name}: the model takes float32 "
                                   "and quantizes inside", hint="drop --io")
        if target.precision not in self.precisions:
            raise UnsupportedError(f"precision {target.precision} has no {self.name} route",
                                   hint=f"use a target of precision {' or '.join(self.precisions)}")
        check_method(plan, self.methods, self.name, self.weight_methods)

    def build(self, plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
        raise NotImplementedError

    def qat_quantizer(self, target: Target) -> tuple[Any, str]:
        """The PT2E quantizer whose QAT fake quantization matches this route's INT8 build of `target`, and a line
        saying what it simulates (routes/qat.py)."""
        from edgekit.routes.qat import xnnpack_qat

        return xnnpack_qat()

    def ladder(self, target: Target) -> tuple[str, ...]:
        """Where `--fallback auto` may move a layer of a build of `target`, in the order it tries them."""
        return (self.fallback_precision,)

    def back_off(self, target: Target) -> str | None:
        """The precision every layer may start from when no group's climb passes, before groups go back to the
        target's own (edgekit/pipeline/fallback.py); None: the route has none. By default, for INT8 targets, the
        ladder's last rung (float; FP16 on Jetson): a route with an INT8-weights-with-float-compute form (LiteRT)
        overrides it, and the report says when the back-off had to start from float."""
        steps = self.ladder(target) if target.precision == "int8" else ()
        return steps[-1] if steps else None

    def set_precisions(self, device: DeviceModel, precisions: dict[str, str], layers: list[dict],
                       target: Target | None = None) -> DeviceModel:
        """The device model rebuilt with each named layer (the `tensor` of a `layers` row) in the given precision,
        the others as built. A precision the route lacks is refused (exit 2), never replaced by another."""
        default = LAYER_PRECISION.get(target.precision, "int8") if target else "int8"
        allowed = ((default, *self.ladder(target), *filter(None, [self.back_off(target)])) if target
                   else self.layer_precisions)
        lacking = sorted({p for p in precisions.values() if p not in allowed})
        if lacking:
            raise UnsupportedError(f"route {self.name} cannot put a layer in {', '.join(lacking)}",
                                   hint=f"layers of this build can ship in {', '.join(allowed)}")
        rows = {row["tensor"]: row for row in layers}
        unknown = sorted(set(precisions) - set(rows))
        if unknown:
            raise UnsupportedError(f"{unknown[0]!r} is not a quantized layer of this {self.name} build",
                                   hint="name layers by the `tensor` of report.json `layers`")
        moves: dict[str, list[dict]] = {}
        for tensor, precision in precisions.items():
            if precision != default:
                moves.setdefault(precision, []).append(rows[tensor])
        if not moves:
            return device
        if device.with_precisions is not None:
            moved = device.with_precisions(moves)
        elif set(moves) != {self.fallback_precision} or device.with_float is None:
            raise UnsupportedError(f"this {self.name} build cannot move layers to {', '.join(sorted(moves))}",
                                   hint="see docs/routes.md: which routes and converters can")
        else:
            moved = device.with_float(moves[self.fallback_precision])
        check_io(moved, before=device)  # the I/O contract: a step that changes the model's I/O is not taken
        return moved

    def inspect(self, path: Path) -> dict:
        """`edgekit inspect` of a device model in one of the formats the route `reads`."""
        raise NotImplementedError

    def float_gzip_bytes(self, plan: Plan, workdir: Path) -> int:
        """gzip size of the float32 device model of the original model (the base of compression ratios); by
        default the float ONNX export itself."""
        return gzip_size(export_onnx(plan.model, plan.inputs, workdir / "baseline.onnx").path)

    def missing(self) -> list[str]:
        """The required import names that cannot be found (no import is run)."""
        return [group for group in self.requires if not any(_findable(name) for name in group.split("|"))]

    def summary(self) -> dict:
        missing = self.missing()
        return {"route": self.name, "runtime": self.runtime, "extra": self.extra,
                "emulators": list(self.emulators), "installed": not missing, "missing": missing}


def check_method(plan: Plan, methods: tuple[str, ...], route: str, weight_methods: tuple[str, ...]) -> None:
    """The calibration and weight methods are ones the route has, and apply to the target: a precision without
    activation ranges (float, weight-only, dynamic range) takes no calibration method, a float one no weight
    method; each is refused (exit 2) rather than silently ignored."""
    target, method, weights = plan.target, plan.options.calibration.method, plan.options.calibration.weights
    if weights != "minmax":
        if target.precision in ("fp32", "fp16"):
            raise UnsupportedError(f"--weight-method {weights} does not apply: {target.name} is not quantized",
                                   hint="drop --weight-method")
        if weights not in weight_methods:
            raise UnsupportedError(f"--weight-method {weights} is not available on route {route}",
                                   hint=f"use one of: {', '.join(weight_methods)}")
    if not target.calibrated:
        if method != "minmax":
            what = "is not quantized" if target.precision in ("fp32", "fp16") else "quantizes weights only"
            raise UnsupportedError(f"--calibration-method {method} does not apply: {target.name} {what} (no "
                                   "activation ranges are calibrated)", hint="drop --calibration-method")
        return
    if method not in methods:
        raise UnsupportedError(f"--calibration-method {method} is not available on route {route}",
                               hint=f"use one of: {', '.join(methods)}")


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken package
        return False


def route_reading(suffix: str) -> Route | None:
    """The route whose device format has this file suffix (`Route.reads`), or None."""
    return next((route for route in map(get_route, route_names()) if suffix in route.reads), None)


def get_route(name: str) -> Route:
    """The route called `name`; ConfigError (exit 2) naming the known ones otherwise."""
    known = route_names()
    if not isinstance(name, str) or not ROUTE_NAME.fullmatch(name) or name not in known:
        raise ConfigError(f"unknown route {str(name)[:40]!r}", hint=f"known routes: {', '.join(known)}")
    route = importlib.import_module(f"{__name__}.{name}.route").ROUTE
    if not isinstance(route, Route) or route.name != name:
        raise ConfigError(f"edgekit/routes/{name}/route.py must define ROUTE, a Route named {name!r}")
    return route
