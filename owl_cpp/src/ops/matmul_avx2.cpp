// AVX2 + FMA + F16C kernels with vpmaddubsw byte products. CMakeLists.txt compiles this file alone with
// -mavx2 -mfma -mf16c; without those flags (another architecture, another build system) it only provides a stub.
#include "isa.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define OWL_VNNI 0
#define OWL_KERNELS_NAME "avx2"
#define OWL_KERNELS_FN kernels_avx2
#include "matmul_avx2.inc"
#else
namespace owl::ops::isa {
const Kernels* kernels_avx2() { return nullptr; }
}  // namespace owl::ops::isa
#endif
