#include "owl/threadpool.h"

#include <algorithm>
#include <chrono>
#include <fstream>
#include <set>
#include <string>

#include "owl/error.h"

#if defined(__linux__)
#include <sys/resource.h>
#endif

namespace owl {

namespace {

// state_ layout: job id (16 bits, wraps; only compared for change) | chunk count (24) | next chunk (24).
// The next-chunk field may run past the count by one failed claim per thread per job, so both stay below 2^23.
constexpr int kFieldBits = 24;
constexpr uint64_t kFieldMask = (uint64_t(1) << kFieldBits) - 1;
constexpr uint64_t kJobMask = 0xffff;
constexpr int64_t kMaxChunks = int64_t(1) << 22;
constexpr int kMaxThreads = 1 << 22;

inline uint64_t job_of(uint64_t s) { return s >> (2 * kFieldBits); }
inline uint64_t chunks_of(uint64_t s) { return (s >> kFieldBits) & kFieldMask; }
inline uint64_t next_of(uint64_t s) { return s & kFieldMask; }

// Busy-wait budgets. A worker spins (pause) for the next kernel of a decode step, which usually follows within
// microseconds; then it yields, so other processes of a busy machine get the core; then it sleeps, so an idle
// model costs no CPU. The caller spins for the last chunks of others, then yields, then sleeps: a core left idle
// lets the scheduler move a preempted worker onto it to finish its chunk.
constexpr int kWorkerSpins = 4000;  // roughly 50-100 us of pause instructions
constexpr auto kWorkerYieldFor = std::chrono::milliseconds(2);
constexpr int kCallerSpins = 2000;
constexpr auto kCallerYieldFor = std::chrono::microseconds(100);

// Contention back-off, judged over windows of kWindow while workers take part. The caller benches one worker
// when, within a window, it was preempted at least kPreemptMin times and kPreemptRate times a second (it shares
// its core: a runnable worker takes its turn on it, or keeps it from moving to a free one), or it spent more
// than kStallShare of the window waiting for chunks of workers preempted inside them (each wait longer than
// kStallMin and kStallChunks of its own chunks). The worker stays out for pause_: kMinPause, doubled (up to
// kMaxPause) when it happens again within kRecent (or pause_) of letting one back in. An idle machine sees a
// preemption or a stall of a few ms once in a while, far from either threshold.
constexpr auto kWindow = std::chrono::milliseconds(40);
constexpr long kPreemptMin = 3;
constexpr double kPreemptRate = 50.0;
constexpr auto kStallMin = std::chrono::microseconds(250);
constexpr int kStallChunks = 4;
constexpr auto kStallShare = kWindow * 2 / 5;
constexpr auto kMinPause = std::chrono::milliseconds(20);
constexpr auto kMaxPause = std::chrono::seconds(2);
constexpr auto kRecent = std::chrono::milliseconds(250);

// Involuntary context switches of the calling thread so far, or -1 where the system does not say.
long preemptions_of_this_thread() {
#if defined(__linux__) && defined(RUSAGE_THREAD)
    rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0) return ru.ru_nivcsw;
#endif
    return -1;
}

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

}  // namespace

ThreadPool::ThreadPool(int n_threads) : n_threads_(std::clamp(n_threads, 1, kMaxThreads)), active_(n_threads_) {
    try {
        workers_.reserve(size_t(n_threads_ - 1));
        for (int i = 1; i < n_threads_; ++i) workers_.emplace_back([this, i] { worker_loop(i); });
    } catch (...) {
        shutdown();  // a destructor will not run: stop and join the threads that did start
        throw;
    }
}

ThreadPool::~ThreadPool() { shutdown(); }

void ThreadPool::shutdown() noexcept {
    {
        std::lock_guard<std::mutex> lock(mu_);  // with the sleepers' predicate check, so no wake-up is lost
        stop_.store(true, std::memory_order_seq_cst);
        job_ = (job_ + 1) & kJobMask;
        state_.store(job_ << (2 * kFieldBits), std::memory_order_seq_cst);  // a job of no chunks: wakes the spinners
    }
    cv_.notify_all();
    for (auto& t : workers_)
        if (t.joinable()) t.join();
    workers_.clear();
}

// Chunk c of `chunks` near-equal contiguous pieces of [0, n).
static inline void chunk_bounds(int64_t n, int64_t chunks, int64_t c, int64_t& begin, int64_t& end) {
    const int64_t q = n / chunks, r = n % chunks;
    begin = c * q + std::min(c, r);
    end = begin + q + (c < r ? 1 : 0);
}

