// A persistent pool: a decode step runs hundreds of small kernels, so workers stay alive between them.
//
// parallel_for splits [0, n) into a few contiguous chunks per thread, and whichever thread is free claims the
// next one from a shared atomic counter, the calling thread included. The caller waits only for chunks already
// claimed and running: on a busy machine, a worker the OS has descheduled simply takes no part in that op
// instead of stalling it (with one fixed chunk per thread, every op waited for the slowest thread to be
// scheduled again). Idle workers spin briefly for the next job, then yield, then sleep on a condition variable.
// A worker preempted in the middle of a chunk still holds the caller up; when such a stall happens, the caller
// runs the next few ops alone (see the back-off in threadpool.cpp).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace owl {

class ThreadPool {
public:
    // Chunks per thread of a default parallel_for: enough that a late or preempted thread costs the others at
    // most a fraction of an op, few enough that claiming them (one atomic add each) stays negligible.
    static constexpr int kChunksPerThread = 4;

    // Throws what creating a thread throws (std::system_error), after stopping the threads already created.
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Calls fn(begin, end, thread) on contiguous chunks that cover [0, n) exactly once: at most
    // min(n, chunks_per_thread * size()) chunks, each of at least one item, of near-equal sizes. `thread` is the
    // index in [0, size()) of the thread running the chunk (0: the caller); a thread may run several chunks, one
    // after another, and a thread may run none. Which chunk runs where varies from call to call.
    // Returns when every chunk is done. If fn throws, the chunks not started yet are skipped and the first
    // exception is rethrown here. Throws owl::Error if the pool is already running a parallel_for (called from
    // another thread at the same time, or from inside fn): one parallel_for at a time per pool.
    using RangeFn = std::function<void(int64_t begin, int64_t end, int thread)>;
    void parallel_for(int64_t n, const RangeFn& fn, int chunks_per_thread = kChunksPerThread);

    static int default_threads();  // physical cores when known, else hardware threads

private:
    void worker_loop(int index);
    bool wait_for_job(uint64_t& seen_job);  // false: stop
    int64_t run_chunks(int thread, uint64_t* last_job);
    void shutdown() noexcept;

    int n_threads_;
    std::vector<std::thread> workers_;

    // The job word: [job id | chunk count | next chunk to claim]. Claiming is one fetch_add on it; the id and
    // count come back with the index, so a thread that arrives late cannot mix up two jobs.
    alignas(64) std::atomic<uint64_t> state_{0};
    // Chunks finished by the workers in the current job (each adds its count once, when it finds none left).
    alignas(64) std::atomic<int64_t> done_{0};
    // The current job; written by the caller before it publishes state_, read after a successful claim.
    alignas(64) const RangeFn* fn_ = nullptr;
    int64_t n_ = 0;
    uint64_t job_ = 0;
    std::atomic<bool> failed_{false};  // skip the remaining chunks
    std::exception_ptr error_;         // the first exception of the job, under error_mu_
    std::mutex error_mu_;

    // Stall back-off (threadpool.cpp), touched by the caller only.
    int64_t solo_ = 0;            // length of the last solo stretch, in ops
    int64_t solo_left_ = 0;       // ops the caller still runs alone
    int64_t ops_since_solo_ = 0;  // parallel ops since the last solo stretch began

    alignas(64) std::atomic<bool> busy_{false};  // a parallel_for is running
    std::atomic<bool> stop_{false};
    std::atomic<int> sleepers_{0};  // workers on cv_ (or about to be): the caller notifies only then
    std::mutex mu_;
    std::condition_variable cv_;
};

}  // namespace owl
