#include <string>

#include "cuda_util.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {

void check(cudaError_t e, const char* what) {
    if (e == cudaSuccess) return;
    cudaGetLastError();  // clear a non-sticky error so the next call starts clean
    if (e == cudaErrorMemoryAllocation)
        throw Error(std::string("out of GPU memory (") + what + ")");
    throw Error(std::string("CUDA error in ") + what + ": " + cudaGetErrorString(e));
}

Workspace::~Workspace() {
    if (p_) cudaFree(p_);
}

void* Workspace::get(size_t bytes) {
    if (bytes <= n_ && p_) return p_;
    if (frozen_)
        throw Error("the CUDA workspace must grow to " + std::to_string(bytes) + " bytes while a graph is recorded");
    if (p_) {
        check(cudaDeviceSynchronize(), "workspace resize");  // kernels may still read the old buffer
        cudaFree(p_);
        p_ = nullptr;
        n_ = 0;
    }
    const size_t want = bytes < 4096 ? 4096 : bytes + bytes / 4;
    check(cudaMalloc(&p_, want), "cudaMalloc (workspace)");
    n_ = want;
    return p_;
}

}  // namespace cuda
}  // namespace owl
