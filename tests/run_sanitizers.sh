#!/usr/bin/env bash
# The test suite against a runtime built with AddressSanitizer + UndefinedBehaviorSanitizer (CPU build):
#   tests/run_sanitizers.sh [pytest args]        e.g. tests/run_sanitizers.sh -x tests/test_gguf_validation.py
# Builds into $SAN_DIR (default /tmp/owl-asan), copies the Python package beside the instrumented modules and
# runs pytest with the sanitizer runtimes preloaded (Python itself is not instrumented). UBSan findings abort
# the test that hit them. Leak checking is off: the interpreter's own allocations at exit would drown ours.
set -euo pipefail
cd "$(dirname "$0")/.."
SAN_DIR=${SAN_DIR:-/tmp/owl-asan}
pkg="$SAN_DIR/pkg/owl_cpp"
cmake -S . -B "$SAN_DIR/build" -G Ninja -DOWL_SANITIZE=ON -DOWL_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DOWL_PYTHON_OUTPUT_DIR="$pkg" >/dev/null
cmake --build "$SAN_DIR/build" -j"$(nproc)" >/dev/null
# The package's Python files next to the instrumented modules (the .so files stay as built).
(cd python/owl_cpp && find . -name '*.py' -print0 | xargs -0 -I{} install -D -m 644 {} "$pkg/{}")
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export PYTHONPATH="$SAN_DIR/pkg:$PWD/export"
exec python3 -m pytest -q -p no:cacheprovider "${@:-tests}"
