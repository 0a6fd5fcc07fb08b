// Weight formats seen as units of 32 elements, for the x86 kernels.
//
// For unit u of a row, a format gives:
//   codes(w, u)      32 unsigned codes (u8) such that, element by element,
//                    value = lane_scale * (code - 2^kShift) + min   (kShift < 0: no offset)
//   lane_scale(w, u) 8 floats: lane i scales elements 4i .. 4i+3
//   min(w, u)        the additive minimum of the unit (kHasMin formats only)
// Q8_0 is the one signed format (kSigned): its codes are the int8 quants.
//
// Included by each ISA's source file, which is compiled with its own flags: the
// anonymous namespace keeps every copy private to its file, so no function
// compiled for AVX-512 can be picked by the linker for the AVX2 file.
#pragma once

#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "quant/formats.h"
#include "quant/fp16.h"

namespace nlm {
namespace {

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// 32 bytes: byte i is 0xFF where bit i of `bits` is set.
inline __m256i expand_bits(uint32_t bits) {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    return _mm256_movm_epi8(__mmask32(bits));
#else
    // Byte i takes byte i/8 of bits, then tests its own bit i%8.
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3,
                                          3, 3, 3, 3, 3);
    const __m256i spread = _mm256_shuffle_epi8(_mm256_set1_epi32(int(bits)), pick);
    const __m256i bit = _mm256_set1_epi64x(int64_t(0x8040201008040201ull));
    return _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
#endif
}

// Low nibbles of 16 bytes as elements 0..15, high nibbles as 16..31.
inline __m256i nibbles16(const uint8_t* qs) {
    const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
    const __m128i m = _mm_set1_epi8(0x0f);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(v, 4), m), _mm_and_si128(v, m));
}

inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

struct UQ8_0 {
    static constexpr int kShift = -1;
    static constexpr bool kHasMin = false, kSigned = true;
    static const block_q8_0& blk(const void* w, int64_t u) { return static_cast<const block_q8_0*>(w)[u]; }
    static __m256i codes(const void* w, int64_t u) { return load256(blk(w, u).qs); }
    static __m256 lane_scale(const void* w, int64_t u) { return _mm256_set1_ps(fp16_to_f32(blk(w, u).d)); }
    static float min(const void*, int64_t) { return 0.0f; }
};

struct UQ4_0 {
    static constexpr int kShift = 3;  // code - 8
    static constexpr bool kHasMin = false, kSigned = false;
    static const block_q4_0& blk(const void* w, int64_t u) { return static_cast<const block_q4_0*>(w)[u]; }
    static __m256i codes(const void* w, int64_t u) { return nibbles16(blk(w, u).qs); }
    static __m256 lane_scale(const void* w, int64_t u) { return _mm256_set1_ps(fp16_to_f32(blk(w, u).d)); }
    static float min(const void*, int64_t) { return 0.0f; }
};

struct UQ4_1 {
    static constexpr int kShift = -1;
    static constexpr bool kHasMin = true, kSigned = false;
    static const block_q4_1& blk(const void* w, int64_t u) { return static_cast<const block_q4_1*>(w)[u]; }
    static __m256i codes(const void* w, int64_t u) { return nibbles16(blk(w, u).qs); }
    static __m256 lane_scale(const void* w, int64_t u) { return _mm256_set1_ps(fp16_to_f32(blk(w, u).d)); }
    static float min(const void* w, int64_t u) { return fp16_to_f32(blk(w, u).m); }
};

template <typename Block>
inline __m256i codes5(const Block& b) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    const __m256i hi = _mm256_and_si256(expand_bits(qh), _mm256_set1_epi8(0x10));
    return _mm256_or_si256(nibbles16(b.qs), hi);
}

struct UQ5_0 {
    static constexpr int kShift = 4;  // code - 16
    static constexpr bool kHasMin = false, kSigned = false;
    static const block_q5_0& blk(const void* w, int64_t u) { return static_cast<const block_q5_0*>(w)[u]; }
    static __m256i codes(const void* w, int64_t u) { return codes5(blk(w, u)); }
    static __m256 lane_scale(const void* w, int64_t u) { return _mm256_set1_ps(fp16_to_f32(blk(w, u).d)); }
    static float min(const void*, int64_t) { return 0.0f; }
};

struct UQ5_1 {
    static constexpr int kShift = -1;
    static constexpr bool kHasMin = true, kSigned = false;
    static const block_q5_1& blk(const void* w, int64_t u) { return static_cast<const block_q5_1*>(w)[u]; }
    static __m256i codes(const void* w, int64_t u) { return codes5(blk(w, u)); }
    static __m256 lane_scale(const void* w, int64_t u) { return _mm256_set1_ps(fp16_to_f32(blk(w, u).d)); }
    static float min(const void* w, int64_t u) { return fp16_to_f32(blk(w, u).m); }
};

