// AVX-512 (F, BW, VL) kernels with vpmaddubsw byte products (Skylake-SP and later). CMakeLists.txt compiles this
// file alone with -mavx512f -mavx512bw -mavx512vl -mavx2 -mfma -mf16c; without them it only provides a stub.
#include "isa.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__FMA__) && defined(__F16C__)
#define OWL_VNNI 0
#define OWL_KERNELS_NAME "avx512"
#define OWL_KERNELS_FN kernels_avx512
#include "matmul_avx512.inc"
#else
namespace owl::ops::isa {
const Kernels* kernels_avx512() { return nullptr; }
}  // namespace owl::ops::isa
#endif
