#!/usr/bin/env bash
# Builds the libFuzzer harness (clang, ASan + UBSan) as $BUILD/fuzz_gguf (default build-fuzz/). Then, e.g.:
#   mkdir -p build-fuzz/corpus
#   build-fuzz/fuzz_gguf -dict=tests/fuzz/gguf.dict -max_len=65536 -runs=1000000 build-fuzz/corpus tests/fuzz/corpus
# Debian/Ubuntu: apt-get install clang libclang-rt-14-dev (libFuzzer; the package name follows clang's version).
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-fuzz}
args=(-DCMAKE_CXX_COMPILER="${CXX:-clang++}" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DOWL_FUZZ=ON -DOWL_BUILD_PYTHON=OFF
      -DOWL_CUDA=OFF)
command -v ninja >/dev/null && args+=(-G Ninja)
command -v ccache >/dev/null && args+=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S . -B "$BUILD" "${args[@]}" >/dev/null
cmake --build "$BUILD" --target fuzz_gguf -j "${JOBS:-2}"
echo "$BUILD/fuzz_gguf"
