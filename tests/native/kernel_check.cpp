// Checks every kernel set of this build against the generic set and the float64 references, without Python:
// tests/test_arm64_build.py cross-compiles it with the runtime for arm64 and runs it under qemu, so the NEON
// kernels run somewhere even though no arm64 machine is at hand. Prints one line per failed check and a summary;
// exits 1 when anything failed.
//   matmul: F32 / F16 / BF16 against matmul_ref (1e-5), Q8_0 / Q4_0 / Q4_1 / Q5_0 / Q5_1 / IQ4_NL against the
//           generic set, which quantizes the activations the same way (1e-5); token counts on both sides of the
//           float-panel threshold, 1-2 threads. The last four types get blocks of random bytes with small finite
//           scales (every quant and qh bit pattern).
//   attention (F32 and F16 KV caches) and SwiGLU against their references (1e-5); the F16 cache bit-identical to an
//           F32 cache holding the same values.
//   kv_store (F32 / F16) bit-identical to kv_store_ref (NaNs: both NaN), nothing written outside its rows.
//   K-quants (Q2_K .. Q6_K, random valid blocks): matmul against the generic set (1e-5) and matmul_ref (3e-2: the
//           activations are rounded to Q8_K); each set's Q8_K quantizer bit-identical to quantize_row_q8_k_ref.
//   Argument errors of attention (a KV cache type other than F32 / F16) and kv_store throw owl::Error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "owl/dtype.h"
#include "owl/error.h"
#include "owl/ops.h"
#include "owl/threadpool.h"
#include "ops/isa.h"
#include "ops/quant_k.h"

using namespace owl;

namespace {

int g_failures = 0, g_checks = 0;

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
    double diff = 0, scale = 1e-30;
    for (size_t i = 0; i < got.size(); ++i) {
        diff = std::fmax(diff, std::fabs(double(got[i]) - double(want[i])));
        scale = std::fmax(scale, std::fabs(double(want[i])));
    }
    return diff / scale;
}

void check(bool ok, const std::string& what, double err) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::printf("FAIL %s: relative error %.3g\n", what.c_str(), err);
    }
}

std::vector<float> randn(std::mt19937& rng, size_t n) {
    std::normal_distribution<float> d;
    std::vector<float> v(n);
    for (float& x : v) x = d(rng);
    return v;
}

// Row-major weights of the given type from float values.
std::vector<uint8_t> encode(DType t, const std::vector<float>& w, int64_t rows, int64_t cols) {
    std::vector<uint8_t> out(size_t(rows * dtype_row_bytes(t, cols)));
    for (int64_t r = 0; r < rows; ++r) {
        const float* src = w.data() + r * cols;
        uint8_t* dst = out.data() + r * dtype_row_bytes(t, cols);
        for (int64_t c = 0; c < cols; ++c) {
            if (t == DType::F32) std::memcpy(dst + c * 4, src + c, 4);
            if (t == DType::F16) {
                const uint16_t h = fp32_to_fp16(src[c]);
                std::memcpy(dst + c * 2, &h, 2);
            }
            if (t == DType::BF16) {
                uint32_t u;
                std::memcpy(&u, src + c, 4);
                const uint16_t h = uint16_t(u >> 16);
                std::memcpy(dst + c * 2, &h, 2);
            }
        }
        if (t == DType::Q8_0) ops::quantize_row_q8_0(src, reinterpret_cast<BlockQ8_0*>(dst), cols);
        if (t == DType::Q4_0) ops::quantize_row_q4_0(src, reinterpret_cast<BlockQ4_0*>(dst), cols);
    }
    return out;
}

// Random bytes in every field of Q4_1 / Q5_0 / Q5_1 / IQ4_NL blocks, then d (and m) set to small finite values.
std::vector<uint8_t> random_blocks(DType t, std::mt19937& rng, int64_t rows, int64_t cols) {
    std::vector<uint8_t> out(size_t(rows * dtype_row_bytes(t, cols)));
    std::uniform_int_distribution<int> byte(0, 255);
    std::uniform_real_distribution<float> scale(-0.05f, 0.05f);
    for (uint8_t& b : out) b = uint8_t(byte(rng));
    const bool has_min = t == DType::Q4_1 || t == DType::Q5_1;
    for (size_t off = 0; off < out.size(); off += size_t(dtype_block_bytes(t))) {
        for (int f = 0; f < (has_min ? 2 : 1); ++f) {
            const uint16_t h = fp32_to_fp16(scale(rng));
            std::memcpy(&out[off + 2 * size_t(f)], &h, 2);
        }
    }
    return out;
}

