// Exact conversions between IEEE half / bfloat16 bit patterns and float.
#pragma once

#include <cstdint>
#include <cstring>

namespace nlm {

inline float bits_to_f32(uint32_t u) {
    float f;
    std::memcpy(&f, &u, sizeof f);
    return f;
}

inline uint32_t f32_to_bits(float f) {
    uint32_t u;
    std::memcpy(&u, &f, sizeof u);
    return u;
}

// Every half value (normal, subnormal, zero, inf, NaN with its payload) maps to
// the float of equal value, as numpy's float16 -> float32 cast does.
inline float fp16_to_f32(uint16_t h) {
    const uint32_t sign = uint32_t(h & 0x8000u) << 16;
    const uint32_t exp = (h >> 10) & 0x1fu;
    uint32_t mant = h & 0x3ffu;
    if (exp == 0x1f) {  // inf / NaN: keep the payload, exponent all ones
        return bits_to_f32(sign | 0x7f800000u | (mant << 13));
    }
    if (exp == 0) {
        if (mant == 0) return bits_to_f32(sign);
        // Subnormal half: normalise the mantissa.
        int e = -1;
        do {
            mant <<= 1;
            ++e;
        } while ((mant & 0x400u) == 0);
        mant &= 0x3ffu;
        return bits_to_f32(sign | uint32_t(127 - 15 - e) << 23 | (mant << 13));
    }
    return bits_to_f32(sign | (exp + (127 - 15)) << 23 | (mant << 13));
}

// float -> half, rounding to nearest even (overflow to inf, NaN kept quiet).
inline uint16_t f32_to_fp16(float f) {
    const uint32_t x = f32_to_bits(f);
    const uint32_t sign = (x >> 16) & 0x8000u;
    const uint32_t ax = x & 0x7fffffffu;
    if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u);  // NaN
    if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u); // rounds past 65504: inf
    if (ax < 0x38800000u) {                                  // result is subnormal or zero
        if (ax <= 0x33000000u) return uint16_t(sign);        // <= 2^-25 rounds to zero (ties to even)
        const uint32_t e = ax >> 23;                         // 102 .. 112
        const uint32_t m = (ax & 0x7fffffu) | 0x800000u;
        const uint32_t shift = 126 - e;                      // 14 .. 24
        uint32_t r = m >> shift;
        const uint32_t rem = m & ((1u << shift) - 1), half = 1u << (shift - 1);
        if (rem > half || (rem == half && (r & 1u))) ++r;
        return uint16_t(sign | r);
    }
    uint32_t r = (ax >> 13) - ((127u - 15u) << 10);
    const uint32_t rem = ax & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (r & 1u))) ++r;
    return uint16_t(sign | r);
}

inline float bf16_to_f32(uint16_t b) { return bits_to_f32(uint32_t(b) << 16); }

}  // namespace nlm
