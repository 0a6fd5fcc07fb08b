#include "gguf/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>

#include "common/error.h"
#include "quant/types.h"

namespace nlm {

namespace {

constexpr int kMaxArrayDepth = 8;
// All arrays of one file together may hold at most this many elements: real models
// need about a million (vocabulary, scores, types, merges); a hostile count would
// otherwise turn into gigabytes of Python objects.
constexpr uint64_t kMaxArrayElements = uint64_t(1) << 24;          // nested arrays deeper than this are rejected
constexpr uint64_t kMaxNameLength = 1 << 16;  // tensor names and keys (ggml caps names at 64)
constexpr uint32_t kMaxDims = 4;           // GGML_MAX_DIMS
// Upper bound on what is reserved up front from a count read from the file: the counts are only
// bounded by the file size, and each entry takes several times its encoded size in memory, so
// reserving all of a corrupt count can fail with std::bad_alloc before the count is disproved.
constexpr uint64_t kMaxReserve = 4096;

// Size in bytes of a scalar value type, 0 for STRING/ARRAY, -1 for unknown.
int scalar_size(uint32_t t) {
    switch (static_cast<GGUFType>(t)) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::BOOL: return 1;
        case GGUFType::UINT16: case GGUFType::INT16: return 2;
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::FLOAT32: return 4;
        case GGUFType::UINT64: case GGUFType::INT64: case GGUFType::FLOAT64: return 8;
        case GGUFType::STRING: case GGUFType::ARRAY: return 0;
    }
    return -1;
}

// A key or tensor name as a message shows it: quoted, cut at 200 bytes, with every byte that is a
// control character or not part of valid UTF-8 written as \xNN. The message becomes a Python str,
// which must be valid UTF-8 (else Python raises UnicodeDecodeError instead of GGUFError), and
// what() would stop at a NUL.
std::string quoted(const std::string& s) {
    constexpr size_t kMaxShown = 200;
    std::string out = "'";
    size_t i = 0;
    while (i < s.size() && i < kMaxShown) {
        const auto c = static_cast<unsigned char>(s[i]);
        const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        bool ok = len > 0 && len <= s.size() - i;
        uint32_t cp = len == 1 ? c : len == 2 ? (c & 0x1Fu) : len == 3 ? (c & 0x0Fu) : (c & 0x07u);
        for (size_t k = 1; ok && k < len; ++k) {
            const auto cc = static_cast<unsigned char>(s[i + k]);
            ok = (cc & 0xC0) == 0x80;
            cp = (cp << 6) | (cc & 0x3Fu);
        }
        if (ok) {
            const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
            ok = cp >= min_cp[len] && cp <= 0x10FFFF && !(cp >= 0xD800 && cp <= 0xDFFF) && cp >= 0x20 && cp != 0x7F;
        }
        if (ok) {
            out.append(s, i, len);
            i += len;
        } else {
            static const char hex[] = "0123456789ABCDEF";
            out += "\\x";
            out += hex[c >> 4];
            out += hex[c & 0xF];
            ++i;
        }
    }
    if (i < s.size()) out += "...";
    return out + "'";
}

// Bounds-checked little-endian reader over [data, data + size).
class Cursor {
public:
    Cursor(const uint8_t* data, size_t size, const std::string& path) : data_(data), size_(size), path_(path) {}

    [[noreturn]] void fail(const std::string& what) const {
        throw GGUFError(path_ + ": " + what + " (at byte offset " + std::to_string(pos_) + " of " +
                        std::to_string(size_) + ")");
    }

    size_t pos() const { return pos_; }
    size_t remaining() const { return size_ - pos_; }

    void need(uint64_t n, const char* what) const {
        if (n > remaining()) {
            fail(std::string("file truncated: ") + what + " needs " + std::to_string(n) + " bytes, " +
                 std::to_string(remaining()) + " remain");
        }
    }

    const uint8_t* here() const { return data_ + pos_; }
    void skip(uint64_t n, const char* what) {
        need(n, what);
        pos_ += size_t(n);
    }

    uint64_t array_elements = 0;  // running total over the file, against kMaxArrayElements

    template <typename T>
    T read(const char* what) {
        need(sizeof(T), what);
        T v;
        std::memcpy(&v, data_ + pos_, sizeof(T));
        pos_ += sizeof(T);
        return v;
    }

