// Shared helpers of the CUDA backend: error checks that become owl::Error, a grow-on-demand device workspace,
// and fp16/bf16 bit conversions usable on the device.
#pragma once
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace owl {
namespace cuda {

// Throws owl::Error naming `what` and CUDA's message when e != cudaSuccess.
void check(cudaError_t e, const char* what);
#define OWL_CUDA_CHECK(expr) ::owl::cuda::check((expr), #expr)
// After a kernel launch: a bad configuration (grid, shared memory) is reported here, not at the next sync.
#define OWL_CUDA_LAUNCHED(name) ::owl::cuda::check(cudaGetLastError(), name)

// Device scratch memory owned by one backend (one stream): activations quantized to int8, partial results of
// split attention. get() keeps the buffer when it is large enough and otherwise reallocates (after a sync).
class Workspace {
public:
    Workspace() = default;
    Workspace(const Workspace&) = delete;
    Workspace& operator=(const Workspace&) = delete;
    ~Workspace();
    void* get(size_t bytes);
    void reserve(size_t bytes) { get(bytes); }  // before a graph capture, where get() may not reallocate
    // While frozen (a graph capture), get() throws instead of reallocating: a capture may not allocate or sync.
    void freeze(bool frozen) { frozen_ = frozen; }

private:
    void* p_ = nullptr;
    size_t n_ = 0;
    bool frozen_ = false;
};

__device__ __forceinline__ float half_bits_to_float(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf16_bits_to_float(uint16_t b) { return __uint_as_float(uint32_t(b) << 16); }

inline unsigned blocks_for(int64_t n, int per_block) { return unsigned((n + per_block - 1) / per_block); }

}  // namespace cuda
}  // namespace owl
