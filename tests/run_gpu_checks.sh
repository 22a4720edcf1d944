#!/usr/bin/env bash
# Every GPU check in one command, for a machine with an NVIDIA GPU, the CUDA toolkit and this repository's test
# dependencies: builds for this GPU's architecture only, runs the CUDA tests, compute-sanitizer's memcheck over
# the op-level CUDA tests, then the benchmark. Logs and the benchmark JSON go to $OUT (default /tmp/owl-gpu).
#   tests/run_gpu_checks.sh                  # everything
#   BENCH_ARGS="--sizes qwen2-0.5b --quants q4_0" tests/run_gpu_checks.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/owl-gpu}
mkdir -p "$OUT"
status=0
step() { echo "=== $1 ($(date +%T))"; }

step build
arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -1 | tr -d '.')
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if ! { cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DOWL_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" \
        && cmake --build build-gpu -j"$(nproc)"; } >"$OUT/build.log" 2>&1; then
    tail -60 "$OUT/build.log"
    exit 1
fi
export PYTHONPATH=$PWD/python:$PWD/export${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import owl_cpp, json; print(json.dumps(owl_cpp.system_info()['cuda']))"

step "CUDA tests"
timeout "${TEST_TIMEOUT:-400}" python3 -m pytest -q -rfs tests/test_cuda.py tests/test_backend_equivalence.py \
    tests/test_cuda_tensor_core.py tests/test_sample_top.py tests/test_cuda_kquant.py tests/test_cuda_offload.py tests/test_owl2_runtime.py tests/test_owl21_decoder.py tests/test_mplug2_decoder.py -k "cuda or test_cuda" \
    2>&1 | tee "$OUT/tests.log" | tail -60 || status=1

if command -v compute-sanitizer >/dev/null && [ "${SANITIZER:-1}" = 1 ]; then
    step "compute-sanitizer memcheck (op tests)"
    timeout "${SANITIZER_TIMEOUT:-300}" compute-sanitizer --tool memcheck --error-exitcode 3 --print-limit 20 \
        python3 -m pytest -q -x tests/test_backend_equivalence.py tests/test_cuda_tensor_core.py tests/test_sample_top.py tests/test_cuda.py \
        tests/test_cuda_kquant.py tests/test_cuda_offload.py -k "cuda and not text_model and not owl3 and not out_of_gpu" \
        >"$OUT/memcheck.log" 2>&1
    rc=$?
    tail -25 "$OUT/memcheck.log"
    echo "memcheck exit code $rc"
    [ $rc = 0 ] || status=1
fi

if [ "${BENCH:-1}" = 1 ]; then
    step benchmark
    # shellcheck disable=SC2086
    timeout "${BENCH_TIMEOUT:-300}" python3 bench/bench_cuda.py --workdir /tmp/owl-bench-models --out "$OUT/cuda.json" \
        ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" || status=1
fi
step "done (status $status)"
exit $status
