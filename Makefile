# Two entry points for a fresh Debian machine:
#   make run       install deps if missing, build the CLI (Release), run `attnkit tour`
#   make test      install deps if missing, build everything (Release), run the test suite (ctest),
#                  then install the Python package from the same build and run its tests (pytest)
#   make bench     build the Google Benchmark binaries (bench/) and run them, medians of 3
#   make sanitize  build the tests with ASan + UBSan (build-sanitize/) and run them
# Debian packages come from scripts/install-deps.sh; LibTorch is the C++ library inside the
# torch wheel pinned in requirements.txt, installed into the virtual environment .venv/.
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
VENV ?= .venv
PYTHON ?= python3
# The project's own code builds with -Werror here (and so in CI); the CMake default is off.
WERROR ?= ON
TORCH_PREFIX = $(shell $(VENV)/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
CONFIGURE = cmake -S . -G Ninja -DCMAKE_PREFIX_PATH="$(TORCH_PREFIX)" \
  -DPython_EXECUTABLE=$(abspath $(VENV))/bin/python -DATTNKIT_WERROR=$(WERROR)
BENCH_ARGS ?= --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
PYTEST_ARGS ?= -q
BENCHES ?= flash_attention_bench linear_attention_bench

.PHONY: deps venv configure build run test pytest bench sanitize format clean

deps:
	@bash scripts/install-deps.sh

$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements.txt
	touch $@

venv: $(VENV)/.installed

$(BUILD)/build.ninja: | $(VENV)/.installed
	@$(MAKE) --no-print-directory deps
	$(CONFIGURE) -B $(BUILD) -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

configure: deps venv $(BUILD)/build.ninja

build: configure
	cmake --build $(BUILD) -j $(JOBS)

# The tour needs only the library and the CLI.
run: configure
	cmake --build $(BUILD) --target attnkit_cli -j $(JOBS)
	$(BUILD)/tools/attnkit/attnkit tour

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)
	@$(MAKE) --no-print-directory pytest

# The Python package from the same build tree (pip links and installs, nothing recompiles), then
# its tests, with the reference libraries installed as test oracles (scripts/install-test-deps.sh).
pytest: build
	bash scripts/install-test-deps.sh
	$(VENV)/bin/pip install -q --no-build-isolation --no-deps .
	cd tests/python && $(abspath $(VENV))/bin/python -m pytest $(PYTEST_ARGS)

# LibTorch is not instrumented and keeps allocations alive at exit: leak checking is off. No
# -Werror: -O1 with the sanitizers' instrumentation gives false maybe-uninitialized warnings in
# LibTorch's inlined headers.
SANITIZE_ENV = ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=print_stacktrace=1
sanitize: deps venv
	$(CONFIGURE) -B build-sanitize -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1 -g1" -DATTNKIT_SANITIZE=ON \
	  -DATTNKIT_WERROR=OFF \
	  -DATTNKIT_BUILD_BENCH=OFF -DATTNKIT_BUILD_TOOLS=OFF $(CMAKE_ARGS)
	cmake --build build-sanitize --target attnkit_tests -j $(JOBS)
	cd build-sanitize && $(SANITIZE_ENV) ctest --output-on-failure -j $(JOBS) -R unit_tests

bench: configure
	cmake --build $(BUILD) --target $(BENCHES) -j $(JOBS)
	for b in $(BENCHES); do $(BUILD)/bench/$$b $(BENCH_ARGS) || exit 1; done

format:
	clang-format -i $$(git ls-files '*.h' '*.cpp')

clean:
	rm -rf $(BUILD) build-sanitize
