#include <cmath>

#include "owl/ops.h"

namespace owl::ops {

void softmax(float* x, int64_t n) {
    float m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    float sum = 0.0f;
    for (int64_t i = 0; i < n; ++i) {
        x[i] = std::exp(x[i] - m);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int64_t i = 0; i < n; ++i) x[i] *= inv;
}

void softmax_ref(float* x, int64_t n) {
    double m = x[0];
    for (int64_t i = 1; i < n; ++i) m = x[i] > m ? x[i] : m;
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) sum += std::exp(double(x[i]) - m);
    for (int64_t i = 0; i < n; ++i) x[i] = float(std::exp(double(x[i]) - m) / sum);
}

}  // namespace owl::ops
