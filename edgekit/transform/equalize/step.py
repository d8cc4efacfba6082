"""Equalization as a build step: whether it applies to a plan, and which backend (torch or ONNX) runs it."""

from __future__ import annotations

from pathlib import Path

from edgekit.errors import UnsupportedError, first_line
from edgekit.inputs.plan import Plan
from edgekit.transform.equalize.common import Equalized, not_applied
from edgekit.transform.equalize.onnx import equalize_onnx
from edgekit.transform.equalize.torch import equalize


def check_request(plan: Plan) -> None:
    """`--equalize on` where it cannot act is refused (exit 2); `auto` says why it stays out."""
    mode = plan.options.conversion.equalize
    if mode == "off":
        return
    if plan.target.precision != "int8":
        if mode == "on":
            raise UnsupportedError(f"--equalize on prepares INT8 quantization; {plan.target.name} is "
                                   f"{plan.target.precision}", hint="drop --equalize, or choose an INT8 target")
        return


def equalize_applies(plan: Plan) -> bool:
    return plan.options.conversion.equalize != "off" and plan.target.precision == "int8"  # every model kind


def equalize_model(plan: Plan, workdir: Path) -> Equalized:
    """The plan's model equalized (on), or the better of equalized and as given (auto)."""
    mode = plan.options.conversion.equalize
    try:
        if plan.model.kind == "onnx":
            return equalize_onnx(plan.model, mode, plan.calibration.inputs, workdir)
        return equalize(plan.model, mode, plan.calibration.inputs, [spec.name for spec in plan.inputs])
    except Exception as exc:  # torch.export refusing the model: auto builds it as given, on stops
        if mode == "on":
            raise UnsupportedError(f"--equalize on could not trace the model: {first_line(exc)}",
                                   hint="drop --equalize") from None
        return Equalized(plan.model, not_applied(mode), f"equalize auto: not applied, the model did not trace "
                                                         f"({first_line(exc)})")
