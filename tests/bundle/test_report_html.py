"""report.html of a real build, rendered in headless Chromium: the charts are there, and a screenshot for the docs.

The rendering tests need a `chromium` on PATH. `make test` installs Debian's package when it is missing and make
runs as root with apt-get at hand (`apt-get install chromium`); elsewhere (a user's machine without root) a missing
chromium skips those tests and says how to install it. In CI (CI=true), which runs as root and installs it, a
missing chromium is a failure, never a skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgekit.bundle.report_html import Evidence, render_html

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOT = ROOT / "docs" / "report-screenshot.png"
IDS = ("summary", "verdict", "layers-chart", "confusion", "error-histogram", "sizes", "lineage")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def chromium_executable() -> str:
    """The chromium on PATH; without one, a skip that says how to install it (a failure in CI)."""
    executable = shutil.which("chromium")
    if executable is None:
        how = ("chromium is not installed: install it with `apt-get install chromium` (as root; `make test` does that "
               "when run as root)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{how}; CI installs it, so here it is a failure")
        pytest.skip(how)
    return executable


@pytest.fixture(scope="session")
def needs_chromium() -> None:
    """Asked for first by the rendering tests, so that a skip comes before the bundle is built (in CI the test itself
    fails, in chromium())."""
    if os.environ.get("CI") != "true":
        chromium_executable()


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    executable = chromium_executable()
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.iterdir()))}"
    done = subprocess.run([executable, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def dump_dom(page: Path, tmp_path: Path) -> str:
    return chromium(tmp_path, "--dump-dom", page.resolve().as_uri()).stdout


def element(dom: str, element_id: str) -> str:
    """The markup from the element with this id up to the next section heading."""
    start = dom.index(f'id="{element_id}"')
    end = dom.find("<h2", start)
    return dom[start:end if end > 0 else None]


def test_report_html_is_self_contained(int8_bundle):
    page = (int8_bundle.out / "report.html").read_text()
    assert not re.search(r"(src|href)=|<script|@import|url\(", page)


def test_real_report_renders_its_charts_in_chromium(needs_chromium, int8_bundle, tmp_path: Path):
    dom = dump_dom(int8_bundle.out / "report.html", tmp_path)
    for element_id in IDS:
        assert f'id="{element_id}"' in dom, element_id
    assert "PASSED" in element(dom, "verdict")
    assert element(dom, "confusion").count("<svg") == 2  # label x prediction, float and device
    assert element(dom, "error-histogram").count("<rect") >= 20
    sizes = element(dom, "sizes")
    assert "<svg" in sizes and "float32 device model" in sizes and "device model, gzip" in sizes
    size = int8_bundle.report["size"]
    assert f"{size['device_bytes']:,} B" in sizes and f"{size['float_device_bytes']:,} B" in sizes
    assert int8_bundle.report["model"]["sha256"] in element(dom, "lineage")
    layers = int8_bundle.report["layers"]
    if layers is None:
        assert "not measured" in element(dom, "layers-chart")
    else:
        chart = element(dom, "layers-chart")
        assert "<svg" in chart and all(row["module"] in chart for row in layers if row["module"])


def test_layer_chart_names_pytorch_modules_worst_first(needs_chromium, int8_bundle, tmp_path: Path):
    report = json.loads((int8_bundle.out / "report.json").read_text())
    manifest = json.loads((int8_bundle.out / "manifest.json").read_text())
    report["layers"] = [{"module": "classifier.3", "tensor": "output", "sqnr_db": 31.0},
                        {"module": "features.3", "tensor": "/features/features.3/Conv_output_0", "sqnr_db": 12.5},
                        {"module": "features.0", "tensor": "/features/features.0/Conv_output_0", "sqnr_db": 44.2}]
    with np.load(int8_bundle.out / "golden" / "outputs.npz") as golden:
        evidence = Evidence({"output": golden["reference/output"]}, {"output": golden["device/output"]})
    page = tmp_path / "layers.html"
    page.write_text(render_html(report, manifest, evidence))
    chart = element(dump_dom(page, tmp_path), "layers-chart")
    assert chart.count("<rect") == 3
    order = [chart.index(f">{name}</text>") for name in ("features.3", "classifier.3", "features.0")]
    assert order == sorted(order)
    assert "12.5 dB" in chart and "#cf222e" in chart  # below the 20 dB floor: red
    assert "not measured: no class-score output" in element(dump_dom(page, tmp_path), "confusion")


def test_screenshot_for_the_docs(needs_chromium, int8_bundle, tmp_path: Path):
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2480", (int8_bundle.out / "report.html").as_uri())
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if os.environ.get("EDGEKIT_UPDATE_SCREENSHOT"):  # the suite never rewrites tracked files unless asked
        SCREENSHOT.write_bytes(data)


def test_the_ladder_table_names_groups_and_steps_that_were_not_built():
    """A group moved in one step reads as its modules joined; a step that could not be built (no size, no drift)
    says why instead of failing the page."""
    from edgekit.bundle.report_html import _ladder_table

    common = {"passed": False, "sqnr_db": None, "accuracy_drop": None, "device_bytes": None, "host_latency_ms": None,
              "latency_ratio": None, "within_bounds": False, "kept": False, "sensitivity_db": None}
    steps = [{**common, "module": "features.4", "tensor": "relu_1,max_pool2d,view", "precision": "float32",
              "group": ["features.4", "features.6", "classifier.0"], "error": None, "device_bytes": 1234,
              "passed": True, "kept": True},
             {**common, "module": "(every layer)", "tensor": "*", "precision": "float32", "group": None,
              "error": "the back-off left 5 groups in float32, over --max-float-layers 3"}]
    html = _ladder_table({"quantization": {"ladder": steps}})
    assert "features.4 + features.6 + classifier.0" in html and "1,234" in html
    assert "(every layer) (not built: the back-off left 5 groups in float32" in html
