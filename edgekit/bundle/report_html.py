"""report.html: one self-contained page (no network, no scripts) with inline SVG charts drawn here in Python.

Stable element ids: summary, verdict, layers-chart, confusion, detections, error-histogram, sizes, errors, lineage.
"""

from __future__ import annotations

import base64
import html
import json
import struct
import zlib
from dataclasses import dataclass, field

import numpy as np

from edgekit.bundle.report import passed, summary_lines
from edgekit.measure.detect import Detector, decode
from edgekit.measure.drift import failure_reasons

GREEN, AMBER, RED, GREY, BLUE = "#1a7f37", "#bf8700", "#cf222e", "#8c959f", "#0969da"
MAX_CLASSES = 30  # a bigger confusion matrix is unreadable: list the most frequent changes instead
HISTOGRAM_BINS = 40
STAGES = (("conversion", "float device model vs PyTorch (converter error)"),
          ("quantization", "device model vs float device model (quantization error)"),
          ("total drift", "device model vs PyTorch (what ships)"))
CSS = """body{font-family:system-ui,sans-serif;margin:2em auto;max-width:72em;padding:0 1em;color:#1f2328}
h2{border-bottom:1px solid #d0d7de;padding-bottom:.2em;margin-top:1.6em}table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #d0d7de;padding:.25em .6em;text-align:left;font-size:.88em;vertical-align:top}
th{background:#f6f8fa;white-space:nowrap}pre{background:#f6f8fa;padding:1em;overflow:auto;font-size:.85em}
.verdict{color:#fff;padding:.2em .7em;border-radius:6px;font-size:.8em;vertical-align:middle}
.cards{display:flex;flex-wrap:wrap;gap:.8em;margin:1em 0}.card{border:1px solid #d0d7de;border-radius:8px;
padding:.6em 1em;flex:1 1 8em}.card b{display:block;font-size:1.5em}.card span{color:#59636e;font-size:.85em}
.note{color:#59636e}tr.kept td{font-weight:600}.bad{color:#cf222e}.charts{display:flex;flex-wrap:wrap;gap:2em}
svg text{font-family:system-ui,sans-serif;font-size:12px;fill:#1f2328}"""


@dataclass(frozen=True)
class Evidence:
    """The measured outputs behind the report: reference (PyTorch) and device outputs on the eval set, the eval
    labels when there are any, and the name of the output that holds class scores (None: no class scores)."""

    reference: dict[str, np.ndarray]
    device: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    scores: str | None = None
    unit: str = "samples"  # "labelled pixels" for segmentation labels
    images: np.ndarray | None = None  # the first eval inputs (N, C, H, W) of an image model with a detector
    detectors: tuple[Detector, ...] = field(default=())


def render_html(report: dict, manifest: dict, evidence: Evidence | None = None) -> str:
    """The whole page; without `evidence`, the confusion matrix and the error histogram say "not measured"."""
    ok = passed(report)
    body = "".join([
        f'<h1>edgekit report: {_e(report["model"]["name"])} → {_e(report["target"])} <span class="verdict" '
        f'id="verdict" style="background:{GREEN if ok else RED}">{"PASSED" if ok else "FAILED"}</span></h1>',
        _summary(report),
        _section("layers-chart", "Per-layer drift (SQNR, worst first)", _layers_chart(report)),
        _section("ladder", "Mixed precision: the ladder of --fallback auto", _ladder_table(report)),
        _section("confusion", "Predictions: float (PyTorch) vs device", _confusion(evidence)),
        *([_section("detections", "Detections: float (dashed green) vs device (blue)", _detections(report, evidence))]
          if evidence is not None and evidence.detectors else []),
        *([_section("qat", "Quantization-aware fine-tuning (--qat)", _qat(report["qat"]))]
          if report.get("qat") else []),
        _section("error-histogram", "Output error |device − reference| on the eval set", _error_histogram(evidence)),
        _section("sizes", "Size", _sizes_chart(report["size"])),
        _section("errors", "Error by stage", _error_table(report)),
        _section("details", "Emulator, compression, timings, latency", _details(report)),
        _section("lineage", "Lineage", _lineage(manifest)),
    ])
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>edgekit report: '
            f'{_e(report["target"])}</title><style>{CSS}</style></head><body>{body}</body></html>\n')


