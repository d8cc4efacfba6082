"""OUT/matrix.html: one self-contained page for a matrix run, every cell a row linking to its report.html, and a
pivot of model x target (the worst verdict and worst output SQNR of the cells in each)."""

from __future__ import annotations

import html
from pathlib import Path

CSS = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;padding:0 1em;color:#1f2328}"
       "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #d0d7de;padding:4px 8px;text-align:left}"
       ".pass{background:#dafbe1}.fail{background:#ffebe9}.error{background:#fff8c5}")


def matrix_html(matrix: dict) -> str:
    cells = matrix["cells"]
    page = (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>edgekit matrix: '
            f'{_e(Path(matrix["matrix"]).name)}</title><style>{CSS}</style></head><body>'
            f'<h1>edgekit matrix: {_e(Path(matrix["matrix"]).name)} (exit {matrix["exit_code"]})</h1>'
            f'<p>{sum(c["passed"] for c in cells)} of {len(cells)} cells passed.</p>'
            f'{_gate(matrix.get("baseline"))}'
            f'<h2>Model x target</h2><div id="pivot">{_pivot(cells)}</div>'
            f'<h2>Cells</h2><div id="cells">{_cells(cells, matrix.get("baseline") is not None)}</div>'
            '</body></html>\n')
    return page


def _e(value: object) -> str:
    return html.escape(str(value))


def _class(cell: dict) -> str:
    return "pass" if cell["passed"] else "fail" if cell["exit_code"] == 3 else "error"


def _sqnr(cell: dict) -> str:
    sqnr = (cell["drift"] or {}).get("sqnr_db")
    return "n/a" if sqnr is None else f"{sqnr:.1f}"


def _gate(gate: dict | None) -> str:
    """The release gate (--baseline): the verdict, what regressed, what had nothing to compare with."""
    if gate is None:
        return ""
    verdict = (f'<p class="fail">{len(gate["regressed"])} cell(s) regressed: {_e(", ".join(gate["regressed"]))}</p>'
               if gate["regressed"] else '<p class="pass">No cell regressed.</p>')
    missing = (f'<p>No baseline bundle for: {_e(", ".join(gate["missing"]))}</p>' if gate["missing"] else "")
    return f'<h2>Release gate against {_e(gate["out"])}</h2><div id="gate">{verdict}{missing}</div>'


def _against(cell: dict) -> str:
    compared = cell.get("baseline")
    if compared is None:
        return "<td>no baseline</td>"
    if compared["passed"]:
        return '<td class="pass">as good</td>'
    return f'<td class="fail">regressed: {_e("; ".join(compared["regressions"]))}</td>'


def _cells(cells: list[dict], gated: bool = False) -> str:
    head = ("<tr><th>model</th><th>cell</th><th>exit</th><th>accuracy drop</th><th>top-1 agreement</th>"
            "<th>worst SQNR dB</th><th>device bytes</th><th>host ms</th><th>build s</th><th>steps reused</th>"
            f"{'<th>against the baseline</th>' if gated else ''}<th>report</th></tr>")
    rows = []
    for cell in cells:
        drift, size = cell["drift"] or {}, cell["size"] or {}
        link = (f'<a href="{_e(cell["bundle"])}/report.html">report.html</a>' if cell["bundle"]
                else _e(cell["error"] or ""))
        values = [cell["model"], cell["name"], cell["exit_code"], _num(drift.get("accuracy_drop"), ".2f"),
                  _num(drift.get("top1_agreement"), ".4f"), _sqnr(cell), _num(size.get("device_bytes"), ",d"),
                  _num(cell["latency_ms"], ".3f"), _num(cell["seconds"], ".1f"),
                  ", ".join(cell.get("reused_steps") or []) or ("kept (--resume)" if cell["resumed"] else "none")]
        rows.append(f'<tr class="{_class(cell)}">' + "".join(f"<td>{_e(v)}</td>" for v in values)
                    + (_against(cell) if gated else "") + f"<td>{link}</td></tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _pivot(cells: list[dict]) -> str:
    models = list(dict.fromkeys(c["model"] for c in cells))
    targets = list(dict.fromkeys(c.get("target", "?") for c in cells))
    head = "<tr><th>model</th>" + "".join(f"<th>{_e(t)}</th>" for t in targets) + "</tr>"
    rows = []
    for model in models:
        tds = []
        for target in targets:
            group = [c for c in cells if c["model"] == model and c.get("target", "?") == target]
            if not group:
                tds.append("<td></td>")
                continue
            worst = min(group, key=lambda c: (c["passed"], -c["exit_code"]))
            tds.append(f'<td class="{_class(worst)}">{sum(c["passed"] for c in group)}/{len(group)} passed, '
                       f'worst SQNR {_e(min((_sqnr(c) for c in group), key=_order))} dB</td>')
        rows.append(f"<tr><th>{_e(model)}</th>{''.join(tds)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _order(text: str) -> float:
    return float("inf") if text == "n/a" else float(text)


def _num(value, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)
