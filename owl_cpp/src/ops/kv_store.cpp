// Writing new keys / values into a KV cache [n_head_kv][ctx_stride][head_dim] of F32 or F16. The fp16 rounding
// runs in the active kernel set (F16C vcvtps2ph, NEON fcvtn, or bit arithmetic in the generic build); all of them
// round to nearest even exactly as kv_store_ref's scalar fp32_to_fp16 does (NaN payloads aside: NaN stays NaN).
#include <cstring>
#include <string>

#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {
namespace {

// Throws Error for anything kv_store cannot do; returns the element size.
int64_t check_args(const char* what, const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, const void* cache,
                   DType type, int64_t ctx_stride, int64_t pos0) {
    const std::string op = what;
    if (type != DType::F32 && type != DType::F16)
        throw Error(op + ": the KV cache must be F32 or F16, not " + dtype_name(type));
    if (T < 0 || n_head_kv < 0 || head_dim < 0 || ctx_stride < 0 || pos0 < 0)
        throw Error(op + ": negative size or position (T=" + std::to_string(T) + ", n_head_kv=" + std::to_string(n_head_kv) +
                    ", head_dim=" + std::to_string(head_dim) + ", ctx_stride=" + std::to_string(ctx_stride) +
                    ", pos0=" + std::to_string(pos0) + ")");
    if (pos0 > ctx_stride - T)
        throw Error(op + ": rows " + std::to_string(pos0) + ".." + std::to_string(pos0 + T) + " do not fit a cache of " +
                    std::to_string(ctx_stride) + " positions");
    if (!src || !cache) throw Error(op + std::string(": null ") + (!src ? "source" : "cache") + " pointer");
    return type == DType::F16 ? 2 : 4;
}

// Rows (t, g) in [r0, r1), t-major, each head_dim elements from src to cache row g, position pos0 + t.
template <class Convert>
void store_rows(const float* src, int64_t n_head_kv, int64_t head_dim, void* cache, int64_t esize, int64_t ctx_stride,
                int64_t pos0, int64_t r0, int64_t r1, Convert&& convert) {
    for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = r / n_head_kv, g = r % n_head_kv;
        char* dst = static_cast<char*>(cache) + ((g * ctx_stride + pos0 + t) * head_dim) * esize;
        convert(src + r * head_dim, dst, head_dim);
    }
}

// Below this many elements one thread does it all: waking the pool costs more than a decode step's few KB.
constexpr int64_t kParallelElems = int64_t(1) << 16;

}  // namespace

void kv_store(ThreadPool& pool, const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type,
              int64_t ctx_stride, int64_t pos0) {
    const int64_t esize = check_args("kv_store", src, T, n_head_kv, head_dim, cache, type, ctx_stride, pos0);
    void (*const store_f16)(const float*, uint16_t*, int64_t) = isa::active().store_f16;
    auto convert = [&](const float* s, char* d, int64_t n) {
        if (esize == 2) {
            store_f16(s, reinterpret_cast<uint16_t*>(d), n);
        } else {
            std::memcpy(d, s, sizeof(float) * size_t(n));
        }
    };
    const int64_t rows = T * n_head_kv;
    if (rows * head_dim < kParallelElems || pool.size() == 1) {
        store_rows(src, n_head_kv, head_dim, cache, esize, ctx_stride, pos0, 0, rows, convert);
        return;
    }
    pool.parallel_for(rows, [&](int64_t r0, int64_t r1, int) {
        store_rows(src, n_head_kv, head_dim, cache, esize, ctx_stride, pos0, r0, r1, convert);
    });
}

void kv_store_ref(const float* src, int64_t T, int64_t n_head_kv, int64_t head_dim, void* cache, DType type,
                  int64_t ctx_stride, int64_t pos0) {
    const int64_t esize = check_args("kv_store_ref", src, T, n_head_kv, head_dim, cache, type, ctx_stride, pos0);
    store_rows(src, n_head_kv, head_dim, cache, esize, ctx_stride, pos0, 0, T * n_head_kv, [&](const float* s, char* d, int64_t n) {
        for (int64_t i = 0; i < n; ++i) {
            if (esize == 2) {
                const uint16_t h = fp32_to_fp16(s[i]);
                std::memcpy(d + 2 * i, &h, 2);
            } else {
                std::memcpy(d + 4 * i, s + i, 4);
            }
        }
    });
}

}  // namespace owl::ops