def _e(value: object) -> str:
    return html.escape(str(value))


def _section(element_id: str, title: str, content: str) -> str:
    return f'<h2>{_e(title)}</h2><div id="{element_id}">{content}</div>'


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else format(value, spec) + suffix


def _summary(report: dict) -> str:
    drift, size, t = report["drift"], report["size"], report["drift"]["thresholds"]
    smaller = size["float_device_bytes"] / size["device_bytes"] if size["float_device_bytes"] else None
    cards = [("accuracy drop", _num(drift["accuracy_drop"], ".2f", " pts"), f"max {t['max_drop']} points"),
             ("top-1 agreement", _num(drift["top1_agreement"], ".4f"), f"min {t['min_agreement']}"),
             ("accuracy", _num(drift["device_accuracy"], ".4f"),
              f"reference {_num(drift['reference_accuracy'], '.4f')}"),
             ("device model", f"{size['device_bytes'] / 1024:,.1f} KiB",
              f"{_num(smaller, '.1f', '× smaller than float32')}"),
             ("latency", _num(report["latency_ms"].get("host"), ".3f", " ms"), "median per sample, host"),
             ("samples", str(drift["samples"]), "eval samples compared")]
    html_cards = "".join(f'<div class="card"><span>{_e(a)}</span><b>{_e(b)}</b><span>{_e(c)}</span></div>'
                         for a, b, c in cards)
    reasons = failure_reasons(drift) if not drift["passed"] else []
    warnings = "".join(f'<li class="bad">{_e(w)}</li>' for w in reasons + report["warnings"])
    return (f'<div id="summary"><div class="cards">{html_cards}</div>'
            f'{f"<ul>{warnings}</ul>" if warnings else ""}<pre>{_e(chr(10).join(summary_lines(report)))}</pre></div>')


def _svg(width: float, height: float, body: str, label: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{height:.0f}" '
            f'viewBox="0 0 {width:.0f} {height:.0f}" role="img" aria-label="{_e(label)}">{body}</svg>')


def _text(x: float, y: float, text: str, anchor: str = "start", extra: str = "") -> str:
    return f'<text x="{x:.1f}" y="{y:.1f}" text-anchor="{anchor}" {extra}>{_e(text)}</text>'


def _hbars(rows: list[tuple[str, float | None, str, str, str]], scale_max: float, label: str,
           ticks: list[float | None] | None = None) -> str:
    """Horizontal bars: (name, value, colour, value text, tooltip) per row, one row per 22 px; `ticks` draws a
    black mark per row (a second value on the same scale)."""
    left, width, row_h = 190, 420, 22
    body = []
    for i, (name, value, colour, value_text, tip) in enumerate(rows):
        y, tick = 8 + i * row_h, (ticks or [None] * len(rows))[i]
        bar = 0.0 if value is None else max(0.0, min(value, scale_max)) / scale_max * width
        name = name if len(name) <= 30 else "…" + name[-29:]  # the full name is in the tooltip
        mark = "" if tick is None else (f'<rect x="{left + max(0.0, min(tick, scale_max)) / scale_max * width - 1:.1f}"'
                                        f' y="{y}" width="3" height="{row_h - 1}" fill="#1f2328"/>')
        body.append(f'<g><title>{_e(tip)}</title>{_text(left - 8, y + 14, name, "end")}'
                    f'<rect x="{left}" y="{y + 3}" width="{bar:.1f}" height="{row_h - 6}" fill="{colour}"/>{mark}'
                    f'{_text(left + max(bar, (tick or 0) / scale_max * width) + 6, y + 14, value_text)}</g>')
    body.append(f'<line x1="{left}" y1="4" x2="{left}" y2="{12 + len(rows) * row_h}" stroke="#59636e"/>')
    return _svg(left + width + 150, 16 + len(rows) * row_h, "".join(body), label)


