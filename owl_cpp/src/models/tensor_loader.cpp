#include "tensor_loader.h"

#include "owl/error.h"
#include "unicode.h"

namespace owl {

void TensorLoader::fail(const std::string& what) const { throw FormatError("model '" + f_.path() + "': " + what); }

const GGUFTensorInfo& TensorLoader::tensor(const std::string& name, int n_dims_expected, int64_t ne0, int64_t ne1) {
    const GGUFTensorInfo* t = f_.find_tensor(name);
    if (!t) fail("tensor '" + name + "' is missing");
    used_.insert(name);
    int n_dims = t->n_dims;
    while (n_dims > 1 && t->ne[n_dims - 1] == 1) --n_dims;  // trailing 1-sized dims carry no meaning
    const bool ok = n_dims == n_dims_expected && t->ne[0] == ne0 && (n_dims_expected == 1 || t->ne[1] == ne1);
    if (!ok) {
        std::string got = "[";
        for (int d = 0; d < t->n_dims; ++d) got += (d ? ", " : "") + std::to_string(t->ne[d]);
        const std::string want = n_dims_expected == 1 ? "[" + std::to_string(ne0) + "]"
                                                      : "[" + std::to_string(ne0) + ", " + std::to_string(ne1) + "]";
        fail("tensor '" + name + "' has shape " + got + "], expected " + want + " (ggml order)");
    }
    return *t;
}

WeightView TensorLoader::matrix(const std::string& name, int64_t cols, int64_t rows) {
    const auto& t = tensor(name, 2, cols, rows);
    return WeightView{t.type, rows, cols, t.data};
}

std::vector<float> TensorLoader::vec(const std::string& name, int64_t n) {
    const auto& t = tensor(name, 1, n, 1);
    std::vector<float> out(static_cast<size_t>(n));
    ops::dequantize_row(t.type, t.data, out.data(), n);
    return out;
}

int64_t TensorLoader::positive(const std::string& key) const {
    const uint64_t v = f_.get_uint(key);
    if (v == 0 || v > (uint64_t(1) << 31)) fail("key '" + key + "' has an implausible value " + std::to_string(v));
    return int64_t(v);
}

void TensorLoader::reject_unused() const {
    std::vector<std::string> unknown;
    for (const auto& t : f_.tensors())
        if (!used_.count(t.name)) unknown.push_back(t.name);
    if (unknown.empty()) return;
    std::string names;
    for (size_t i = 0; i < unknown.size() && i < 5; ++i) names += (i ? ", '" : "'") + unknown[i] + "'";
    if (unknown.size() > 5) names += " and " + std::to_string(unknown.size() - 5) + " more";
    fail(std::to_string(unknown.size()) + " tensor(s) that architecture '" + unicode::sanitize_utf8(f_.get_string("general.architecture")) +
         "' does not use: " + names);
}

}  // namespace owl
