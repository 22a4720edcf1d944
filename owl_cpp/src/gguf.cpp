// GGUF parsing. The Cursor never reads past `end`; every size is checked before allocation so a hostile
// count cannot make us allocate gigabytes or loop for hours.
#include "owl/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <set>

#include "owl/error.h"
#include "unicode.h"

namespace owl {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" little-endian
constexpr uint64_t kMaxStringLen = 1ull << 30;
constexpr int kMaxArrayDepth = 4;

size_t scalar_size(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
        case GGUFType::UINT16: case GGUFType::INT16: return 2;
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
        case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
        default: return 0;
    }
}

class Cursor {
public:
    Cursor(const uint8_t* base, size_t size, std::string label) : base_(base), size_(size), label_(std::move(label)) {}

    [[noreturn]] void fail(const std::string& what) const {
        throw FormatError("GGUF " + label_ + ": " + what + " (at byte offset " + std::to_string(pos_) + ")");
    }
    size_t pos() const { return pos_; }
    size_t remaining() const { return size_ - pos_; }
    const uint8_t* here() const { return base_ + pos_; }

    void need(uint64_t n, const char* what) const {
        if (n > remaining()) fail(std::string("file truncated while reading ") + what);
    }
    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, base_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }
    std::string read_string(const char* what) {
        const uint64_t n = read<uint64_t>(what);
        if (n > kMaxStringLen) fail(std::string(what) + ": string length " + std::to_string(n) + " is absurd");
        need(n, what);
        std::string s(reinterpret_cast<const char*>(base_ + pos_), size_t(n));
        pos_ += size_t(n);
        return s;
    }
    void skip(uint64_t n, const char* what) {
        need(n, what);
        pos_ += size_t(n);
    }

private:
    const uint8_t* base_;
    size_t size_;
    size_t pos_ = 0;
    std::string label_;
};

// Keys and tensor names are identifiers: they must be valid UTF-8 so they can be named in messages and APIs.
bool valid_utf8(const std::string& s) {
    size_t len;
    uint32_t cp;
    for (size_t i = 0; i < s.size(); i += len)
        if (unicode::utf8_check(s.data() + i, s.size() - i, len, cp) != unicode::Utf8Status::Valid) return false;
    return true;
}

GGUFType read_type(Cursor& c, const std::string& key) {
    const uint32_t t = c.read<uint32_t>("value type");
    if (t > uint32_t(GGUFType::FLOAT64)) c.fail("key '" + key + "': unknown value type " + std::to_string(t));
    return GGUFType(t);
}

void read_value(Cursor& c, GGUFType type, GGUFValue& v, const std::string& key, int depth) {
    v.type = type;
    switch (type) {
        case GGUFType::UINT8: v.u = c.read<uint8_t>("uint8"); v.i = int64_t(v.u); v.f = double(v.u); break;
        case GGUFType::UINT16: v.u = c.read<uint16_t>("uint16"); v.i = int64_t(v.u); v.f = double(v.u); break;
        case GGUFType::UINT32: v.u = c.read<uint32_t>("uint32"); v.i = int64_t(v.u); v.f = double(v.u); break;
        case GGUFType::UINT64: v.u = c.read<uint64_t>("uint64"); v.i = int64_t(v.u); v.f = double(v.u); break;
        case GGUFType::INT8: v.i = c.read<int8_t>("int8"); v.u = uint64_t(v.i); v.f = double(v.i); break;
        case GGUFType::INT16: v.i = c.read<int16_t>("int16"); v.u = uint64_t(v.i); v.f = double(v.i); break;
        case GGUFType::INT32: v.i = c.read<int32_t>("int32"); v.u = uint64_t(v.i); v.f = double(v.i); break;
        case GGUFType::INT64: v.i = c.read<int64_t>("int64"); v.u = uint64_t(v.i); v.f = double(v.i); break;
        case GGUFType::FLOAT32: v.f = c.read<float>("float32"); break;
        case GGUFType::FLOAT64: v.f = c.read<double>("float64"); break;
        case GGUFType::BOOL: {
            const uint8_t b = c.read<uint8_t>("bool");
            if (b > 1) c.fail("key '" + key + "': bool value " + std::to_string(b) + " is neither 0 nor 1");
            v.i = b; v.u = b;
            break;
        }
        case GGUFType::STRING: v.str = c.read_string(("value of key '" + key + "'").c_str()); break;
        case GGUFType::ARRAY: {
            if (depth >= kMaxArrayDepth) c.fail("key '" + key + "': arrays nested too deeply");
            v.elem_type = read_type(c, key);
            v.count = c.read<uint64_t>("array length");
            if (v.elem_type == GGUFType::STRING) {
                // Each string costs at least its 8-byte length: bound the count before reserving.
                if (v.count > c.remaining() / 8) c.fail("key '" + key + "': array of " + std::to_string(v.count) + " strings exceeds the file");
                v.strs.reserve(size_t(v.count));
                for (uint64_t k = 0; k < v.count; ++k) v.strs.push_back(c.read_string("array string"));
            } else if (v.elem_type == GGUFType::ARRAY) {
                if (v.count > c.remaining() / 12) c.fail("key '" + key + "': array of " + std::to_string(v.count) + " arrays exceeds the file");
                v.items.resize(size_t(v.count));
                for (auto& item : v.items) read_value(c, GGUFType::ARRAY, item, key, depth + 1);
            } else {
                const size_t es = scalar_size(v.elem_type);
                if (v.count > c.remaining() / es) c.fail("key '" + key + "': array of " + std::to_string(v.count) + " elements exceeds the file");
                v.data = c.here();
                // element() decodes lazily, where the file and key are unknown: check bools now.
                if (v.elem_type == GGUFType::BOOL)
                    for (uint64_t k = 0; k < v.count; ++k)
                        if (v.data[k] > 1)
                            c.fail("key '" + key + "': bool element " + std::to_string(k) + " is " + std::to_string(v.data[k]) + ", neither 0 nor 1");
                c.skip(v.count * es, "array data");
            }
            break;
        }
    }
}

