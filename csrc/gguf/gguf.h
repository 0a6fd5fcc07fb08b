// GGUF v2/v3 reader over a read-only memory mapping.
//
// Layout: magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv | n_kv x (string key,
// u32 value type, value) | n_tensors x (string name, u32 n_dims, n_dims x u64 ne,
// u32 ggml type, u64 offset) | padding to general.alignment | tensor data.
// Strings are u64 length + bytes (no terminator). Every count, length and extent
// is checked against the bytes that remain before it is used.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace nlm {

enum class GGUFType : uint32_t {
    UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6,
    BOOL = 7, STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// One metadata value. Scalars use one of i/u/f; strings s. Arrays are stored
// compactly: numbers as a view of their little-endian bytes in the mapping
// (`raw`, `n` elements), strings in `strs`, nested arrays in `elems`.
struct GGUFValue {
    GGUFType type = GGUFType::UINT8;
    int64_t i = 0;       // signed integers and bool
    uint64_t u = 0;      // unsigned integers
    double f = 0.0;      // FLOAT32 / FLOAT64
    std::string s;       // STRING
    GGUFType elem_type = GGUFType::UINT8;  // ARRAY: type of the elements
    uint64_t n = 0;                        // ARRAY: element count
    const uint8_t* raw = nullptr;          // ARRAY of numbers/bools: n elements in the mapping
    std::vector<std::string> strs;         // ARRAY of STRING
    std::vector<GGUFValue> elems;          // ARRAY of ARRAY

    bool is_integer() const;
    int64_t as_int(const std::string& what) const;   // any integer type, else GGUFError
    double as_float(const std::string& what) const;  // any number, else GGUFError
};

struct GGUFTensorInfo {
    std::string name;
    uint32_t type = 0;          // ggml type id
    std::vector<int64_t> ne;    // ne[0] is the row length (fastest-varying)
    uint64_t offset = 0;        // relative to the data section, as stored
    uint64_t n_bytes = 0;       // extent of the data
    int64_t n_elements() const;
};

class MappedFile {
public:
    explicit MappedFile(const std::string& path);
    ~MappedFile();
    MappedFile(const MappedFile&) = delete;
    MappedFile& operator=(const MappedFile&) = delete;
    const uint8_t* data() const { return data_; }
    size_t size() const { return size_; }
    const std::string& path() const { return path_; }

private:
    std::string path_;
    const uint8_t* data_ = nullptr;
    size_t size_ = 0;
};

class GGUFFile {
public:
    // Maps and validates `path`; throws GGUFError naming the file and the fault.
    explicit GGUFFile(const std::string& path);

    uint32_t version() const { return version_; }
    uint64_t alignment() const { return alignment_; }
    uint64_t data_offset() const { return data_offset_; }
    uint64_t directory_end() const { return directory_end_; }  // end of the tensor directory
    const std::vector<std::pair<std::string, GGUFValue>>& metadata() const { return kv_; }
    const std::vector<GGUFTensorInfo>& tensors() const { return tensors_; }
    const std::string& path() const { return map_->path(); }
    size_t file_size() const { return map_->size(); }

    const GGUFValue* find(const std::string& key) const;
    const GGUFTensorInfo* find_tensor(const std::string& name) const;
    const uint8_t* tensor_data(const GGUFTensorInfo& t) const { return map_->data() + data_offset_ + t.offset; }

private:
    std::shared_ptr<MappedFile> map_;
    uint32_t version_ = 0;
    uint64_t alignment_ = 32;
    uint64_t data_offset_ = 0;
    uint64_t directory_end_ = 0;
    std::vector<std::pair<std::string, GGUFValue>> kv_;
    std::map<std::string, size_t> kv_index_;
    std::vector<GGUFTensorInfo> tensors_;
    std::map<std::string, size_t> tensor_index_;
};

const char* gguf_type_name(GGUFType t);

}  // namespace nlm
