// Matrix products W·x: the dispatcher over the instruction-set variants in matmul_*.cpp (chosen in isa.cpp) and
// the float64 reference.
//
// For Q8_0 / Q4_0 weights the activations are first quantized to int8 blocks of 32 (ggml's Q8_0 rule, scales kept
// in fp32) once per call, and the kernels take integer dot products per block, as llama.cpp does; this adds a
// relative error of a few 1e-3 to each product. K-quant weights (Q2_K .. Q6_K) take Q8_K activations (int8 per
// 256 with int16 sums per 16, quant_k.h), as llama.cpp does. F32 / F16 / BF16 weights dot float activations.
//
// Threads split the rows in chunks of a multiple of kRowAlign rows. Every (row, token) result is computed by the
// same instruction sequence whatever the split, so the thread count never changes the output. Decode (T == 1)
// does not touch the heap once the calling thread's activation buffer has grown to size.
#include <cstdlib>
#include <cstring>
#include <vector>

#include "fp16_table.h"
#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"
#include "q32.h"
#include "quant_k.h"

namespace owl::ops {
namespace {

constexpr int64_t kRowAlign = 8;           // rows per unit of work handed to threads (a multiple of every tile's R)
constexpr int64_t kTokenBlock = 48;        // tokens per cache block (a multiple of every tile's TT: 1, 2, 3, 4)
constexpr int64_t kActBudget = 192 << 10;  // bytes of activations one token block x column chunk may span (fits L2)
constexpr int kMaxProducts = kMatmulManyMax;

// A 64-byte-aligned per-thread buffer (quantized activations, float-panel scratch); only grows.
struct ActScratch {
    std::vector<uint8_t> bytes;
    uint8_t* get(size_t n) {
        if (bytes.size() < n + 64) bytes.resize(n + 64);
        const uintptr_t p = reinterpret_cast<uintptr_t>(bytes.data());
        return bytes.data() + ((64 - (p & 63)) & 63);
    }
};

// Columns per chunk: one token block's activations of one chunk should stay in L2 while a thread's rows pass
// over them.
int64_t column_chunk(int64_t K, int64_t T, int64_t bytes_per_elem) {
    const int64_t tb = T < kTokenBlock ? T : kTokenBlock;
    int64_t kc = kActBudget / (tb * bytes_per_elem);
    kc = kc / 256 * 256;
    if (kc < 256) kc = 256;
    return kc >= K ? K : kc;
}

struct QuantJob {
    isa::QuantizeFn fn;
    const float* x;
    int64_t K;
    int8_t* qs;
    float* d;
    int32_t* sums;  // per-block sums of qs, for the x8 / x16 kernels; null when not needed
};

void quantize_tokens(const QuantJob& q, int64_t t0, int64_t t1) {
    const int64_t nb = q.K / QK;
    for (int64_t t = t0; t < t1; ++t) {
        int8_t* qs = q.qs + t * q.K;
        q.fn(q.x + t * q.K, q.K, qs, q.d + t * nb);
        if (!q.sums) continue;
        for (int64_t b = 0; b < nb; ++b) {
            int32_t s = 0;
            for (int i = 0; i < QK; ++i) s += qs[b * QK + i];
            q.sums[t * nb + b] = s;
        }
    }
}

// AMX tiles for F16 / BF16 prompts: where the CPU has them, with the kernel set they extend (avx512_vnni, the
// default there: OWL_CPU_ISA naming another keeps that set's own kernels), unless OWL_AMX=0 (read at each product:
// A/B benchmarks and the tests).
bool use_amx(const isa::Kernels& k) {
    const char* env = std::getenv("OWL_AMX");
    return !(env && std::strcmp(env, "0") == 0) && std::strcmp(k.name, "avx512_vnni") == 0 && isa::amx_usable();
}

// The calling thread's work space for float-weight prefill (isa::GemmArgs::scratch); grows once.
float* panel_scratch() {
    thread_local ActScratch scratch;
    return reinterpret_cast<float*>(scratch.get(size_t(isa::kPanelScratchFloats) * sizeof(float)));
}

// How a product's activations reach its kernel. Products of one input with equal formats share one
// quantization (matmul_many).
struct ActFormat {
    enum Kind { Float, Blocks32, Q8K } kind = Float;
    isa::QuantizeFn fn = nullptr;  // Blocks32: quantize_q8, or quantize_q4's byte order
    bool sums = false;             // Blocks32: per-block sums for the x8 / x16 kernels
    bool operator==(const ActFormat& o) const { return kind == o.kind && fn == o.fn && sums == o.sums; }
};

// One product W x, ready to run once its activations are in place (quantize_activations).
struct Product {
    isa::GemmArgs a;
    isa::GemmFn fn = nullptr;
    ActFormat act;
    bool panels = false;  // float weights on packed panels: each thread passes its own GemmArgs::scratch
    int64_t units = 0;    // units of kRowAlign rows
};

Product plan_product(const isa::Kernels& k, const WeightView& w, const float* x, int64_t T, const float* bias, float* y) {
    const int64_t K = w.cols, N = w.rows;
    Product p;
    isa::GemmArgs& a = p.a;
    a.w = static_cast<const uint8_t*>(w.data);
    a.row_bytes = w.row_bytes();
    a.K = K;
    a.T = T;
    a.N = N;
    a.x = x;
    a.f16 = fp16_table();
    a.bias = bias;
    a.y = y;
    isa::GemmFn fn = nullptr;
    switch (w.type) {
        case DType::F32: fn = k.f32; break;
        case DType::F16: fn = k.f16; break;
        case DType::BF16: fn = k.bf16; break;
        case DType::Q8_0: fn = k.q8_0; break;
        case DType::Q4_0: fn = k.q4_0; break;
        case DType::Q4_1: fn = k.q4_1; break;
        case DType::Q5_0: fn = k.q5_0; break;
        case DType::Q5_1: fn = k.q5_1; break;
        case DType::IQ4_NL: fn = k.iq4_nl; break;
        case DType::Q2_K: fn = k.q2_k; break;
        case DType::Q3_K: fn = k.q3_k; break;
        case DType::Q4_K: fn = k.q4_k; break;
        case DType::Q5_K: fn = k.q5_k; break;
        case DType::Q6_K: fn = k.q6_k; break;
    }
    const bool q4x8 = w.type == DType::Q4_0 && w.packed_q4x8 && k.q4_0x8;
    if (q4x8) {
        fn = k.q4_0x8;
        a.w = static_cast<const uint8_t*>(w.packed_q4x8);
    }
    const bool q8x16 = w.type == DType::Q8_0 && w.packed_q8x16 && k.q8_0x16;
    if (q8x16) {
        fn = k.q8_0x16;
        a.w = static_cast<const uint8_t*>(w.packed_q8x16);
    }
    // A Q4_1 / Q5_0 / Q5_1 / IQ4_NL matrix repacked at load, when the active kernels read its x8 layout (else the
    // file's copy, as for Q4_0).
    isa::GemmFn x8 = nullptr;
    if (w.packed_q32x8) {
        x8 = w.type == DType::Q4_1 ? k.q4_1x8 : w.type == DType::Q5_0 ? k.q5_0x8 : w.type == DType::Q5_1 ? k.q5_1x8
           : w.type == DType::IQ4_NL ? k.iq4_nlx8 : nullptr;
        if (x8) {
            fn = x8;
            a.w = static_cast<const uint8_t*>(w.packed_q32x8);
        }
    }
    // A Q4_K / Q5_K / Q6_K matrix repacked at load (BlockQ4_Kx8 ...): its kernels step over 8-row groups of
    // kx8_bytes(type, 8, K) bytes.
    if (w.packed_kx8) {
        const isa::GemmFn kx8 = w.type == DType::Q4_K ? k.q4_kx8 : w.type == DType::Q5_K ? k.q5_kx8 : w.type == DType::Q6_K ? k.q6_kx8 : nullptr;
        if (kx8) {
            fn = kx8;
            a.w = static_cast<const uint8_t*>(w.packed_kx8);
            a.row_bytes = kx8_bytes(w.type, kQ4Kx8Rows, K) / kQ4Kx8Rows;
        }
    }
    if ((w.type == DType::F16 || w.type == DType::BF16) && T >= isa::kAmxMinTokens && use_amx(k)) fn = isa::amx_gemm(w.type);
    if (!fn) throw Error(std::string("matmul: no kernel for weight type ") + dtype_name(w.type));
    p.fn = fn;
    const bool q32 = is_q32_type(w.type);  // activations as for Q4_0
    if (w.type == DType::Q8_0 || w.type == DType::Q4_0 || q32) {
        if (K % QK) throw Error("matmul: quantized rows must have a multiple of 32 columns");
        p.act.kind = ActFormat::Blocks32;
        p.act.fn = (w.type == DType::Q4_0 && !q4x8) || (q32 && !x8) ? k.quantize_q4 : k.quantize_q8;
        p.act.sums = q4x8 || q8x16 || x8 || (w.type == DType::Q8_0 && k.q8_sums);
    }
    if (dtype_is_kquant(w.type)) p.act.kind = ActFormat::Q8K;  // int8 in blocks of 256 with a float scale
    const int64_t act_bytes = p.act.kind == ActFormat::Float ? 4 : 1;
    a.tb = kTokenBlock;
    a.kc = column_chunk(K, T, act_bytes);
    p.panels = act_bytes == 4 && T >= isa::kPanelMinTokens;
    p.units = (N + kRowAlign - 1) / kRowAlign;
    return p;
}

// Quantizes the activations of ps[i] into scratch slot i, or takes those of an earlier product of the same format.
void quantize_activations(ThreadPool& pool, const isa::Kernels& k, Product* ps, int i) {
    Product& p = ps[i];
    for (int j = 0; j < i; ++j) {
        if (!(ps[j].act == p.act)) continue;
        p.a.xq = ps[j].a.xq;
        p.a.xd = ps[j].a.xd;
        p.a.xs = ps[j].a.xs;
        p.a.xk = ps[j].a.xk;
        return;
    }
    const int64_t K = p.a.K, T = p.a.T;
    if (p.act.kind == ActFormat::Q8K) {
        p.a.xk = quantize_q8_k_tokens(pool, k.quantize_q8_k, p.a.x, T, K);  // one Q8_K format: one buffer suffices
        return;
    }
    if (p.act.kind != ActFormat::Blocks32) return;
    thread_local ActScratch scratch[kMaxProducts];
    const int64_t nb = K / QK;
    const size_t q_bytes = size_t(T * K + 63) / 64 * 64;
    const size_t d_bytes = size_t(T * nb) * sizeof(float);
    uint8_t* buf = scratch[i].get(q_bytes + d_bytes + (p.act.sums ? d_bytes : 0));
    QuantJob q{p.act.fn, p.a.x, K, reinterpret_cast<int8_t*>(buf), reinterpret_cast<float*>(buf + q_bytes),
               p.act.sums ? reinterpret_cast<int32_t*>(buf + q_bytes + d_bytes) : nullptr};
    if (T < 8 || pool.size() == 1) {
        quantize_tokens(q, 0, T);
    } else {
        pool.parallel_for(T, [j = &q](int64_t t0, int64_t t1, int) { quantize_tokens(*j, t0, t1); });
    }
    p.a.xq = q.qs;
    p.a.xd = q.d;
    p.a.xs = q.sums;
}

// Rows [r0, r1) of one product, on the calling thread.
void run_rows(const Product& p, int64_t r0, int64_t r1) {
    if (!p.panels) return p.fn(p.a, r0, r1);
    isa::GemmArgs own = p.a;
    own.scratch = panel_scratch();
    p.fn(own, r0, r1);
}

// Units [u0, u1) of `n` products laid end to end.
struct ProductsJob {
    const Product* ps;
    int n;
    void run(int64_t u0, int64_t u1) const {
        int64_t base = 0;
        for (int i = 0; i < n && base < u1; base += ps[i].units, ++i) {
            const int64_t b = u0 > base ? u0 - base : 0, e = u1 - base < ps[i].units ? u1 - base : ps[i].units;
            if (b >= e) continue;
            const int64_t N = ps[i].a.N;
            run_rows(ps[i], b * kRowAlign, e * kRowAlign < N ? e * kRowAlign : N);
        }
    }
};

// job.run(u0, u1) over [0, units), on the pool unless one thread would do it all anyway.
template <class Job>
void run_units(ThreadPool& pool, int64_t units, const Job& job) {
    if (units == 1 || pool.size() == 1) return job.run(0, units);
    // One pointer captured: std::function keeps it in place, no allocation.
    pool.parallel_for(units, [j = &job](int64_t u0, int64_t u1, int) { j->run(u0, u1); });
}

void run_products(ThreadPool& pool, const Product* ps, int n) {
    int64_t units = 0;
    for (int i = 0; i < n; ++i) units += ps[i].units;
    run_units(pool, units, ProductsJob{ps, n});
}

}  // namespace

void matmul(ThreadPool& pool, const WeightView& w, const float* x, int64_t T, const float* bias, float* y) {
    if (T <= 0 || w.rows <= 0) return;
    const isa::Kernels& k = isa::active();
    Product p = plan_product(k, w, x, T, bias, y);
    quantize_activations(pool, k, &p, 0);
    run_products(pool, &p, 1);
}

void matmul_many(ThreadPool& pool, const MatmulTarget* targets, int n, const float* x, int64_t T) {
    if (n < 0 || n > kMaxProducts) throw Error("matmul_many: " + std::to_string(n) + " products; at most " + std::to_string(kMaxProducts));
    if (T <= 0) return;
    const isa::Kernels& k = isa::active();
    Product ps[kMaxProducts];
    int m = 0;
    for (int i = 0; i < n; ++i) {
        const WeightView& w = *targets[i].w;
        if (i > 0 && w.cols != targets[0].w->cols)
            throw Error("matmul_many: product " + std::to_string(i) + " has " + std::to_string(w.cols) + " columns, product 0 " +
                        std::to_string(targets[0].w->cols) + ": they share one input");
        if (w.rows <= 0) continue;
        ps[m] = plan_product(k, w, x, T, targets[i].bias, targets[i].y);
        quantize_activations(pool, k, ps, m);
        ++m;
    }
    run_products(pool, ps, m);
}

void matmul_swiglu(ThreadPool& pool, const WeightView& gate, const WeightView& up, const float* x, int64_t T, float* out,
                   float* up_out) {
    if (gate.rows != up.rows || gate.cols != up.cols)
        throw Error("matmul_swiglu: gate is " + std::to_string(gate.rows) + "x" + std::to_string(gate.cols) + ", up " +
                    std::to_string(up.rows) + "x" + std::to_string(up.cols) + ": they must match");
    const int64_t N = gate.rows;
    if (T <= 0 || N <= 0) return;
    const isa::Kernels& k = isa::active();
    Product ps[2] = {plan_product(k, gate, x, T, nullptr, out), plan_product(k, up, x, T, nullptr, up_out)};
    quantize_activations(pool, k, ps, 0);
    quantize_activations(pool, k, ps, 1);
    // Each thread combines the gate and up rows it has just computed: no third pass over them, no third wait.
    struct Job {
        const Product* ps;
        const isa::Kernels* k;
        void run(int64_t u0, int64_t u1) const {
            const int64_t N = ps[0].a.N, T = ps[0].a.T;
            const int64_t r0 = u0 * kRowAlign, r1 = u1 * kRowAlign < N ? u1 * kRowAlign : N;
            run_rows(ps[0], r0, r1);
            run_rows(ps[1], r0, r1);
            for (int64_t t = 0; t < T; ++t) {
                float* g = ps[0].a.y + t * N + r0;
                k->swiglu(g, ps[1].a.y + t * N + r0, g, r1 - r0);
            }
        }
    } job{ps, &k};
    run_units(pool, ps[0].units, job);
}

bool amx_active() { return use_amx(isa::active()); }
bool kernels_use_q4x8() { return isa::active().q4_0x8 != nullptr; }
bool kernels_use_q8x16() { return isa::active().q8_0x16 != nullptr; }

void matmul_ref(const WeightView& w, const float* x, int64_t T, const float* bias, float* y) {
    std::vector<float> row(size_t(w.cols));
    for (int64_t r = 0; r < w.rows; ++r) {
        dequantize_row(w.type, w.row(r), row.data(), w.cols);
        for (int64_t t = 0; t < T; ++t) {
            double acc = bias ? bias[r] : 0.0;
            for (int64_t k = 0; k < w.cols; ++k) acc += double(row[k]) * double(x[t * w.cols + k]);
            y[t * w.rows + r] = float(acc);
        }
    }
}

}  // namespace owl::ops