bool is_integer_type(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64: return true;
        default: return false;
    }
}
bool is_signed(GGUFType t) {
    return t == GGUFType::INT8 || t == GGUFType::INT16 || t == GGUFType::INT32 || t == GGUFType::INT64;
}

}  // namespace

GGUFValue GGUFValue::element(uint64_t k) const {
    if (!data || k >= count) throw Error("GGUF array element " + std::to_string(k) + " does not exist");
    const size_t es = scalar_size(elem_type);
    Cursor c(data + k * es, es, "array element");
    GGUFValue out;
    read_value(c, elem_type, out, "array element", 0);
    return out;
}

const char* gguf_type_name(GGUFType t) {
    static const char* names[] = {"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32",
                                  "bool", "string", "array", "uint64", "int64", "float64"};
    const uint32_t i = uint32_t(t);
    return i < 13 ? names[i] : "unknown";
}

std::unique_ptr<GGUFFile> GGUFFile::open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) throw Error("cannot open '" + path + "': " + std::strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        throw Error("'" + path + "' is not a regular file");
    }
    const size_t size = size_t(st.st_size);
    if (size == 0) {
        ::close(fd);
        throw FormatError("GGUF '" + path + "': file is empty");
    }
    void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (map == MAP_FAILED) throw Error("cannot mmap '" + path + "': " + std::strerror(errno));
    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = path;
    f->map_ = map;
    f->map_size_ = size;
    f->parse(static_cast<const uint8_t*>(map), size);  // on throw, ~GGUFFile unmaps
    return f;
}

std::unique_ptr<GGUFFile> GGUFFile::from_buffer(const uint8_t* data, size_t size, const std::string& label) {
    std::unique_ptr<GGUFFile> f(new GGUFFile());
    f->path_ = label;
    f->parse(data, size);
    return f;
}

void GGUFFile::release_pages(const void* p, size_t n) const {
    if (!map_) return;
    const uintptr_t lo = reinterpret_cast<uintptr_t>(map_), hi = lo + map_size_;
    const uintptr_t page = uintptr_t(sysconf(_SC_PAGESIZE));
    uintptr_t b = reinterpret_cast<uintptr_t>(p), e = b + n;
    if (b < lo || e > hi || b >= e) return;
    b = (b + page - 1) / page * page;
    e = e / page * page;
    if (b < e) madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
}

GGUFFile::~GGUFFile() {
    if (map_) munmap(map_, map_size_);
}

