#!/usr/bin/env bash
# Without a GPU: the tensor-core GEMMs compile to mma instructions where they should and to none where they must
# not. Builds the PTX of src/cuda/matmul.cu and matmul_tc.cu for compute_90 (expects the int8 m16n8k32 and the
# fp16 m16n8k16 mma.sync) and compute_75 (expects none: mma.cuh's bodies trap there and the host never launches
# those kernels). Needs nvcc; takes a few minutes on two cores.
#   tests/check_tensor_core_ptx.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-nvcc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
flags=(-std=c++17 -O3 -DNDEBUG -DOWL_HAVE_CUDA -Iowl_cpp/include -Iowl_cpp/src -ptx)
count() { grep -c "$1" "$2" || true; }
status=0
for arch in 90 75; do
    for f in matmul matmul_tc; do
        "$NVCC" "${flags[@]}" -arch=compute_$arch "owl_cpp/src/cuda/$f.cu" -o "$tmp/$f.$arch.ptx"
    done
    s8=$(count 'mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32' "$tmp/matmul.$arch.ptx")
    f16=$(count 'mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32' "$tmp/matmul_tc.$arch.ptx")
    echo "compute_$arch: $s8 int8 mma (matmul.cu), $f16 fp16 mma (matmul_tc.cu)"
    if [ "$arch" = 90 ] && { [ "$s8" = 0 ] || [ "$f16" = 0 ]; }; then echo "FAIL: no mma for compute_90"; status=1; fi
    if [ "$arch" = 75 ] && { [ "$s8" != 0 ] || [ "$f16" != 0 ]; }; then echo "FAIL: mma in compute_75 code"; status=1; fi
done
exit $status