def _qat(block: dict) -> str:
    """The loss curve, and the simulation against the float model (before, after) and the device model."""
    held = block.get("held_out_loss") or []
    kept = (f'; the weights of step {block["best_step"]} kept (lowest loss on {block["held_out_samples"]} '
            f'held-out samples{", the original ones" if block["best_step"] == 0 else ""})') if held else ""
    head = (f'<p>{block["steps_done"]} of {block["steps"]} steps ({_e(block["stopped_by"])}) in '
            f'{block["seconds"]:.1f} s on {block["samples"]} samples, {_e(block["loss"])}; {_e(block["quantizer"])}'
            f'{_e(kept)}</p>')
    rows = "".join(
        f"<tr><td>{_e(title)}</td><td>{_e(row['name'])}</td><td>{_num(row['sqnr_db'], '.1f', ' dB')}</td>"
        f"<td>{_num(row['cosine'], '.6f')}</td><td>{_num(row['top1_agreement'], '.4f')}</td></tr>"
        for title, key in (("simulation vs float, before", "simulation_before"),
                           ("simulation vs float, after", "simulation_after"),
                           ("device vs simulation", "simulation_vs_device"))
        for row in block[key]["outputs"])
    table = ("<table><tr><th>comparison</th><th>output</th><th>SQNR</th><th>cosine</th><th>top-1 agreement</th></tr>"
             f"{rows}</table>")
    return head + _loss_chart(block["loss_curve"], held) + table + _qat_layers(block["simulation_vs_device"])


def _qat_layers(versus: dict) -> str:
    """Each module's output, device and simulation against the float model; the first that departs, named."""
    layers = versus.get("layers")
    if not layers:
        return ""
    gap = versus.get("first_gap")
    head = ('<p class="note">the device model computes what the fine-tune simulated at every measured module</p>'
            if gap is None else
            f'<p><b>the device model departs from the simulation at {_e(gap["module"])}</b> (device op '
            f'{_e(gap["op"])}): {gap["device_sqnr_db"]:.1f} dB against the float model where the simulation has '
            f'{gap["simulation_sqnr_db"]:.1f} dB</p>')
    rows = "".join(f"<tr><td>{_e(r['module'])}</td><td>{_e(r['op'])}</td><td>{_e(r['simulation_op'])}</td>"
                   + "".join(f"<td>{_num(r[key], '.1f', ' dB')}</td>"
                             for key in ("device_sqnr_db", "simulation_sqnr_db", "gap_db")) + "</tr>" for r in layers)
    return (head + "<table><tr><th>module</th><th>device op</th><th>simulated op</th><th>device vs float</th>"
            f"<th>simulation vs float</th><th>gap</th></tr>{rows}</table>")


def _loss_chart(points: list[list[float]], held: list[list[float]] = ()) -> str:
    """The training loss (line) and the held-out loss the kept weights were chosen by (dots)."""
    if len(points) < 2:
        return '<p class="note">too few steps for a loss curve</p>'
    left, width, height = 70, 480, 160
    steps, losses = [p[0] for p in points], [p[1] for p in points] + [p[1] for p in held]
    low, high = min(losses), max(losses)
    span = (high - low) or 1.0

    def at(step: float, loss: float) -> str:
        return f"{left + step / steps[-1] * width:.1f},{10 + (high - loss) / span * height:.1f}"

    body = (f'<polyline fill="none" stroke="{BLUE}" stroke-width="2" '
            f'points="{" ".join(at(s, v) for s, v in points)}"/>'
            f'<line x1="{left}" y1="10" x2="{left}" y2="{10 + height}" stroke="#59636e"/>'
            f'<line x1="{left}" y1="{10 + height}" x2="{left + width}" y2="{10 + height}" stroke="#59636e"/>'
            + _text(left - 6, 16, f"{high:.3g}", "end") + _text(left - 6, 10 + height, f"{low:.3g}", "end")
            + _text(left + width, 28 + height, f"step {steps[-1]}", "end")
            + _text(left, 28 + height, "loss" + (" (dots: held-out)" if held else ""), "start")
            + "".join(f'<circle cx="{x}" cy="{y}" r="3" fill="{AMBER}"/>'
                      for x, y in (at(step, value).split(",") for step, value in held)))
    return _svg(left + width + 20, height + 40, body, "QAT training loss per step")


