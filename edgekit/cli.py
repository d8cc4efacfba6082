"""The `edgekit` command: thin click commands that parse, call the API and print (exit codes in docs/design.md)."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any

import click

from edgekit.errors import EdgekitError


def _console(stderr: bool = True):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class Terminated(BaseException):  # a signal, like KeyboardInterrupt, not an error
    """SIGTERM (what CI time-outs send), raised in the main thread so every cleanup runs as for Ctrl-C."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def _print_error(console, exc: EdgekitError) -> int:
    from rich.markup import escape

    console.print(f"[bold red]error:[/] {escape(exc.message)}")  # "edgekit[android]" is not markup
    if exc.hint:
        console.print(f"[bold]hint:[/] {escape(exc.hint)}")
    return exc.exit_code


def _print_bug(console, exc: BaseException) -> int:
    """A bug: say so, keep the traceback for the report."""
    from rich.markup import escape

    console.print(f"[bold red]unexpected error:[/] {escape(f'{type(exc).__name__}: {exc}')}")
    console.print(traceback.format_exc(), markup=False)
    return 1


def handle_errors(func: Callable[..., int | None]) -> Callable[..., None]:
    """Every EdgekitError becomes one message with a hint and its exit code; SIGINT exits 130 and SIGTERM 143
    after the build removed its staging and work folders and stopped its child processes; anything else is exit 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from edgekit.utils.outdir import USER_ERRNOS, user_os_error

        console = _console()
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            code = func(*args, **kwargs) or 0
        except EdgekitError as exc:
            code = _print_error(console, exc)
        except OSError as exc:  # a full disk or a permission is the machine's state, not an edgekit bug
            user = exc.errno in USER_ERRNOS
            code = _print_error(console, user_os_error(exc, "cannot read or write a file")) if user else \
                _print_bug(console, exc)
        except KeyboardInterrupt:
            console.print("interrupted (SIGINT): stopped; staging and work folders removed, OUT unchanged")
            code = 130
        except Terminated:
            console.print("terminated (SIGTERM): stopped; staging and work folders removed, OUT unchanged")
            code = 143
        except Exception as exc:
            code = _print_bug(console, exc)
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekit")
def main() -> None:
    """Take a trained PyTorch model to a phone or a Jetson, and measure how far it drifts."""


@main.command("targets")
@click.option("--json", "as_json", is_flag=True, help="print the targets as JSON")
@handle_errors
def targets_command(as_json: bool) -> None:
    """List the targets (name, platform, format, precision, runtime, route) and whether each route is installed."""
    from edgekit.config.target import list_targets
    from edgekit.routes import get_route

    rows = [{**t.summary(), **{k: v for k, v in get_route(t.route).summary().items() if k != "route"}}
            for t in list_targets()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table()
    table.add_column("name", no_wrap=True)
    for column in ("platform", "format", "precision", "runtime", "route", "installed"):
        table.add_column(column)
    for row in rows:
        state = "yes" if row["installed"] else f"no: pip install 'edgekit[{row['extra']}]'"
        table.add_row(*(str(row[k]) for k in ("name", "platform", "format", "precision", "runtime", "route")), state)
    _console(stderr=False).print(table)


def _shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    try:
        shape = tuple(int(v) for v in value.split(","))
    except ValueError:
        raise click.BadParameter("write the shape as comma-separated integers, e.g. 1,3,224,224") from None
    if not shape or min(shape) < 1:
        raise click.BadParameter("every size must be a positive integer, e.g. 1,3,224,224")
    return shape


@main.command("build")
@click.argument("model")
@click.option("--target", required=True, help="target name (see `edgekit targets`) or a target .toml file")
@click.option("--out", type=click.Path(path_type=Path), help="bundle folder [dist/<model-stem>-<target>]")
@click.option("--force", is_flag=True, help="replace an existing --out (only once the new bundle is complete)")
@click.option("--calibration", "calibration", help="calibration data: .npz/.npy/image folder/module:callable")
@click.option("--eval", "eval_data", help="evaluation data (with labels y for accuracy); default: held-out calibration")
@click.option("--recipe", type=click.Path(path_type=Path), help="calibration/NAME.toml for image folders")
@click.option("--calibration-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "percentile", "entropy", "mse"]),
              help="activation ranges (int8, int16x8): global min/max, or a percentile / KL-entropy / MSE threshold "
                   "on each activation's histogram over the whole calibration set (routes list theirs in "
                   "docs/routes.md)")
@click.option("--percentile", type=float, default=99.99, show_default=True)
@click.option("--calibration-samples", type=int, default=200, show_default=True,
              help="the most calibration samples the activation ranges are measured on")
@click.option("--weight-method", default="minmax", show_default=True,
              type=click.Choice(["minmax", "mse", "octav"]),
              help="how weights are quantized: per-channel min/max, or ai-edge-quantizer's MSE or OCTAV clipping "
                   "(LiteRT targets)")
@click.option("--prune", type=float, help="fraction of weights (or channels) to prune, e.g. 0.5")
@click.option("--prune-mode", default="unstructured", show_default=True,
              type=click.Choice(["unstructured", "structured"]))
@click.option("--clusters", type=int, help="k-means clusters per weight tensor, e.g. 16")
@click.option("--cluster-codebook", default="shared", show_default=True,
              type=click.Choice(["shared", "channel", "tensor"]),
              help="--clusters: one set of k values per layer on the INT8 grid, per output channel, or per tensor")
@click.option("--recover", type=int, default=0, help="distillation steps after compression")
@click.option("--qat", default="0", show_default=True, metavar="STEPS|auto",
              help="quantization-aware fine-tuning steps before conversion (INT8 targets), simulating the route's "
                   "own quantization; auto: only as the last rung of --fallback auto")
@click.option("--qat-seconds", type=float, default=1800.0, show_default=True,
              help="--qat: the most seconds of fine-tuning")
@click.option("--train", help="--qat: more samples to fine-tune on besides the calibration data (DATA, with or "
                              "without labels)")
@click.option("--max-drop", type=float, default=1.0, show_default=True, help="max accuracy drop, percentage points")
@click.option("--min-agreement", type=float, default=0.99, show_default=True, help="min top-1 agreement, 0..1")
@click.option("--fallback", default="none", show_default=True, type=click.Choice(["none", "auto"]),
              help="auto: move the most sensitive layers up the precision ladder until the drift passes")
@click.option("--max-size", type=int, help="--fallback auto: the largest device model, in bytes")
@click.option("--max-latency-ratio", type=float,
              help="--fallback auto: the most host latency, as a multiple of the first (INT8) build's")
@click.option("--max-float-layers", type=int, default=3, show_default=True,
              help="--fallback auto: the most layers kept in float")
@click.option("--equalize", default="auto", show_default=True, type=click.Choice(["auto", "on", "off"]),
              help="cross-layer equalization before INT8, bias correction after it on LiteRT (auto: each kept "
                   "when it measures better)")
@click.option("--converter", type=click.Choice(["onnx2tf", "litert-torch", "auto"]))
@click.option("--emulator", type=click.Choice(["host", "arm64"]))
@click.option("--emulator-samples", type=int, default=64, show_default=True,
              help="the most samples the ARM64 emulator runs")
@click.option("--emulator-seconds", type=float, default=60.0, show_default=True,
              help="time budget of the emulator run: beyond the first 8 samples, as many as fit")
@click.option("--golden-samples", type=int, default=16, show_default=True,
              help="golden samples the bundle keeps for check.py")
@click.option("--holdout", type=float, default=0.2, show_default=True,
              help="without --eval: the share of calibration data held out to measure drift on")
@click.option("--input-shape", callback=_shape, help="input shape when the data cannot tell, e.g. 1,3,224,224")
@click.option("--io", type=click.Choice(["float32", "int8"]), help="device I/O type (default: the target's)")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--accept-conversion-error", is_flag=True,
              help="build even when the float32 conversion is wrong beyond rounding (else exit 2); warned")
@click.option("--ignore-index", type=int, help="an eval label left out of accuracy, e.g. -100 (segmentation)")
@click.option("--task", type=click.Choice(["classify", "regress", "embed", "detect"]),
              help="what every output is (default: edgekit decides per output, see docs/outputs.md)")
@click.option("--outputs", type=click.Path(path_type=Path),
              help='TOML with [outputs] name = "classify" | "regress" | "embed" | "detect", per output, and an '
                   "optional [detect] table (layout, confidence, iou)")
@click.option("--min-sqnr", type=float,
              help="SQNR floor in dB for outputs that are not class scores, of their worst part (default: the "
                   "target's)")
@click.option("--min-recall", type=float,
              help="detect: the share of the float model's detections the device must find (default: the target's, "
                   "0.95)")
@click.option("--min-precision", type=float,
              help="detect: the share of the device's detections the float model also makes (default: the "
                   "target's, 0.95)")
@click.option("--allow-small-calibration", is_flag=True,
              help="calibrate on fewer than 8 samples (else exit 2); warned in the report")
@click.option("--json", "as_json", is_flag=True, help="print report.json on stdout (progress stays on stderr)")
@handle_errors
def build_command(model: str, target: str, out: Path | None, force: bool, calibration: str | None,
                  eval_data: str | None, as_json: bool, **flags: Any) -> int:
    """Build a device bundle for MODEL and measure its drift (exit 3 when over a threshold)."""
    import edgekit
    from edgekit.bundle.report import summary_lines
    from edgekit.config.options import options_from_flags

    console = _console()
    result = edgekit.build(model, target, calibration, eval_data, out, options=options_from_flags(**flags),
                           force=force, progress=_progress(console))
    if as_json:
        click.echo(json.dumps(result.report, indent=2))
    for line in summary_lines(result.report):
        console.print(line, markup=False)
    console.print(f"bundle: {result.out}")
    console.print(f"manifest sha256: {result.manifest_sha256} (pin it: edgekit check BUNDLE --expect-digest SHA256)",
                  markup=False)
    console.print(f"check.py sha256: {result.manifest['files']['check.py']} (pin it on the device: "
                  "sha256sum check.py, then python check.py --expect-digest MANIFEST_SHA256)", markup=False)
    return 0 if result.passed else 3


def _progress(console) -> Callable[[str, str, float | None], None]:
    def listener(event: str, label: str, seconds: float | None) -> None:
        if event == "done":
            console.print(f"[green]✓[/] {label} [dim]({seconds:.1f} s)[/]")
        elif event == "note":
            console.print(f"[yellow]note:[/] {label}")
        else:
            console.print(f"[dim]… {label}[/]")

    return listener


@main.command("check")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--eval", "eval_data", help="re-measure drift on this data (references from reference.onnx)")
@click.option("--recipe", type=click.Path(path_type=Path), help="calibration/NAME.toml for image folders")
@click.option("--emulator", type=click.Choice(["host", "arm64"]), default="host", show_default=True)
@click.option("--expect-digest", help="refuse (exit 3) unless manifest.json has this sha256 (printed by build)")
@click.option("--json", "as_json", is_flag=True, help="print the result as JSON")
@handle_errors
def check_command(bundle: Path, eval_data: str | None, recipe: Path | None, emulator: str, expect_digest: str | None,
                  as_json: bool) -> int:
    """Re-run the drift check of an existing bundle (exit 3 on drift or on files that differ from its manifest)."""
    from edgekit.bundle.check import check_bundle_dir, result_lines

    result = check_bundle_dir(bundle, eval_data, recipe, emulator=emulator, expect_digest=expect_digest)
    return _verdict(result, result_lines, as_json)


def _verdict(result: dict, lines: Callable[[dict], list[str]], as_json: bool) -> int:
    """Print a check or diff result (JSON, or its lines) and return its exit code: 0 passed, 3 not."""
    if as_json:
        click.echo(json.dumps(result, indent=2))
    else:
        for line in lines(result):
            _console(stderr=False).print(line, markup=False)
    return 0 if result["passed"] else 3


@main.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@handle_errors
def inspect_command(path: Path, as_json: bool) -> None:
    """What is inside a model or bundle: ops, dtypes, sizes, sparsity, I/O."""
    from edgekit.bundle.inspect import inspect_path

    info = inspect_path(path)
    click.echo(json.dumps(info, indent=2, default=str) if as_json else _inspect_text(info))


def _inspect_text(info: dict) -> str:
    lines = [f"{info['path']}  ({info['format']}, {info['bytes']:,} bytes)"]
    for key in ("inputs", "outputs"):
        lines += [f"  {key[:-1]:<6} {t['name']}: {t['shape']} {t['dtype']}" for t in info.get(key, [])]
    if info.get("ops"):
        lines.append("  ops    " + ", ".join(f"{k} x{v}" for k, v in info["ops"].items()))
    for w in info.get("weights", [])[:40]:
        lines.append(f"  weight {w['name']}: {w['shape']} {w['dtype']} sparsity {w['sparsity']:.3f} "
                     f"distinct {w['distinct']}")
    for key, value in info.get("bundle", {}).items():
        lines.append(f"  {key}: {value}")
    return "\n".join(lines)


@main.command("diff")
@click.argument("old", type=click.Path(path_type=Path))
@click.argument("new", type=click.Path(path_type=Path))
@click.option("--max-drop-increase", type=float, default=0.5, show_default=True,
              help="how much NEW's accuracy drop may grow, percentage points")
@click.option("--max-agreement-decrease", type=float, default=0.01, show_default=True,
              help="how much NEW's top-1 agreement (or a detector's recall or precision vs float) may fall, 0..1")
@click.option("--max-size-increase", type=float, help="how much NEW's device model may grow, fraction (not gated "
              "unless given), e.g. 0.1")
@click.option("--json", "as_json", is_flag=True, help="print the comparison as JSON")
@handle_errors
def diff_command(old: Path, new: Path, max_drop_increase: float, max_agreement_decrease: float,
                 max_size_increase: float | None, as_json: bool) -> int:
    """Compare bundle NEW with bundle OLD: a release gate (exit 3 when NEW regresses beyond the thresholds)."""
    from edgekit.bundle.diff import DiffThresholds, diff_bundles, diff_lines

    result = diff_bundles(old, new, DiffThresholds(max_drop_increase, max_agreement_decrease, max_size_increase))
    return _verdict(result, diff_lines, as_json)


@main.group("emulator")
def emulator_group() -> None:
    """Prepare or show the rootless ARM64 emulator used to check Android models where they run."""


@emulator_group.command("setup")
@click.option("--force", is_flag=True, help="rebuild even when it is set up already")
@handle_errors
def emulator_setup(force: bool) -> None:
    """Download QEMU user-mode, an arm64 Python and LiteRT into the cache (no root, nothing system-wide)."""
    from edgekit.emulator import qemu as emulator

    console = _console()
    result = emulator.setup(progress=lambda text: console.print(text, markup=False), force=force)
    console.print(f"ARM64 emulator ready at {result['root']} ({result['size_bytes'] / 1e6:.0f} MB)"
                  + ("" if result["changed"] else ", nothing to do"))


@emulator_group.command("status")
@click.option("--json", "as_json", is_flag=True, help="print as JSON")
@handle_errors
def emulator_status(as_json: bool) -> None:
    """Show what is cached, where, and its size."""
    from edgekit.emulator import qemu as emulator

    info = emulator.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    state = "ready" if info["ready"] else "not set up (run `edgekit emulator setup`)"
    click.echo(f"ARM64 emulator: {state}\n  root {info['root']}\n  size {info['size_bytes'] / 1e6:.1f} MB\n"
               f"  qemu {info['qemu']}\n  python {info['python']}\n  litert {info['litert']}\n"
               f"  onnxruntime {info['onnxruntime']}\n  openvino {info['openvino']}")


@main.command("matrix")
@click.argument("matrix_file", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="where the bundles and matrix.json go [dist/<stem>]")
@click.option("--jobs", type=click.IntRange(min=1), help="cells built at once [what the cores and memory allow]")
@click.option("--resume", is_flag=True, help="keep the cells already built from the same inputs (command, file "
                                             "contents, tool versions); build the others")
@click.option("--ray", "ray", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="build each cell as a Ray task: --ray alone starts a local Ray runtime, --ray ADDRESS joins "
                   "that cluster (pip install 'edgekit[ray]')")
@click.option("--baseline", type=click.Path(path_type=Path), help="the OUT of a previous run: compare every cell "
              "with its bundle there (edgekit diff) and exit 3 when one regressed (the release gate)")
@click.option("--max-cells", type=click.IntRange(min=1), help="the most cells the file may expand to [1000]")
@click.option("--json", "as_json", is_flag=True, help="print matrix.json on stdout (progress stays on stderr)")
@handle_errors
def matrix_command(matrix_file: Path, out: Path | None, jobs: int | None, resume: bool, ray: str | None,
                   baseline: Path | None, max_cells: int | None, as_json: bool) -> int:
    """Build every cell of MATRIX_FILE (models x axes, each an ordinary build) and gather the verdicts in
    OUT/matrix.json; exit 1 if any cell gave 1, else 2, else 3, else 0."""
    import edgekit

    console = _console()
    with _matrix_progress(console) as (say, watch):
        result = edgekit.matrix(matrix_file, out, jobs, progress=say, resume=resume, ray=ray, baseline=baseline,
                                watch=watch, max_cells=max_cells)
    if as_json:
        click.echo((result.out / "matrix.json").read_text(), nl=False)
    passed = sum(c["passed"] for c in result.cells)
    console.print(f"{passed} of {len(result.cells)} cells passed; {result.out / 'matrix.json'} (exit "
                  f"{result.exit_code})", markup=False)
    return result.exit_code


@contextlib.contextmanager
def _matrix_progress(console):
    """On a terminal, one live table of the cells (edgekit/build_matrix/board.py) with the matrix's lines above it; in a
    log, the lines alone (one per finished cell)."""
    def say(line: str) -> None:
        console.print(line, markup=False)

    if not console.is_terminal:
        yield say, None
        return
    from rich.live import Live

    from edgekit.build_matrix.board import Board

    board = Board()
    with Live(console=console, get_renderable=board.table, refresh_per_second=2, transient=False):
        yield (lambda line: None if line.startswith("[") else say(line)), board.watch


if __name__ == "__main__":
    main()