void GGUFFile::parse(const uint8_t* base, size_t size) {
    Cursor c(base, size, "'" + path_ + "'");
    const uint32_t magic = c.read<uint32_t>("magic");
    if (magic != kMagic) c.fail("bad magic (not a GGUF file)");
    version_ = c.read<uint32_t>("version");
    if (version_ != 2 && version_ != 3) c.fail("unsupported GGUF version " + std::to_string(version_) + " (need 2 or 3)");
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("metadata count");
    // A key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; a tensor info at least 8+4+8+4+8.
    if (n_kv > c.remaining() / 13) c.fail("metadata count " + std::to_string(n_kv) + " exceeds the file");
    if (n_tensors > c.remaining() / 32) c.fail("tensor count " + std::to_string(n_tensors) + " exceeds the file");

    for (uint64_t k = 0; k < n_kv; ++k) {
        std::string key = c.read_string("metadata key");
        if (key.empty()) c.fail("metadata key #" + std::to_string(k) + " is empty");
        if (!valid_utf8(key)) c.fail("metadata key #" + std::to_string(k) + " is not valid UTF-8");
        if (kv_.count(key)) c.fail("duplicate metadata key '" + key + "'");
        const GGUFType t = read_type(c, key);
        GGUFValue v;
        read_value(c, t, v, key, 0);
        key_order_.push_back(key);
        kv_.emplace(std::move(key), std::move(v));
    }

    if (const GGUFValue* a = find("general.alignment")) {
        if (a->type != GGUFType::UINT32 || a->u == 0 || (a->u & (a->u - 1)) != 0)
            c.fail("general.alignment must be a power-of-two uint32");
        alignment_ = uint32_t(a->u);
    }

    tensors_.reserve(size_t(n_tensors));
    for (uint64_t k = 0; k < n_tensors; ++k) {
        GGUFTensorInfo ti;
        ti.name = c.read_string("tensor name");
        if (!valid_utf8(ti.name)) c.fail("tensor #" + std::to_string(k) + " has a name that is not valid UTF-8");
        const std::string where = "tensor '" + ti.name + "'";
        if (tensor_index_.count(ti.name)) c.fail("duplicate tensor name '" + ti.name + "'");
        const uint32_t n_dims = c.read<uint32_t>("tensor dims");
        if (n_dims == 0 || n_dims > 4) c.fail(where + ": " + std::to_string(n_dims) + " dimensions (1..4 allowed)");
        ti.n_dims = int(n_dims);
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = c.read<uint64_t>("tensor shape");
            if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()))
                c.fail(where + ": dimension " + std::to_string(d) + " has size " + std::to_string(ne));
            ti.ne[d] = int64_t(ne);
        }
        const uint32_t type = c.read<uint32_t>("tensor type");
        if (!dtype_supported(type)) c.fail(where + ": unsupported tensor type " + std::to_string(type));
        ti.type = DType(type);
        ti.offset = c.read<uint64_t>("tensor offset");

        // Element count and byte size without overflow.
        uint64_t n = 1;
        for (int d = 0; d < 4; ++d) {
            if (uint64_t(ti.ne[d]) > (uint64_t(1) << 62) / n) c.fail(where + ": element count overflows");
            n *= uint64_t(ti.ne[d]);
        }
        const int64_t be = dtype_block_elems(ti.type);
        if (ti.ne[0] % be != 0)
            c.fail(where + ": row length " + std::to_string(ti.ne[0]) + " is not a multiple of the " + dtype_name(ti.type) + " block size " + std::to_string(be));
        // 2^62 elements of 4 bytes wrap to 0 bytes: bound the block count by the file before multiplying.
        const uint64_t blocks = n / uint64_t(be), block_bytes = uint64_t(dtype_block_bytes(ti.type));
        if (blocks > size / block_bytes)
            c.fail(where + ": " + std::to_string(n) + " " + dtype_name(ti.type) + " elements lie past the end of the file (" +
                   std::to_string(size) + " bytes)");
        ti.nbytes = blocks * block_bytes;
        if (ti.offset % alignment_ != 0) c.fail(where + ": data offset " + std::to_string(ti.offset) + " is not aligned to " + std::to_string(alignment_));
        tensor_index_.emplace(ti.name, tensors_.size());
        tensors_.push_back(std::move(ti));
    }

    // The data section starts at the next alignment boundary after the header.
    const uint64_t header_end = c.pos();
    const uint64_t data_start = (header_end + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_start > size) c.fail("file truncated before the tensor data section");
    const uint64_t data_size = n_tensors > 0 ? size - data_start : 0;
    // Ranges must lie inside the file and must not overlap.
    std::vector<std::pair<uint64_t, size_t>> ranges;
    for (size_t k = 0; k < tensors_.size(); ++k) {
        auto& ti = tensors_[k];
        if (ti.offset > data_size || ti.nbytes > data_size - ti.offset)
            c.fail("tensor '" + ti.name + "': data [" + std::to_string(ti.offset) + ", +" + std::to_string(ti.nbytes) +
                   ") lies past the end of the file (data section holds " + std::to_string(data_size) + " bytes)");
        ti.data = base + data_start + ti.offset;
        ranges.emplace_back(ti.offset, k);
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t k = 1; k < ranges.size(); ++k) {
        const auto& prev = tensors_[ranges[k - 1].second];
        if (prev.offset + prev.nbytes > ranges[k].first)
            c.fail("tensors '" + prev.name + "' and '" + tensors_[ranges[k].second].name + "' overlap");
    }
    align_tensor_data();
}

