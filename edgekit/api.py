"""The Python API: build() and check(), the same code the CLI runs."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.bundle.report import passed as report_passed
from edgekit.config.options import BuildOptions, options_from_keywords
from edgekit.errors import ConfigError, DriftError, EdgekitError, UnsupportedError
from edgekit.measure.drift import failure_reasons
from edgekit.pipeline.prepare import prepare
from edgekit.pipeline.run import build_in_place
from edgekit.utils import outdir
from edgekit.utils.progress import Listener, Steps


@dataclass(frozen=True)
class BuildResult:
    """What a build produced: the bundle folder, the report (same dict as report.json) and the verdict."""

    out: Path
    report: dict
    manifest: dict
    manifest_sha256: str  # pin it: `edgekit check OUT --expect-digest SHA256` refuses any other manifest.json

    @property
    def passed(self) -> bool:
        return report_passed(self.report)

    def raise_for_drift(self) -> None:
        if not self.passed:
            reasons = failure_reasons(self.report["drift"]) or ["the emulator run failed"]
            raise DriftError(f"drift over threshold: {'; '.join(reasons)}", report=self.report,
                             hint=f"see {self.out / 'report.html'}")


def build(model: Any, target: str = "android-arm64-int8", calibration: Any = None, eval_data: Any = None,
          out: str | Path | None = None, *, options: BuildOptions | None = None, force: bool = False,
          progress: Listener | None = None, **flat: Any) -> BuildResult:
    """Build a device bundle for `target` and measure its drift; `options` groups everything else (docs/design.md).

    The flat keywords of earlier releases (`max_drop=`, `prune=`, `calibration_method=`, ...) still work for one
    release, with a DeprecationWarning; they cannot be mixed with `options`."""
    options = _options(options, flat)
    _refuse_unimplemented(options)
    steps = Steps(progress)
    with steps.step("plan", "checking model, data and target"):
        plan = prepare(model, target, calibration, eval_data, out, options, force)
    for note in plan.warnings:
        steps.note(note)
    try:
        result = build_in_place(plan, steps)
    except OSError as exc:
        if exc.errno not in outdir.USER_ERRNOS:
            raise
        raise outdir.user_os_error(exc, f"cannot write the bundle for {plan.out}") from None
    return BuildResult(plan.out, result.report, result.manifest, result.manifest_sha256)


def _options(options: BuildOptions | None, flat: dict[str, Any]) -> BuildOptions:
    if not flat:
        return options if options is not None else BuildOptions()
    if options is not None:
        raise ConfigError(f"build() got options= and the flat keywords {', '.join(sorted(flat))}",
                          hint="put them into BuildOptions(...) groups (docs/design.md)")
    warnings.warn(f"edgekit.build({', '.join(f'{k}=' for k in sorted(flat))}...) is deprecated: pass "
                  "options=edgekit.BuildOptions(...) (docs/design.md); the flat keywords go in the next release",
                  DeprecationWarning, stacklevel=3)
    return options_from_keywords(**flat)


def _refuse_unimplemented(options: BuildOptions) -> None:
    """Options that would otherwise be silently ignored stop the build (exit 2)."""
    compression = options.compression
    if compression.recover and compression.prune is None and compression.cluster is None:
        raise UnsupportedError("--recover fine-tunes after compression, but neither --prune nor --clusters is given",
                               hint="add --prune and/or --clusters, or drop --recover")


def check(bundle: str | Path, eval_data: Any = None, recipe: str | Path | None = None,
          expect_digest: str | None = None) -> dict:
    """Re-run the drift check of a bundle: golden I/O, or with `eval_data`, references recomputed from
    reference.onnx. `expect_digest`: the sha256 of manifest.json the bundle must have (IntegrityError otherwise)."""
    from edgekit.bundle.check import check_bundle_dir

    return check_bundle_dir(Path(bundle), eval_data, recipe, expect_digest=expect_digest)


__all__ = ["BuildResult", "EdgekitError", "build", "check"]
