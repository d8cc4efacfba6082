"""Routes: the convert-and-verify end of a build, one module per runtime family behind one interface.

A target names its route in TOML (`route = "litert"`); the route module `edgekit/routes/<name>.py` defines `ROUTE`,
an instance of a `Route` subclass. Adding a route is adding that module (and its target files): the registry is
the package folder itself, so nothing else is edited. Route modules import their tools lazily, inside methods, so
listing routes and targets stays fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import re
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from edgekit.errors import ConfigError, ToolError

if TYPE_CHECKING:
    from edgekit.device import DeviceModel
    from edgekit.plan import Plan
    from edgekit.steps.export_onnx import OnnxExport

ROUTE_NAME = re.compile(r"[a-z][a-z0-9_]*")


class Route:
    """What every route provides. Subclasses set the class attributes and implement `check` and `build`."""

    name: ClassVar[str]
    runtime: ClassVar[str]  # the runtime check.py uses for this route's device models
    extra: ClassVar[str | None]  # `pip install 'edgekit[<extra>]'` installs what it needs (None: edgekit itself)
    requires: ClassVar[tuple[str, ...]]  # import names that must be importable (any one of each "a|b" group)
    emulators: ClassVar[tuple[str, ...]] = ("host",)  # where drift can be measured: "host", "arm64"

    def check(self, plan: Plan) -> None:
        """Before any expensive step: the request fits the route and its tools are installed (exit 2 if not)."""
        missing = self.missing()
        if missing:
            raise ToolError(f"route {self.name} needs {' and '.join(missing)}: not installed",
                            hint=f"pip install 'edgekit[{self.extra}]'" if self.extra else "reinstall edgekit")

    def build(self, plan: Plan, export: OnnxExport, workdir: Path) -> DeviceModel:
        raise NotImplementedError

    def float_gzip_bytes(self, plan: Plan, workdir: Path) -> int:
        """gzip size of the float32 device model of the original model (the base of compression ratios); by
        default the float ONNX export itself."""
        from edgekit.bundle import gzip_size
        from edgekit.steps.export_onnx import export_onnx

        return gzip_size(export_onnx(plan.model, plan.inputs, workdir / "baseline.onnx").path)

    def missing(self) -> list[str]:
        """The required import names that cannot be found (no import is run)."""
        return [group for group in self.requires if not any(_findable(name) for name in group.split("|"))]

    def summary(self) -> dict:
        missing = self.missing()
        return {"route": self.name, "runtime": self.runtime, "extra": self.extra,
                "emulators": list(self.emulators), "installed": not missing, "missing": missing}


def _findable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder that refuses the name, or a broken package
        return False


def route_names() -> list[str]:
    """Every route module in this package."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def get_route(name: str) -> Route:
    """The route called `name`; ConfigError (exit 2) naming the known ones otherwise."""
    known = route_names()
    if not isinstance(name, str) or not ROUTE_NAME.fullmatch(name) or name not in known:
        raise ConfigError(f"unknown route {str(name)[:40]!r}", hint=f"known routes: {', '.join(known)}")
    route = importlib.import_module(f"{__name__}.{name}").ROUTE
    if not isinstance(route, Route) or route.name != name:
        raise ConfigError(f"edgekit/routes/{name}.py must define ROUTE, a Route named {name!r}")
    return route