void check_matmul(const std::string& isa, std::mt19937& rng) {
    const DType types[] = {DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0,
                           DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::IQ4_NL};
    const int64_t shapes[][2] = {{7, 64}, {33, 160}, {37, 800}, {67, 2080}};
    for (DType t : types) {
        const bool quant = dtype_block_elems(t) == QK;
        const bool random_bytes = quant && t != DType::Q8_0 && t != DType::Q4_0;
        for (const auto& sh : shapes) {
            const int64_t rows = sh[0], cols = sh[1];
            const std::vector<uint8_t> raw = random_bytes ? random_blocks(t, rng, rows, cols)
                                                          : encode(t, randn(rng, size_t(rows * cols)), rows, cols);
            const WeightView w{t, rows, cols, raw.data()};
            const std::vector<float> bias = randn(rng, size_t(rows));
            for (int64_t T : {1, 3, 17, 40}) {
                const std::vector<float> x = randn(rng, size_t(T * cols));
                std::vector<float> want(size_t(T * rows)), got(want.size());
                if (quant) {
                    ops::set_isa("generic");
                    ThreadPool one(1);
                    ops::matmul(one, w, x.data(), T, bias.data(), want.data());
                } else {
                    ops::matmul_ref(w, x.data(), T, bias.data(), want.data());
                }
                ops::set_isa(isa);
                for (int threads : {1, 2}) {
                    ThreadPool pool(threads);
                    ops::matmul(pool, w, x.data(), T, bias.data(), got.data());
                    const double err = rel_err(got, want);
                    check(err < 1e-5, isa + " matmul " + dtype_name(t) + " " + std::to_string(rows) + "x" +
                          std::to_string(cols) + " T=" + std::to_string(T) + " threads=" + std::to_string(threads), err);
                }
            }
        }
    }
}

// Random bytes with finite, small fp16 super-block scales: valid K-quant blocks of any content.
std::vector<uint8_t> random_k_blocks(DType t, int64_t rows, int64_t cols, std::mt19937& rng) {
    std::vector<uint8_t> raw(size_t(rows * dtype_row_bytes(t, cols)));
    for (uint8_t& b : raw) b = uint8_t(rng());
    const int64_t bytes = dtype_block_bytes(t);
    int d_at = 0, dmin_at = 2;  // Q4_K / Q5_K
    if (t == DType::Q2_K) d_at = 80, dmin_at = 82;
    if (t == DType::Q3_K) d_at = 108, dmin_at = -1;
    if (t == DType::Q6_K) d_at = 208, dmin_at = -1;
    std::uniform_real_distribution<float> u(0.005f, 0.015f);
    for (size_t at = 0; at < raw.size(); at += size_t(bytes)) {
        for (int off : {d_at, dmin_at}) {
            if (off < 0) continue;
            const uint16_t h = fp32_to_fp16(u(rng));
            std::memcpy(&raw[at + size_t(off)], &h, 2);
        }
    }
    return raw;
}

void check_kquants(const std::string& isa, std::mt19937& rng) {
    const DType types[] = {DType::Q2_K, DType::Q3_K, DType::Q4_K, DType::Q5_K, DType::Q6_K};
    const int64_t shapes[][2] = {{7, 256}, {13, 768}, {5, 4352}};
    for (DType t : types) {
        for (const auto& sh : shapes) {
            const int64_t rows = sh[0], cols = sh[1];
            const std::vector<uint8_t> raw = random_k_blocks(t, rows, cols, rng);
            const WeightView w{t, rows, cols, raw.data()};
            for (int64_t T : {1, 3, 17, 64}) {
                const std::vector<float> x = randn(rng, size_t(T * cols));
                std::vector<float> want(size_t(T * rows)), ref(want.size()), got(want.size());
                ops::set_isa("generic");
                ThreadPool one(1);
                ops::matmul(one, w, x.data(), T, nullptr, want.data());
                ops::matmul_ref(w, x.data(), T, nullptr, ref.data());
                ops::set_isa(isa);
                const std::string what = isa + " matmul " + dtype_name(t) + " " + std::to_string(rows) + "x" +
                                         std::to_string(cols) + " T=" + std::to_string(T);
                for (int threads : {1, 2}) {
                    ThreadPool pool(threads);
                    ops::matmul(pool, w, x.data(), T, nullptr, got.data());
                    const double err = rel_err(got, want);
                    check(err < 1e-5, what + " threads=" + std::to_string(threads), err);
                }
                if (rows * T >= 32) check(rel_err(got, ref) < 3e-2, what + " vs matmul_ref", rel_err(got, ref));
            }
        }
    }
    ops::set_isa(isa);
    const std::vector<float> x = randn(rng, 4 * QK_K);
    std::vector<BlockQ8_K> want(4), got(4);
    ops::quantize_row_q8_k_ref(x.data(), want.data(), 4 * QK_K);
    ops::isa::active().quantize_q8_k(x.data(), 4 * QK_K, got.data());
    check(std::memcmp(want.data(), got.data(), want.size() * sizeof(BlockQ8_K)) == 0, isa + " quantize_q8_k", 0.0);
}

