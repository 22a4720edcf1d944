#include "owl/dtype.h"

namespace owl {

bool dtype_supported(uint32_t id) {
    switch (DType(id)) {
        case DType::F32: case DType::F16: case DType::BF16: case DType::Q8_0: case DType::Q4_0: return true;
        case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL: return true;
        case DType::Q2_K: case DType::Q3_K: case DType::Q4_K: case DType::Q5_K: case DType::Q6_K: return true;
    }
    return false;
}

const char* dtype_name(DType t) {
    switch (t) {
        case DType::F32: return "F32";
        case DType::F16: return "F16";
        case DType::BF16: return "BF16";
        case DType::Q8_0: return "Q8_0";
        case DType::Q4_0: return "Q4_0";
        case DType::Q4_1: return "Q4_1";
        case DType::Q5_0: return "Q5_0";
        case DType::Q5_1: return "Q5_1";
        case DType::IQ4_NL: return "IQ4_NL";
        case DType::Q2_K: return "Q2_K";
        case DType::Q3_K: return "Q3_K";
        case DType::Q4_K: return "Q4_K";
        case DType::Q5_K: return "Q5_K";
        case DType::Q6_K: return "Q6_K";
    }
    return "?";
}

int64_t dtype_block_elems(DType t) {
    if (dtype_is_kquant(t)) return QK_K;
    switch (t) {
        case DType::Q8_0: case DType::Q4_0: return QK;
        case DType::Q4_1: case DType::Q5_0: case DType::Q5_1: case DType::IQ4_NL: return QK;
        default: return 1;
    }
}

int64_t dtype_block_bytes(DType t) {
    switch (t) {
        case DType::F32: return 4;
        case DType::F16: case DType::BF16: return 2;
        case DType::Q8_0: return sizeof(BlockQ8_0);
        case DType::Q4_0: return sizeof(BlockQ4_0);
        case DType::Q4_1: return sizeof(BlockQ4_1);
        case DType::Q5_0: return sizeof(BlockQ5_0);
        case DType::Q5_1: return sizeof(BlockQ5_1);
        case DType::IQ4_NL: return sizeof(BlockIQ4_NL);
        case DType::Q2_K: return sizeof(BlockQ2_K);
        case DType::Q3_K: return sizeof(BlockQ3_K);
        case DType::Q4_K: return sizeof(BlockQ4_K);
        case DType::Q5_K: return sizeof(BlockQ5_K);
        case DType::Q6_K: return sizeof(BlockQ6_K);
    }
    return 0;
}

}  // namespace owl