    std::string read_string(const char* what) {
        const uint64_t n = read<uint64_t>(what);
        need(n, what);
        std::string s(reinterpret_cast<const char*>(data_ + pos_), size_t(n));
        pos_ += size_t(n);
        return s;
    }

private:
    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
    const std::string& path_;
};

GGUFValue read_value(Cursor& c, uint32_t type, int depth, const std::string& key);

GGUFValue read_array(Cursor& c, int depth, const std::string& key) {
    if (depth >= kMaxArrayDepth) c.fail("metadata " + quoted(key) + ": arrays nested deeper than " + std::to_string(kMaxArrayDepth));
    GGUFValue v;
    v.type = GGUFType::ARRAY;
    const uint32_t et = c.read<uint32_t>("array element type");
    const int es = scalar_size(et);
    if (es < 0) c.fail("metadata " + quoted(key) + ": unknown array element type " + std::to_string(et));
    v.elem_type = static_cast<GGUFType>(et);
    const uint64_t n = c.read<uint64_t>("array length");
    // The smallest possible encoding of one element bounds the count before any allocation.
    const uint64_t min_elem = es > 0 ? uint64_t(es) : (v.elem_type == GGUFType::STRING ? 8 : 12);
    if (n > c.remaining() / min_elem) {
        c.fail("metadata " + quoted(key) + ": array of " + std::to_string(n) + " elements of type " +
               gguf_type_name(v.elem_type) + " does not fit in the " + std::to_string(c.remaining()) +
               " bytes that remain");
    }
    c.array_elements += n;
    if (c.array_elements > kMaxArrayElements) {
        c.fail("metadata " + quoted(key) + ": arrays hold more than " + std::to_string(kMaxArrayElements) +
               " elements in all, more than any model needs");
    }
    v.n = n;
    if (es > 0) {
        v.raw = c.here();
        c.skip(n * uint64_t(es), "array data");
        if (v.elem_type == GGUFType::BOOL) {
            for (uint64_t i = 0; i < n; ++i) {
                if (v.raw[i] > 1) c.fail("metadata " + quoted(key) + ": bool array element is neither 0 nor 1");
            }
        }
    } else if (v.elem_type == GGUFType::STRING) {
        v.strs.reserve(size_t(n));
        for (uint64_t i = 0; i < n; ++i) v.strs.push_back(c.read_string("string array element"));
    } else {
        v.elems.reserve(size_t(n));
        for (uint64_t i = 0; i < n; ++i) v.elems.push_back(read_value(c, et, depth + 1, key));
    }
    return v;
}

GGUFValue read_value(Cursor& c, uint32_t type, int depth, const std::string& key) {
    GGUFValue v;
    switch (static_cast<GGUFType>(type)) {
        case GGUFType::UINT8: v.u = c.read<uint8_t>("u8 value"); break;
        case GGUFType::INT8: v.i = c.read<int8_t>("i8 value"); break;
        case GGUFType::UINT16: v.u = c.read<uint16_t>("u16 value"); break;
        case GGUFType::INT16: v.i = c.read<int16_t>("i16 value"); break;
        case GGUFType::UINT32: v.u = c.read<uint32_t>("u32 value"); break;
        case GGUFType::INT32: v.i = c.read<int32_t>("i32 value"); break;
        case GGUFType::UINT64: v.u = c.read<uint64_t>("u64 value"); break;
        case GGUFType::INT64: v.i = c.read<int64_t>("i64 value"); break;
        case GGUFType::FLOAT32: v.f = c.read<float>("f32 value"); break;
        case GGUFType::FLOAT64: v.f = c.read<double>("f64 value"); break;
        case GGUFType::BOOL: {
            const uint8_t b = c.read<uint8_t>("bool value");
            if (b > 1) c.fail("metadata " + quoted(key) + ": bool value " + std::to_string(b) + " is neither 0 nor 1");
            v.i = b;
            break;
        }
        case GGUFType::STRING: v.s = c.read_string("string value"); break;
        case GGUFType::ARRAY: return read_array(c, depth, key);
        default: c.fail("metadata " + quoted(key) + ": unknown value type " + std::to_string(type));
    }
    v.type = static_cast<GGUFType>(type);
    return v;
}

}  // namespace

const char* gguf_type_name(GGUFType t) {
    switch (t) {
        case GGUFType::UINT8: return "UINT8";
        case GGUFType::INT8: return "INT8";
        case GGUFType::UINT16: return "UINT16";
        case GGUFType::INT16: return "INT16";
        case GGUFType::UINT32: return "UINT32";
        case GGUFType::INT32: return "INT32";
        case GGUFType::FLOAT32: return "FLOAT32";
        case GGUFType::BOOL: return "BOOL";
        case GGUFType::STRING: return "STRING";
        case GGUFType::ARRAY: return "ARRAY";
        case GGUFType::UINT64: return "UINT64";
        case GGUFType::INT64: return "INT64";
        case GGUFType::FLOAT64: return "FLOAT64";
    }
    return "?";
}