std::vector<uint16_t> to_f16(const std::vector<float>& x) {
    std::vector<uint16_t> h(x.size());
    for (size_t i = 0; i < x.size(); ++i) h[i] = fp32_to_fp16(x[i]);
    return h;
}

std::vector<float> from_f16(const std::vector<uint16_t>& h) {
    std::vector<float> x(h.size());
    for (size_t i = 0; i < h.size(); ++i) x[i] = fp16_to_fp32(h[i]);
    return x;
}

void check_attention(const std::string& isa, std::mt19937& rng) {
    ops::set_isa(isa);
    // (T, n_past, n_head, n_head_kv, head_dim): a batch with GQA, decode with an odd head_dim.
    const int64_t shapes[][5] = {{21, 6, 6, 2, 40}, {1, 37, 4, 1, 13}};
    for (const auto& sh : shapes) {
        ops::AttentionShape s;
        s.T = sh[0];
        s.n_past = sh[1];
        s.n_head = sh[2];
        s.n_head_kv = sh[3];
        s.head_dim = sh[4];
        s.ctx_stride = s.n_past + s.T + 5;
        s.scale = 1.0f / std::sqrt(float(s.head_dim));
        const std::string name = isa + " attention T=" + std::to_string(s.T) + " hd=" + std::to_string(s.head_dim);
        const std::vector<float> q = randn(rng, size_t(s.T * s.n_head * s.head_dim));
        const std::vector<float> k = randn(rng, size_t(s.n_head_kv * s.ctx_stride * s.head_dim));
        const std::vector<float> v = randn(rng, k.size());
        std::vector<float> want(q.size()), got(q.size());
        ops::attention_ref(s, q.data(), k.data(), v.data(), want.data());
        ThreadPool pool(2);
        ops::attention(pool, s, q.data(), k.data(), v.data(), got.data());
        double err = rel_err(got, want);
        check(err < 1e-5, name + " F32", err);

        // F16 cache: against the reference on the rounded values, and bit-identical to an F32 cache holding them.
        const std::vector<uint16_t> k16 = to_f16(k), v16 = to_f16(v);
        const std::vector<float> kr = from_f16(k16), vr = from_f16(v16);
        ops::attention_ref(s, q.data(), kr.data(), vr.data(), want.data());
        std::vector<float> same(q.size());
        ops::attention(pool, s, q.data(), kr.data(), vr.data(), same.data());
        s.kv_type = DType::F16;
        ops::attention(pool, s, q.data(), k16.data(), v16.data(), got.data());
        err = rel_err(got, want);
        check(err < 1e-5, name + " F16", err);
        check(std::memcmp(got.data(), same.data(), sizeof(float) * got.size()) == 0, name + " F16 == F32 on rounded values",
              rel_err(got, same));
        std::vector<float> ref16(q.size());
        ops::attention_ref(s, q.data(), k16.data(), v16.data(), ref16.data());
        check(std::memcmp(ref16.data(), want.data(), sizeof(float) * want.size()) == 0, name + " F16 reference",
              rel_err(ref16, want));
    }
}