def _layers_chart(report: dict) -> str:
    layers = report.get("layers")
    if not layers:
        return '<p class="note">not measured: this build has no per-layer SQNR (report.json <code>layers</code> is ' \
               'null)</p>'
    floor = report["drift"]["thresholds"].get("min_sqnr_db", 20.0)
    ordered = sorted(layers, key=lambda r: (r["sqnr_db"] is None, r["sqnr_db"] if r["sqnr_db"] is not None else 0))
    top = max([r["sqnr_db"] or 0.0 for r in ordered] + [40.0])
    rows = [(r["module"] or r["tensor"], r["sqnr_db"], _sqnr_colour(r["sqnr_db"], floor),
             _num(r["sqnr_db"], ".1f", " dB"), _layer_tip(r)) for r in ordered]
    accumulated = [r.get("accumulated_sqnr_db") for r in ordered]
    legend = (f'<p class="note">SQNR of each layer\'s INT8 output against its float value: higher is better; red '
              f'below {floor:g} dB, amber below {floor + 10:g} dB.'
              + (" Black mark: accumulated SQNR, all error up to that layer." if any(accumulated) else "") + "</p>")
    return legend + _hbars(rows, min(top, 200.0), "per-layer SQNR in dB, worst first", accumulated)


def _ladder_table(report: dict) -> str:
    """Every step the ladder built, in order: which layer moved where, and the drift, size and host latency after."""
    steps = (report.get("quantization") or {}).get("ladder")
    if not steps:
        return '<p class="note">not run: the build passed as first built, or <code>--fallback auto</code> was not ' \
               'asked for</p>'
    head = ("<tr><th>layer</th><th>to</th><th>drift passes</th><th>worst SQNR dB</th><th>accuracy drop</th>"
            "<th>device bytes</th><th>host latency ms</th><th>× first build</th><th>within bounds</th>"
            "<th>kept</th></tr>")
    kept = ' class="kept"'
    rows = "".join(
        f'<tr{kept if s["kept"] else ""}><td>{_e(_moved(s))}</td>'
        f'<td>{_e(s["precision"])}</td><td>{"yes" if s["passed"] else "no"}</td><td>{_num(s["sqnr_db"], ".1f")}</td>'
        f'<td>{_num(s["accuracy_drop"], ".2f")}</td><td>{_num(s["device_bytes"], ",")}</td>'
        f'<td>{_num(s["host_latency_ms"], ".3f")}</td><td>{_num(s["latency_ratio"], ".2f")}</td>'
        f'<td>{"yes" if s["within_bounds"] else "no"}</td><td>{"yes" if s["kept"] else ""}</td></tr>' for s in steps)
    return f"<table>{head}{rows}</table>"


def _moved(step: dict) -> str:
    """A ladder step's layers: the group one INT8 scale covers, joined; the step's error when it was not built."""
    group, label = step.get("group") or [], step["module"] or step["tensor"]
    run = " groups from " in label  # the back-off's runs name themselves
    name = " + ".join(group) if len(group) > 1 and not run else label
    return f"{name} (not built: {step['error']})" if step.get("error") else name


def _layer_tip(row: dict) -> str:
    extra = {k: row[k] for k in ("modules", "op", "accumulated_sqnr_db", "precision", "chosen_because")
             if row.get(k) is not None}
    return f"module {row['module']}, tensor {row['tensor']}" + "".join(f", {k} {v}" for k, v in extra.items())


def _sqnr_colour(value: float | None, floor: float) -> str:
    if value is None:
        return GREY
    return RED if value < floor else AMBER if value < floor + 10 else GREEN


DRAWN_IMAGES = 4
DRAWN_SIDE = 240


def _detections(report: dict, evidence: Evidence) -> str:
    """The eval images where float and device detections agree least (report.json worst_images), each with both
    models' boxes drawn over it."""
    detector = evidence.detectors[0]
    if evidence.images is None:
        return '<p class="note">not drawn: the detector\'s input is not an image (N, 1 or 3, H, W)</p>'
    row = next((r for r in report["drift"]["outputs"] if r["name"] == detector.outputs[0]), None)
    worst = [w["image"] for w in ((row or {}).get("detection") or {}).get("worst_images", [])]
    chosen = [i for i in dict.fromkeys([*worst, *range(len(evidence.images))]) if i < len(evidence.images)]
    chosen = chosen[:DRAWN_IMAGES]
    ref = decode([evidence.reference[o][chosen] for o in detector.outputs], detector)
    dev = decode([evidence.device[o][chosen] for o in detector.outputs], detector)
    return "".join(_drawn(evidence.images[i], ref[k], dev[k], i, detector.names) for k, i in enumerate(chosen))


