"""The op conformance suite: every case through edgekit's own pipeline, float32 and INT8 from one onnx2tf run.

Each case is exact in float32 against PyTorch (max|device − reference| / max|reference| <= 1e-4) and >= 20 dB
INT8 SQNR, after a documented repair where its case names one, or fails with the clear error its case names.
One warm onnx2tf worker serves all cases; each case's result is computed once and cached for the module.
"""

from __future__ import annotations

import pytest

from edgekit.routes.litert.fidelity import FLOAT_TOLERANCE
from edgekit.routes.litert.repairs import REGISTRY
from tests.conformance.cases import BY_NAME, CASES, SHOWCASES
from tests.conformance.harness import MIN_INT8_SQNR_DB, draw_inputs, run_case
from tests.conformance.warm_worker import WarmWorker

pytestmark = pytest.mark.slow
REPAIR_CASES = {name: BY_NAME[case] for name, case in SHOWCASES.items()}


@pytest.fixture(scope="module")
def conformance(tmp_path_factory):
    """result(case, registry=None) -> CaseResult, computed once per (case, registry)."""
    worker, root, cache = WarmWorker(), tmp_path_factory.mktemp("conformance"), {}

    def result(case, registry: tuple | None = None):
        key = (case.name, None if registry is None else tuple(r.NAME for r in registry))
        if key not in cache:
            folder = root / f"{case.name.replace('/', '__')}{'' if registry is None else '-without'}"
            cache[key] = run_case(case, folder, worker, registry)
        return cache[key]

    yield result
    worker.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_case(case, conformance):
    result = conformance(case)
    assert result.status != "failed", result.message
    if case.unsupported:
        assert result.status == "unsupported", result.label()
        assert case.unsupported in result.message and result.hint
        return
    assert result.status in ("ok", "repaired"), result.label()
    assert result.repairs == ([case.repair] if case.repair else [])
    assert result.float_rel_err <= FLOAT_TOLERANCE["float32"]
    assert result.int8_sqnr_db >= MIN_INT8_SQNR_DB


@pytest.mark.parametrize("name", sorted(REPAIR_CASES))
def test_without_its_repair_the_case_converts_wrong(name, conformance):
    case = REPAIR_CASES[name]
    without = conformance(case, tuple(r for r in REGISTRY if name != r.NAME))
    assert without.repairs == []
    assert without.status in ("unsupported", "failed"), without.label()  # wrong float32, a failure, or INT8
    assert conformance(case).status == "repaired"


def test_the_suite_covers_forty_cases_with_negative_inputs():
    from edgekit.inputs.model import load_model
    from edgekit.transform.export import resolve_inputs

    assert len(CASES) >= 40 and len(BY_NAME) == len(CASES)
    assert set(REPAIR_CASES) == {r.NAME for r in REGISTRY} == {c.repair for c in CASES if c.repair}
    case = BY_NAME["conv2d/3x3-pad1"]
    specs = resolve_inputs(load_model(case.module()), {"x0": case.shapes[0]})
    assert draw_inputs(case, specs, 4, seed=0)["input"].min() < 0
