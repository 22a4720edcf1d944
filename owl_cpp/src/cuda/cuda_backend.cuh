// What the rest of the runtime sees of the CUDA backend (compiled only when OWL_HAVE_CUDA is defined).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "owl/backend.h"

namespace owl {
namespace cuda {

int device_count();  // 0 without a driver or a GPU (never throws)
std::unique_ptr<Backend> make_backend(int device);

CudaInfo info();  // compiled = true, the architectures, versions and every visible GPU

}  // namespace cuda
}  // namespace owl
