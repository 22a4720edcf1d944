// owl_cpp._testing.measure_read_bandwidth: the memory roofline the benchmarks compare decode speed with.
// owl_cpp._testing.bench: probes of the thread pool for tests/test_threadpool.py.
#include <pthread.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <signal.h>
#include <time.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "testing.h"
#include "owl/bandwidth.h"
#include "owl/error.h"

namespace py = pybind11;

namespace owl::testing {
namespace {

using Chunks = std::vector<std::tuple<int64_t, int64_t, int>>;

void busy_us(double us) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::duration<double, std::micro>(us);
    while (std::chrono::steady_clock::now() < until) {
    }
}

// A pool plus what its tests need: the chunks each call ran, failures on purpose, misuse on purpose.
struct PoolProbe {
    explicit PoolProbe(int threads) : pool(threads) {}

    // Every (begin, end, thread) fn was called with, in completion order; each chunk busy for work_us.
    Chunks chunks(int64_t n, int chunks_per_thread, double work_us) {
        Chunks out;
        std::mutex mu;
        pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
            if (work_us > 0) busy_us(work_us);
            std::lock_guard<std::mutex> lock(mu);
            out.emplace_back(b, e, t);
        }, chunks_per_thread);
        return out;
    }

    // fn throws (an owl::Error, or a std::runtime_error for kind "std") in the chunk holding item `at`
    // (every chunk when at < 0).
    void throw_at(int64_t n, int64_t at, const std::string& kind, double work_us) {
        pool.parallel_for(n, [&](int64_t b, int64_t e, int t) {
            if (work_us > 0) busy_us(work_us);
            if (at < 0 || (b <= at && at < e)) {
                const std::string msg = "chunk [" + std::to_string(b) + ", " + std::to_string(e) + ") failed";
                if (kind == "std") throw std::runtime_error(msg);
                throw Error(msg);
            }
        });
    }

    // fn calls parallel_for on its own pool (must raise, not deadlock).
    void reentrant(int64_t n) {
        pool.parallel_for(n, [&](int64_t, int64_t, int) { pool.parallel_for(4, [](int64_t, int64_t, int) {}); });
    }

    // A second thread calls parallel_for while this one is inside fn; returns the error it got ("" if none).
    std::string concurrent(int64_t n) {
        std::atomic<bool> inside{false}, second_done{false};
        std::string message;
        std::thread second([&] {
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (!inside.load() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
            try {
                pool.parallel_for(n, [](int64_t, int64_t, int) {});
            } catch (const Error& e) {
                message = e.what();
            }
            second_done.store(true);
        });
        std::atomic<bool> first{true};
        pool.parallel_for(n, [&](int64_t, int64_t, int) {
            if (!first.exchange(false)) return;
            inside.store(true);
            const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(10);
            while (!second_done.load() && std::chrono::steady_clock::now() < give_up) std::this_thread::yield();
        });
        second.join();
        return message;
    }

    // Runs parallel_fors until a worker claims a chunk, and makes that chunk sleep for stall_ms (as if the worker
    // were preempted in it). Returns how many calls that took.
    int stall_in_chunk(int64_t n, double stall_ms) {
        for (int call = 1; call <= 20000; ++call) {
            std::atomic<bool> stalled{false};
            pool.parallel_for(n, [&](int64_t, int64_t, int t) {
                busy_us(20);
                if (t != 0 && !stalled.exchange(true))
                    std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(stall_ms));
            });
            if (stalled.load()) return call;
        }
        throw std::runtime_error("no worker ever took a chunk");
    }

    // Stalls worker `victim` in a signal handler while the pool is idle (a thread the OS does not run), then runs
    // `calls` parallel_fors. Returns (every call finished before the stall ended, threads that ran chunks meanwhile).
    // A pool that waited for the stalled worker would only get past it when the handler gives up (after 20 s).
    std::tuple<bool, std::vector<int>> stalled_worker(int victim, int64_t n, int calls) {
        if (victim < 1 || victim >= pool.size()) throw py::value_error("victim must be a worker index");
        // Find the victim's pthread: run chunks until it has taken one.
        std::atomic<bool> found{false};
        pthread_t handle{};
        for (int tries = 0; !found.load() && tries < 20000; ++tries)
            pool.parallel_for(64, [&](int64_t, int64_t, int t) {
                busy_us(20);
                if (t == victim && !found.load()) {
                    handle = pthread_self();
                    found.store(true);
                }
            });
        if (!found.load()) throw std::runtime_error("worker never took a chunk");

        static std::atomic<int> stage{0};  // 1: the victim is in the handler; 2: let it go; 3: it gave up
        stage.store(0);
        struct sigaction sa{}, old{};
        sa.sa_handler = [](int) {
            stage.store(1);
            timespec ms{0, 1000000};
            for (int i = 0; i < 20000 && stage.load() != 2; ++i) nanosleep(&ms, nullptr);
            if (stage.load() != 2) stage.store(3);
        };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR2, &sa, &old);
        pthread_kill(handle, SIGUSR2);
        while (stage.load() == 0) std::this_thread::yield();

        std::vector<int> threads;
        std::mutex mu;
        for (int c = 0; c < calls; ++c)
            pool.parallel_for(n, [&](int64_t, int64_t, int t) {
                busy_us(5);
                std::lock_guard<std::mutex> lock(mu);
                threads.push_back(t);
            });
        const bool in_time = stage.load() == 1;
        stage.store(2);
        // Let the handler return before it is uninstalled.
        pool.parallel_for(64 * int64_t(pool.size()), [](int64_t, int64_t, int) { busy_us(50); });
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
        sigaction(SIGUSR2, &old, nullptr);
        return {in_time, threads};
    }

    ThreadPool pool;
};

}  // namespace