// kv_store vs kv_store_ref over values that exercise fp16 rounding (subnormals, overflow, ties, NaN), with a
// sentinel around the written rows.
void check_kv_store(const std::string& isa, std::mt19937& rng) {
    ops::set_isa(isa);
    const int64_t T = 37, KV = 3, D = 45, ctx = 50, pos0 = 6;
    std::vector<float> src = randn(rng, size_t(T * KV * D));
    std::uniform_int_distribution<int> expo(-30, 20);
    for (float& x : src) x = std::ldexp(x, expo(rng));
    const float special[] = {65504.0f, 65520.0f, -65520.0f, 65519.996f, INFINITY, -INFINITY, NAN, -NAN,
                             1.0f + 1.0f / 2048, 1.0f + 3.0f / 2048, std::ldexp(1.0f, -24), std::ldexp(1.0f, -25),
                             std::ldexp(3.0f, -25), std::ldexp(1.0f, -14), 1e-40f, -0.0f};
    for (size_t i = 0; i < sizeof special / sizeof *special; ++i) src[i * 7] = special[i];
    for (DType t : {DType::F32, DType::F16}) {
        const size_t es = t == DType::F16 ? 2 : 4;
        std::vector<uint8_t> want(size_t(KV * ctx * D) * es, 0xa5), got(want.size(), 0xa5);
        ops::kv_store_ref(src.data(), T, KV, D, want.data(), t, ctx, pos0);
        for (int threads : {1, 2}) {
            std::fill(got.begin(), got.end(), uint8_t(0xa5));
            ThreadPool pool(threads);
            ops::kv_store(pool, src.data(), T, KV, D, got.data(), t, ctx, pos0);
            int64_t bad = 0;
            for (size_t i = 0; i < want.size() / es; ++i) {
                if (std::memcmp(got.data() + i * es, want.data() + i * es, es) == 0) continue;
                float a, b;  // NaN payloads may differ (hardware conversions quiet them); both must be NaN
                if (es == 2) {
                    uint16_t ha, hb;
                    std::memcpy(&ha, got.data() + i * es, 2);
                    std::memcpy(&hb, want.data() + i * es, 2);
                    a = fp16_to_fp32(ha);
                    b = fp16_to_fp32(hb);
                } else {
                    std::memcpy(&a, got.data() + i * es, 4);
                    std::memcpy(&b, want.data() + i * es, 4);
                }
                if (!(std::isnan(a) && std::isnan(b) && std::signbit(a) == std::signbit(b))) ++bad;
            }
            check(bad == 0, isa + " kv_store " + dtype_name(t) + " threads=" + std::to_string(threads), double(bad));
        }
    }
}

// Argument errors of the attention / kv_store API that Python cannot reach (the binding derives sizes from arrays).
void check_errors() {
    const auto throws = [](const std::string& what, auto&& fn) {
        bool thrown = false;
        try {
            fn();
        } catch (const Error&) {
            thrown = true;
        }
        check(thrown, what + " throws owl::Error", 0.0);
    };
    ThreadPool pool(1);
    float src[16] = {}, cache[64] = {};
    throws("kv_store T < 0", [&] { ops::kv_store(pool, src, -1, 1, 8, cache, DType::F32, 8, 0); });
    throws("kv_store head_dim < 0", [&] { ops::kv_store(pool, src, 1, 1, -8, cache, DType::F32, 8, 0); });
    throws("kv_store null src", [&] { ops::kv_store(pool, nullptr, 1, 1, 8, cache, DType::F32, 8, 0); });
    throws("kv_store null cache", [&] { ops::kv_store(pool, src, 1, 1, 8, nullptr, DType::F16, 8, 0); });
    throws("kv_store past ctx", [&] { ops::kv_store(pool, src, 2, 1, 8, cache, DType::F16, 8, 7); });
    throws("kv_store Q8_0", [&] { ops::kv_store(pool, src, 1, 1, 8, cache, DType::Q8_0, 8, 0); });
    throws("kv_store_ref null src", [&] { ops::kv_store_ref(nullptr, 1, 1, 8, cache, DType::F32, 8, 0); });
    ops::AttentionShape s;
    s.head_dim = 8;
    s.kv_type = DType::BF16;
    float q[8] = {}, out[8];
    throws("attention BF16 cache", [&] { ops::attention(pool, s, q, cache, cache, out); });
    throws("attention_ref BF16 cache", [&] { ops::attention_ref(s, q, cache, cache, out); });
}

void check_swiglu(const std::string& isa, std::mt19937& rng) {
    ops::set_isa(isa);
    std::vector<float> gate = randn(rng, 1003), up = randn(rng, 1003);
    for (size_t i = 0; i < gate.size(); i += 50) gate[i] *= 30.0f;  // far into both tails of the exponential
    std::vector<float> want(gate.size()), got(gate.size());
    ops::swiglu_ref(gate.data(), up.data(), want.data(), int64_t(gate.size()));
    ThreadPool pool(2);
    ops::swiglu(pool, gate.data(), up.data(), got.data(), int64_t(gate.size()));
    const double err = rel_err(got, want);
    check(err < 1e-5, isa + " swiglu", err);
}

}  // namespace

int main() {
    std::mt19937 rng(1234);
    std::string isas;
    for (const std::string& isa : ops::supported_isas()) {
        isas += " " + isa;
        check_matmul(isa, rng);
        check_kquants(isa, rng);
        check_attention(isa, rng);
        check_kv_store(isa, rng);
        check_swiglu(isa, rng);
    }
    check_errors();
    std::printf("kernel sets:%s; %d checks, %d failed\n", isas.c_str(), g_checks, g_failures);
    return g_failures ? 1 : 0;
}
