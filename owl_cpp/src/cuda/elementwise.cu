// The small ops of the CUDA backend. They move little data next to the matrix products, so they are written
// plainly: one thread per element (or per row for reductions), grid-stride loops for any size.
#include <cmath>

#include "elementwise.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {
namespace {

constexpr int kThreads = 256;

unsigned grid_for(int64_t n) {
    const int64_t b = (n + kThreads - 1) / kThreads;
    return unsigned(b < 65535 * 16 ? (b < 1 ? 1 : b) : 65535 * 16);  // grid-stride loops cover the rest
}

__global__ void fill_kernel(float* x, int64_t n, float value) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) x[i] = value;
}

__global__ void add_kernel(float* x, const float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) x[i] += y[i];
}

__global__ void swiglu_kernel(const float* gate, const float* up, float* out, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

// ---- rms_norm: one block per row ----
//
// The sum of squares in fp32 (fmaf per thread, then a tree), which agrees with the CPU's double sum to ~1e-7; the
// double version cost a 7B decode step 0.7 ms in the profile. At decode the norm is one row, so one block is the
// whole GPU's work: what it costs is memory latency, and the kernels below pay it as few times as they can. The
// block has up to 1024 threads (a multiple of 32, chosen per n by the host: at least one per float4 up to 1024).

constexpr int kNormMaxThreads = 1024;
constexpr int kNormItems = 4;  // float4s of x (and of w) a thread of the vector kernel holds: rows up to 16384

// The block's total of v. Every thread gets the same value: each warp reduces the same per-warp partials in the
// same order, and a butterfly gives all lanes one result (a + b == b + a). One __syncthreads, so call it once.
__device__ __forceinline__ float block_sum(float v) {
    __shared__ float part[kNormMaxThreads / 32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = int(threadIdx.x & 31), nwarps = int(blockDim.x >> 5);
    if (lane == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = lane < nwarps ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// n % 4 == 0, x, w and y 16-byte aligned, n4 = n / 4 <= kNormItems * blockDim.x. Each thread issues all its float4
// loads of x and w up front (units tid, tid + B, ..., so a warp reads contiguous 512-byte runs) and keeps them in
// registers across the reduction: x and w are read once, and the row's memory latency is paid once instead of
// once per serial scalar load (the old kernel: 14 dependent-issue loads per thread at n = 3584, then x and w
// read again; ~10 us). y may be x: a thread writes only the units it read itself, after the block's barrier.
__global__ void __launch_bounds__(kNormMaxThreads) rms_norm_vec_kernel(const float4* x, const float4* w, int64_t n,
                                                                       float eps, float4* y) {
    const int n4 = int(n / 4);
    const float4* xr = x + int64_t(blockIdx.x) * n4;
    float4* yr = y + int64_t(blockIdx.x) * n4;
    float4 xv[kNormItems], wv[kNormItems];
#pragma unroll
    for (int k = 0; k < kNormItems; ++k) {
        const int i = int(threadIdx.x) + k * int(blockDim.x);
        const bool in = i < n4;
        xv[k] = in ? xr[i] : make_float4(0.f, 0.f, 0.f, 0.f);  // zeros add nothing to the sum
        wv[k] = in ? w[i] : make_float4(0.f, 0.f, 0.f, 0.f);
    }
    float ss = 0.0f;
#pragma unroll
    for (int k = 0; k < kNormItems; ++k) {
        ss = fmaf(xv[k].x, xv[k].x, ss);
        ss = fmaf(xv[k].y, xv[k].y, ss);
        ss = fmaf(xv[k].z, xv[k].z, ss);
        ss = fmaf(xv[k].w, xv[k].w, ss);
    }
    const float total = block_sum(ss);
    const float inv = 1.0f / sqrtf(total / float(n) + eps);
#pragma unroll
    for (int k = 0; k < kNormItems; ++k) {
        const int i = int(threadIdx.x) + k * int(blockDim.x);
        if (i < n4) {
            const float4 a = xv[k], b = wv[k];
            yr[i] = make_float4(a.x * inv * b.x, a.y * inv * b.y, a.z * inv * b.z, a.w * inv * b.w);
        }
    }
}

// Any n and alignment (odd widths, rows longer than the vector kernel holds): scalar loads, and the second pass
// reads x again, which for a row it has just read comes mostly from L1/L2. y may be x (each thread rewrites only
// its own elements, after the barrier).
__global__ void __launch_bounds__(kNormMaxThreads) rms_norm_kernel(const float* x, const float* w, int64_t n, float eps,
                                                                   float* y) {
    const float* xr = x + blockIdx.x * n;
    float* yr = y + blockIdx.x * n;
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss = fmaf(xr[i], xr[i], ss);
    const float total = block_sum(ss);
    const float inv = 1.0f / sqrtf(total / float(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = xr[i] * inv * w[i];
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; }

// Threads for a row of `units` loads: one per unit, rounded up to whole warps, at most kNormMaxThreads.
unsigned norm_threads(int64_t units) {
    const int64_t b = (units + 31) / 32 * 32;
    return unsigned(b < 32 ? 32 : (b > kNormMaxThreads ? kNormMaxThreads : b));
}

// ---- layer_norm: one block per row, two block reductions (mean, then the centred sum of squares) ----
// The CPU sums in double; fp32 per-thread sums reduced as a tree agree with it to ~1e-7 relative.
__device__ __forceinline__ float block_sum_twice(float v, float* part) {  // part: 32 floats of shared memory
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    const int lane = int(threadIdx.x & 31), nwarps = int(blockDim.x >> 5);
    __syncthreads();  // an earlier call's readers of part are done
    if (lane == 0) part[threadIdx.x >> 5] = v;
    __syncthreads();
    v = lane < nwarps ? part[lane] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__global__ void __launch_bounds__(kNormMaxThreads) layer_norm_kernel(const float* x, const float* w, const float* b,
                                                                     int64_t n, float eps, float* y) {
    __shared__ float part[kNormMaxThreads / 32];
    const float* xr = x + blockIdx.x * n;
    float* yr = y + blockIdx.x * n;
    float s = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) s += xr[i];
    const float mean = block_sum_twice(s, part) / float(n);
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
        const float d = xr[i] - mean;
        ss = fmaf(d, d, ss);
    }
    const float inv = 1.0f / sqrtf(block_sum_twice(ss, part) / float(n) + eps);
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = (xr[i] - mean) * inv * w[i] + b[i];
}

__global__ void gelu_kernel(const float* x, float* y, int64_t n) {
    for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
        const float v = x[i];
        y[i] = 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    }
}

// One thread per (token, head, rotation pair): at decode (T = 1) that is n_heads * head_dim / 2 threads (1792 for
// a 7B's Q) instead of head_dim / 2 threads each walking every head in turn. The angle pos * inv_freq in double
// (float angles lose digits at 32K positions), reduced to [-pi, pi] in double, then fp32 sincos: within ~3e-7 of
// the CPU's double cos/sin, and without the double pow/sincos that made this kernel ~10 us. Each head recomputes
// its pair's angle with exactly these operations, so every head gets the same cos/sin as when they were shared;
// the few double ops per thread are cheap even where fp64 runs at 1/64 rate.
__global__ void rope_kernel(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos,
                            const double* inv_freq, bool neox) {
    const int64_t half = head_dim / 2;
    const int64_t n = T * n_heads * half;
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
        const int64_t i = j % half, th = j / half, t = th / n_heads;  // th = t * n_heads + h
        const double a = double(pos[t]) * inv_freq[i];
        const double r = a - 6.283185307179586 * rint(a * 0.15915494309189535);
        float sf, cf;
        sincosf(float(r), &sf, &cf);
        const int64_t i0 = neox ? i : 2 * i, i1 = neox ? i + half : 2 * i + 1;
        float* v = x + th * head_dim;
        const float p = v[i0], q = v[i1];
        v[i0] = p * cf - q * sf;
        v[i1] = p * sf + q * cf;
    }
}

template <typename Out>
__device__ __forceinline__ Out from_float(float f);
template <>
__device__ __forceinline__ float from_float<float>(float f) { return f; }
template <>
__device__ __forceinline__ __half from_float<__half>(float f) { return __float2half_rn(f); }  // RNE, inf on overflow

template <typename Out>
__global__ void kv_store_kernel(const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, Out* cache,
                                int64_t ctx, int64_t pos0) {
    const int64_t n = T * n_head_kv * head_dim;
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
        const int64_t d = j % head_dim, h = (j / head_dim) % n_head_kv, t = j / (head_dim * n_head_kv);
        cache[(h * ctx + pos0 + t) * head_dim + d] = from_float<Out>(src[j]);
    }
}

__global__ void split_kv_kernel(const float* kv, int64_t n, int64_t head_dim, float* k, float* v) {
    // n = T * n_head_kv * head_dim outputs per side; row r of (T * n_head_kv) holds K then V.
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
        const int64_t r = j / head_dim, d = j % head_dim;
        k[j] = kv[r * 2 * head_dim + d];
        v[j] = kv[r * 2 * head_dim + head_dim + d];
    }
}

__global__ void gate_mix_kernel(float* x, const float* y, const float* gate, bool broadcast, const int64_t* mask,
                                int64_t T, int64_t C) {
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < T * C; j += int64_t(gridDim.x) * blockDim.x) {
        const int64_t t = j / C, c = j % C;
        if (mask && mask[t] == 0) continue;
        const float s = 1.0f / (1.0f + expf(-(broadcast ? gate[c] : gate[j])));
        x[j] = x[j] * (1.0f - s) + y[j] * s;
    }
}

}  // namespace