def _drawn(image: np.ndarray, ref, dev, index: int, names: tuple[str, ...]) -> str:
    height, width = image.shape[1:]
    scale = DRAWN_SIDE / max(height, width)
    body = [f'<image href="data:image/png;base64,{_png(image)}" width="{width * scale:.0f}" '
            f'height="{height * scale:.0f}" preserveAspectRatio="none"/>']
    for found, colour, dash in ((ref, GREEN, ' stroke-dasharray="4 3"'), (dev, BLUE, "")):
        fill = f'style="fill:{colour}"'
        for (x1, y1, x2, y2), score, cls in zip(found.boxes, found.scores, found.classes):
            label = names[cls] if cls < len(names) else str(cls)
            body.append(f'<g><title>{"float" if colour == GREEN else "device"}: {_e(label)} {score:.2f}</title>'
                        f'<rect x="{x1 * scale:.1f}" y="{y1 * scale:.1f}" width="{max(x2 - x1, 0) * scale:.1f}" '
                        f'height="{max(y2 - y1, 0) * scale:.1f}" fill="none" stroke="{colour}" stroke-width="2"{dash}/>'
                        f"{_text(x1 * scale + 2, y1 * scale + 12, label, extra=fill)}</g>")
    caption = f"eval image {index}: {len(ref.scores)} float, {len(dev.scores)} device detections"
    picture = _svg(width * scale, height * scale, "".join(body), caption)
    return (f'<figure style="display:inline-block;margin:.5em">{picture}'
            f'<figcaption class="note">{_e(caption)}</figcaption></figure>')


def _png(image: np.ndarray) -> str:
    """An (C, H, W) input as a base64 PNG, stretched to its own range (grey for one channel, RGB for three)."""
    pixels = image.astype(np.float64)
    low, high = float(pixels.min()), float(pixels.max())
    pixels = np.round((pixels - low) / (high - low or 1.0) * 255).astype(np.uint8)
    pixels = np.repeat(pixels, 3, 0) if pixels.shape[0] == 1 else pixels[:3]
    rows = np.moveaxis(pixels, 0, -1)
    raw = b"".join(b"\0" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", rows.shape[1], rows.shape[0], 8, 2, 0, 0, 0)
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
    return base64.b64encode(data).decode()


def _predictions(evidence: Evidence | None) -> tuple[np.ndarray, np.ndarray] | None:
    if evidence is None or evidence.scores is None or evidence.scores not in evidence.reference:
        return None
    return evidence.reference[evidence.scores].argmax(1), evidence.device[evidence.scores].argmax(1)


def _confusion(evidence: Evidence | None) -> str:
    predictions = _predictions(evidence)
    if predictions is None:
        return '<p class="note">not measured: no class-score output, or the build passed no predictions</p>'
    ref, dev = predictions
    classes = int(max(ref.max(), dev.max(), -1 if evidence.labels is None else evidence.labels.max())) + 1
    changed = int(np.sum(ref != dev))
    note = f'<p class="note">{changed} of {len(ref)} {evidence.unit} change their top-1 class on the device.</p>'
    if classes > MAX_CLASSES:
        return note + _top_changes(ref, dev)
    if evidence.labels is None:
        matrix = _matrix(ref, dev, classes)
        return note + _heatmap(matrix, None, "float prediction (rows) vs device prediction (columns)")
    float_m, device_m = _matrix(evidence.labels, ref, classes), _matrix(evidence.labels, dev, classes)
    return note + '<div class="charts">' + _heatmap(float_m, None, "PyTorch (float): label × prediction") + \
        _heatmap(device_m, float_m, "device: label × prediction (outlined: differs from float)") + "</div>"


def _matrix(rows: np.ndarray, cols: np.ndarray, classes: int) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (rows.astype(np.int64), cols.astype(np.int64)), 1)
    return matrix


