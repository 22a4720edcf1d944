// Causal grouped-query attention on the device, "flash decoding" style: the keys one query (t, h) sees are cut
// into splits; one block per (split, t, h) runs an online softmax over its split and either writes the final row
// (one split) or a partial (max, sum, weighted V sum) that attn_merge combines. Within a block, lanes form groups of
// G: a group holds one key row (each lane VEC consecutive elements, CPL such chunks) so a warp reads whole rows
// with coalesced vector loads; every group keeps its own running max / sum / accumulator over the keys it visits
// (no barrier in the key loop), and the groups are merged through shared memory at the end.
// Scores are kept in the log2 domain (q pre-multiplied by scale * log2 e) so the softmax runs on exp2f.
// __launch_bounds__(128, 4) caps registers at 128: without a minimum, ptxas picked low targets and spilled.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <string>

#include "attention.cuh"
#include "owl/error.h"

namespace owl {
namespace cuda {
namespace {

constexpr int kThreads = 128;       // per attention block (4 warps)
constexpr int kUnroll = 4;          // keys per group per step (at most): their K and V loads are in flight together
constexpr int kMinChunk = 64;       // fewest keys in a split
constexpr int kMaxSplits = 64;      // per (query, head)
constexpr int kMergeThreads = 128;  // >= kMaxSplits
constexpr int kPrefixGuess = 1024;  // prefix rows assumed when choosing splits (the host cannot see `visible`)
constexpr float kLog2e = 1.4426950408889634f;

// VEC consecutive elements of a row (float, or fp16 bits as uint16_t) loaded with aligned vector loads (16 bytes
// at most per load), kept as raw 32-bit words until used so fp16 data takes half the registers.
template <class E, int VEC>
struct Chunk {
    static constexpr int kBytes = VEC * int(sizeof(E));
    static constexpr int kWords = (kBytes + 3) / 4;
    uint32_t w[kWords];

