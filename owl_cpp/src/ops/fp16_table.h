// fp16 -> fp32 through a 64K-entry table: one load instead of the bit manipulation in the hot loops.
#pragma once
#include <cstdint>

#include "owl/dtype.h"

namespace owl::ops {

const float* fp16_table();

inline float fp16_lookup(uint16_t h) {
    static const float* table = fp16_table();
    return table[h];
}

}  // namespace owl::ops
