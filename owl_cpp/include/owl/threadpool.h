// A persistent pool: a decode step runs hundreds of small kernels, so workers stay alive between them.
//
// parallel_for splits [0, n) into a few contiguous chunks per thread, and whichever thread is free claims the
// next one from a shared atomic counter, the calling thread included. The caller waits only for chunks already
// claimed and running: on a busy machine, a worker the OS has descheduled simply takes no part in that op
// instead of stalling it (with one fixed chunk per thread, every op waited for the slowest thread to be
// scheduled again). Idle workers spin briefly for the next job, then yield, then sleep on a condition variable.
//
// Contention back-off: when the machine has fewer free cores than the pool has threads, extra threads cost the
// caller (which drives the model, op after op) more than they save: a worker preempted inside a chunk holds it
// up for a scheduler time slice, and runnable workers take the caller's share of a core. So when the caller is
// itself preempted often, or spends much of its time waiting on such workers, one worker at a time is benched
// (sleeps, takes no chunks) and let back in later, after a pause that doubles while it keeps failing. See
// threadpool.cpp.
#pragma once
#include <atomic>
#include <chrono>
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
    // Chunks per thread of a default parallel_for: enough that a thread arriving late leaves its share to the
    // others, few enough that claiming them stays negligible on small ops (4 cost decode ~1-2% on an idle
    // 2-core machine against 2, measured with bench/bench_contention.py).
    static constexpr int kChunksPerThread = 2;

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
    bool wait_for_job(int index, uint64_t& seen_job);  // false: stop
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

    // Contention back-off (threadpool.cpp). active_: threads taking part, 1..size(); workers with an index at
    // or past it are benched. The rest is touched by the caller only.
    using Clock = std::chrono::steady_clock;
    void adapt(Clock::time_point now);
    void bench_one(Clock::time_point now);
    std::atomic<int> active_{1};
    Clock::duration pause_{0};      // how long the last benched worker stays out
    Clock::time_point readmit_at_;  // when one more worker is let back in
    Clock::time_point readmitted_;  // when the last one was
    bool window_open_ = false;      // a window of observation (see threadpool.cpp) is running
    Clock::time_point window_;      // since when
    long window_preempted_ = -1;    // the caller's involuntary context switches then (-1: unknown)
    std::thread::id window_thread_;  // the caller then
    Clock::duration window_stalled_{0};  // the caller's waits on preempted workers in it

    alignas(64) std::atomic<bool> busy_{false};  // a parallel_for is running
    std::atomic<bool> stop_{false};
    std::atomic<int> sleepers_{0};  // workers on cv_ waiting for a job (not benched): the caller notifies only then
    std::atomic<bool> caller_waiting_{false};  // the caller is on done_cv_ (or about to be)
    std::mutex mu_;
    std::condition_variable cv_;       // workers wait here for a job
    std::condition_variable done_cv_;  // the caller waits here for the chunks of others
};

}  // namespace owl