void fill(float* x, int64_t n, float value, cudaStream_t stream) {
    if (n <= 0) return;
    fill_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, n, value);
    OWL_CUDA_LAUNCHED("fill");
}

void add(float* x, const float* y, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    add_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
    OWL_CUDA_LAUNCHED("add");
}

void swiglu(const float* gate, const float* up, float* out, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    swiglu_kernel<<<grid_for(n), kThreads, 0, stream>>>(gate, up, out, n);
    OWL_CUDA_LAUNCHED("swiglu");
}

void rms_norm(const float* x, const float* w, int64_t T, int64_t n, float eps, float* y, cudaStream_t stream) {
    if (T <= 0) return;
    if (T > 0x7fffffff) throw Error("rms_norm: too many rows");
    if (n <= 0) return;  // nothing to write (the old kernel launched and wrote nothing)
    if (n % 4 == 0 && n / 4 <= int64_t(kNormItems) * kNormMaxThreads && aligned16(x) && aligned16(w) && aligned16(y)) {
        // Rows of 16-byte multiples from 16-byte aligned bases stay aligned; up to 1024 float4s one per thread.
        rms_norm_vec_kernel<<<unsigned(T), norm_threads(n / 4), 0, stream>>>(
            reinterpret_cast<const float4*>(x), reinterpret_cast<const float4*>(w), n, eps, reinterpret_cast<float4*>(y));
    } else {
        rms_norm_kernel<<<unsigned(T), norm_threads(n), 0, stream>>>(x, w, n, eps, y);
    }
    OWL_CUDA_LAUNCHED("rms_norm");
}

