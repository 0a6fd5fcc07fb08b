// Codes of one unit of a 16-row packed group (quant/packed.h, R = 16) as 8 registers of
// unsigned bytes: chunk c (byte 4r+i = row r, element 4c+i) in c[c]. Shared by the AVX-512
// kernel and the AMX one; included by files compiled with AVX-512 BW flags.
#pragma once

#include <immintrin.h>

#include <cstring>

#include "quant/packed.h"

namespace nlm {
namespace {

template <PackKind Kind>
inline void unpack512(const uint8_t* p, __m512i c[8]) {
    if (Kind == PackKind::Byte) {
        for (int j = 0; j < 8; ++j) c[j] = _mm512_loadu_si512(p + 64 * j);
        return;
    }
    const __m512i m4 = _mm512_set1_epi8(0x0f);
    for (int j = 0; j < 4; ++j) {
        const __m512i v = _mm512_loadu_si512(p + 64 * j);
        c[j] = _mm512_and_si512(v, m4);
        c[j + 4] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
    }
    if (Kind == PackKind::Nibble5) {
        const __m512i b4 = _mm512_set1_epi8(0x10);
        for (int j = 0; j < 8; ++j) {
            __mmask64 m;
            std::memcpy(&m, p + 256 + 8 * j, 8);
            c[j] = _mm512_mask_add_epi8(c[j], m, c[j], b4);  // bit 4 is clear: add sets it
        }
    }
    if (Kind == PackKind::Nibble6) {
        const __m512i m30 = _mm512_set1_epi8(0x30);
        for (int t = 0; t < 2; ++t) {
            const __m512i h = _mm512_loadu_si512(p + 256 + 64 * t);
            // bits 2j..2j+1 of each byte -> bits 4..5
            c[4 * t + 0] = _mm512_or_si512(c[4 * t + 0], _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
            c[4 * t + 1] = _mm512_or_si512(c[4 * t + 1], _mm512_and_si512(_mm512_slli_epi16(h, 2), m30));
            c[4 * t + 2] = _mm512_or_si512(c[4 * t + 2], _mm512_and_si512(h, m30));
            c[4 * t + 3] = _mm512_or_si512(c[4 * t + 3], _mm512_and_si512(_mm512_srli_epi16(h, 2), m30));
        }
    }
}

}  // namespace
}  // namespace nlm