// Claims and runs chunks of the current job until none is left; returns how many it claimed.
int64_t ThreadPool::run_chunks(int thread, uint64_t* last_job) {
    int64_t ran = 0;
    for (;;) {
        // seq_cst like every other access to state_: a worker checking it before sleeping must see the newest job.
        const uint64_t s = state_.fetch_add(1, std::memory_order_seq_cst);
        if (last_job) *last_job = job_of(s);
        const uint64_t chunks = chunks_of(s), c = next_of(s);
        if (c >= chunks) return ran;
        // A valid claim: the job cannot finish (nor fn_/n_ change) until this chunk is counted.
        ++ran;
        if (failed_.load(std::memory_order_relaxed)) continue;  // skip the rest once a chunk has thrown
        int64_t begin, end;
        chunk_bounds(n_, int64_t(chunks), int64_t(c), begin, end);
        try {
            (*fn_)(begin, end, thread);
        } catch (...) {
            std::lock_guard<std::mutex> lock(error_mu_);
            if (!error_) error_ = std::current_exception();
            failed_.store(true, std::memory_order_relaxed);
        }
    }
}

void ThreadPool::parallel_for(int64_t n, const RangeFn& fn, int chunks_per_thread) {
    if (n <= 0) return;
    if (busy_.exchange(true, std::memory_order_acquire))
        throw Error("thread pool is in use by another thread (or parallel_for was called from inside its own fn): "
                    "a pool runs one parallel_for at a time");
    struct Release {
        std::atomic<bool>& busy;
        ~Release() { busy.store(false, std::memory_order_release); }
    } release{busy_};

    const int64_t chunks = std::min({n, int64_t(std::max(chunks_per_thread, 1)) * n_threads_, kMaxChunks});
    if (n_threads_ == 1 || chunks == 1) {
        fn(0, n, 0);
        return;
    }
    adapt(Clock::now());
    if (active_.load(std::memory_order_relaxed) == 1) {  // every worker benched: the same chunks, on the caller
        for (int64_t c = 0; c < chunks; ++c) {
            int64_t begin, end;
            chunk_bounds(n, chunks, c, begin, end);
            fn(begin, end, 0);
        }
        return;
    }
    fn_ = &fn;
    n_ = n;
    done_.store(0, std::memory_order_relaxed);
    failed_.store(false, std::memory_order_relaxed);
    job_ = (job_ + 1) & kJobMask;
    state_.store(job_ << (2 * kFieldBits) | uint64_t(chunks) << kFieldBits, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
        { std::lock_guard<std::mutex> lock(mu_); }  // a sleeper between its check and its wait gets the notify
        cv_.notify_all();
    }

    const auto start = Clock::now();
    const int64_t mine = run_chunks(0, nullptr), others = chunks - mine;
    // Every chunk is claimed now: wait only for those still running on other threads. Workers that claimed
    // nothing (descheduled, asleep, late) are not waited for.
    for (int spin = 0; done_.load(std::memory_order_acquire) != others && spin < kCallerSpins; ++spin) cpu_relax();
    if (done_.load(std::memory_order_acquire) != others) {
        const auto since = Clock::now();
        auto finished = [&] { return done_.load(std::memory_order_seq_cst) == others; };
        // Yield through waits as long as two of the caller's own chunks (normal on an idle machine), then sleep.
        const auto own_chunk = (since - start) / std::max<int64_t>(mine, 1);
        const auto yield_for = std::max<Clock::duration>(kCallerYieldFor, 2 * own_chunk);
        while (!finished() && Clock::now() - since < yield_for) std::this_thread::yield();
        if (!finished()) {
            std::unique_lock<std::mutex> lock(mu_);
            // Announced before the predicate's check (both seq_cst): a worker adding to done_ afterwards sees it.
            caller_waiting_.store(true, std::memory_order_seq_cst);
            done_cv_.wait(lock, finished);
            caller_waiting_.store(false, std::memory_order_relaxed);
        }
        const auto now = Clock::now();
        const auto waited = now - since;
        if (waited > kStallMin && waited > kStallChunks * own_chunk && (window_stalled_ += waited) > kStallShare)
            bench_one(now);
    }
    fn_ = nullptr;
    if (failed_.load(std::memory_order_relaxed)) {
        std::exception_ptr e;
        {
            std::lock_guard<std::mutex> lock(error_mu_);
            std::swap(e, error_);
        }
        std::rethrow_exception(e);
    }
}

