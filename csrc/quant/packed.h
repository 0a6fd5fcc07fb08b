// Weights repacked at load for the AVX-512 VNNI matmul: the same values, laid
// out so that one 512-bit load feeds 16 output rows at once.
//
// Rows are taken 16 at a time (a group; the last group is padded with zero rows)
// and each row is cut into units of 32 elements. Every value is
//     value = scale * (code - offset) + min        (unsigned integer codes)
// with scale and min per (row, unit) — for Q6_K two scales, one per 16 elements.
// One packed unit of a group, in order:
//   codes   8 chunks x 64 bytes: byte 4r+i of chunk c is row r, element 4c+i, so a
//           vpdpbusd against the 4 activation codes 4c..4c+3 (broadcast) sums
//           16 rows at once. Stored compactly per kind:
//             Byte    (Q8_0)          the 8 chunks as they are (code = q + 128)
//             Nibble  (Q4_0/Q4_1/Q4_K) 4 x 64 bytes: low nibbles chunks 0-3, high nibbles chunks 4-7
//             Nibble5 (Q5_0/Q5_1/Q5_K) the nibbles, then 8 x u64 masks: bit 4r+i of mask c is bit 4 of that code
//             Nibble6 (Q6_K)          the nibbles, then 2 x 64 bytes: bits 2j..2j+1 of byte 4r+i of the
//                                     t-th are bits 4-5 of chunk 4t+j's code
//   scales  16 x f16 (formats whose scale is a stored f16) or 16 x f32 (k-quants;
//           Q6_K: 16 for elements 0-15, then 16 for 16-31)
//   mins    16 x f32 (Q4_1, Q5_1, Q4_K, Q5_K)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace nlm {

enum class PackKind { Byte, Nibble, Nibble5, Nibble6 };

struct PackFormat {
    PackKind kind = PackKind::Byte;
    int offset_shift = -1;   // offset = 2^shift, or no offset when < 0
    bool scale_f16 = false;
    bool two_scales = false; // Q6_K
    bool has_min = false;
    size_t codes_bytes() const;
    size_t scales_bytes() const { return (scale_f16 ? 2 : 4) * 16 * (two_scales ? 2 : 1); }
    size_t unit_bytes() const { return codes_bytes() + scales_bytes() + (has_min ? 64 : 0); }
};

// The packed form of `type`, or false when it has none.
bool pack_format(uint32_t type, PackFormat* out);

struct PackedWeights {
    uint32_t type = 0;
    PackFormat fmt;
    int64_t rows = 0, cols = 0;
    int64_t groups = 0;      // ceil(rows / 16)
    int64_t units = 0;       // cols / 32
    size_t unit_bytes = 0;
    std::unique_ptr<uint8_t[], void (*)(void*)> data{nullptr, nullptr};  // 64-byte aligned
    const uint8_t* unit(int64_t group, int64_t u) const {
        return data.get() + (size_t(group) * size_t(units) + size_t(u)) * unit_bytes;
    }
};

// Repack `rows` rows of `cols` elements of a GGUF tensor; throws if the type has no packed form.
std::unique_ptr<PackedWeights> pack_weights(uint32_t type, const uint8_t* data, int64_t rows, int64_t cols);

// Unit u of one row, decoded: codes (unsigned), scale(s), min. The reference for the layout.
struct UnitCodes {
    uint8_t code[32];
    float scale[2];  // scale[1] is for elements 16..31 (equal to scale[0] except Q6_K)
    float min;
};
void decode_unit(uint32_t type, const uint8_t* row, int64_t u, UnitCodes* out);

}  // namespace nlm