bool GGUFValue::is_integer() const {
    switch (type) {
        case GGUFType::UINT8: case GGUFType::INT8: case GGUFType::UINT16: case GGUFType::INT16:
        case GGUFType::UINT32: case GGUFType::INT32: case GGUFType::UINT64: case GGUFType::INT64:
            return true;
        default:
            return false;
    }
}

int64_t GGUFValue::as_int(const std::string& what) const {
    switch (type) {
        case GGUFType::UINT8: case GGUFType::UINT16: case GGUFType::UINT32: case GGUFType::UINT64:
            if (u > uint64_t(std::numeric_limits<int64_t>::max())) throw GGUFError(what + ": value out of range");
            return int64_t(u);
        case GGUFType::INT8: case GGUFType::INT16: case GGUFType::INT32: case GGUFType::INT64:
            return i;
        default:
            throw GGUFError(what + ": expected an integer, found " + gguf_type_name(type));
    }
}

double GGUFValue::as_float(const std::string& what) const {
    if (type == GGUFType::FLOAT32 || type == GGUFType::FLOAT64) return f;
    if (is_integer()) return double(as_int(what));
    throw GGUFError(what + ": expected a number, found " + gguf_type_name(type));
}

int64_t GGUFTensorInfo::n_elements() const {
    int64_t n = 1;
    for (int64_t d : ne) n *= d;  // overflow ruled out when the directory was read
    return n;
}

MappedFile::MappedFile(const std::string& path) : path_(path) {
    // open() would silently stop at an embedded NUL and read some other file.
    // (The message stops before the NUL: what() is a C string.)
    if (path.find('\0') != std::string::npos) {
        throw GGUFError(path.substr(0, path.find('\0')) + "\\0...: path contains a NUL byte");
    }
    // O_NONBLOCK: opening a FIFO for reading would otherwise block until a writer appears; it has
    // no effect on regular files, and anything else is rejected below.
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0) throw GGUFError(path + ": cannot open: " + std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
        const int e = errno;
        ::close(fd);
        throw GGUFError(path + ": cannot stat: " + std::strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        ::close(fd);
        throw GGUFError(path + ": not a regular file");
    }
    size_ = size_t(st.st_size);
    if (size_ > 0) {
        void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            const int e = errno;
            ::close(fd);
            throw GGUFError(path + ": cannot map: " + std::strerror(e));
        }
        data_ = static_cast<const uint8_t*>(p);
    }
    ::close(fd);
}

MappedFile::~MappedFile() {
    if (data_ != nullptr) ::munmap(const_cast<uint8_t*>(data_), size_);
}

