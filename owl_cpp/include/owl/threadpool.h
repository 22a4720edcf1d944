// A persistent pool: a decode step runs hundreds of small kernels, so workers stay alive, spin briefly
// for the next job and only then sleep. The calling thread takes part as worker 0.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace owl {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(begin, end, thread) on contiguous chunks covering [0, n); chunk k goes to thread k.
    // Returns when all chunks are done. Not re-entrant.
    using RangeFn = std::function<void(int64_t begin, int64_t end, int thread)>;
    void parallel_for(int64_t n, const RangeFn& fn);

    static int default_threads();  // physical cores when known, else hardware threads

private:
    void worker_loop(int index);
    void run_chunk(int index);

    int n_threads_;
    std::vector<std::thread> workers_;
    std::mutex mu_;
    std::condition_variable cv_;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    const RangeFn* fn_ = nullptr;
    int64_t n_ = 0;
    std::atomic<bool> stop_{false};  // read by workers without the lock
};

}  // namespace owl
