// owl_cpp._testing.cuda_kquant: the CUDA backend's K-quant block code (src/cuda/kquant_block.h) compiled for the
// host, so its layout, dequantization and sub-block dot products are tested on machines without a GPU
// (tests/test_cuda_kquant_blocks.py). Builds with or without the CUDA backend.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "arrays.h"
#include "cuda/kquant_block.h"
#include "testing.h"

namespace py = pybind11;

namespace owl::testing {
namespace {

using I8 = py::array_t<int8_t, py::array::c_style | py::array::forcecast>;

DType kq_type(int dtype) {
    const DType t = DType(dtype);
    if (!kq::is_kq(t)) throw py::value_error("not a CUDA K-quant type (Q4_K, Q5_K, Q6_K): " + std::to_string(dtype));
    return t;
}
int64_t super_blocks(int64_t cols) {
    if (cols <= 0 || cols % QK_K) throw py::value_error("cols must be a positive multiple of 256");
    return cols / QK_K;
}
void expect_size(py::ssize_t got, int64_t want, const char* what) {
    if (int64_t(got) != want) throw py::value_error(std::string(what) + " has the wrong size");
}
// rows * row_bytes for caller-given rows, overflow-checked.
int64_t matrix_bytes(int64_t rows, int64_t row_bytes) {
    int64_t n = 0;
    if (rows < 1) throw py::value_error("rows must be positive");
    if (__builtin_mul_overflow(rows, row_bytes, &n)) throw py::value_error("rows x row bytes overflows");
    return n;
}

// The matrix-vector kernel's walk over one row (kq_matvec_kernel, kq_load_unit): units of two sub-blocks, their
// words read at the unit's offsets, each sub-block's dot product against its block of activations, alone (acc 0).
template <DType TY>
void row_sub_dots(const uint8_t* row, int64_t nb, const int8_t* xq, const float* xd, float* out) {
    for (int64_t b = 0; b < nb; ++b) {
        const uint8_t* sb = row + b * kq::block_bytes(TY);
        uint32_t s[4];
        for (int i = 0; i < 4; ++i) s[i] = kq::load_word(sb + kq::scale_offset(TY) + 4 * i);
        float d, dmin;
        kq::super_scales<TY>(s[0], row, nb, b, d, dmin);
        for (int u = 0; u < 4; ++u) {
            int js[2];
            kq::unit_subs(TY, u, js[0], js[1]);
            uint32_t lo[8], hi[8];
            for (int k = 0; k < 8; ++k) {
                lo[k] = kq::load_word(sb + kq::q_offset(TY, js[0], 0) + 4 * k);
                hi[k] = TY == DType::Q4_K ? 0u : kq::load_word(sb + kq::h_offset(TY, js[0], 0) + 4 * k);
            }
            for (int j : js) {
                uint32_t q[8], x[8];
                const int64_t blk = 8 * b + j;
                int sx = 0;
                for (int k = 0; k < 8; ++k) {
                    q[k] = kq::quant_word<TY>(lo[k], hi[k], j);
                    uint32_t w = 0;
                    for (int e = 0; e < 4; ++e) {
                        const int8_t v = xq[32 * blk + 4 * k + e];
                        sx += v;
                        w |= uint32_t(uint8_t(v)) << (8 * e);
                    }
                    x[k] = w;
                }
                int sc0, sc1, m;
                kq::sub_scales<TY>(s, j, sc0, sc1, m);
                out[blk] = kq::sub_dot<TY>(q, sc0, sc1, m, d, dmin, x, xd[blk], sx, 0.0f);
            }
        }
    }
}

}  // namespace

void bind_cuda_kquant(py::module_& parent) {
    py::module_ m = parent.def_submodule("cuda_kquant", "the CUDA backend's K-quant block code, on the host");

    m.def("row_bytes", [](int dtype, int64_t cols) { return kq::row_bytes(kq_type(dtype), super_blocks(cols)); });

    m.def("pack", [](const U8& data, int dtype, int64_t rows, int64_t cols) {
        const DType t = kq_type(dtype);
        const int64_t nb = super_blocks(cols), src_row = dtype_row_bytes(t, cols), dst_row = kq::row_bytes(t, nb);
        expect_size(data.size(), matrix_bytes(rows, src_row), "weight buffer");
        U8 out(py::ssize_t(matrix_bytes(rows, dst_row)));
        for (int64_t r = 0; r < rows; ++r) kq::pack_row(t, data.data() + r * src_row, nb, out.mutable_data() + r * dst_row);
        return out;
    }, py::arg("data"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
       "file rows -> the CUDA device layout (what upload_weight copies to the GPU)");

    m.def("dequantize", [](const U8& dev, int dtype, int64_t rows, int64_t cols) {
        const DType t = kq_type(dtype);
        const int64_t nb = super_blocks(cols), row_bytes = kq::row_bytes(t, nb);
        expect_size(dev.size(), matrix_bytes(rows, row_bytes), "device-layout buffer");
        F32 out({py::ssize_t(rows), py::ssize_t(cols)});
        float* o = out.mutable_data();
        kq::with_type(t, [&](auto tag) {
            constexpr DType TY = decltype(tag)::value;
            for (int64_t r = 0; r < rows; ++r)
                for (int64_t c = 0; c < cols; c += 4) {
                    float v[4];
                    kq::dequant_row_word<TY>(dev.data() + r * row_bytes, nb, c / QK_K, int(c % QK_K) / 32,
                                             int(c % 32) / 4, v);
                    for (int e = 0; e < 4; ++e) o[r * cols + c + e] = v[e];
                }
        });
        return out;
    }, py::arg("dev"), py::arg("dtype"), py::arg("rows"), py::arg("cols"),
       "device-layout rows -> floats, as the CUDA get_rows and GEMM tile loader compute them");

    m.def("sub_dots", [](const U8& dev, int dtype, int64_t cols, const I8& xq, const F32& xd) {
        const DType t = kq_type(dtype);
        const int64_t nb = super_blocks(cols);
        expect_size(dev.size(), kq::row_bytes(t, nb), "device-layout row");
        expect_size(xq.size(), cols, "xq");
        expect_size(xd.size(), cols / 32, "xd");
        F32 out(py::ssize_t(cols / 32));
        kq::with_type(t, [&](auto tag) {
            row_sub_dots<decltype(tag)::value>(dev.data(), nb, xq.data(), xd.data(), out.mutable_data());
        });
        return out;
    }, py::arg("dev"), py::arg("dtype"), py::arg("cols"), py::arg("xq"), py::arg("xd"),
       "one device-layout row against int8 activations xq with a scale per block of 32: each sub-block's dot "
       "product, as the CUDA matrix-vector kernel computes it");
}

}  // namespace owl::testing
