// owl_cpp._testing.ops: each CPU op and its reference, on numpy arrays, for the op tests.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstring>
#include <optional>
#include <vector>

#include "arrays.h"
#include "testing.h"
#include "owl/ops.h"
#include "ops/isa.h"
#include "ops/q32.h"
#include "ops/quant_k.h"

namespace py = pybind11;

namespace owl::testing {
namespace {

F32 empty_like(const std::vector<py::ssize_t>& shape) { return F32(shape); }

bool is_f16(const py::array& a) { return a.dtype().kind() == 'f' && a.dtype().itemsize() == 2; }

// A KV cache argument: float16 arrays are kept as they are (C order), anything else becomes float32.
struct KVArray {
    py::array a;
    DType type = DType::F32;
};
KVArray kv_array(const py::handle& obj) {
    py::array a = py::array::ensure(obj);
    if (!a) throw py::value_error("k / v must be arrays");
    if (is_f16(a)) return {py::array::ensure(a, py::array::c_style), DType::F16};
    F32 f = F32::ensure(a);
    if (!f) throw py::value_error("k / v must be float32 or float16 arrays");
    return {f, DType::F32};
}

// The load-time copy of a Q4_0 (BlockQ4_0x8), Q8_0 (BlockQ8_0x16), Q4_1 / Q5_0 / Q5_1 / IQ4_NL (x8) or Q4_K / Q5_K / Q6_K (BlockQ4_Kx8 ...) matrix, as Model::pack_weights makes it,
// into `buf`, and w pointed at it.
void pack(WeightView& w, std::vector<uint8_t>& buf) {
    if (w.type == DType::Q4_0) {
        buf.resize(size_t(ops::q4x8_bytes(w.rows, w.cols)));
        ops::repack_q4x8(w, buf.data(), 0, w.rows);
        w.packed_q4x8 = buf.data();
    } else if (w.type == DType::Q8_0) {
        buf.resize(size_t(ops::q8x16_bytes(w.rows, w.cols)));
        ops::repack_q8x16(w, buf.data(), 0, w.rows);
        w.packed_q8x16 = buf.data();
    } else if (ops::is_q32_type(w.type)) {
        buf.resize(size_t(ops::q32x8_bytes(w.type, w.rows, w.cols)));
        ops::repack_q32x8(w, buf.data(), 0, w.rows);
        w.packed_q32x8 = buf.data();
    } else if (ops::is_kx8_type(w.type)) {
        buf.resize(size_t(ops::kx8_bytes(w.type, w.rows, w.cols)));
        ops::repack_kx8(w, buf.data(), 0, w.rows);
        w.packed_kx8 = buf.data();
    } else {
        throw py::value_error("packed=True needs Q4_0, Q8_0, Q4_1, Q5_0, Q5_1, IQ4_NL, Q4_K, Q5_K or Q6_K weights");
    }
}

}  // namespace

void bind_ops(py::module_& parent) {
    py::module_ m = parent.def_submodule("ops", "CPU ops and their references (for tests)");

    m.def("dequantize", [](const U8& data, int dtype, int64_t n) {
        WeightView w = weight(data, dtype, 1, n);
        F32 out = empty_like({py::ssize_t(n)});
        ops::dequantize_row(w.type, w.data, out.mutable_data(), n);
        return out;
    });
    m.def("quantize_q8_0", [](const F32& x) {
        if (x.size() % QK) throw py::value_error("length must be a multiple of 32");
        std::string out(size_t(x.size() / QK) * sizeof(BlockQ8_0), '\0');
        ops::quantize_row_q8_0(x.data(), reinterpret_cast<BlockQ8_0*>(&out[0]), x.size());
        return py::bytes(out);
    });
    m.def("quantize_q4_0", [](const F32& x) {
        if (x.size() % QK) throw py::value_error("length must be a multiple of 32");
        std::string out(size_t(x.size() / QK) * sizeof(BlockQ4_0), '\0');
        ops::quantize_row_q4_0(x.data(), reinterpret_cast<BlockQ4_0*>(&out[0]), x.size());
        return py::bytes(out);
    });
    // Q8_K activations (bytes of BlockQ8_K) by the active kernels' quantizer, or by the reference (ref=True).
    m.def("quantize_q8_k", [](const F32& x, bool ref) {
        if (x.size() % QK_K) throw py::value_error("length must be a multiple of 256");
        std::string out(size_t(x.size() / QK_K) * sizeof(BlockQ8_K), '\0');
        auto* o = reinterpret_cast<BlockQ8_K*>(&out[0]);
        if (ref) ops::quantize_row_q8_k_ref(x.data(), o, x.size());
        else ops::isa::active().quantize_q8_k(x.data(), x.size(), o);
        return py::bytes(out);
    }, py::arg("x"), py::arg("ref") = false);
    m.def("matmul", [](const U8& wdata, int dtype, int64_t rows, int64_t cols, const F32& x, py::object bias, int threads, bool ref,
                       bool packed) {
        WeightView w = weight(wdata, dtype, rows, cols);
        std::vector<uint8_t> packed_copy;  // the load-time BlockQ4_0x8 / BlockQ8_0x16 copy, as Model::load makes it
        if (packed) pack(w, packed_copy);
        if (x.ndim() != 2 || x.shape(1) != cols) throw py::value_error("x must be [T, cols]");
        const int64_t T = x.shape(0);
        F32 b;
        if (!bias.is_none()) {
            b = bias.cast<F32>();
            if (b.size() != rows) throw py::value_error("bias must have `rows` elements");
        }
        const float* bp = bias.is_none() ? nullptr : b.data();
        F32 y = empty_like({py::ssize_t(T), py::ssize_t(rows)});
        float* yp = y.mutable_data();
        {
            py::gil_scoped_release release;
            if (ref) {
                ops::matmul_ref(w, x.data(), T, bp, yp);
            } else {
                ThreadPool pool(threads);
                ops::matmul(pool, w, x.data(), T, bp, yp);
            }
        }
        return y;
    }, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("bias") = py::none(),
       py::arg("threads") = 1, py::arg("ref") = false, py::arg("packed") = false);
    // Products of one x in one job: each of `weights` is (data, dtype, rows, cols, bias or None); returns the ys.
    m.def("matmul_many", [](const py::list& weights, const F32& x, int threads, bool packed) {
        const int n = int(weights.size());
        if (n > ops::kMatmulManyMax) throw py::value_error("at most " + std::to_string(ops::kMatmulManyMax) + " weights");
        if (x.ndim() != 2) throw py::value_error("x must be [T, cols]");
        const int64_t T = x.shape(0);
        const size_t count = weights.size();
        std::vector<U8> data(count);
        std::vector<F32> biases(count), ys(count);
        std::vector<WeightView> ws(count);
        std::vector<std::vector<uint8_t>> packed_copies(count);
        ops::MatmulTarget t[ops::kMatmulManyMax];
        for (int i = 0; i < n; ++i) {
            const py::tuple e = weights[size_t(i)].cast<py::tuple>();
            if (e.size() != 5) throw py::value_error("each weight is (data, dtype, rows, cols, bias)");
            data[size_t(i)] = e[0].cast<U8>();
            const int64_t rows = e[2].cast<int64_t>(), cols = e[3].cast<int64_t>();
            ws[size_t(i)] = weight(data[size_t(i)], e[1].cast<int>(), rows, cols);
            if (packed) pack(ws[size_t(i)], packed_copies[size_t(i)]);
            if (x.shape(1) != cols) throw py::value_error("x must be [T, cols] for every weight");
            if (!e[4].is_none()) {
                biases[size_t(i)] = e[4].cast<F32>();
                if (biases[size_t(i)].size() != rows) throw py::value_error("bias must have `rows` elements");
            }
            ys[size_t(i)] = empty_like({py::ssize_t(T), py::ssize_t(rows)});
            t[i] = {&ws[size_t(i)], e[4].is_none() ? nullptr : biases[size_t(i)].data(), ys[size_t(i)].mutable_data()};
        }
        {
            py::gil_scoped_release release;
            ThreadPool pool(threads);
            ops::matmul_many(pool, t, n, x.data(), T);
        }
        return py::list(py::cast(ys));
    }, py::arg("weights"), py::arg("x"), py::arg("threads") = 1, py::arg("packed") = false);
    // silu(W_gate x) * (W_up x) in one job; gate / up are (data, dtype, rows, cols). Returns (out, W_up x).
    m.def("matmul_swiglu", [](const py::tuple& gate, const py::tuple& up, const F32& x, int threads, bool packed) {
        if (gate.size() != 4 || up.size() != 4) throw py::value_error("gate and up are (data, dtype, rows, cols)");
        const U8 gd = gate[0].cast<U8>(), ud = up[0].cast<U8>();
        WeightView g = weight(gd, gate[1].cast<int>(), gate[2].cast<int64_t>(), gate[3].cast<int64_t>());
        WeightView u = weight(ud, up[1].cast<int>(), up[2].cast<int64_t>(), up[3].cast<int64_t>());
        std::vector<uint8_t> gp, upk;
        if (packed) {
            pack(g, gp);
            pack(u, upk);
        }
        if (x.ndim() != 2 || x.shape(1) != g.cols) throw py::value_error("x must be [T, cols]");
        const int64_t T = x.shape(0);
        F32 out = empty_like({py::ssize_t(T), py::ssize_t(g.rows)}), up_out = empty_like({py::ssize_t(T), py::ssize_t(g.rows)});
        float* op = out.mutable_data();
        float* upp = up_out.mutable_data();
        {
            py::gil_scoped_release release;
            ThreadPool pool(threads);
            ops::matmul_swiglu(pool, g, u, x.data(), T, op, upp);
        }
        return py::make_tuple(out, up_out);
    }, py::arg("gate"), py::arg("up"), py::arg("x"), py::arg("threads") = 1, py::arg("packed") = false);
    m.def("kernels_use_q4x8", &ops::kernels_use_q4x8, "whether the active kernels have a repacked Q4_0 path");
    m.def("kernels_use_q8x16", &ops::kernels_use_q8x16, "whether the active kernels have a repacked Q8_0 path");
    m.def("kernels_use_q32x8", [](int dtype) {
        if (!dtype_supported(uint32_t(dtype))) throw py::value_error("unsupported dtype " + std::to_string(dtype));
        return ops::kernels_use_q32x8(DType(dtype));
    }, py::arg("dtype"), "whether the active kernels have an x8 path for this Q4_1 / Q5_0 / Q5_1 / IQ4_NL type");
    m.def("kernels_use_kx8", [](int dtype) { return ops::kernels_use_kx8(DType(dtype)); }, py::arg("dtype"),
          "whether the active kernels have a repacked (8-row) path for this K-quant type id");
    m.def("repack_kx8", [](const U8& data, int dtype, int64_t rows, int64_t cols) {
        const WeightView w = weight(data, dtype, rows, cols);
        if (!ops::is_kx8_type(w.type)) throw py::value_error("repack_kx8 needs Q4_K, Q5_K or Q6_K (type 12, 13 or 14)");
        py::array_t<uint8_t> out(size_t(ops::kx8_bytes(w.type, rows, cols)));
        ops::repack_kx8(w, out.mutable_data(), 0, rows);
        return out;
    }, py::arg("data"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), "the load-time 8-row layout of a K-quant matrix (bytes)");
    m.def("supported_isas", &ops::supported_isas, "matmul kernel variants this CPU and build can run");
    m.def("active_isa", &ops::active_isa, "the matmul kernel variant in use");
    m.def("set_isa", &ops::set_isa, py::arg("name"),
          "use this matmul kernel variant from now on, process-wide ('auto' = the best supported)");
    // Seconds per call of `reps` matmuls on one persistent pool (bench/bench_matmul.py). `w` holds `copies`
    // identical-shape matrices back to back; calls cycle through them so that, with enough copies, the weights
    // come from memory and not from the last-level cache.
    m.def("bench_matmul", [](const U8& wdata, int dtype, int64_t rows, int64_t cols, int64_t copies, const F32& x,
                             int threads, int reps, bool packed) {
        if (!dtype_supported(uint32_t(dtype))) throw py::value_error("unsupported dtype " + std::to_string(dtype));
        WeightView w0{DType(dtype), rows, cols, wdata.data()};
        if (rows < 1 || cols < 1 || cols % dtype_block_elems(w0.type) != 0) throw py::value_error("bad matrix shape");
        int64_t one = 0, all = 0;  // overflow-checked: the sizes come from the caller
        if (copies < 1 || __builtin_mul_overflow(rows, w0.row_bytes(), &one) || __builtin_mul_overflow(copies, one, &all) ||
            int64_t(wdata.size()) != all)
            throw py::value_error("weight buffer must hold `copies` matrices of the given shape and type");
        if (x.ndim() != 2 || x.shape(1) != cols) throw py::value_error("x must be [T, cols]");
        const int64_t T = x.shape(0);
        std::vector<float> y(size_t(T * rows));
        std::vector<double> secs(size_t(reps > 0 ? reps : 0));
        std::vector<std::vector<uint8_t>> packed_copies(size_t(packed ? copies : 0));
        std::vector<WeightView> views;
        for (int64_t c = 0; c < copies; ++c) {
            WeightView w = w0;
            w.data = wdata.data() + c * rows * w0.row_bytes();
            if (packed) pack(w, packed_copies[size_t(c)]);
            views.push_back(w);
        }
        {
            py::gil_scoped_release release;
            ThreadPool pool(threads);
            for (const WeightView& w : views) ops::matmul(pool, w, x.data(), T, nullptr, y.data());  // warm up
            for (int i = 0; i < reps; ++i) {
                const WeightView& w = views[size_t(i % copies)];
                const auto t0 = std::chrono::steady_clock::now();
                ops::matmul(pool, w, x.data(), T, nullptr, y.data());
                secs[size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            }
        }
        return py::array_t<double>(py::ssize_t(secs.size()), secs.data());
    }, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("copies"), py::arg("x"),
       py::arg("threads") = 1, py::arg("reps") = 20, py::arg("packed") = false);
    m.def("get_rows", [](const U8& table, int dtype, int64_t rows, int64_t cols, const I32& ids) {
        WeightView w = weight(table, dtype, rows, cols);
        for (py::ssize_t i = 0; i < ids.size(); ++i)
            if (ids.data()[i] < 0 || ids.data()[i] >= rows) throw py::index_error("row id out of range");
        F32 out = empty_like({ids.size(), py::ssize_t(cols)});
        ops::get_rows(w, ids.data(), ids.size(), out.mutable_data());
        return out;
    });
    m.def("rms_norm", [](const F32& x, const F32& w, float eps, int threads, bool ref) {
        if (x.ndim() != 2 || w.size() != x.shape(1)) throw py::value_error("x must be [T, n] and w [n]");
        F32 y = empty_like({x.shape(0), x.shape(1)});
        if (ref) {
            ops::rms_norm_ref(x.data(), w.data(), x.shape(0), x.shape(1), eps, y.mutable_data());
        } else {
            ThreadPool pool(threads);
            ops::rms_norm(pool, x.data(), w.data(), x.shape(0), x.shape(1), eps, y.mutable_data());
        }
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("eps"), py::arg("threads") = 1, py::arg("ref") = false);
    m.def("layer_norm", [](const F32& x, const F32& w, const F32& b, float eps, int threads, bool ref) {
        if (x.ndim() != 2 || w.size() != x.shape(1) || b.size() != x.shape(1)) throw py::value_error("x must be [T, n], w and b [n]");
        F32 y = empty_like({x.shape(0), x.shape(1)});
        if (ref) {
            ops::layer_norm_ref(x.data(), w.data(), b.data(), x.shape(0), x.shape(1), eps, y.mutable_data());
        } else {
            ThreadPool pool(threads);
            ops::layer_norm(pool, x.data(), w.data(), b.data(), x.shape(0), x.shape(1), eps, y.mutable_data());
        }
        return y;
    }, py::arg("x"), py::arg("w"), py::arg("b"), py::arg("eps"), py::arg("threads") = 1, py::arg("ref") = false);
    m.def("gelu", [](const F32& x, int threads, bool ref) {
        F32 y = empty_like({x.size()});
        if (ref) {
            ops::gelu_ref(x.data(), y.mutable_data(), x.size());
        } else {
            ThreadPool pool(threads);
            ops::gelu(pool, x.data(), y.mutable_data(), x.size());
        }
        return y;
    }, py::arg("x"), py::arg("threads") = 1, py::arg("ref") = false);
    m.def("rope", [](const F32& x, const I32& pos, float base, bool neox, int threads, bool ref) {
        if (x.ndim() != 3 || pos.size() != x.shape(0) || x.shape(2) % 2) throw py::value_error("x must be [T, heads, even dim] and pos [T]");
        F32 y = empty_like({x.shape(0), x.shape(1), x.shape(2)});
        std::memcpy(y.mutable_data(), x.data(), size_t(x.size()) * 4);
        const RopeMode mode = neox ? RopeMode::Neox : RopeMode::Norm;
        if (ref) {
            ops::rope_ref(y.mutable_data(), x.shape(0), x.shape(1), x.shape(2), pos.data(), base, mode);
        } else {
            ThreadPool pool(threads);
            ops::rope(pool, y.mutable_data(), x.shape(0), x.shape(1), x.shape(2), pos.data(), base, mode);
        }
        return y;
    }, py::arg("x"), py::arg("pos"), py::arg("base"), py::arg("neox"), py::arg("threads") = 1, py::arg("ref") = false);
    m.def("swiglu", [](const F32& g, const F32& u, int threads, bool ref) {
        if (g.size() != u.size()) throw py::value_error("gate and up differ in size");
        F32 y = empty_like({g.size()});
        if (ref) {
            ops::swiglu_ref(g.data(), u.data(), y.mutable_data(), g.size());
        } else {
            ThreadPool pool(threads);
            ops::swiglu(pool, g.data(), u.data(), y.mutable_data(), g.size());
        }
        return y;
    }, py::arg("gate"), py::arg("up"), py::arg("threads") = 1, py::arg("ref") = false);
    m.def("softmax", [](const F32& x, bool ref) {
        if (x.size() < 1) throw py::value_error("empty input");
        F32 y = empty_like({x.size()});
        std::memcpy(y.mutable_data(), x.data(), size_t(x.size()) * 4);
        (ref ? ops::softmax_ref : ops::softmax)(y.mutable_data(), x.size());
        return y;
    }, py::arg("x"), py::arg("ref") = false);
    m.def("attention", [](const F32& q, const py::object& k_obj, const py::object& v_obj, int64_t n_past, float scale, int threads,
                          bool ref, std::optional<F32> prefix_k, std::optional<F32> prefix_v,
                          std::optional<py::array_t<int64_t, py::array::c_style | py::array::forcecast>> visible, bool text) {
        // q: [T, n_head, hd]; k, v: [n_head_kv, ctx, hd] holding at least n_past + T positions, both float32 or both
        // float16 (the cache type); prefix_k, prefix_v: [rows, n_head_kv, hd] with visible: [T] (each in [0, rows]).
        const KVArray k = kv_array(k_obj), v = kv_array(v_obj);
        if (k.type != v.type) throw py::value_error("k and v must have the same dtype (float32 or float16)");
        if (q.ndim() != 3 || k.a.ndim() != 3 || v.a.ndim() != 3) throw py::value_error("q, k, v must be 3-D");
        ops::AttentionShape s;
        s.T = q.shape(0); s.n_head = q.shape(1); s.head_dim = q.shape(2);
        s.n_head_kv = k.a.shape(0); s.ctx_stride = k.a.shape(1); s.n_past = n_past; s.scale = scale;
        s.kv_type = k.type;
        if (s.T < 1 || s.n_head_kv < 1 || k.a.shape(2) != s.head_dim || v.a.shape(0) != k.a.shape(0) ||
            v.a.shape(1) != k.a.shape(1) || v.a.shape(2) != k.a.shape(2) || s.n_head % s.n_head_kv || n_past < 0 ||
            n_past + s.T > s.ctx_stride)
            throw py::value_error("inconsistent attention shapes");
        ops::PrefixKV prefix;
        if (prefix_k || prefix_v || visible) {
            if (!prefix_k || !prefix_v || !visible) throw py::value_error("prefix_k, prefix_v and visible go together");
            const F32& pk = *prefix_k;
            const F32& pv = *prefix_v;
            if (pk.ndim() != 3 || pk.shape(1) != s.n_head_kv || pk.shape(2) != s.head_dim || pv.ndim() != 3 ||
                pv.shape(0) != pk.shape(0) || pv.shape(1) != pk.shape(1) || pv.shape(2) != pk.shape(2))
                throw py::value_error("prefix_k / prefix_v must be [rows, n_head_kv, head_dim]");
            if (visible->ndim() != 1 || visible->shape(0) != s.T) throw py::value_error("visible must hold one count per token");
            for (int64_t t = 0; t < s.T; ++t)
                if (visible->data()[t] < 0 || visible->data()[t] > pk.shape(0)) throw py::value_error("visible count out of range");
            prefix = {pk.data(), pv.data(), visible->data()};
        }
        const ops::PrefixKV* pre = prefix.k ? &prefix : nullptr;
        if (!pre && !text) throw py::value_error("text=False needs prefix keys");
        F32 out = empty_like({q.shape(0), q.shape(1), q.shape(2)});
        {
            py::gil_scoped_release release;
            if (ref) {
                ops::attention_ref(s, q.data(), k.a.data(), v.a.data(), out.mutable_data(), pre, text);
            } else {
                ThreadPool pool(threads);
                ops::attention(pool, s, q.data(), k.a.data(), v.a.data(), out.mutable_data(), pre, text);
            }
        }
        return out;
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_past"), py::arg("scale"), py::arg("threads") = 1, py::arg("ref") = false,
       py::arg("prefix_k") = py::none(), py::arg("prefix_v") = py::none(), py::arg("visible") = py::none(), py::arg("text") = true,
       "causal attention over a KV cache given as float32 or float16 arrays (their dtype is the cache type)");
    // Seconds per call of `reps` text-only attention calls on one persistent pool (decode timing). k, v:
    // [copies, n_head_kv, ctx, hd] (float32 or float16); calls cycle through the copies so that, with enough of them,
    // the cache comes from memory rather than the last-level cache, as it does across the layers of a model.
    m.def("bench_attention", [](const F32& q, const py::object& k_obj, const py::object& v_obj, int64_t n_past, float scale,
                                int threads, int reps) {
        const KVArray k = kv_array(k_obj), v = kv_array(v_obj);
        if (k.type != v.type) throw py::value_error("k and v must have the same dtype (float32 or float16)");
        if (q.ndim() != 3 || k.a.ndim() != 4 || v.a.ndim() != 4) throw py::value_error("q must be 3-D, k and v 4-D");
        for (int d = 0; d < 4; ++d)
            if (k.a.shape(d) != v.a.shape(d)) throw py::value_error("k and v differ in shape");
        ops::AttentionShape s;
        s.T = q.shape(0); s.n_head = q.shape(1); s.head_dim = q.shape(2);
        s.n_head_kv = k.a.shape(1); s.ctx_stride = k.a.shape(2); s.n_past = n_past; s.scale = scale; s.kv_type = k.type;
        const int64_t copies = k.a.shape(0);
        if (copies < 1 || s.T < 1 || s.n_head_kv < 1 || k.a.shape(3) != s.head_dim || s.n_head % s.n_head_kv || n_past < 0 ||
            n_past + s.T > s.ctx_stride)
            throw py::value_error("inconsistent attention shapes");
        const int64_t copy_bytes = s.n_head_kv * s.ctx_stride * s.head_dim * (k.type == DType::F16 ? 2 : 4);
        const char* kp = static_cast<const char*>(k.a.data());
        const char* vp = static_cast<const char*>(v.a.data());
        std::vector<float> out(size_t(q.size()));
        std::vector<double> secs(size_t(reps > 0 ? reps : 0));
        {
            py::gil_scoped_release release;
            ThreadPool pool(threads);
            for (int64_t c = 0; c < copies; ++c)  // warm up: page in every copy, grow the scratch
                ops::attention(pool, s, q.data(), kp + c * copy_bytes, vp + c * copy_bytes, out.data());
            for (int i = 0; i < reps; ++i) {
                const int64_t c = i % copies;
                const auto t0 = std::chrono::steady_clock::now();
                ops::attention(pool, s, q.data(), kp + c * copy_bytes, vp + c * copy_bytes, out.data());
                secs[size_t(i)] = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            }
        }
        return py::array_t<double>(py::ssize_t(secs.size()), secs.data());
    }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_past"), py::arg("scale"), py::arg("threads") = 1,
       py::arg("reps") = 20);
    m.def("kv_store", [](const F32& src, py::array cache, int64_t pos0, int threads, bool ref) {
        // src: [T, n_head_kv, hd]; cache: [n_head_kv, ctx, hd], float32 or float16, C-contiguous and writeable:
        // rows pos0 .. pos0+T-1 are written in place (pos0 itself is checked by the op).
        const bool f16 = is_f16(cache);
        if (!f16 && !(cache.dtype().kind() == 'f' && cache.dtype().itemsize() == 4))
            throw py::value_error("the cache must be a float32 or float16 array");
        if (!(cache.flags() & py::array::c_style) || !cache.writeable())
            throw py::value_error("the cache must be C-contiguous and writeable (it is written in place)");
        if (src.ndim() != 3 || cache.ndim() != 3 || src.shape(1) != cache.shape(0) || src.shape(2) != cache.shape(2))
            throw py::value_error("src must be [T, n_head_kv, head_dim] and the cache [n_head_kv, ctx, head_dim]");
        const DType type = f16 ? DType::F16 : DType::F32;
        void* dst = cache.mutable_data();
        {
            py::gil_scoped_release release;
            if (ref) {
                ops::kv_store_ref(src.data(), src.shape(0), src.shape(1), src.shape(2), dst, type, cache.shape(1), pos0);
            } else {
                ThreadPool pool(threads);
                ops::kv_store(pool, src.data(), src.shape(0), src.shape(1), src.shape(2), dst, type, cache.shape(1), pos0);
            }
        }
    }, py::arg("src"), py::arg("cache"), py::arg("pos0"), py::arg("threads") = 1, py::arg("ref") = false,
       "write src [T, n_head_kv, hd] into rows pos0.. of cache [n_head_kv, ctx, hd] (float32 or float16) in place");
}

}  // namespace owl::testing
