#include "fp16_table.h"

#include <vector>

namespace owl::ops {

const float* fp16_table() {
    static const std::vector<float> table = [] {
        std::vector<float> t(65536);
        for (uint32_t i = 0; i < 65536; ++i) t[i] = fp16_to_fp32(uint16_t(i));
        return t;
    }();
    return table.data();
}

}  // namespace owl::ops
