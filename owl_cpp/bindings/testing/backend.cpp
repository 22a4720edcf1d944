// _testing.Backend: each Backend op on numpy arrays, for the backend-equivalence tests. Arrays are uploaded to
// the backend's device; outputs start poisoned (NaN) so elements an op fails to write show up.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <limits>

#include "owl/backend.h"
#include "owl/error.h"
#include "arrays.h"
#include "testing.h"

namespace py = pybind11;

namespace owl::testing {
namespace {

struct Harness {
    std::unique_ptr<Backend> be;

    // A 2-D float32 array (or a 1-D one as one row) on the device; as F16 (rounded to nearest even) when asked.
    std::unique_ptr<DeviceBuffer> put(const F32& a, bool as_f16 = false) {
        if (a.ndim() != 1 && a.ndim() != 2) throw py::value_error("arrays must be 1-D or 2-D");
        const int64_t rows = a.ndim() == 2 ? a.shape(0) : 1, cols = a.ndim() == 2 ? a.shape(1) : a.shape(0);
        auto b = be->alloc(as_f16 ? DType::F16 : DType::F32, rows, cols);
        if (!as_f16) {
            be->upload(a.data(), b->tensor());
            return b;
        }
        std::vector<uint16_t> half(size_t(a.size()));
        for (size_t i = 0; i < half.size(); ++i) half[i] = fp32_to_fp16(a.data()[i]);
        be->upload(half.data(), b->tensor());
        return b;
    }
    std::unique_ptr<DeviceBuffer> poisoned(DType type, int64_t rows, int64_t cols) {
        auto b = be->alloc(type, rows, cols);
        if (type == DType::F32) {
            be->fill(b->tensor(), std::numeric_limits<float>::quiet_NaN());
        } else {  // F16 NaN bit pattern
            std::vector<uint16_t> nan(size_t(rows * cols), 0x7E00);
            be->upload(nan.data(), b->tensor());
        }
        return b;
    }
    py::array get(const DeviceBuffer& b) {
        const Tensor& t = b.tensor();
        if (t.type == DType::F16) {
            py::array_t<uint16_t> out({t.rows, t.cols});
            be->download(t, out.mutable_data());
            return out;
        }
        py::array_t<float> out({t.rows, t.cols});
        be->download(t, out.mutable_data());
        return out;
    }
};

}  // namespace

void bind_backend(py::module_& m) {
    m.def("available_backends", &available_backends);
    py::class_<Harness>(m, "Backend", "One backend's ops on numpy arrays (outputs poisoned with NaN first)")
        .def(py::init([](const std::string& name, int threads) { return Harness{make_backend(name, threads)}; }),
             py::arg("name"), py::arg("threads") = 2)
        .def_property_readonly("name", [](const Harness& h) { return h.be->name(); })
        .def("get_rows", [](Harness& h, const U8& table, int dtype, int64_t rows, int64_t cols, const I32& ids) {
            for (int64_t i = 0; i < ids.size(); ++i)
                if (ids.data()[i] < 0 || ids.data()[i] >= rows) throw py::value_error("id out of range");
            auto out = h.poisoned(DType::F32, ids.size(), cols);
            h.be->get_rows(weight(table, dtype, rows, cols), ids.data(), out->tensor());
            return h.get(*out);
        })
        .def("matmul", [](Harness& h, const U8& w, int dtype, int64_t rows, int64_t cols, const F32& x, py::object bias) {
            auto xb = h.put(x);
            auto y = h.poisoned(DType::F32, xb->tensor().rows, rows);
            F32 b;
            if (!bias.is_none()) {
                b = bias.cast<F32>();
                if (b.size() != rows) throw py::value_error("bias must have one entry per row");
            }
            h.be->matmul(weight(w, dtype, rows, cols), xb->tensor(), bias.is_none() ? nullptr : b.data(), y->tensor());
            return h.get(*y);
        }, py::arg("w"), py::arg("dtype"), py::arg("rows"), py::arg("cols"), py::arg("x"), py::arg("bias") = py::none())
        .def("rms_norm", [](Harness& h, const F32& x, const F32& w, float eps) {
            auto xb = h.put(x);
            if (w.size() != xb->tensor().cols) throw py::value_error("norm weight size mismatch");
            auto y = h.poisoned(DType::F32, xb->tensor().rows, xb->tensor().cols);
            h.be->rms_norm(xb->tensor(), w.data(), eps, y->tensor());
            return h.get(*y);
        })
        .def("layer_norm", [](Harness& h, const F32& x, const F32& w, const F32& b, float eps) {
            auto xb = h.put(x);
            if (w.size() != xb->tensor().cols || b.size() != xb->tensor().cols) throw py::value_error("norm weight/bias size mismatch");
            auto y = h.poisoned(DType::F32, xb->tensor().rows, xb->tensor().cols);
            h.be->layer_norm(xb->tensor(), w.data(), b.data(), eps, y->tensor());
            return h.get(*y);
        })
        .def("gelu", [](Harness& h, const F32& x) {
            auto xb = h.put(x);
            auto y = h.poisoned(DType::F32, xb->tensor().rows, xb->tensor().cols);
            h.be->gelu(xb->tensor(), y->tensor());
            return h.get(*y);
        })
        .def("rope", [](Harness& h, const F32& x, int64_t n_heads, int64_t head_dim, const I32& pos, float base, bool neox) {
            auto xb = h.put(x);
            if (pos.size() != xb->tensor().rows) throw py::value_error("one position per row");
            h.be->rope(xb->tensor(), n_heads, head_dim, pos.data(), base, neox ? RopeMode::Neox : RopeMode::Norm);
            return h.get(*xb);
        })
        .def("add", [](Harness& h, const F32& x, const F32& y) {
            auto xb = h.put(x), yb = h.put(y);
            h.be->add(xb->tensor(), yb->tensor());
            return h.get(*xb);
        })
        .def("swiglu", [](Harness& h, const F32& g, const F32& u) {
            auto gb = h.put(g), ub = h.put(u);
            auto out = h.poisoned(DType::F32, gb->tensor().rows, gb->tensor().cols);
            h.be->swiglu(gb->tensor(), ub->tensor(), out->tensor());
            return h.get(*out);
        })
        .def("split_kv", [](Harness& h, const F32& kv, int64_t n_head_kv, int64_t head_dim) {
            auto kvb = h.put(kv);
            auto k = h.poisoned(DType::F32, kvb->tensor().rows, n_head_kv * head_dim);
            auto v = h.poisoned(DType::F32, kvb->tensor().rows, n_head_kv * head_dim);
            h.be->split_kv(kvb->tensor(), n_head_kv, head_dim, k->tensor(), v->tensor());
            return py::make_tuple(h.get(*k), h.get(*v));
        })
        .def("gate_mix", [](Harness& h, const F32& x, const F32& y, const F32& gate, py::object mask) {
            auto xb = h.put(x), yb = h.put(y), gb = h.put(gate);
            I64 mk;
            if (!mask.is_none()) {
                mk = mask.cast<I64>();
                if (mk.size() != xb->tensor().rows) throw py::value_error("one mask entry per row");
            }
            h.be->gate_mix(xb->tensor(), yb->tensor(), gb->tensor(), mask.is_none() ? nullptr : mk.data());
            return h.get(*xb);
        }, py::arg("x"), py::arg("y"), py::arg("gate"), py::arg("mask") = py::none())
        .def("top_k", [](Harness& h, const F32& x, int64_t k) {  // x: one row; -> [(value, index), ...]
            if (x.ndim() != 1) throw py::value_error("top_k takes one row");
            auto xb = h.put(x);
            std::vector<std::pair<float, int32_t>> out;
            h.be->top_k(xb->tensor(), k, out);
            return out;
        })
        .def("copy", [](Harness& h, const F32& x) {
            auto xb = h.put(x);
            auto out = h.poisoned(DType::F32, xb->tensor().rows, xb->tensor().cols);
            h.be->copy(xb->tensor(), out->tensor());
            return h.get(*out);
        })
        .def("kv_store", [](Harness& h, const F32& src, int64_t n_head_kv, int64_t head_dim, int64_t ctx, int64_t pos0,
                            const std::string& type) {
            // The returned cache [n_head_kv * ctx][head_dim] starts poisoned: only the stored rows may change.
            auto sb = h.put(src);
            auto cache = h.poisoned(type == "f16" ? DType::F16 : DType::F32, n_head_kv * ctx, head_dim);
            h.be->kv_store(sb->tensor(), n_head_kv, head_dim, cache->tensor(), ctx, pos0);
            return h.get(*cache);
        })
        .def("attention", [](Harness& h, const F32& q, const F32& k, const F32& v, int64_t n_past, int64_t n_head,
                             int64_t n_head_kv, int64_t head_dim, int64_t ctx, float scale, py::object prefix_k,
                             py::object prefix_v, py::object visible, bool text, const std::string& kv_type) {
            // q [T][n_head * head_dim]; k, v: caches [n_head_kv * ctx][head_dim] given as float32, stored as kv_type
            // (an F16 cache holds them rounded to nearest even, as kv_store would).
            if (kv_type != "f32" && kv_type != "f16") throw py::value_error("kv_type must be 'f32' or 'f16'");
            auto qb = h.put(q), kb = h.put(k, kv_type == "f16"), vb = h.put(v, kv_type == "f16");
            ops::AttentionShape s;
            s.T = qb->tensor().rows;
            s.n_past = n_past;
            s.n_head = n_head;
            s.n_head_kv = n_head_kv;
            s.head_dim = head_dim;
            s.ctx_stride = ctx;
            s.scale = scale;
            if (qb->tensor().cols != n_head * head_dim || kb->tensor().rows != n_head_kv * ctx || n_past + s.T > ctx)
                throw py::value_error("attention shapes do not match");
            auto out = h.poisoned(DType::F32, s.T, n_head * head_dim);
            std::unique_ptr<DeviceBuffer> pk, pv;
            I64 vis;
            ops::PrefixKV prefix;
            if (!prefix_k.is_none()) {
                pk = h.put(prefix_k.cast<F32>());
                pv = h.put(prefix_v.cast<F32>());
                vis = visible.cast<I64>();
                if (vis.size() != s.T) throw py::value_error("one visible count per query row");
                for (int64_t t = 0; t < s.T; ++t)
                    if (vis.data()[t] < 0 || vis.data()[t] > pk->tensor().rows) throw py::value_error("visible count out of range");
                prefix = {pk->tensor().f32(), pv->tensor().f32(), vis.data()};
            }
            h.be->attention(s, qb->tensor(), kb->tensor(), vb->tensor(), out->tensor(), prefix_k.is_none() ? nullptr : &prefix, text);
            return h.get(*out);
        }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("n_past"), py::arg("n_head"), py::arg("n_head_kv"),
           py::arg("head_dim"), py::arg("ctx"), py::arg("scale"), py::arg("prefix_k") = py::none(),
           py::arg("prefix_v") = py::none(), py::arg("visible") = py::none(), py::arg("text") = true,
           py::arg("kv_type") = "f32");
}

}  // namespace owl::testing