    __device__ __forceinline__ void load(const E* p) {
        if constexpr (kBytes >= 16) {
#pragma unroll
            for (int i = 0; i < kBytes / 16; ++i) {
                const uint4 x = __ldg(reinterpret_cast<const uint4*>(p) + i);
                w[4 * i] = x.x, w[4 * i + 1] = x.y, w[4 * i + 2] = x.z, w[4 * i + 3] = x.w;
            }
        } else if constexpr (kBytes == 8) {
            const uint2 x = __ldg(reinterpret_cast<const uint2*>(p));
            w[0] = x.x, w[1] = x.y;
        } else if constexpr (kBytes == 4) {
            w[0] = __ldg(reinterpret_cast<const unsigned int*>(p));
        } else {
            w[0] = __ldg(reinterpret_cast<const unsigned short*>(p));
        }
    }
    __device__ __forceinline__ void zero() {
#pragma unroll
        for (int i = 0; i < kWords; ++i) w[i] = 0;  // +0.0 as float and as fp16
    }
    __device__ __forceinline__ float operator[](int i) const {
        if constexpr (sizeof(E) == 4)
            return __uint_as_float(w[i]);
        else  // little endian: element 2i is the low half of word i
            return half_bits_to_float(uint16_t(w[i / 2] >> (16 * (i & 1))));
    }
};

struct Args {
    const float* q;
    const void* k;
    const void* v;
    float* out;
    const float* pk;
    const float* pv;
    const int64_t* visible;
    float* part_acc;  // nsplit > 1: [split][pair][head_dim] weighted V sums (index blockIdx.x)
    float* part_ml;   //              [split][pair][2] (max, sum)
    int64_t n_past, ctx_stride;
    int T, n_head, group, n_head_kv, head_dim;
    int G, gshift, C;  // lanes per key row (a power of two <= 32), log2 G, chunks per row (head_dim / VEC)
    int nsplit;
    float qscale;
    bool text;
};

// Online softmax of lane group g (of ng) over key rows [j0, j1) of one span (row j at k + j * stride); lane `lane`
// of the group holds chunks lane + c * G. Loop bounds are uniform over the block, so every warp runs the shuffles
// whole.
template <class E, int VEC, int CPL>
__device__ __forceinline__ void attend_span(const E* __restrict__ k, const E* __restrict__ v, int64_t stride, int j0,
                                            int j1, const float (&q)[VEC * CPL], float& m, float& l,
                                            float (&acc)[VEC * CPL], int g, int ng, int lane, int G, int C) {
    // Keys per step: the step's K and V chunks take 2 * U * CPL * kWords registers, kept to 32.
    constexpr int kFit = 16 / (CPL * Chunk<E, VEC>::kWords);
    constexpr int U = kFit < 1 ? 1 : kFit > kUnroll ? kUnroll : kFit;
    for (int base = j0; base < j1; base += ng * U) {
        // All loads first, unconditionally (from a clamped, valid row / chunk; zeroed after when out of range), so
        // the 2 * U * CPL loads of a step are in flight together instead of one key after another.
        Chunk<E, VEC> kc[U][CPL], vc[U][CPL];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const int j = base + u * ng + g;  // consecutive groups take consecutive rows: coalesced
#pragma unroll
            for (int c = 0; c < CPL; ++c) {
                const int ch = lane + c * G;
                const int64_t off = int64_t(min(j, j1 - 1)) * stride + min(ch, C - 1) * VEC;
                kc[u][c].load(k + off);
                vc[u][c].load(v + off);
                if (j >= j1 || ch >= C) {  // p = 0 times a stray inf would be NaN
                    kc[u][c].zero();
                    vc[u][c].zero();
                }
            }
        }
        float s[U];
#pragma unroll
        for (int u = 0; u < U; ++u) {
            s[u] = 0.0f;
#pragma unroll
            for (int c = 0; c < CPL; ++c)
#pragma unroll
                for (int i = 0; i < VEC; ++i) s[u] = fmaf(q[c * VEC + i], kc[u][c][i], s[u]);
        }
        // Sum the partial dots over the G lanes of the group (groups are aligned blocks of G lanes).
#pragma unroll
        for (int off = 16; off > 0; off >>= 1)
            if (off < G) {
#pragma unroll
                for (int u = 0; u < U; ++u) s[u] += __shfl_xor_sync(0xffffffffu, s[u], off);
            }
        float mx = m;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            if (base + u * ng + g >= j1) s[u] = -INFINITY;
            mx = fmaxf(mx, s[u]);
        }
        // All -inf so far (nothing seen): subtract 0, not -inf, so exp2 gets -inf (-> 0) instead of NaN.
        const float ref = mx == -INFINITY ? 0.0f : mx;
        const float alpha = exp2f(m - ref);
        l *= alpha;
#pragma unroll
        for (int i = 0; i < VEC * CPL; ++i) acc[i] *= alpha;
#pragma unroll
        for (int u = 0; u < U; ++u) {
            const float p = exp2f(s[u] - ref);
            l += p;
#pragma unroll
            for (int c = 0; c < CPL; ++c)
#pragma unroll
                for (int i = 0; i < VEC; ++i) acc[c * VEC + i] = fmaf(p, vc[u][c][i], acc[c * VEC + i]);
        }
        m = mx;
    }
}

// One block per (split, t, h), blockIdx.x = (split * T + t) * n_head + h: the heads sharing a KV head and split
// run side by side, so their K/V reads meet in L2.
template <class E, int VEC, int CPL>
__global__ void __launch_bounds__(kThreads, 4) attn_kernel(const Args a) {
    constexpr int N = VEC * CPL;
    // Per group: max, sum, and weighted accumulator; ng * head_dim <= 8 * kThreads since head_dim <= 8 * G.
    __shared__ float sm_m[kThreads], sm_l[kThreads], sm_acc[8 * kThreads];

    const int x = int(blockIdx.x);
    const int h = x % a.n_head, t = (x / a.n_head) % a.T, split = x / a.n_head / a.T;
    const int64_t pair = int64_t(t) * a.n_head + h;
    const int kvh = h / a.group, D = a.head_dim, G = a.G, C = a.C;
    const int g = int(threadIdx.x) >> a.gshift, lane = int(threadIdx.x) & (G - 1), ng = kThreads >> a.gshift;

    float q[N], acc[N];
    const float* qp = a.q + pair * D;
#pragma unroll
    for (int c = 0; c < CPL; ++c)
#pragma unroll
        for (int i = 0; i < VEC; ++i) {
            const int ch = lane + c * G;
            q[c * VEC + i] = ch < C ? qp[ch * VEC + i] * a.qscale : 0.0f;
            acc[c * VEC + i] = 0.0f;
        }

    // Keys of this query: prefix rows [0, np), then text keys [np, np + nt); this split takes [b, e) of them.
    const int np = a.pk ? int(max(int64_t(0), a.visible[t])) : 0;
    const int nt = a.text ? int(a.n_past + t + 1) : 0;
    const int n = np + nt;
    int b = 0, e = n;
    if (a.nsplit > 1) {
        const int chunk = max(kMinChunk, (n + a.nsplit - 1) / a.nsplit);
        b = min(n, split * chunk);
        e = min(n, b + chunk);
    }

    const int tb = max(b, np) - np, te = e - np;  // text keys [tb, te) (computed first: fewer live values)
    float m = -INFINITY, l = 0.0f;
    if (b < np)
        attend_span<float, VEC, CPL>(a.pk + int64_t(kvh) * D, a.pv + int64_t(kvh) * D, int64_t(a.n_head_kv) * D, b,
                                     min(e, np), q, m, l, acc, g, ng, lane, G, C);
    if (tb < te) {
        const int64_t head = int64_t(kvh) * a.ctx_stride * D;
        attend_span<E, VEC, CPL>(static_cast<const E*>(a.k) + head, static_cast<const E*>(a.v) + head, D, tb, te, q,
                                 m, l, acc, g, ng, lane, G, C);
    }

    // Merge the groups: rescale each to the block's max, then sum in a fixed order (deterministic).
    if (lane == 0) sm_m[g] = m;
    __syncthreads();
    float M = -INFINITY;
    for (int i = 0; i < ng; ++i) M = fmaxf(M, sm_m[i]);
    const float f = m == -INFINITY ? 0.0f : exp2f(m - M);  // a group that saw nothing has l = acc = 0
    if (lane == 0) sm_l[g] = l * f;
#pragma unroll
    for (int c = 0; c < CPL; ++c) {
        const int ch = lane + c * G;
        if (ch < C)
#pragma unroll
            for (int i = 0; i < VEC; ++i) sm_acc[g * D + ch * VEC + i] = acc[c * VEC + i] * f;
    }
    __syncthreads();
    float L = 0.0f;  // >= 1 when any key was seen (the max key adds 2^0), so __fdividef is exact to 2 ulp
    for (int i = 0; i < ng; ++i) L += sm_l[i];
    // Output slot: blockIdx.x = split * pairs + pair (== pair with one split); read afresh, not kept live.
    const int64_t slot = blockIdx.x;
    for (int d = int(threadIdx.x); d < D; d += kThreads) {
        float sum = 0.0f;
        for (int i = 0; i < ng; ++i) sum += sm_acc[i * D + d];
        if (a.nsplit == 1)
            a.out[slot * D + d] = L > 0.0f ? __fdividef(sum, L) : 0.0f;  // a query that saw no key gets zeros
        else
            a.part_acc[slot * D + d] = sum;
    }
    if (a.nsplit > 1 && threadIdx.x == 0) {
        a.part_ml[2 * slot] = M;
        a.part_ml[2 * slot + 1] = L;
    }
}

// One block per (t, h) pair: out = sum_s acc_s * 2^(m_s - M) / sum_s l_s * 2^(m_s - M), M the max of the m_s.
__global__ void __launch_bounds__(kMergeThreads)
    attn_merge(const float* __restrict__ part_acc, const float* __restrict__ part_ml, float* __restrict__ out,
               int nsplit, int pairs, int D) {
    __shared__ float sm_w[kMaxSplits], sm_lw[kMaxSplits];
    const int64_t pair = blockIdx.x;
    const float* ml = part_ml + pair * 2;  // split s at ml[s * pairs * 2]
    float M = -INFINITY;
    for (int s = 0; s < nsplit; ++s) M = fmaxf(M, ml[int64_t(s) * pairs * 2]);
    const int tid = int(threadIdx.x);
    if (tid < nsplit) {
        const float ms = ml[int64_t(tid) * pairs * 2];
        const float w = ms == -INFINITY ? 0.0f : exp2f(ms - M);  // an empty split: weight 0, no NaN
        sm_w[tid] = w;
        sm_lw[tid] = ml[int64_t(tid) * pairs * 2 + 1] * w;
    }
    __syncthreads();
    float L = 0.0f;  // >= 1 or 0, as in attn_kernel
    for (int s = 0; s < nsplit; ++s) L += sm_lw[s];
    const float* pa = part_acc + pair * D;  // split s at pa[s * pairs * D]
    for (int d = tid; d < D; d += kMergeThreads) {
        float sum = 0.0f;
        for (int s = 0; s < nsplit; ++s) sum = fmaf(sm_w[s], pa[int64_t(s) * pairs * D + d], sum);
        out[pair * D + d] = L > 0.0f ? __fdividef(sum, L) : 0.0f;
    }
}

int sm_count() {
    // Read once (the device of the first call; the backend uses one device).
    static const int n = [] {
        int dev = 0, c = 0;
        OWL_CUDA_CHECK(cudaGetDevice(&dev));
        OWL_CUDA_CHECK(cudaDeviceGetAttribute(&c, cudaDevAttrMultiProcessorCount, dev));
        return c > 0 ? c : 1;
    }();
    return n;
}

// The kernel for (E, VEC, cpl), cpl in 1, 2, 4, 8 with VEC * cpl <= 8.
template <class E, int VEC, int CPL = 1>
void launch(int cpl, const Args& a, unsigned blocks, cudaStream_t stream) {
    if constexpr (VEC * CPL <= 8) {
        if (cpl == CPL) {
            attn_kernel<E, VEC, CPL><<<blocks, kThreads, 0, stream>>>(a);
            OWL_CUDA_LAUNCHED("attention");
            return;
        }
        launch<E, VEC, CPL * 2>(cpl, a, blocks, stream);
    } else {
        throw Error("attention: no kernel for head_dim " + std::to_string(a.head_dim));  // unreachable
    }
}

template <class E>
void launch_type(int vec, int cpl, const Args& a, unsigned blocks, cudaStream_t stream) {
    switch (vec) {
        case 8:
            if constexpr (sizeof(E) == 2) return launch<E, 8>(cpl, a, blocks, stream);
            break;
        case 4: return launch<E, 4>(cpl, a, blocks, stream);
        case 2: return launch<E, 2>(cpl, a, blocks, stream);
        case 1: return launch<E, 1>(cpl, a, blocks, stream);
    }
    throw Error("attention: no kernel for head_dim " + std::to_string(a.head_dim));  // unreachable
}

bool aligned(const void* p, int bytes) { return reinterpret_cast<uintptr_t>(p) % uintptr_t(bytes) == 0; }

}  // namespace

