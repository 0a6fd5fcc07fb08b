// Block formats of GGUF weight tensors, byte for byte as ggml lays them out.
//
// A tensor row of K elements is a sequence of K / QK blocks. Each struct below
// is one block; GGUF data is read in place, so the packed sizes are asserted.
// `d` and `dmin` are IEEE half floats stored as raw uint16 bits.
//
//   format  QK   bytes  bits/weight  value of element i
//   Q4_0    32   18     4.5          d * (q4[i] - 8)
//   Q4_1    32   20     5.0          d * q4[i] + m
//   Q5_0    32   22     5.5          d * (q5[i] - 16)
//   Q5_1    32   24     6.0          d * q5[i] + m
//   Q8_0    32   34     8.5          d * q8[i]
//   Q4_K    256  144    4.5          (d * sc[j]) * q4[i] - (dmin * mn[j]),  j = i / 32
//   Q5_K    256  176    5.5          (d * sc[j]) * q5[i] - (dmin * mn[j]),  j = i / 32
//   Q6_K    256  210    6.5625       (d * sc[j]) * (q6[i] - 32),            j = i / 16
#pragma once

#include <cstddef>
#include <cstdint>

namespace nlm {

constexpr int QK4_0 = 32;
constexpr int QK4_1 = 32;
constexpr int QK5_0 = 32;
constexpr int QK5_1 = 32;
constexpr int QK8_0 = 32;
constexpr int QK_K = 256;
constexpr int K_SCALE_SIZE = 12;

struct block_q4_0 {
    uint16_t d;              // scale (f16)
    uint8_t qs[QK4_0 / 2];   // element i < 16: low nibble of qs[i]; i >= 16: high nibble of qs[i - 16]
};
static_assert(sizeof(block_q4_0) == 2 + QK4_0 / 2, "block_q4_0 size");

struct block_q4_1 {
    uint16_t d;              // scale (f16)
    uint16_t m;              // minimum (f16)
    uint8_t qs[QK4_1 / 2];   // nibbles, as in Q4_0
};
static_assert(sizeof(block_q4_1) == 4 + QK4_1 / 2, "block_q4_1 size");

struct block_q5_0 {
    uint16_t d;              // scale (f16)
    uint8_t qh[4];           // bit i (little-endian uint32) is bit 4 of element i
    uint8_t qs[QK5_0 / 2];   // low 4 bits, nibbles as in Q4_0
};
static_assert(sizeof(block_q5_0) == 6 + QK5_0 / 2, "block_q5_0 size");

struct block_q5_1 {
    uint16_t d;              // scale (f16)
    uint16_t m;              // minimum (f16)
    uint8_t qh[4];           // bit i is bit 4 of element i
    uint8_t qs[QK5_1 / 2];   // low 4 bits
};
static_assert(sizeof(block_q5_1) == 8 + QK5_1 / 2, "block_q5_1 size");

struct block_q8_0 {
    uint16_t d;              // scale (f16)
    int8_t qs[QK8_0];        // signed quants
};
static_assert(sizeof(block_q8_0) == 2 + QK8_0, "block_q8_0 size");

// Super-block of 8 sub-blocks of 32; 6-bit scale and min per sub-block packed in 12 bytes:
// j < 4: sc = scales[j] & 63, mn = scales[j + 4] & 63;
// j >= 4: sc = (scales[j + 4] & 15) | ((scales[j - 4] >> 6) << 4), mn = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4).
struct block_q4_K {
    uint16_t d;                     // super-block scale for the scales (f16)
    uint16_t dmin;                  // super-block scale for the mins (f16)
    uint8_t scales[K_SCALE_SIZE];   // packed 6-bit scales and mins
    uint8_t qs[QK_K / 2];           // sub-block pair c (64 elements): low nibbles of qs[32c..32c+31], then high nibbles
};
static_assert(sizeof(block_q4_K) == 4 + K_SCALE_SIZE + QK_K / 2, "block_q4_K size");

struct block_q5_K {
    uint16_t d;                     // super-block scale for the scales (f16)
    uint16_t dmin;                  // super-block scale for the mins (f16)
    uint8_t scales[K_SCALE_SIZE];   // packed as in Q4_K
    uint8_t qh[QK_K / 8];           // bit j of qh[l] is bit 4 of element 32j + l
    uint8_t qs[QK_K / 2];           // low 4 bits, as in Q4_K
};
static_assert(sizeof(block_q5_K) == 4 + K_SCALE_SIZE + QK_K / 8 + QK_K / 2, "block_q5_K size");

// Two halves of 128 elements; in half h, element r (0..127):
//   low 4 bits  = (ql[64h + r % 64] >> (4 * (r / 64))) & 15
//   high 2 bits = (qh[32h + r % 32] >> (2 * (r / 32))) & 3
struct block_q6_K {
    uint8_t ql[QK_K / 2];     // low 4 bits
    uint8_t qh[QK_K / 4];     // high 2 bits
    int8_t scales[QK_K / 16]; // 8-bit scale per 16 elements
    uint16_t d;               // super-block scale (f16)
};
static_assert(sizeof(block_q6_K) == QK_K / 2 + QK_K / 4 + QK_K / 16 + 2, "block_q6_K size");

// ggml type ids, as stored in the GGUF tensor directory.
enum class GGMLType : uint32_t {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    BF16 = 30,
};

}  // namespace nlm
