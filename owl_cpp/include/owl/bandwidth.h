// Memory read bandwidth of this machine, for the decode roofline (decode streams every weight once per token).
#pragma once
#include <cstddef>

#include "owl/threadpool.h"

namespace owl {

// Best-of-`reps` GB/s (1e9 bytes/s) of reading a `bytes`-sized buffer with the pool's threads.
double measure_read_bandwidth(ThreadPool& pool, size_t bytes, int reps);

}  // namespace owl
