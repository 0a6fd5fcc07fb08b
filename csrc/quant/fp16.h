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

inline float bf16_to_f32(uint16_t b) { return bits_to_f32(uint32_t(b) << 16); }

}  // namespace nlm
