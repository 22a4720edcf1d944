// Top-k selection over a row of logits (contract in topk.cuh).
//
// Each candidate is one 64-bit key, (order(value) << 32) | (0xffffffff - index): a larger key is a better
// candidate in Sampler's order (higher value, then lower index), and keys are distinct. A block loads a chunk of
// 2048 keys into shared memory, sorts it (bitonic, descending) and writes its best k; the k-lists of all chunks
// are reduced the same way until one chunk remains. NaNs are not keyed: the smallest NaN index is recorded.
#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "owl/error.h"
#include "topk.cuh"

namespace owl {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kChunk = 2048;
constexpr int kNoNan = 0x7f7f7f7f;  // what a 0x7f byte fill reads as; indices stay below it (checked)

// Monotone map of non-NaN floats to uint32 (-0 as +0, as Sampler's comparisons treat them).
__device__ __forceinline__ uint32_t order_bits(float v) {
    const uint32_t u = __float_as_uint(v == 0.0f ? 0.0f : v);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
float from_order_bits(uint32_t o) {
    const uint32_t u = (o & 0x80000000u) ? (o & 0x7fffffffu) : ~o;
    float v;
    std::memcpy(&v, &u, sizeof v);
    return v;
}

// One chunk: keys from the floats x (first pass) or from the previous pass's keys, sorted; the best k written to
// out[blockIdx.x * k ..]. Padding keys are 0, below every real key (its low word is >= 2^31).
template <bool kFromFloats>
__global__ void __launch_bounds__(kThreads) topk_chunk_kernel(const float* __restrict__ x,
                                                              const uint64_t* __restrict__ in, int64_t n, int k,
                                                              uint64_t* __restrict__ out, int* __restrict__ nan_index) {
    __shared__ uint64_t keys[kChunk];
    const int64_t base = int64_t(blockIdx.x) * kChunk;
    for (int i = threadIdx.x; i < kChunk; i += kThreads) {
        const int64_t j = base + i;
        uint64_t key = 0;
        if (j < n) {
            if constexpr (kFromFloats) {
                const float v = x[j];
                if (isnan(v)) atomicMin(nan_index, int(j));
                else key = uint64_t(order_bits(v)) << 32 | (0xffffffffu - uint32_t(j));
            } else {
                key = in[j];
            }
        }
        keys[i] = key;
    }
    __syncthreads();
    for (int size = 2; size <= kChunk; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int i = threadIdx.x; i < kChunk / 2; i += kThreads) {
                const int a = 2 * i - (i & (stride - 1)), b = a + stride;  // pair i of this step
                const bool descending = (a & size) == 0;                    // the last merge sorts all descending
                const uint64_t ka = keys[a], kb = keys[b];
                if ((ka < kb) == descending) {
                    keys[a] = kb;
                    keys[b] = ka;
                }
            }
            __syncthreads();
        }
    }
    for (int i = threadIdx.x; i < k; i += kThreads) out[int64_t(blockIdx.x) * k + i] = keys[i];
}

}  // namespace

void top_k(const float* x, int64_t n, int64_t k, Workspace& ws, cudaStream_t stream,
           std::vector<std::pair<float, int32_t>>& out) {
    out.clear();
    if (k > kTopKMax) throw Error("top_k: k = " + std::to_string(k) + " exceeds " + std::to_string(kTopKMax));
    if (n >= kNoNan) throw Error("top_k: row too long");
    k = std::min(k, n);
    if (k <= 0) return;
    const int64_t blocks = (n + kChunk - 1) / kChunk, list = blocks * k;
    auto* base = static_cast<uint8_t*>(ws.get(256 + 2 * size_t(list) * sizeof(uint64_t)));
    int* nan_index = reinterpret_cast<int*>(base);
    uint64_t* cur = reinterpret_cast<uint64_t*>(base + 256);
    uint64_t* next = cur + list;
    OWL_CUDA_CHECK(cudaMemsetAsync(nan_index, 0x7f, sizeof(int), stream));
    topk_chunk_kernel<true><<<unsigned(blocks), kThreads, 0, stream>>>(x, nullptr, n, int(k), cur, nan_index);
    OWL_CUDA_LAUNCHED("topk_chunk_kernel");
    for (int64_t m = list; m > k;) {  // each pass leaves k per chunk of 2048: at most m / 8 + 256
        const int64_t b = (m + kChunk - 1) / kChunk;
        topk_chunk_kernel<false><<<unsigned(b), kThreads, 0, stream>>>(nullptr, cur, m, int(k), next, nan_index);
        OWL_CUDA_LAUNCHED("topk_chunk_kernel");
        std::swap(cur, next);
        m = b * k;
    }
    std::vector<uint64_t> keys(static_cast<size_t>(k));
    int nan = kNoNan;
    OWL_CUDA_CHECK(cudaMemcpyAsync(keys.data(), cur, size_t(k) * sizeof(uint64_t), cudaMemcpyDeviceToHost, stream));
    OWL_CUDA_CHECK(cudaMemcpyAsync(&nan, nan_index, sizeof(int), cudaMemcpyDeviceToHost, stream));
    OWL_CUDA_CHECK(cudaStreamSynchronize(stream));
    if (nan != kNoNan)
        throw Error("sampler: the logit of token " + std::to_string(nan) + " is NaN (non-finite model output)");
    out.resize(size_t(k));
    for (size_t i = 0; i < keys.size(); ++i)
        out[i] = {from_order_bits(uint32_t(keys[i] >> 32)), int32_t(0xffffffffu - uint32_t(keys[i]))};
}

}  // namespace cuda
}  // namespace owl