GGUFFile::GGUFFile(const std::string& path) : map_(std::make_shared<MappedFile>(path)) {
    Cursor c(map_->data(), map_->size(), map_->path());

    // Header.
    if (map_->size() < 4 || std::memcmp(map_->data(), "GGUF", 4) != 0) c.fail("not a GGUF file (bad magic)");
    c.read<uint32_t>("magic");
    version_ = c.read<uint32_t>("version");
    if (version_ != 2 && version_ != 3) {
        c.fail("unsupported GGUF version " + std::to_string(version_) + " (2 and 3 are supported)");
    }
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("metadata count");
    // A key-value pair takes at least 8 + 4 + 1 bytes and a tensor entry at least 8 + 4 + 4 + 8.
    if (n_kv > c.remaining() / 13) c.fail("metadata count " + std::to_string(n_kv) + " exceeds what the file can hold");
    if (n_tensors > c.remaining() / 24) {
        c.fail("tensor count " + std::to_string(n_tensors) + " exceeds what the file can hold");
    }

    // Metadata.
    kv_.reserve(size_t(std::min(n_kv, kMaxReserve)));
    for (uint64_t k = 0; k < n_kv; ++k) {
        std::string key = c.read_string("metadata key");
        if (key.size() > kMaxNameLength) c.fail("metadata key of " + std::to_string(key.size()) + " bytes is too long");
        if (kv_index_.count(key) != 0) c.fail("duplicate metadata key " + quoted(key));
        const uint32_t type = c.read<uint32_t>("metadata value type");
        GGUFValue v = read_value(c, type, 0, key);
        kv_index_[key] = kv_.size();
        kv_.emplace_back(std::move(key), std::move(v));
    }
    if (const GGUFValue* a = find("general.alignment")) {
        if (a->type != GGUFType::UINT32) c.fail("general.alignment must be UINT32, found " + std::string(gguf_type_name(a->type)));
        alignment_ = a->u;
        if (alignment_ == 0 || (alignment_ & (alignment_ - 1)) != 0) {
            c.fail("general.alignment " + std::to_string(alignment_) + " is not a power of two");
        }
    }

    // Tensor directory.
    tensors_.reserve(size_t(std::min(n_tensors, kMaxReserve)));
    for (uint64_t t = 0; t < n_tensors; ++t) {
        GGUFTensorInfo ti;
        ti.name = c.read_string("tensor name");
        if (ti.name.size() > kMaxNameLength) c.fail("tensor name of " + std::to_string(ti.name.size()) + " bytes is too long");
        if (tensor_index_.count(ti.name) != 0) c.fail("duplicate tensor name " + quoted(ti.name));
        const uint32_t n_dims = c.read<uint32_t>("tensor dimension count");
        if (n_dims == 0 || n_dims > kMaxDims) {
            c.fail("tensor " + quoted(ti.name) + ": " + std::to_string(n_dims) + " dimensions (1 to 4 are allowed)");
        }
        uint64_t n_el = 1;
        for (uint32_t d = 0; d < n_dims; ++d) {
            const uint64_t ne = c.read<uint64_t>("tensor dimension");
            if (ne == 0 || ne > uint64_t(std::numeric_limits<int64_t>::max()) ||
                n_el > uint64_t(std::numeric_limits<int64_t>::max()) / ne) {
                c.fail("tensor " + quoted(ti.name) + ": dimension " + std::to_string(d) + " = " + std::to_string(ne) +
                       " is zero or makes the element count overflow");
            }
            n_el *= ne;
            ti.ne.push_back(int64_t(ne));
        }
        ti.type = c.read<uint32_t>("tensor type");
        const TypeTraits* tt = type_traits(ti.type);
        if (tt == nullptr) c.fail("tensor " + quoted(ti.name) + ": unsupported or unknown ggml type " + std::to_string(ti.type));
        if (ti.ne[0] % tt->block_size != 0) {
            c.fail("tensor " + quoted(ti.name) + ": row length " + std::to_string(ti.ne[0]) + " is not a multiple of the " +
                   tt->name + " block size " + std::to_string(tt->block_size));
        }
        const uint64_t n_blocks = n_el / uint64_t(tt->block_size);
        if (n_blocks > std::numeric_limits<uint64_t>::max() / tt->type_size) {
            c.fail("tensor " + quoted(ti.name) + ": byte size overflows");
        }
        ti.n_bytes = n_blocks * tt->type_size;
        ti.offset = c.read<uint64_t>("tensor offset");
        if (ti.offset % alignment_ != 0) {
            c.fail("tensor " + quoted(ti.name) + ": offset " + std::to_string(ti.offset) + " is not a multiple of the alignment " +
                   std::to_string(alignment_));
        }
        tensor_index_[ti.name] = tensors_.size();
        tensors_.push_back(std::move(ti));
    }
    directory_end_ = c.pos();

    // Data section: aligned start, every tensor inside the file, no two overlapping.
    data_offset_ = (directory_end_ + alignment_ - 1) / alignment_ * alignment_;
    if (n_tensors > 0 && data_offset_ > map_->size()) {
        c.fail("data section starts at " + std::to_string(data_offset_) + ", past the end of the file");
    }
    const uint64_t data_size = data_offset_ <= map_->size() ? map_->size() - data_offset_ : 0;
    std::vector<size_t> order(tensors_.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tensors_[a].offset < tensors_[b].offset; });
    for (size_t k = 0; k < order.size(); ++k) {
        const GGUFTensorInfo& ti = tensors_[order[k]];
        if (ti.offset > data_size || ti.n_bytes > data_size - ti.offset) {
            throw GGUFError(map_->path() + ": tensor " + quoted(ti.name) + " (" + std::to_string(ti.n_bytes) +
                            " bytes at data offset " + std::to_string(ti.offset) + ") extends past the end of the file (" +
                            std::to_string(data_size) + " data bytes)");
        }
        if (k + 1 < order.size()) {
            const GGUFTensorInfo& next = tensors_[order[k + 1]];
            if (ti.offset + ti.n_bytes > next.offset) {
                throw GGUFError(map_->path() + ": tensors " + quoted(ti.name) + " and " + quoted(next.name) + " overlap");
            }
        }
    }
}

const GGUFValue* GGUFFile::find(const std::string& key) const {
    auto it = kv_index_.find(key);
    return it == kv_index_.end() ? nullptr : &kv_[it->second].second;
}

const GGUFTensorInfo* GGUFFile::find_tensor(const std::string& name) const {
    auto it = tensor_index_.find(name);
    return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

}  // namespace nlm