// Kernels read tensors as floats, halves and quant blocks, and a small general.alignment (1 is legal) or an
// unaligned buffer can put those at odd addresses: undefined behaviour. Such tensors get one aligned copy.
void GGUFFile::align_tensor_data() {
    constexpr uintptr_t kAlign = 32;
    auto misaligned = [](const GGUFTensorInfo& t) { return reinterpret_cast<uintptr_t>(t.data) % kAlign != 0; };
    auto padded = [](uint64_t n) { return size_t((n + kAlign - 1) / kAlign * kAlign); };
    size_t total = 0;  // at most the file's size plus padding: every range was checked against the file
    for (const auto& t : tensors_)
        if (misaligned(t)) total += padded(t.nbytes);
    if (total == 0) return;
    aligned_copy_.reset(static_cast<uint8_t*>(std::aligned_alloc(kAlign, total)));
    if (!aligned_copy_) throw std::bad_alloc();
    uint8_t* dst = aligned_copy_.get();
    for (auto& t : tensors_) {
        if (!misaligned(t)) continue;
        std::memcpy(dst, t.data, size_t(t.nbytes));
        release_pages(t.data, size_t(t.nbytes));  // resident memory keeps one copy
        t.data = dst;
        dst += padded(t.nbytes);
    }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

namespace {
[[noreturn]] void key_error(const std::string& path, const std::string& key, const std::string& what) {
    throw FormatError("GGUF '" + path + "': key '" + key + "' " + what);
}
}  // namespace

uint64_t GGUFFile::get_uint(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (!is_integer_type(v->type)) key_error(path_, key, std::string("has type ") + gguf_type_name(v->type) + ", expected an integer");
    if (is_signed(v->type) && v->i < 0) key_error(path_, key, "is negative (" + std::to_string(v->i) + ")");
    return v->u;
}
uint64_t GGUFFile::get_uint(const std::string& key, uint64_t fallback) const {
    return has(key) ? get_uint(key) : fallback;
}
double GGUFFile::get_float(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (v->type != GGUFType::FLOAT32 && v->type != GGUFType::FLOAT64 && !is_integer_type(v->type))
        key_error(path_, key, std::string("has type ") + gguf_type_name(v->type) + ", expected a number");
    return v->f;
}
double GGUFFile::get_float(const std::string& key, double fallback) const {
    return has(key) ? get_float(key) : fallback;
}
bool GGUFFile::get_bool(const std::string& key, bool fallback) const {
    const GGUFValue* v = find(key);
    if (!v) return fallback;
    if (v->type != GGUFType::BOOL) key_error(path_, key, std::string("has type ") + gguf_type_name(v->type) + ", expected bool");
    return v->i != 0;
}
std::string GGUFFile::get_string(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (v->type != GGUFType::STRING) key_error(path_, key, std::string("has type ") + gguf_type_name(v->type) + ", expected string");
    return v->str;
}
std::string GGUFFile::get_string(const std::string& key, const std::string& fallback) const {
    return has(key) ? get_string(key) : fallback;
}
std::vector<std::string> GGUFFile::get_string_array(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (v->type != GGUFType::ARRAY || v->elem_type != GGUFType::STRING) key_error(path_, key, "is not an array of strings");
    return v->strs;
}
std::vector<float> GGUFFile::get_float_array(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (v->type != GGUFType::ARRAY || !v->data) key_error(path_, key, "is not a numeric array");
    std::vector<float> out(size_t(v->count));
    for (uint64_t k = 0; k < v->count; ++k) out[k] = float(v->element(k).f);
    return out;
}
std::vector<int64_t> GGUFFile::get_int_array(const std::string& key) const {
    const GGUFValue* v = find(key);
    if (!v) key_error(path_, key, "is missing");
    if (v->type != GGUFType::ARRAY || !v->data || !is_integer_type(v->elem_type)) key_error(path_, key, "is not an integer array");
    std::vector<int64_t> out(size_t(v->count));
    for (uint64_t k = 0; k < v->count; ++k) {
        const GGUFValue e = v->element(k);
        if (!is_signed(e.type) && e.u > uint64_t(std::numeric_limits<int64_t>::max()))
            key_error(path_, key, "element " + std::to_string(k) + " = " + std::to_string(e.u) + " is out of range");
        out[k] = e.i;
    }
    return out;
}

}  // namespace owl
