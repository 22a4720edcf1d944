// Load-time repacking: Q4_0 matrices are copied into the BlockQ4_0x8 layout (dtype.h) when the active kernels
// have a lane-per-row path for it (AVX2 and up: 1.5x the prefill throughput of the file's layout), Q8_0
// matrices into BlockQ8_0x16 likewise (AVX-512 VNNI: no in-register transposes, see matmul_avx512.inc), and
// Q4_1 / Q5_0 / Q5_1 / IQ4_NL into their x8 layouts (AVX2 and up, q32x8_avx2.h), Q4_K / Q5_K / Q6_K into
// BlockQ4_Kx8 / BlockQ5_Kx8 / BlockQ6_Kx8 (AVX2, AVX-VNNI, AVX512-VNNI; q4kx8_avx2.h, q6kx8_avx2.h). The file stays
// mapped (embedding lookups read it, and so would a kernel variant chosen later), but the pages of every
// repacked tensor are released, so resident memory holds one copy of the weights.
#include <cstdlib>
#include <new>
#include <string>

#include "architecture.h"
#include "ops/q32.h"
#include "owl/threadpool.h"

namespace owl {

void Model::FreeAligned::operator()(uint8_t* p) const { std::free(p); }

void Model::pack_weights() {
    const char* env = std::getenv("OWL_REPACK");  // OWL_REPACK=0 keeps the file's layout (A/B benchmarks)
    if (env && std::string(env) == "0") return;
    const bool q4 = ops::kernels_use_q4x8(), q8 = ops::kernels_use_q8x16();
    auto packs = [&](DType t) {
        return (q4 && t == DType::Q4_0) || (q8 && t == DType::Q8_0) || (ops::is_q32_type(t) && ops::kernels_use_q32x8(t)) ||
               ops::kernels_use_kx8(t);
    };
    std::vector<WeightView*> views;
    auto want = [&](WeightView& w) {
        if (w.data && w.rows > 0 && packs(w.type)) views.push_back(&w);
    };
    for (DecoderLayer& l : layers_)
        for (WeightView* w : {&l.wq, &l.wk, &l.wv, &l.wo, &l.ffn_gate, &l.ffn_up, &l.ffn_down}) want(*w);
    if (arch_weights_) {
        std::vector<WeightView*> extra;
        arch_weights_->matrices(extra);
        for (WeightView* w : extra) want(*w);
    }
    want(output_);
    if (views.empty()) return;

    constexpr size_t kAlign = 64;
    auto bytes = [](const WeightView& w) {
        if (w.type == DType::Q4_0) return size_t(ops::q4x8_bytes(w.rows, w.cols));
        if (w.type == DType::Q8_0) return size_t(ops::q8x16_bytes(w.rows, w.cols));
        if (ops::is_kx8_type(w.type)) return size_t(ops::kx8_bytes(w.type, w.rows, w.cols));
        return size_t(ops::q32x8_bytes(w.type, w.rows, w.cols));
    };
    std::vector<size_t> offset;
    size_t total = 0;
    for (const WeightView* w : views) {
        offset.push_back(total);
        total += (bytes(*w) + kAlign - 1) / kAlign * kAlign;
    }
    packed_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, total)));
    if (!packed_) throw std::bad_alloc();
    packed_bytes_ = total;

    ThreadPool pool(ThreadPool::default_threads());
    for (size_t i = 0; i < views.size(); ++i) {
        WeightView& w = *views[i];
        uint8_t* dst = packed_.get() + offset[i];
        const int64_t rows = w.type == DType::Q4_0 ? kQ4x8Rows : w.type == DType::Q8_0 ? kQ8x16Rows : kQ32x8Rows;
        const int64_t groups = (w.rows + rows - 1) / rows;
        pool.parallel_for(groups, [&](int64_t g0, int64_t g1, int) {
            const int64_t r0 = g0 * rows, r1 = std::min(w.rows, g1 * rows);
            if (w.type == DType::Q4_0)
                ops::repack_q4x8(w, dst, r0, r1);
            else if (w.type == DType::Q8_0)
                ops::repack_q8x16(w, dst, r0, r1);
            else if (ops::is_kx8_type(w.type))
                ops::repack_kx8(w, dst, r0, r1);
            else
                ops::repack_q32x8(w, dst, r0, r1);
        });
        if (w.type == DType::Q4_0)
            w.packed_q4x8 = dst;
        else if (w.type == DType::Q8_0)
            w.packed_q8x16 = dst;
        else if (ops::is_kx8_type(w.type))
            w.packed_kx8 = dst;
        else
            w.packed_q32x8 = dst;
        file_->release_pages(w.data, size_t(w.rows * w.row_bytes()));
    }
}

}  // namespace owl
