"""edgekit: a trained PyTorch model to a phone or a Jetson, with its accuracy drift measured.

Heavy libraries (torch, tensorflow, onnx2tf) load only when a build needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgekit.config.options import (
    BuildOptions,
    Calibration,
    Cluster,
    Compression,
    Conversion,
    Data,
    Detect,
    Fallback,
    Gate,
    Outputs,
    Prune,
    Qat,
    Verify,
)
from edgekit.config.target import Target, list_targets, load_target
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
    from edgekit.build_matrix.run import MatrixResult, matrix

_LAZY = {"build": "edgekit.api", "check": "edgekit.api", "BuildResult": "edgekit.api",
         "matrix": "edgekit.build_matrix.run", "MatrixResult": "edgekit.build_matrix.run"}


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
    "Compression",
    "ConfigError",
    "Conversion",
    "ConversionError",
    "Data",
    "DataError",
    "Detect",
    "DriftError",
    "EdgekitError",
    "EmulatorError",
    "Fallback",
    "Gate",
    "MatrixResult",
    "ModelError",
    "Outputs",
    "Prune",
    "Qat",
    "Target",
    "ToolError",
    "UnsupportedError",
    "Verify",
    "build",
    "check",
    "list_targets",
    "load_target",
    "matrix",
]
