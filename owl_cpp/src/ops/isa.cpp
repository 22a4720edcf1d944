// Which matmul kernel variant runs: the best one this build has and this CPU supports, unless OWL_CPU_ISA or
// ops::set_isa() names another. Variants, from least to most preferred:
//   generic      plain C++ (any CPU)
//   avx2         AVX2 + FMA + F16C (Haswell, Zen 1 and later)
//   avx2_vnni    the above + AVX-VNNI (Alder Lake, Zen 5)
//   avx512       AVX-512 F/BW/DQ/VL + the avx2 set (Skylake-SP)
//   avx512_vnni  the above + AVX512-VNNI (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4)
//   neon         AArch64 Advanced SIMD
// Names are exact: OWL_CPU_ISA=avx512 runs the avx512 kernels even where avx512_vnni would be picked.
#include <atomic>
#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif
#include <cstdlib>
#include <string>
#include <vector>
#if defined(__linux__) && (defined(__x86_64__) || defined(__i386__))
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "isa.h"
#include "owl/error.h"
#include "owl/ops.h"

namespace owl::ops {
namespace isa {
namespace {

#if defined(__x86_64__) || defined(__i386__)
bool cpu_f16c() {
    // CPUID.(EAX=1):ECX bit 29; asked directly because clang 14's __builtin_cpu_supports does not know "f16c".
    unsigned a = 0, b = 0, c = 0, d = 0;
    return __get_cpuid(1, &a, &b, &c, &d) && ((c >> 29) & 1u);
}
bool cpu_avx2() {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && cpu_f16c();
}
bool cpu_avx2_vnni() {
    // CPUID.(EAX=7, ECX=1):EAX bit 4; asked directly because older compilers' __builtin_cpu_supports lacks it.
    // The OS saves the ymm state (the one VNNI needs) whenever cpu_avx2() is true.
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!cpu_avx2() || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
    return (a >> 4) & 1u;
}
bool cpu_avx512() {
    return cpu_avx2() && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
}
bool cpu_avx512_vnni() { return cpu_avx512() && __builtin_cpu_supports("avx512vnni"); }
#else
bool cpu_avx2() { return false; }
bool cpu_avx2_vnni() { return false; }
bool cpu_avx512() { return false; }
bool cpu_avx512_vnni() { return false; }
#endif
bool cpu_any() { return true; }

#if defined(__linux__) && defined(__x86_64__)
bool cpu_amx() {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!cpu_avx512() || !__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    const bool tile = (d >> 24) & 1u, bf16 = (d >> 22) & 1u;  // CPUID.(7,0):EDX AMX-TILE, AMX-BF16
    if (!tile || !bf16 || !__get_cpuid_count(7, 1, &a, &b, &c, &d) || !((a >> 5) & 1u)) return false;  // AVX512-BF16
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & (3u << 17)) != (3u << 17)) return false;  // XCR0: the OS does not manage the tile state
    // Linux also wants each process to ask before its first tile instruction (else SIGILL).
    constexpr long kReqXcompPerm = 0x1023, kXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXtiledata) == 0;
}
#else
bool cpu_amx() { return false; }
#endif

struct Variant {
    const char* name;
    const Kernels* (*kernels)();  // nullptr result: not compiled into this build
    bool (*cpu)();                // does this CPU have the instructions
    const char* needs;            // for error messages
};

const Variant kVariants[] = {
    {"generic", kernels_generic, cpu_any, ""},
    {"avx2", kernels_avx2, cpu_avx2, "AVX2, FMA and F16C"},
    {"avx2_vnni", kernels_avx2_vnni, cpu_avx2_vnni, "AVX2, FMA, F16C and AVX-VNNI"},
    {"avx512", kernels_avx512, cpu_avx512, "AVX-512 F, BW, DQ and VL"},
    {"avx512_vnni", kernels_avx512_vnni, cpu_avx512_vnni, "AVX-512 F, BW, DQ, VL and VNNI"},
    {"neon", kernels_neon, cpu_any, "AArch64 NEON"},
};

bool usable(const Variant& v) { return v.kernels() != nullptr && v.cpu(); }

std::string join(const std::vector<std::string>& names) {
    std::string s;
    for (const auto& n : names) s += (s.empty() ? "" : ", ") + n;
    return s;
}

std::vector<std::string> all_names() {
    std::vector<std::string> out;
    for (const auto& v : kVariants) out.push_back(v.name);
    return out;
}

const Kernels* best() {
    const Kernels* k = nullptr;
    for (const auto& v : kVariants)
        if (usable(v)) k = v.kernels();
    return k;
}

// The kernels for `name` ("auto" or "" = best), or an owl::Error explaining why not. `what` names the source of
// the request in the message ("OWL_CPU_ISA=avx512", "set_isa(\"avx512\")").
const Kernels* resolve(const std::string& name, const std::string& what) {
    if (name.empty() || name == "auto") return best();
    for (const auto& v : kVariants) {
        if (name != v.name) continue;
        if (v.kernels() == nullptr)
            throw Error(what + ": this build of owl_cpp has no " + name + " kernels (this build can run: " +
                        join(supported_isas()) + ")");
        if (!v.cpu())
            throw Error(what + ": this CPU cannot run the " + name + " kernels (they need " + v.needs +
                        "); supported here: " + join(supported_isas()));
        return v.kernels();
    }
    throw Error(what + ": unknown kernel variant '" + name + "'; expected auto or one of: " + join(all_names()));
}

std::atomic<const Kernels*> g_active{nullptr};

}  // namespace

bool amx_usable() {
    static const bool usable = amx_gemm(DType::F16) != nullptr && cpu_amx();
    return usable;
}

const Kernels& active() {
    const Kernels* k = g_active.load(std::memory_order_acquire);
    if (k) return *k;
    const char* env = std::getenv("OWL_CPU_ISA");
    const std::string name = env ? env : "";
    k = resolve(name, "OWL_CPU_ISA=" + name);  // throws on a bad value, every time it is asked
    const Kernels* expected = nullptr;
    g_active.compare_exchange_strong(expected, k, std::memory_order_acq_rel);  // a concurrent set_isa() wins
    return *g_active.load(std::memory_order_acquire);
}

}  // namespace isa

std::vector<std::string> supported_isas() {
    std::vector<std::string> out;
    for (const auto& v : isa::kVariants)
        if (isa::usable(v)) out.push_back(v.name);
    return out;
}

std::string active_isa() { return isa::active().name; }

void set_isa(const std::string& name) {
    isa::g_active.store(isa::resolve(name, "set_isa(\"" + name + "\")"), std::memory_order_release);
}

}  // namespace owl::ops
