// GGUF v2/v3 reader over a read-only memory map, with strict validation: every count, length, offset and
// size is checked against the file before it is used, so a truncated or hostile file is a FormatError.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "owl/dtype.h"

namespace owl {

enum class GGUFType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};
const char* gguf_type_name(GGUFType t);

// One metadata value. Scalars are widened to int64/uint64/double; numeric arrays stay in the mapping.
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;
    int64_t i = 0;      // signed integers and bool
    uint64_t u = 0;     // unsigned integers
    double f = 0;       // floats
    std::string str;
    // Arrays
    GGUFType elem_type = GGUFType::UINT8;
    uint64_t count = 0;
    const uint8_t* data = nullptr;      // numeric elements (little-endian, unaligned)
    std::vector<std::string> strs;      // string elements
    std::vector<GGUFValue> items;       // array elements that are themselves arrays

    // Element k of a numeric array, decoded exactly like a scalar of elem_type.
    GGUFValue element(uint64_t k) const;
};

struct GGUFTensorInfo {
    std::string name;
    DType type = DType::F32;
    int n_dims = 0;
    int64_t ne[4] = {1, 1, 1, 1};  // ne[0] is the contiguous (row) dimension, as in ggml
    uint64_t offset = 0;           // relative to the data section
    uint64_t nbytes = 0;
    const uint8_t* data = nullptr;  // 32-byte aligned (a copy when the file's layout is not)
    int64_t n_elements() const { return ne[0] * ne[1] * ne[2] * ne[3]; }
};

class GGUFFile {
public:
    // Maps and validates `path`; throws FormatError (or Error for I/O problems) naming the file and the fault.
    static std::unique_ptr<GGUFFile> open(const std::string& path);
    // Parses a buffer the caller keeps alive (used by tests and in-memory loading).
    static std::unique_ptr<GGUFFile> from_buffer(const uint8_t* data, size_t size, const std::string& label);
    ~GGUFFile();
    GGUFFile(const GGUFFile&) = delete;
    GGUFFile& operator=(const GGUFFile&) = delete;

    uint32_t version() const { return version_; }
    uint32_t alignment() const { return alignment_; }
    const std::string& path() const { return path_; }

    bool has(const std::string& key) const { return kv_.count(key) != 0; }
    const GGUFValue* find(const std::string& key) const;
    const std::map<std::string, GGUFValue>& metadata() const { return kv_; }
    const std::vector<std::string>& keys_in_order() const { return key_order_; }

    // Typed getters: a missing key or a value of an incompatible type is a FormatError naming the key.
    uint64_t get_uint(const std::string& key) const;
    uint64_t get_uint(const std::string& key, uint64_t fallback) const;
    double get_float(const std::string& key) const;
    double get_float(const std::string& key, double fallback) const;
    bool get_bool(const std::string& key, bool fallback) const;
    std::string get_string(const std::string& key) const;
    std::string get_string(const std::string& key, const std::string& fallback) const;
    std::vector<std::string> get_string_array(const std::string& key) const;
    std::vector<float> get_float_array(const std::string& key) const;
    std::vector<int64_t> get_int_array(const std::string& key) const;

    const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
    const GGUFTensorInfo* find_tensor(const std::string& name) const;

    // Drops the resident pages of [p, p + n) inside the mapping (whole pages only; a later read faults them back
    // in from the file). For tensors whose data now lives elsewhere (a repacked copy). No-op for buffers.
    void release_pages(const void* p, size_t n) const;

private:
    GGUFFile() = default;
    void parse(const uint8_t* base, size_t size);
    void align_tensor_data();

    std::string path_;
    void* map_ = nullptr;
    size_t map_size_ = 0;
    uint32_t version_ = 0;
    uint32_t alignment_ = 32;
    std::map<std::string, GGUFValue> kv_;
    std::vector<std::string> key_order_;
    std::vector<GGUFTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
    struct Free { void operator()(uint8_t* p) const { std::free(p); } };
    std::unique_ptr<uint8_t, Free> aligned_copy_;  // tensors the file left misaligned (align_tensor_data)
};

}  // namespace owl
