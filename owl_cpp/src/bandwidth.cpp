#include "owl/bandwidth.h"

#include <chrono>
#include <cstdint>
#include <vector>

namespace owl {

double measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps) {
    const size_t n = bytes / sizeof(uint64_t);
    std::vector<uint64_t> buf(n);
    for (size_t i = 0; i < n; ++i) buf[i] = i;  // touch every page before timing
    std::vector<uint64_t> sums(size_t(pool.size()) * 8);
    double best = 0.0;
    for (int r = 0; r < reps; ++r) {
        const auto t0 = std::chrono::steady_clock::now();
        pool.parallel_for(int64_t(n), [&](int64_t b, int64_t e, int thread) {
            uint64_t acc[4] = {0, 0, 0, 0};  // integer sums: the compiler may vectorise freely
            int64_t i = b;
            for (; i + 4 <= e; i += 4)
                for (int j = 0; j < 4; ++j) acc[j] += buf[size_t(i + j)];
            for (; i < e; ++i) acc[0] += buf[size_t(i)];
            sums[size_t(thread) * 8] += acc[0] + acc[1] + acc[2] + acc[3];  // keep the loads alive
        }, 1);  // one chunk per thread: every thread streams its own contiguous share at once
        const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        if (s > 0 && double(n * sizeof(uint64_t)) / s / 1e9 > best) best = double(n * sizeof(uint64_t)) / s / 1e9;
    }
    volatile uint64_t sink = 0;
    for (uint64_t v : sums) sink = sink + v;
    return best;
}

}  // namespace owl
