// The best k entries of a row of logits on the device (topk.cu), so sampling copies back k pairs, not the row.
#pragma once
#include <utility>
#include <vector>

#include "cuda_util.cuh"

namespace owl {
namespace cuda {

constexpr int64_t kTopKMax = 256;  // larger k: the backend selects on the host

// out = the k best (value, index) of x[0..n) (device memory), higher value first, then lower index (-0 counts as
// +0 and comes back as +0); 1 <= k <= kTopKMax, k clamped to n. A NaN throws Error naming the first NaN index,
// with Sampler's message. Synchronises the stream.
void top_k(const float* x, int64_t n, int64_t k, Workspace& ws, cudaStream_t stream,
           std::vector<std::pair<float, int32_t>>& out);

}  // namespace cuda
}  // namespace owl
