// AVX-512 kernels with AVX512-VNNI vpdpbusd byte products (Cascade Lake, Ice Lake, Sapphire Rapids, Zen 4 and
// later). CMakeLists.txt compiles this file alone with the avx512 flags plus -mavx512vnni; without them it only
// provides a stub.
#include "isa.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__FMA__) && defined(__F16C__)
#define OWL_VNNI 1
#define OWL_KERNELS_NAME "avx512_vnni"
#define OWL_KERNELS_FN kernels_avx512_vnni
#include "matmul_avx512.inc"
#else
namespace owl::ops::isa {
const Kernels* kernels_avx512_vnni() { return nullptr; }
}  // namespace owl::ops::isa
#endif
