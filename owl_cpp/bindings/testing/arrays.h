// What the test bindings share: numpy argument types (C order, converted on the way in) and weight matrices
// checked against their shape and storage type.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "owl/ops.h"

namespace owl::testing {

using F32 = pybind11::array_t<float, pybind11::array::c_style | pybind11::array::forcecast>;
using I32 = pybind11::array_t<int32_t, pybind11::array::c_style | pybind11::array::forcecast>;
using I64 = pybind11::array_t<int64_t, pybind11::array::c_style | pybind11::array::forcecast>;
using U8 = pybind11::array_t<uint8_t, pybind11::array::c_style | pybind11::array::forcecast>;

// A [rows][cols] matrix of ggml type `dtype` over `data`; ValueError unless the bytes fit the shape exactly.
inline WeightView weight(const U8& data, int dtype, int64_t rows, int64_t cols) {
    if (!dtype_supported(uint32_t(dtype))) throw pybind11::value_error("unsupported dtype " + std::to_string(dtype));
    WeightView w{DType(dtype), rows, cols, data.data()};
    if (rows < 1 || cols < 1 || cols % dtype_block_elems(w.type) != 0) throw pybind11::value_error("bad matrix shape");
    int64_t bytes = 0;  // overflow-checked: rows and cols come from the caller
    if (__builtin_mul_overflow(rows, w.row_bytes(), &bytes) || int64_t(data.size()) != bytes)
        throw pybind11::value_error("weight buffer has the wrong size for its shape and type");
    return w;
}

}  // namespace owl::testing
