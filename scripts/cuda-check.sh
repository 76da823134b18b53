#!/usr/bin/env bash
# Builds the test binary against the CUDA LibTorch of the machine's python3 and runs every
# mechanism on the GPU against the CPU (AttentionContract.CudaMatchesCpu, SetToSetCuda), then the
# whole suite on that LibTorch. For a machine with an NVIDIA GPU and a CUDA torch wheel but no
# Debian packages: GoogleTest comes from a source tree (GTEST_SRC, default .device/googletest,
# a copy of Debian's /usr/src/googletest).
#   scripts/cuda-check.sh [output-dir]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:-build-cuda}
mkdir -p "$out"
gtest=${GTEST_SRC:-$PWD/.device/googletest}
python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
  "device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)'
prefix=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')
cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS=-O1 \
  -DCMAKE_PREFIX_PATH="$prefix" -DATTNKIT_BUILD_TOOLS=OFF -DATTNKIT_BUILD_BENCH=OFF \
  -DATTNKIT_GTEST_SOURCE_DIR="$gtest" > "$out/configure.log" 2>&1 || { tail -40 "$out/configure.log"; exit 1; }
grep -E "attnkit:|Found Torch|CUDA" "$out/configure.log" | head
cmake --build build-cuda --target attnkit_tests -j "$(nproc)" > "$out/build.log" 2>&1 ||
  { grep -E "error|Error" "$out/build.log" | head -40; exit 1; }
echo "== CUDA against CPU"
build-cuda/tests/attnkit_tests --gtest_filter='*CudaMatchesCpu*:SetToSetCuda.*:Threading.*' \
  --gtest_brief=1 2>&1 | tee "$out/cuda.log" | tail -60
rc=$?
echo "== the whole suite on this LibTorch"
OMP_NUM_THREADS=4 timeout 300 build-cuda/tests/attnkit_tests --gtest_brief=1 \
  --gtest_filter='-*CudaMatchesCpu*:SetToSetCuda.*' > "$out/suite.log" 2>&1
echo "suite exit $?"; tail -25 "$out/suite.log"
exit $rc
