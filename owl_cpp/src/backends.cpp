// Backend-independent parts: tensor views, the list of backends this build and machine have, and the factory.
#include <string>
#include <vector>

#include "owl/backend.h"
#include "owl/error.h"
#include "owl/sampler.h"
#ifdef OWL_HAVE_CUDA
#include "cuda/cuda_backend.cuh"
#endif

namespace owl {

const char* device_name(Device d) { return d == Device::CPU ? "cpu" : "cuda"; }

Tensor Tensor::slice(int64_t r0, int64_t n) const {
    if (r0 < 0 || n < 0 || r0 + n > rows) throw Error("tensor slice [" + std::to_string(r0) + ", +" + std::to_string(n) + ") outside " + std::to_string(rows) + " rows");
    Tensor t = *this;
    t.data = static_cast<uint8_t*>(data) + size_t(r0) * size_t(dtype_row_bytes(type, cols));
    t.rows = n;
    return t;
}

Tensor Tensor::reshape(int64_t rows2, int64_t cols2) const {
    if (rows2 < 0 || cols2 <= 0 || rows2 * cols2 != rows * cols) throw Error("tensor reshape changes the element count");
    Tensor t = *this;
    t.rows = rows2;
    t.cols = cols2;
    return t;
}

float* Tensor::f32() const {
    if (type != DType::F32) throw Error(std::string("expected an F32 tensor, got ") + dtype_name(type));
    return static_cast<float*>(data);
}

void Backend::matmul_many(const Tensor& x, const Projection* p, int n) {
    for (int i = 0; i < n; ++i) matmul(*p[i].w, x, p[i].bias, p[i].y);
}

void Backend::matmul_swiglu(const WeightView& w_gate, const WeightView& w_up, const Tensor& x, const Tensor& gate,
                            const Tensor& up) {
    matmul(w_gate, x, nullptr, gate);
    matmul(w_up, x, nullptr, up);
    swiglu(gate, up, gate);
}

void Backend::top_k(const Tensor& row, int64_t k, std::vector<std::pair<float, int32_t>>& out) {
    if (row.type != DType::F32 || row.rows != 1) throw Error("top_k: expects one F32 row");
    std::vector<float> host(size_t(row.cols));
    download(row, host.data());
    top_logits(host.data(), row.cols, k, out);
}

CudaInfo cuda_info() {
#ifdef OWL_HAVE_CUDA
    return cuda::info();
#else
    return {};
#endif
}

std::vector<std::string> available_backends() {
    std::vector<std::string> names{"cpu"};
#ifdef OWL_HAVE_CUDA
    if (cuda::device_count() > 0) names.push_back("cuda");
#endif
    return names;
}

std::unique_ptr<Backend> make_backend(const std::string& name, int n_threads) {
    if (name == "cpu") return make_cpu_backend(n_threads);
    if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
#ifdef OWL_HAVE_CUDA
        int index = 0;
        if (name.size() > 5) {
            const std::string digits = name.substr(5);
            if (digits.empty() || digits.size() > 3 || digits.find_first_not_of("0123456789") != std::string::npos)
                throw Error("backend '" + name + "': expected cuda or cuda:N");
            index = std::stoi(digits);
        }
        const int n = cuda::device_count();
        if (n == 0) throw Error("backend 'cuda': no CUDA GPU is visible (no driver, or no device)");
        if (index >= n) throw Error("backend '" + name + "': there are only " + std::to_string(n) + " CUDA devices");
        return cuda::make_backend(index);
#else
        throw Error("backend '" + name + "': this build of owl_cpp has no CUDA backend (rebuild with a CUDA toolkit, OWL_CUDA=ON)");
#endif
    }
    throw Error("unknown backend '" + name + "' (known: cpu, cuda)");
}

}  // namespace owl
