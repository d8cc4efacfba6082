"""report.json (schema edgekit.report/1, validated) and its console summary; report.html is in report_html."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from edgekit.measure.drift import failure_reasons

SCHEMA_ID = "edgekit.report/1"
SCHEMA_PATH = Path(__file__).resolve().parents[1] / "schema" / "report.schema.json"


@lru_cache(maxsize=1)
def report_schema() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def validate_report(report: dict) -> None:
    """Raise jsonschema.ValidationError when a report breaks the public contract."""
    import jsonschema

    jsonschema.validate(report, report_schema())


def output_rows(title: str, rows: list[dict] | None) -> list[str]:
    """One console line per output: SQNR, cosine and errors."""
    if not rows:
        return []
    return [f"{title:<13} {r['name']:<12} SQNR {_num(r['sqnr_db'], '.1f')} dB  cosine {_num(r['cosine'], '.6f')}  "
            f"max|err| {_num(r['max_abs_err'], '.3g')}  mean|err| {_num(r['mean_abs_err'], '.3g')}" for r in rows]


def task_lines(row: dict) -> list[str]:
    """An output's parts, nearest-neighbour agreement and detections, one line each."""
    lines = []
    if row.get("parts"):
        lines.append(f"  parts       {row['name']}: " + ", ".join(f"{p['name']} {p['sqnr_db']:.1f} dB"
                                                              for p in row["parts"]))
    if row.get("neighbour_agreement") is not None:
        lines.append(f"  embedding   {row['name']}: nearest-neighbour agreement {row['neighbour_agreement']:.4f}, "
                     f"cosine min {_num(row.get('cosine_min'), '.6f')}")
    found = row.get("detection")
    if found:
        lines.append(f"  detections  {row['name']} ({found['layout']}, confidence {found['confidence']}, NMS IoU "
                     f"{found['iou']}): recall {found['recall']:.3f}, precision {found['precision']:.3f} vs float "
                     f"({found['matched']} matched of {found['float_detections']} float, "
                     f"{found['device_detections']} device)")
        for key, label in (("map50", "mAP@0.5"), ("map50_95", "mAP@0.5:0.95")):
            if found.get(key):
                lines.append(f"  {label:<11} float {found[key]['float']:.2f}  device {found[key]['device']:.2f}  "
                             f"drop {found[key]['drop']:.2f} points")
    return lines


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def summary_lines(report: dict) -> list[str]:
    """The drift report as plain lines: verdict, accuracy, agreement, error split, sizes, where it was measured."""
    drift, size = report["drift"], report["size"]
    lines = [f"target {report['target']}  model {report['model']['name']}  runtime {report['runtime']['name']} "
             f"({report['runtime']['where']})  converter {report['runtime']['converter']}"]
    if drift["reference_accuracy"] is not None:
        lines.append(f"accuracy      reference {drift['reference_accuracy']:.4f}  device {drift['device_accuracy']:.4f}"
                     f"  drop {drift['accuracy_drop']:.2f} points (max {drift['thresholds']['max_drop']})")
    if drift["top1_agreement"] is not None:
        lines.append(f"top-1 agreement {drift['top1_agreement']:.4f} (min {drift['thresholds']['min_agreement']}) "
                     f"over {drift['samples']} samples")
    lines += output_rows("conversion", (report["conversion"] or {}).get("outputs"))
    lines += output_rows("quantization", (report["quantization"] or {}).get("outputs"))
    lines += output_rows("total drift", drift["outputs"])
    lines += [line for row in drift["outputs"] for line in task_lines(row)]
    emulator = report.get("emulator")
    if emulator:
        lines.append(f"emulator      {emulator['where']}: {emulator['samples']} samples, bit-exact with host "
                     f"{emulator['bit_exact_with_host']}, agreement {_num(emulator['top1_agreement'], '.4f')}")
    lines += _compression_lines(report.get("compression"), size)
    lines.append(f"size          device {size['device_bytes']:,} B (gzip {size['device_gzip_bytes']:,} B); float32 "
                 f"{_num(size['float_device_bytes'], ',')} B")
    lines.extend(f"warning       {w}" for w in report["warnings"])
    if not drift["passed"]:
        lines.extend(f"over          {reason}" for reason in failure_reasons(drift))
    lines.append("PASSED" if passed(report) else "FAILED: drift over threshold")
    return lines


def _compression_lines(block: dict | None, size: dict) -> list[str]:
    if not block:
        return []
    ratio = size["baseline_float_gzip_bytes"] / size["device_gzip_bytes"]
    parts = [f"params {block.get('params_before', 0):,} -> {block.get('params_after', 0):,}"]
    for row in block["per_layer"]:
        if row.get("device_sparsity") is not None and (row.get("requested_sparsity") or row.get("clusters")):
            parts.append(f"{row['module']}: sparsity {row['device_sparsity']:.2f}, "
                         f"{row['device_max_distinct']} values/channel on the device")
    return [f"compression   gzip 1/{ratio:.1f} of the float32 original; " + "; ".join(parts)]


def passed(report: dict) -> bool:
    emulator = report.get("emulator")
    return bool(report["drift"]["passed"] and (emulator is None or emulator["passed"]))


def peak_rss_mb() -> int:
    """Peak resident memory of this process or of its largest child (the onnx2tf worker, the emulator), in MiB."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, children) / 1024)  # Linux reports KiB


def make_report(plan, device, measured, timings_s: dict[str, float], size: dict) -> dict:
    """The report.json dict (schema edgekit.report/1); blocks that do not apply are null."""
    import platform

    quantization = None
    if measured.quantization is not None:
        method = plan.options.calibration.method if plan.target.calibrated else None
        quantization = {"method": method, "weight_method": plan.options.calibration.weights,
                        "float_modules": list(device.float_modules),
                        "outputs": measured.quantization, "equalization": measured.equalization,
                        "ladder": measured.ladder, "bias_correction": None, **device.quantization}
    return {
        "schema": SCHEMA_ID,
        "target": plan.target.name,
        "model": {"name": plan.model.name, "sha256": plan.model.sha256},
        "runtime": {"name": device.runtime["name"], "version": device.runtime["version"],
                    "where": device.runtime.get("where", f"host-{platform.machine()}"),
                    "converter": device.runtime["converter"], "converter_version": device.runtime["converter_version"]},
        "size": size,
        "conversion": {"outputs": measured.conversion, "repairs": [], "first_divergence": None, **device.conversion},
        "drift": measured.drift,
        "emulator": measured.emulator,
        "compression": measured.compression,
        "quantization": quantization,
        "qat": measured.qat,
        "layers": measured.layers,
        "warnings": measured.warnings,
        "resources": {"peak_rss_mb": peak_rss_mb(), "reused_steps": list(measured.reused)},
        "timings_s": {**timings_s, **_parts_of_convert(device)},
        "latency_ms": measured.latency_ms,
    }


def _parts_of_convert(device) -> dict[str, float]:
    """Timed parts of the convert step (already inside its time): bias correction, beside the conversion."""
    block = device.quantization.get("bias_correction") or {}
    return {"bias_correction": block["seconds"]} if "seconds" in block else {}
