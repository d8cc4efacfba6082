"""The numbers one build measured (drift, conversion and quantization error, layers, emulator), as the report
takes them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Measured:
    """The numbers a build measured, ready for the report."""

    reference: dict[str, np.ndarray]
    device: dict[str, np.ndarray]
    conversion: list[dict]
    quantization: list[dict] | None
    drift: dict
    latency_ms: dict
    warnings: list[str]
    emulator: dict | None = None
    layers: list[dict] | None = None
    compression: dict | None = None
    baseline_float_gzip_bytes: int | None = None
    equalization: dict | None = None  # report.json quantization.equalization (None: not asked or not INT8)
    ladder: list[dict] | None = None  # report.json quantization.ladder: every step `--fallback auto` measured
    qat: dict | None = None  # report.json qat: the fine-tune and its simulation against float and device
    reused: tuple[str, ...] = ()  # report.json resources.reused_steps: the steps taken from the step cache
    cache_entries: tuple[dict, ...] = ()  # manifest.json step_cache: each entry taken (step, key, files' sha256)