void layer_norm(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y, cudaStream_t stream) {
    if (T <= 0 || n <= 0) return;
    if (T > 0x7fffffff) throw Error("layer_norm: too many rows");
    layer_norm_kernel<<<unsigned(T), norm_threads(n), 0, stream>>>(x, w, b, n, eps, y);
    OWL_CUDA_LAUNCHED("layer_norm");
}

void gelu(const float* x, float* y, int64_t n, cudaStream_t stream) {
    if (n <= 0) return;
    gelu_kernel<<<grid_for(n), kThreads, 0, stream>>>(x, y, n);
    OWL_CUDA_LAUNCHED("gelu");
}

void rope(float* x, int64_t T, int64_t n_heads, int64_t head_dim, const int32_t* pos, const double* inv_freq,
          RopeMode mode, cudaStream_t stream) {
    if (T <= 0 || n_heads <= 0 || head_dim < 2) return;
    rope_kernel<<<grid_for(T * n_heads * (head_dim / 2)), kThreads, 0, stream>>>(x, T, n_heads, head_dim, pos, inv_freq,
                                                                                mode == RopeMode::Neox);
    OWL_CUDA_LAUNCHED("rope");
}

void kv_store(const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type, int64_t ctx,
              int64_t pos0, cudaStream_t stream) {
    const int64_t n = T * n_head_kv * head_dim;
    if (n <= 0) return;
    if (type == DType::F32)
        kv_store_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, T, n_head_kv, head_dim, static_cast<float*>(cache), ctx, pos0);
    else if (type == DType::F16)
        kv_store_kernel<<<grid_for(n), kThreads, 0, stream>>>(src, T, n_head_kv, head_dim, static_cast<__half*>(cache), ctx, pos0);
    else
        throw Error(std::string("kv_store: a KV cache of ") + dtype_name(type) + " is not supported");
    OWL_CUDA_LAUNCHED("kv_store");
}

void split_kv(const float* kv, int64_t T, int64_t n_head_kv, int64_t head_dim, float* k, float* v, cudaStream_t stream) {
    const int64_t n = T * n_head_kv * head_dim;
    if (n <= 0) return;
    split_kv_kernel<<<grid_for(n), kThreads, 0, stream>>>(kv, n, head_dim, k, v);
    OWL_CUDA_LAUNCHED("split_kv");
}

void gate_mix(float* x, const float* y, const float* gate, bool broadcast, const int64_t* mask, int64_t T, int64_t C,
              cudaStream_t stream) {
    if (T * C <= 0) return;
    gate_mix_kernel<<<grid_for(T * C), kThreads, 0, stream>>>(x, y, gate, broadcast, mask, T, C);
    OWL_CUDA_LAUNCHED("gate_mix");
}

}  // namespace cuda
}  // namespace owl