void attention(const ops::AttentionShape& s, const float* q, const void* k, const void* v, float* out,
               const float* pk, const float* pv, const int64_t* visible, bool text, Workspace& ws,
               cudaStream_t stream) {
    if (s.kv_type != DType::F32 && s.kv_type != DType::F16)
        throw Error(std::string("attention: the KV cache must be F32 or F16, not ") + dtype_name(s.kv_type));
    if (s.head_dim < 1 || s.head_dim > 256)
        throw Error("attention: head_dim must be 1 .. 256, not " + std::to_string(s.head_dim));
    if (s.n_head_kv < 1 || s.n_head < 1 || s.n_head % s.n_head_kv != 0)
        throw Error("attention: n_head must be a positive multiple of n_head_kv");
    if (s.T <= 0) return;
    const bool f16 = s.kv_type == DType::F16;
    const int D = int(s.head_dim);
    const int64_t pairs = s.T * s.n_head;

    // Widest vector (16 bytes of the cache at most) that divides head_dim and every K/V pointer's alignment.
    const int esize = f16 ? 2 : 4;
    int vec = f16 ? 8 : 4;
    auto fits = [&](int w) {
        return D % w == 0 && aligned(k, std::min(16, w * esize)) && aligned(v, std::min(16, w * esize)) &&
               (!pk || (aligned(pk, std::min(16, w * 4)) && aligned(pv, std::min(16, w * 4))));
    };
    while (vec > 1 && !fits(vec)) vec /= 2;
    Args a{};
    a.C = D / vec;
    a.G = 1, a.gshift = 0;
    while (a.G < a.C && a.G < 32) a.G *= 2, ++a.gshift;
    const int cpl = (a.C + a.G - 1) / a.G;  // vec * cpl <= 8 since head_dim <= 256

    // Splits: enough blocks for ~4 per SM, each split at least kMinChunk keys.
    const int64_t est_keys = (text ? s.n_past + s.T : 0) + (pk ? kPrefixGuess : 0);
    const int64_t target = 4 * int64_t(sm_count());
    int64_t nsplit = 1;
    if (pairs < target)
        nsplit = std::max<int64_t>(1, std::min<int64_t>({(target + pairs - 1) / pairs, kMaxSplits,
                                                         (est_keys + kMinChunk - 1) / kMinChunk}));
    if (pairs * nsplit > INT_MAX || s.n_past + s.T > INT_MAX / 2)
        throw Error("attention: too many queries or keys for one launch");

    a.q = q, a.k = k, a.v = v, a.out = out;
    a.pk = pk, a.pv = pk ? pv : nullptr, a.visible = pk ? visible : nullptr;
    a.n_past = s.n_past, a.ctx_stride = s.ctx_stride;
    a.T = int(s.T), a.n_head = int(s.n_head), a.group = int(s.n_head / s.n_head_kv), a.n_head_kv = int(s.n_head_kv);
    a.head_dim = D, a.nsplit = int(nsplit), a.text = text;
    a.qscale = s.scale * kLog2e;
    if (nsplit > 1) {
        float* p = static_cast<float*>(ws.get(size_t(pairs * nsplit) * size_t(D + 2) * sizeof(float)));
        a.part_acc = p;
        a.part_ml = p + pairs * nsplit * D;
    }

    const unsigned blocks = unsigned(pairs * nsplit);
    if (f16)
        launch_type<uint16_t>(vec, cpl, a, blocks, stream);
    else
        launch_type<float>(vec, cpl, a, blocks, stream);
    if (nsplit > 1) {
        attn_merge<<<unsigned(pairs), kMergeThreads, 0, stream>>>(a.part_acc, a.part_ml, out, int(nsplit),
                                                                  int(pairs), D);
        OWL_CUDA_LAUNCHED("attention merge");
    }
}

}  // namespace cuda
}  // namespace owl