// Before each parallel op: lets a benched worker back in when its pause is over, and counts how often the caller
// was preempted while workers took part.
void ThreadPool::adapt(Clock::time_point now) {
    const int active = active_.load(std::memory_order_relaxed);
    if (active < n_threads_ && now >= readmit_at_) {
        active_.store(active + 1, std::memory_order_seq_cst);
        readmitted_ = now;
        readmit_at_ = now + pause_;  // the next one, if any, after the same pause
        { std::lock_guard<std::mutex> lock(mu_); }  // a benched worker checks active_ under mu_
        cv_.notify_all();
        window_open_ = false;
    }
    if (active_.load(std::memory_order_relaxed) == 1) return;
    if (!window_open_ || window_thread_ != std::this_thread::get_id()) {
        window_open_ = true;
        window_ = now;
        window_preempted_ = preemptions_of_this_thread();
        window_thread_ = std::this_thread::get_id();
        window_stalled_ = Clock::duration(0);
        return;
    }
    if (now - window_ < kWindow) return;
    window_open_ = false;  // a new window from the next op
    if (window_preempted_ < 0) return;  // no count on this system
    const long preempted = preemptions_of_this_thread() - window_preempted_;
    const double seconds = std::chrono::duration<double>(now - window_).count();
    if (preempted >= kPreemptMin && preempted > kPreemptRate * seconds) bench_one(now);
}

void ThreadPool::bench_one(Clock::time_point now) {
    const int active = active_.load(std::memory_order_relaxed);
    if (active <= 1) return;
    active_.store(active - 1, std::memory_order_seq_cst);
    const bool again = now - readmitted_ < std::max<Clock::duration>(pause_, kRecent);
    pause_ = again ? std::min<Clock::duration>(2 * pause_, kMaxPause) : Clock::duration(kMinPause);
    readmit_at_ = now + pause_;
    window_open_ = false;
}

bool ThreadPool::wait_for_job(int index, uint64_t& seen) {
    auto benched = [&] { return index >= active_.load(std::memory_order_seq_cst); };
    auto ready = [&] {
        return (job_of(state_.load(std::memory_order_seq_cst)) != seen && !benched()) ||
               stop_.load(std::memory_order_acquire);
    };
    for (int spin = 0; spin < kWorkerSpins && !benched(); ++spin) {
        if (ready()) return !stop_.load(std::memory_order_acquire);
        cpu_relax();
    }
    const auto deadline = Clock::now() + kWorkerYieldFor;
    while (!benched() && Clock::now() < deadline) {
        if (ready()) return !stop_.load(std::memory_order_acquire);
        std::this_thread::yield();
    }
    std::unique_lock<std::mutex> lock(mu_);
    while (!ready()) {
        if (benched()) {  // the caller notifies under mu_ when it lets workers back in
            cv_.wait(lock);
            continue;
        }
        // Announced before the last check (both seq_cst): either the caller sees a sleeper and notifies under
        // mu_, or this check sees its job.
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (!ready()) cv_.wait(lock);
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
    return !stop_.load(std::memory_order_acquire);
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;  // the job id state_ starts with
    while (wait_for_job(index, seen)) {
        const int64_t ran = run_chunks(index, &seen);
        if (!ran) continue;
        done_.fetch_add(ran, std::memory_order_seq_cst);
        if (caller_waiting_.load(std::memory_order_seq_cst)) {
            { std::lock_guard<std::mutex> lock(mu_); }  // the caller is in its wait, or has not checked done_ yet
            done_cv_.notify_one();
        }
    }
}

int ThreadPool::default_threads() {
    // Count distinct (physical id, core id) pairs: hyper-threads do not speed up memory-bound decode.
    std::ifstream in("/proc/cpuinfo");
    std::set<std::pair<std::string, std::string>> cores;
    std::string line, phys = "0";
    while (std::getline(in, line)) {
        auto value = [&] { auto p = line.find(':'); return p == std::string::npos ? std::string() : line.substr(p + 1); };
        if (line.rfind("physical id", 0) == 0) phys = value();
        if (line.rfind("core id", 0) == 0) cores.emplace(phys, value());
    }
    if (!cores.empty()) return int(cores.size());
    const unsigned hw = std::thread::hardware_concurrency();
    return hw ? int(hw) : 1;
}

}  // namespace owl