def _heatmap(matrix: np.ndarray, compare: np.ndarray | None, title: str) -> str:
    cell, pad, n = 26, 30, len(matrix)
    totals = np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    body = [_text(pad, 14, title)]
    for (r, c), count in np.ndenumerate(matrix):
        x, y, share = pad + c * cell, pad + 10 + r * cell, count / totals[r, 0]
        colour = f"rgba(9,105,218,{0.08 + 0.92 * share:.3f})" if count else "#fff"
        stroke = RED if compare is not None and compare[r, c] != count else "#d0d7de"
        body.append(f'<rect x="{x}" y="{y}" width="{cell}" height="{cell}" fill="{colour}" stroke="{stroke}" '
                    f'stroke-width="{2 if stroke == RED else 1}"/>')
        if count:
            fill = "#fff" if share > 0.5 else "#1f2328"
            body.append(_text(x + cell / 2, y + cell / 2 + 4, str(count), "middle", f'style="fill:{fill}"'))
    body += [_text(pad + i * cell + cell / 2, pad + 10 + n * cell + 14, str(i), "middle") for i in range(n)]
    body += [_text(pad - 6, pad + 10 + i * cell + cell / 2 + 4, str(i), "end") for i in range(n)]
    return _svg(max(pad * 2 + n * cell, 420), pad * 2 + 14 + n * cell, "".join(body), title)


def _top_changes(ref: np.ndarray, dev: np.ndarray, count: int = 20) -> str:
    pairs, counts = np.unique(np.stack([ref[ref != dev], dev[ref != dev]], axis=1), axis=0, return_counts=True)
    order = np.argsort(-counts)[:count]
    rows = "".join(f"<tr><td>{int(pairs[i, 0])}</td><td>{int(pairs[i, 1])}</td><td>{int(counts[i])}</td></tr>"
                   for i in order)
    return f"<table><tr><th>float class</th><th>device class</th><th>samples</th></tr>{rows}</table>"


def _error_histogram(evidence: Evidence | None) -> str:
    if evidence is None or not evidence.reference:
        return '<p class="note">not measured: the build passed no outputs</p>'
    errors = np.concatenate([np.abs(evidence.device[k].astype(np.float64) - v.astype(np.float64)).ravel()
                             for k, v in evidence.reference.items()])
    errors = errors[np.isfinite(errors)]
    positive = errors[errors > 0]
    if positive.size == 0:
        what = "every device output equals the reference (error 0)" if errors.size else "device outputs are NaN/inf"
        return f'<p class="note">{what}</p>'
    # log-spaced bins: quantization errors span several decades, a linear axis shows one bar and a long tail
    low, high = np.log10(max(positive.min(), positive.max() * 1e-6)), np.log10(positive.max())
    low, high = (low, high) if high > low else (low - 0.5, high + 0.5)
    counts, _ = np.histogram(np.log10(np.maximum(positive, 10**low)), bins=HISTOGRAM_BINS, range=(low, high))
    mean, p99 = float(errors.mean()), float(np.quantile(errors, 0.99))
    caption = (f'<p class="note">{errors.size:,} output values ({errors.size - positive.size:,} exactly equal); '
               f'mean {mean:.3g}, p99 {p99:.3g}, max {positive.max():.3g} (absolute, in output units; '
               f'log-scaled axis).</p>')
    return caption + _histogram_svg(counts, low, high, ((mean, "mean", GREEN), (p99, "p99", AMBER)))


def _histogram_svg(counts: np.ndarray, low: float, high: float, markers: tuple) -> str:
    left, width, height, base = 60, 600, 200, 230
    bar_w, peak = width / len(counts), counts.max()

    def x_of(value: float) -> float:
        return left + (np.log10(max(value, 10**low)) - low) / (high - low) * width

    body = [f'<rect x="{left + i * bar_w:.1f}" y="{base - c / peak * height:.1f}" width="{bar_w - 1:.1f}" '
            f'height="{c / peak * height:.1f}" fill="{BLUE}"><title>{c} values</title></rect>'
            for i, c in enumerate(counts)]
    body.append(f'<line x1="{left}" y1="{base}" x2="{left + width}" y2="{base}" stroke="#59636e"/>')
    body += [_text(x_of(10.0**k), base + 16, f"1e{k}", "middle") for k in range(int(np.ceil(low)),
                                                                            int(np.floor(high)) + 1)]
    body += [_text(left - 6, base + 4, "0", "end"), _text(left - 6, base - height + 4, f"{peak:,}", "end")]
    for row, (value, name, colour) in enumerate(markers):
        x = x_of(value)
        body.append(f'<line x1="{x:.1f}" y1="{base - height - 16}" x2="{x:.1f}" y2="{base}" stroke="{colour}" '
                    f'stroke-width="2" stroke-dasharray="4 3"/>'
                    f'{_text(x + 4, base - height - 4 + 14 * row, f"{name} {value:.3g}")}')
    return _svg(left + width + 60, base + 30, "".join(body), "histogram of absolute output errors, log scale")


