// Per-format traits: block geometry and the kernels that serve each format.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nlm {

using dequantize_fn = void (*)(const void* src, float* dst, int64_t k);
using vec_dot_fn = float (*)(const void* w, const float* x, int64_t k);

struct TypeTraits {
    const char* name;       // ggml's name: "Q4_K", "F32", ...
    int block_size;         // elements per block
    size_t type_size;       // bytes per block
    dequantize_fn dequantize_ref;
    vec_dot_fn vec_dot_ref;
};

// Traits of ggml type id `type`, or nullptr when the format is not supported.
const TypeTraits* type_traits(uint32_t type);

// Bytes of a row of `n` elements; n must be a multiple of the block size.
inline size_t row_bytes(const TypeTraits& t, int64_t n) { return size_t(n / t.block_size) * t.type_size; }

}  // namespace nlm
