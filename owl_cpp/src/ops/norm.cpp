#include <cmath>

#include "owl/ops.h"

namespace owl::ops {

namespace {
void rms_norm_rows(const float* x, const float* w, int64_t t0, int64_t t1, int64_t n, float eps, float* y) {
    for (int64_t t = t0; t < t1; ++t) {
        const float* xr = x + t * n;
        float* yr = y + t * n;
        double ss = 0.0;
        for (int64_t i = 0; i < n; ++i) ss += double(xr[i]) * xr[i];
        const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
        for (int64_t i = 0; i < n; ++i) yr[i] = xr[i] * inv * w[i];
    }
}
}  // namespace

void rms_norm(ThreadPool& pool, const float* x, const float* w, int64_t T, int64_t n, float eps, float* y) {
    pool.parallel_for(T, [&](int64_t t0, int64_t t1, int) { rms_norm_rows(x, w, t0, t1, n, eps, y); });
}

void rms_norm_ref(const float* x, const float* w, int64_t T, int64_t n, float eps, float* y) {
    for (int64_t t = 0; t < T; ++t) {
        double ss = 0.0;
        for (int64_t i = 0; i < n; ++i) ss += double(x[t * n + i]) * double(x[t * n + i]);
        const double inv = 1.0 / std::sqrt(ss / double(n) + double(eps));
        for (int64_t i = 0; i < n; ++i) y[t * n + i] = float(double(x[t * n + i]) * inv * double(w[i]));
    }
}

}  // namespace owl::ops

namespace owl::ops {

namespace {
// Mean and variance in double (two passes): BERT's eps is 1e-12, so the variance must not lose digits.
void layer_norm_rows(const float* x, const float* w, const float* b, int64_t t0, int64_t t1, int64_t n, float eps, float* y) {
    for (int64_t t = t0; t < t1; ++t) {
        const float* xr = x + t * n;
        float* yr = y + t * n;
        double sum = 0.0;
        for (int64_t i = 0; i < n; ++i) sum += xr[i];
        const double mean = sum / double(n);
        double ss = 0.0;
        for (int64_t i = 0; i < n; ++i) ss += (xr[i] - mean) * (xr[i] - mean);
        const float inv = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
        const float mu = float(mean);
        for (int64_t i = 0; i < n; ++i) yr[i] = (xr[i] - mu) * inv * w[i] + b[i];
    }
}
}  // namespace

void layer_norm(ThreadPool& pool, const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y) {
    pool.parallel_for(T, [&](int64_t t0, int64_t t1, int) { layer_norm_rows(x, w, b, t0, t1, n, eps, y); });
}

void layer_norm_ref(const float* x, const float* w, const float* b, int64_t T, int64_t n, float eps, float* y) {
    for (int64_t t = 0; t < T; ++t) {
        double mean = 0.0, var = 0.0;
        for (int64_t i = 0; i < n; ++i) mean += double(x[t * n + i]);
        mean /= double(n);
        for (int64_t i = 0; i < n; ++i) var += (double(x[t * n + i]) - mean) * (double(x[t * n + i]) - mean);
        const double inv = 1.0 / std::sqrt(var / double(n) + double(eps));
        for (int64_t i = 0; i < n; ++i) y[t * n + i] = float((double(x[t * n + i]) - mean) * inv * double(w[i]) + double(b[i]));
    }
}

}  // namespace owl::ops
