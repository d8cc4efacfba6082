"""How a model tensor maps onto a device tensor: every route's device model binds its I/O this way, and check.py
reads the same dicts from the manifest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.standalone import check as check_script


@dataclass(frozen=True)
class Binding:
    """How a model tensor (model layout, float) maps onto a device tensor (index, layout, dtype, int8 params)."""

    model_name: str
    device_name: str
    device_index: int
    to_device: tuple[int, ...] | None = None
    dtype: str = "float32"
    scale: float = 0.0
    zero_point: int = 0

    def to_dict(self) -> dict:
        return {"model_name": self.model_name, "device_name": self.device_name, "device_index": self.device_index,
                "to_device": None if self.to_device is None else list(self.to_device), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point}

    @classmethod
    def from_dict(cls, raw: dict) -> Binding:
        perm = raw.get("to_device")
        return cls(**{**raw, "to_device": None if perm is None else tuple(perm)})

    def encode(self, array: np.ndarray) -> np.ndarray:
        """Model-layout float -> device tensor (transposed, quantised where the device takes integers)."""
        return check_script.encode(self.to_dict(), array)

    def decode(self, array: np.ndarray) -> np.ndarray:
        """Device tensor -> model-layout float32."""
        return check_script.decode(self.to_dict(), array)
