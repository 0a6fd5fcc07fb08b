// Weights repacked at load for the SIMD matmul kernels: the same values, laid
// out so that one register load feeds a whole group of output rows at once.
//
// Rows are taken R at a time (a group: R = 16 for the 512-bit kernels, 8 for the
// 256-bit ones; the last group is padded with zero rows) and each row is cut into
// units of 32 elements. Every value is
//     value = scale * (code - offset) + min
// with scale and min per (row, unit) — for Q6_K two scales, one per 16 elements.
// A chunk is 4R bytes: byte 4r+i of chunk c is row r, element 4c+i, so one
// vpdpbusd (or vpmaddubsw + vpmaddwd) against the 4 activation codes 4c..4c+3,
// broadcast, sums R rows at once with no horizontal sums. One packed unit of a
// group, in order (CB = 4R bytes per chunk):
//   codes   8 chunks, stored compactly per kind:
//             Byte    (Q8_0)            the 8 chunks as they are: code = q + 128 (unsigned),
//                                       or the int8 quant q itself when `signed_codes`
//             Nibble  (Q4_0/Q4_1/Q4_K)  4 x CB: low nibbles chunks 0-3, high nibbles chunks 4-7
//             Nibble5 (Q5_0/Q5_1/Q5_K)  the nibbles, then CB bytes of bit 4 of every code:
//                                       R = 16: 8 x u64 masks, bit 4r+i of mask c is chunk c's code 4r+i
//                                       R = 8:  bit planes, bit c of byte 4r+i is chunk c's code 4r+i
//             Nibble6 (Q6_K)            the nibbles, then 2 x CB bytes: bits 2j..2j+1 of byte 4r+i of
//                                       the t-th are bits 4-5 of chunk 4t+j's code
//   scales  R x f16 (formats whose scale is a stored f16) or R x f32 (k-quants;
//           Q6_K: R for elements 0-15, then R for 16-31)
//   mins    R x f32 (Q4_1, Q5_1, Q4_K, Q5_K)
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "common/memory.h"

namespace nlm {

enum class PackKind { Byte, Nibble, Nibble5, Nibble6 };

struct PackFormat {
    PackKind kind = PackKind::Byte;
    int offset_shift = -1;     // offset = 2^shift, or no offset when < 0
    bool scale_f16 = false;
    bool two_scales = false;   // Q6_K
    bool has_min = false;
    int rows = 16;             // R: rows per group
    bool signed_codes = false; // Byte only: codes are the int8 quants (no offset)
    size_t chunk_bytes() const { return size_t(4 * rows); }
    size_t codes_bytes() const;
    size_t scales_bytes() const { return size_t((scale_f16 ? 2 : 4) * rows * (two_scales ? 2 : 1)); }
    size_t unit_bytes() const { return codes_bytes() + scales_bytes() + (has_min ? size_t(4 * rows) : 0); }
};

// The packed form of `type` for groups of `rows` rows (8 or 16), or false when it has none.
// `signed_bytes`: Q8_0 codes kept as int8 (for kernels without an unsigned x signed product).
bool pack_format(uint32_t type, int rows, bool signed_bytes, PackFormat* out);

struct PackedWeights {
    uint32_t type = 0;
    PackFormat fmt;
    int64_t rows = 0, cols = 0;
    int64_t groups = 0;      // ceil(rows / fmt.rows)
    int64_t units = 0;       // cols / 32
    size_t unit_bytes = 0;
    Buffer data{nullptr, nullptr};  // 64-byte aligned, huge pages where possible (common/memory.h)
    size_t n_bytes() const { return size_t(groups) * size_t(units) * unit_bytes; }
    const uint8_t* unit(int64_t group, int64_t u) const {
        return data.get() + (size_t(group) * size_t(units) + size_t(u)) * unit_bytes;
    }
};

// Repack `rows` rows of `cols` elements of a GGUF tensor into groups of `group_rows`;
// throws if the type has no packed form or the shape does not fit it.
std::unique_ptr<PackedWeights> pack_weights(uint32_t type, const uint8_t* data, int64_t rows, int64_t cols,
                                            int group_rows, bool signed_bytes);

// Calls K::run<Kind, Shift, ScaleF16, TwoScales, HasMin>(args...) for the compile-time form of `f`:
// the packed kernels are templates over the layout, and this one switch serves them all. Shift is
// the exponent of the codes' offset (-1: none); Q8_0's codes are q + 128 (7), or q when SignedBytes.
template <typename K, bool SignedBytes, typename... Args>
void with_pack_format(const PackFormat& f, Args&&... args) {
    switch (f.kind) {
        case PackKind::Byte: return K::template run<PackKind::Byte, SignedBytes ? -1 : 7, true, false, false>(args...);
        case PackKind::Nibble:
            if (!f.has_min) return K::template run<PackKind::Nibble, 3, true, false, false>(args...);
            if (f.scale_f16) return K::template run<PackKind::Nibble, -1, true, false, true>(args...);
            return K::template run<PackKind::Nibble, -1, false, false, true>(args...);
        case PackKind::Nibble5:
            if (!f.has_min) return K::template run<PackKind::Nibble5, 4, true, false, false>(args...);
            if (f.scale_f16) return K::template run<PackKind::Nibble5, -1, true, false, true>(args...);
            return K::template run<PackKind::Nibble5, -1, false, false, true>(args...);
        case PackKind::Nibble6: return K::template run<PackKind::Nibble6, 5, false, true, false>(args...);
    }
}

// Unit u of one row, decoded: codes (unsigned), scale(s), min. The reference for the layout.
struct UnitCodes {
    uint8_t code[32];
    float scale[2];  // scale[1] is for elements 16..31 (equal to scale[0] except Q6_K)
    float min;
};
void decode_unit(uint32_t type, const uint8_t* row, int64_t u, UnitCodes* out);

}  // namespace nlm