// K-quants: unit u is sub-block j = u % 8 of super-block u / 8.
template <typename Block>
inline __m256 k_lane_scale(const Block& b, int j) {
    int sc, mn;
    scale_min_k4(j, b.scales, &sc, &mn);
    return _mm256_set1_ps(fp16_to_f32(b.d) * float(sc));
}

template <typename Block>
inline float k_min(const Block& b, int j) {
    int sc, mn;
    scale_min_k4(j, b.scales, &sc, &mn);
    return -fp16_to_f32(b.dmin) * float(mn);
}

struct UQ4_K {
    static constexpr int kShift = -1;
    static constexpr bool kHasMin = true, kSigned = false;
    static const block_q4_K& blk(const void* w, int64_t u) { return static_cast<const block_q4_K*>(w)[u / 8]; }
    static __m256i codes(const void* w, int64_t u) {
        const int j = int(u % 8);
        const __m256i v = load256(blk(w, u).qs + 32 * (j / 2));
        return _mm256_and_si256(j % 2 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0f));
    }
    static __m256 lane_scale(const void* w, int64_t u) { return k_lane_scale(blk(w, u), int(u % 8)); }
    static float min(const void* w, int64_t u) { return k_min(blk(w, u), int(u % 8)); }
};

struct UQ5_K {
    static constexpr int kShift = -1;
    static constexpr bool kHasMin = true, kSigned = false;
    static const block_q5_K& blk(const void* w, int64_t u) { return static_cast<const block_q5_K*>(w)[u / 8]; }
    static __m256i codes(const void* w, int64_t u) {
        const int j = int(u % 8);
        const block_q5_K& b = blk(w, u);
        const __m256i v = load256(b.qs + 32 * (j / 2));
        const __m256i lo = _mm256_and_si256(j % 2 ? _mm256_srli_epi16(v, 4) : v, _mm256_set1_epi8(0x0f));
        // bit j of each qh byte, moved to bit 4 (the shifts stay inside each byte after the masks)
        const __m256i h = _mm256_and_si256(_mm256_srli_epi16(load256(b.qh), j), _mm256_set1_epi8(1));
        return _mm256_or_si256(lo, _mm256_slli_epi16(h, 4));
    }
    static __m256 lane_scale(const void* w, int64_t u) { return k_lane_scale(blk(w, u), int(u % 8)); }
    static float min(const void* w, int64_t u) { return k_min(blk(w, u), int(u % 8)); }
};

// Q6_K: unit u covers elements 32u .. 32u+31 of its super-block: half h = u/4 (of 128),
// low bits from ql[64h + (32u mod 64) + l] >> 4*((u mod 4)/2), high bits from qh[32h + l] >> 2*(u mod 4).
struct UQ6_K {
    static constexpr int kShift = 5;  // code - 32
    static constexpr bool kHasMin = false, kSigned = false;
    static const block_q6_K& blk(const void* w, int64_t u) { return static_cast<const block_q6_K*>(w)[u / 8]; }
    static __m256i codes(const void* w, int64_t u) {
        const int v = int(u % 8), h = v / 4, r = v % 4;
        const block_q6_K& b = blk(w, u);
        const __m256i ql = load256(b.ql + 64 * h + 32 * (r % 2));
        const __m256i lo = _mm256_and_si256(r / 2 ? _mm256_srli_epi16(ql, 4) : ql, _mm256_set1_epi8(0x0f));
        const __m256i qh = _mm256_srli_epi16(load256(b.qh + 32 * h), 2 * r);
        const __m256i hi = _mm256_and_si256(qh, _mm256_set1_epi8(3));
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    static __m256 lane_scale(const void* w, int64_t u) {
        const int v = int(u % 8), h = v / 4, r = v % 4;
        const block_q6_K& b = blk(w, u);
        const float d = fp16_to_f32(b.d);
        const float s0 = d * float(b.scales[8 * h + 2 * r]), s1 = d * float(b.scales[8 * h + 2 * r + 1]);
        return _mm256_setr_ps(s0, s0, s0, s0, s1, s1, s1, s1);
    }
    static float min(const void*, int64_t) { return 0.0f; }
};

inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

// 8 bf16 values to floats.
inline __m256 bf16x8(const uint16_t* p) {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

}  // namespace
}  // namespace nlm
