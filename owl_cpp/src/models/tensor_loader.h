// Reads a model's tensors from a GGUF by llama.cpp's names, checking type and shape, and remembers which ones
// were used, so that a file with tensors no architecture knows is rejected with their names.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "owl/gguf.h"
#include "owl/ops.h"

namespace owl {

class TensorLoader {
public:
    explicit TensorLoader(const GGUFFile& f) : f_(f) {}
    const GGUFFile& file() const { return f_; }
    [[noreturn]] void fail(const std::string& what) const;

    bool has(const std::string& name) const { return f_.find_tensor(name) != nullptr; }
    // A [rows][cols] matrix (ggml order [cols, rows]) of any supported type.
    WeightView matrix(const std::string& name, int64_t cols, int64_t rows);
    // A vector of n elements, converted to float.
    std::vector<float> vec(const std::string& name, int64_t n);
    // A key that must hold an integer in [1, 2^31].
    int64_t positive(const std::string& key) const;
    // Throws naming the tensors of the file that nothing loaded.
    void reject_unused() const;

private:
    const GGUFTensorInfo& tensor(const std::string& name, int n_dims_expected, int64_t ne0, int64_t ne1);
    const GGUFFile& f_;
    std::set<std::string> used_;
};

}  // namespace owl
