# Two commands on a fresh machine: `make demo` (install + build the bundled example) and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv demo test test-fast lint bench bench-large zoo clean chromium

venv: $(STAMP)

# torch first, from the CPU wheel pip finds on this disk: anything that asks PyPI for torch gets a CUDA build.
# The lock is complete and verified together, so it installs with --no-deps (onnx2tf's own == pins on numpy
# and ai-edge-litert would otherwise block the versions litert-torch needs; see requirements.lock).
$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check torch==2.13.0
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -r requirements.lock
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgekit build examples/01_android_int8/digits_cnn.pt2 --target android-arm64-int8 \
		--calibration examples/01_android_int8/calibration.npz --eval examples/01_android_int8/eval.npz \
		--out dist/digits_cnn-android-arm64-int8 --force

# tests/bundle/test_report_html.py renders report.html in headless Chromium. When it is missing, Debian's package is installed
# here, but only as root with apt-get at hand; otherwise (or when the install fails) this says so and `make` goes on:
# the rendering tests then skip with the reason (in CI, CI=true, they fail instead).
chromium:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium (Debian's package) for tests/bundle/test_report_html.py"; \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
			|| echo "chromium could not be installed: the report rendering tests will skip (in CI they fail)" >&2; \
	else \
		echo "chromium is not installed and cannot be installed here (needs root and apt-get): the report rendering" \
			"tests will skip (in CI they fail); install it with \`apt-get install chromium\` as root to run them" >&2; \
	fi

# pytest-xdist: one worker per core, at most 4 (each holds torch, TensorFlow and a converter); a test file's tests run
# in one worker, so the models a file builds once are built once. TEST_JOBS=1 runs everything in one process.
TEST_JOBS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ "$$n" -gt 4 ] && n=4; echo $$n)

test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile

test-fast: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n $(TEST_JOBS) --dist loadfile -m "not slow and not emulator and not zoo"

lint: $(STAMP)
	$(BIN)/ruff check edgekit tests benchmarks examples

bench: $(STAMP)
	$(BIN)/python -m benchmarks.bench_build

# ResNet-50 (25M parameters) to INT8 through each converter, edgekit against the plain path (tens of minutes)
bench-large: $(STAMP)
	$(BIN)/python -m benchmarks.bench_large

# The model-zoo table (docs/zoo.md): hours for every cell; finished cells are kept (benchmarks/zoo/.cells) and a
# stopped run resumes. ZOO_ARGS="--only resnet18,deit_tiny --paths onnx2tf" narrows it. The trained architectures
# (benchmarks/zoo/trained.py: training and their INT8 builds, cached in benchmarks/zoo/.trained) come first.
zoo: $(STAMP)
	$(BIN)/python -m benchmarks.zoo.trained
	$(BIN)/python -m benchmarks.zoo.run $(ZOO_ARGS)

clean:
	rm -rf dist .pytest_cache
