"""edgekit: a trained PyTorch model to a phone or a Jetson, with its accuracy drift measured.

Heavy libraries (torch, tensorflow, onnx2tf) load only when a build needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.config import BuildOptions, Calibration, Cluster, Fallback, Prune, Target, list_targets, load_target
from edgekit.errors import (
    ConfigError,
    ConversionError,
    DataError,
    DriftError,
    EdgekitError,
    EmulatorError,
    ModelError,
    ToolError,
    UnsupportedError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from edgekit.api import BuildResult, build, check
    from edgekit.matrix_run import MatrixResult, matrix

_LAZY = {"build": "edgekit.api", "check": "edgekit.api", "BuildResult": "edgekit.api",
         "matrix": "edgekit.matrix_run", "MatrixResult": "edgekit.matrix_run"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")


__all__ = [
    "BuildOptions",
    "BuildResult",
    "Calibration",
    "Cluster",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DriftError",
    "EdgekitError",
    "EmulatorError",
    "Fallback",
    "MatrixResult",
    "ModelError",
    "Prune",
    "Target",
    "ToolError",
    "UnsupportedError",
    "build",
    "check",
    "list_targets",
    "load_target",
    "matrix",
]
