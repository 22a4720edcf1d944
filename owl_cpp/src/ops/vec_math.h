// Eight-float vectors written with GCC/Clang vector extensions, for kernels that exist once and are compiled by
// each kernel file with its own target flags (AVX2 + FMA, AVX-512, NEON, or baseline SSE2); see isa.h.
#pragma once
#include <cstdint>
#include <cstring>

// 32-byte vectors passed between internal functions of the baseline build: no ABI is involved (internal linkage).
// Not popped: GCC reports it where templates are instantiated, at the end of the including file.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace owl::ops::isa {
namespace {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));  // wrapping arithmetic where lanes may overflow

// Brace-initialised: `v8f{} + x` costs an add per call (0 + x is not x for x = -0).
inline v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }
inline v8f load8(const float* p) { v8f v; std::memcpy(&v, p, sizeof v); return v; }
inline void store8(float* p, v8f v) { std::memcpy(p, &v, sizeof v); }
inline v8f vmax(v8f a, v8f b) { return a > b ? a : b; }
inline float hmax8(v8f v) {
    float m = v[0];
    for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
    return m;
}
inline float hsum8(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }

// 2^x for x <= 0: round-to-nearest split x = n + f, |f| <= 1/2, 2^f by its Taylor polynomial of degree 6
// (relative error < 2e-7), n added to the exponent. x < -126 (including -inf, a masked key) gives exactly 0.
inline v8f exp2_nonpos(v8f x) {
    const v8f lo = splat(-126.0f);
    const v8f xc = x < lo ? lo : x;
    const v8f magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer held in the low bits
    const v8f t = xc + magic;
    const v8f n = t - magic;
    const v8f f = xc - n;
    v8f p = splat(1.5403530393381606e-4f);
    p = p * f + splat(1.3333558146428443e-3f);
    p = p * f + splat(9.6181291076284772e-3f);
    p = p * f + splat(5.5504108664821580e-2f);
    p = p * f + splat(2.4022650695910071e-1f);
    p = p * f + splat(6.9314718055994531e-1f);
    p = p * f + splat(1.0f);
    const v8i e = ((v8i)t - (v8i)magic) << 23;
    const v8f r = (v8f)((v8i)p + e);
    return x < lo ? v8f{} : r;
}

// e^x for any x, within 2 ulp: x = n ln2 + r with n = round(x / ln2) and r computed in two steps (ln2 split into
// a part exact in float times n, plus the rest), e^r by its Taylor polynomial of degree 7 (|r| <= ln2 / 2: error
// < 6e-9), n added to the exponent. Reducing through x * log2(e) instead would cost up to 20 ulp at |x| = 20.
// x is clamped to +-87 (about 2^+-125.5): results past that saturate instead of reaching 0 / inf.
inline v8f exp_v(v8f x) {
    x = x < -87.0f ? splat(-87.0f) : x;
    x = x > 87.0f ? splat(87.0f) : x;
    const v8f magic = splat(12582912.0f);
    const v8f n = x * 1.4426950408889634f + magic - magic;
    const v8f r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-6f;  // ln2 = 0.693145751953125 + 1.4286e-6
    v8f p = splat(1.0f / 5040.0f);
    p = p * r + splat(1.0f / 720.0f);
    p = p * r + splat(1.0f / 120.0f);
    p = p * r + splat(1.0f / 24.0f);
    p = p * r + splat(1.0f / 6.0f);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    return (v8f)((v8i)p + (__builtin_convertvector(n, v8i) << 23));
}

// out[i] = silu(gate[i]) * up[i] = gate[i] / (1 + e^-gate[i]) * up[i]; out may alias gate.
void swiglu_v(const float* gate, const float* up, float* out, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const v8f g = load8(gate + i);
        store8(out + i, g / (1.0f + exp_v(-g)) * load8(up + i));
    }
    if (i < n) {
        float g[8] = {}, u[8] = {}, o[8];
        std::memcpy(g, gate + i, sizeof(float) * size_t(n - i));
        std::memcpy(u, up + i, sizeof(float) * size_t(n - i));
        store8(o, load8(g) / (1.0f + exp_v(-load8(g))) * load8(u));
        std::memcpy(out + i, o, sizeof(float) * size_t(n - i));
    }
}

}  // namespace
}  // namespace owl::ops::isa
