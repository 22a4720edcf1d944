// AVX2 + FMA + F16C kernels with AVX-VNNI vpdpbusd byte products (Alder Lake and later, Zen 5). CMakeLists.txt
// compiles this file alone with -mavx2 -mfma -mf16c -mavxvnni; without them it only provides a stub.
#include "isa.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__) && defined(__AVXVNNI__)
#define OWL_VNNI 1
#define OWL_KERNELS_NAME "avx2_vnni"
#define OWL_KERNELS_FN kernels_avx2_vnni
#include "matmul_avx2.inc"
#else
namespace owl::ops::isa {
const Kernels* kernels_avx2_vnni() { return nullptr; }
}  // namespace owl::ops::isa
#endif