def _sizes_chart(size: dict) -> str:
    rows = [("float32 device model", size["float_device_bytes"], GREY),
            ("float32, gzip", size["float_device_gzip_bytes"], GREY),
            ("device model", size["device_bytes"], BLUE), ("device model, gzip", size["device_gzip_bytes"], BLUE)]
    if size["baseline_float_gzip_bytes"] not in (None, size["float_device_gzip_bytes"]):
        rows.insert(0, ("uncompressed baseline, gzip", size["baseline_float_gzip_bytes"], GREY))
    known = [r for r in rows if r[1]]
    top = max(r[1] for r in known)
    bars = [(name, value, colour, f"{value:,} B ({value / 1024:,.1f} KiB)", f"{name}: {value:,} bytes")
            for name, value, colour in known]
    return _hbars(bars, float(top), "model sizes in bytes")


def _error_table(report: dict) -> str:
    blocks = (report["conversion"], report["quantization"], report["drift"])
    head = "<tr><th>stage</th><th>compares</th><th>output</th><th>SQNR dB</th><th>cosine</th><th>max |err|</th>" \
           "<th>mean |err|</th></tr>"
    rows = []
    for (stage, what), block in zip(STAGES, blocks):
        for r in (block or {}).get("outputs") or []:
            rows.append(f"<tr><td>{stage}</td><td>{_e(what)}</td><td>{_e(r['name'])}</td>"
                        f"<td>{_num(r['sqnr_db'], '.1f')}</td><td>{_num(r['cosine'], '.6f')}</td>"
                        f"<td>{_num(r['max_abs_err'], '.3g')}</td><td>{_num(r['mean_abs_err'], '.3g')}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _details(report: dict) -> str:
    rows = {"emulator": report.get("emulator") or "not run", "compression": report.get("compression") or "none",
            "timings": _inline(report["timings_s"], " s"), "latency": _inline(report["latency_ms"], " ms")}
    return _table(rows)


def _inline(values: dict, unit: str) -> str:
    return " · ".join(f"{k} {_num(v, '.3g', unit)}" for k, v in values.items()) or "none"


def _lineage(manifest: dict) -> str:
    model, data = manifest.get("model") or {}, manifest.get("data") or {}
    rows = {"created": manifest.get("created"), "git sha": manifest.get("git_sha"), "seed": manifest.get("seed"),
            "config sha256": manifest.get("config_sha256"),
            "model": " · ".join(str(model.get(k)) for k in ("name", "kind", "source", "exporter")),
            "model sha256": model.get("sha256")}
    for key in ("calibration", "eval"):
        entry = data.get(key) or {}
        rows[f"{key} data"] = (f"{entry.get('source')} · {entry.get('samples')} samples · "
                               f"{'labels' if entry.get('labels') else 'no labels'}")
        rows[f"{key} sha256"] = entry.get("sha256")
    rows["versions"] = " · ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items() if v)
    return _table(rows)


def _table(value: object) -> str:
    if isinstance(value, dict):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_table(v)}</td></tr>" for k, v in value.items())
        return f"<table>{rows}</table>"
    if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
        keys = list(value[0])
        head = "".join(f"<th>{_e(k)}</th>" for k in keys)
        body = "".join("<tr>" + "".join(f"<td>{_table(v.get(k))}</td>" for k in keys) + "</tr>" for v in value)
        return f"<table><tr>{head}</tr>{body}</table>"
    if isinstance(value, float):
        return f"{value:.6g}"
    return _e("null" if value is None else json.dumps(value) if isinstance(value, list) else value)
