# Two entry points for a fresh Debian machine:
#   make run    install deps if missing, build Release, run `attnkit tour`
#   make test   install deps if missing, build Release, run the whole test suite (ctest)
#   make bench  build the Google Benchmark binaries (bench/) and run them, medians of 3
BUILD ?= build
JOBS ?= $(shell nproc)
CMAKE_ARGS ?=
BENCH_ARGS ?= --benchmark_repetitions=3 --benchmark_report_aggregates_only=true
BENCHES ?= flash_attention_bench linear_attention_bench

.PHONY: deps configure build run test bench format clean

deps:
	@bash scripts/install-deps.sh

$(BUILD)/build.ninja:
	@$(MAKE) --no-print-directory deps
	cmake -S . -B $(BUILD) -G Ninja -DCMAKE_BUILD_TYPE=Release $(CMAKE_ARGS)

configure: $(BUILD)/build.ninja

build: deps configure
	cmake --build $(BUILD) -j $(JOBS)

run: build
	$(BUILD)/tools/attnkit/attnkit tour

test: build
	cd $(BUILD) && ctest --output-on-failure -j $(JOBS)

bench: deps configure
	cmake --build $(BUILD) --target $(BENCHES) -j $(JOBS)
	for b in $(BENCHES); do $(BUILD)/bench/$$b $(BENCH_ARGS) || exit 1; done

format:
	clang-format -i $$(git ls-files '*.h' '*.cpp')

clean:
	rm -rf $(BUILD)