void bind_bench(py::module_& m) {
    m.def("measure_read_bandwidth", [](size_t bytes, int threads, int reps) {
        py::gil_scoped_release release;
        ThreadPool pool(threads);
        return measure_read_bandwidth(pool, bytes, reps);
    }, py::arg("bytes") = size_t(1) << 30, py::arg("threads") = 1, py::arg("reps") = 5,
       "Best-of-reps read bandwidth in GB/s");

    py::module_ b = m.def_submodule("bench", "Probes of runtime internals for tests and benchmarks");
    using G = py::call_guard<py::gil_scoped_release>;
    py::class_<PoolProbe>(b, "PoolProbe", "A ThreadPool with test hooks (tests/test_threadpool.py)")
        .def(py::init<int>(), py::arg("threads"), G())
        .def_property_readonly("size", [](const PoolProbe& p) { return p.pool.size(); })
        .def("chunks", &PoolProbe::chunks, py::arg("n"), py::arg("chunks_per_thread") = ThreadPool::kChunksPerThread,
             py::arg("work_us") = 0.0, G(), "parallel_for: the (begin, end, thread) of every chunk")
        .def("throw_at", &PoolProbe::throw_at, py::arg("n"), py::arg("at"), py::arg("kind") = "owl",
             py::arg("work_us") = 0.0, G(), "parallel_for whose fn throws in the chunk holding item `at`")
        .def("reentrant", &PoolProbe::reentrant, py::arg("n"), G(), "parallel_for whose fn calls parallel_for")
        .def("concurrent", &PoolProbe::concurrent, py::arg("n"), G(),
             "the error a second thread's parallel_for gets while one is running")
        .def("stall_in_chunk", &PoolProbe::stall_in_chunk, py::arg("n"), py::arg("stall_ms"), G(),
             "make the first chunk a worker takes sleep (a preempted worker); returns the calls it took")
        .def("stalled_worker", &PoolProbe::stalled_worker, py::arg("victim"), py::arg("n"), py::arg("calls"), G(),
             "(calls finished while the worker was stalled, threads that ran chunks)");
    b.attr("CHUNKS_PER_THREAD") = ThreadPool::kChunksPerThread;
}
}  // namespace owl::testing
