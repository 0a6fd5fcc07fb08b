// The KV codecs (kv/codec.h) with AVX-512 F: 32 channels (two 16-float vectors) at a time.
#include <immintrin.h>

#include <cstring>

#include "kv/codec.h"

namespace nlm {

namespace {

inline void store_scalar16(uint8_t* p, size_t i, uint16_t v) { std::memcpy(p + 2 * i, &v, 2); }

inline __m512i code16(__m512 x, __m512 m, __m512 inv, __m512 qmax) {
    __m512 v = _mm512_mul_ps(_mm512_sub_ps(x, m), inv);
    v = _mm512_max_ps(v, _mm512_setzero_ps());
    v = _mm512_min_ps(v, qmax);
    return _mm512_cvtps_epi32(v);  // round to nearest even
}

template <int Bits>
inline void encode_row32(const float* x, __m512 m0, __m512 m1, __m512 i0, __m512 i1, uint8_t* dst) {
    const __m512 qmax = _mm512_set1_ps(float((1 << Bits) - 1));
    const __m512i a = code16(_mm512_loadu_ps(x), m0, i0, qmax), b = code16(_mm512_loadu_ps(x + 16), m1, i1, qmax);
    if (Bits == 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(a));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + 16), _mm512_cvtepi32_epi8(b));
    } else {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm512_cvtepi32_epi8(_mm512_or_si512(a, _mm512_slli_epi32(b, 4))));
    }
}

template <int Bits>
inline void decode_row32(const uint8_t* src, __m512 s0, __m512 s1, __m512 m0, __m512 m1, float* x) {
    __m128i lo, hi;
    if (Bits == 8) {
        lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    } else {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        const __m128i mask = _mm_set1_epi8(0x0f);
        lo = _mm_and_si128(b, mask);
        hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    }
    const __m512 f0 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), f1 = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi));
    _mm512_storeu_ps(x, _mm512_add_ps(_mm512_mul_ps(f0, s0), m0));
    _mm512_storeu_ps(x + 16, _mm512_add_ps(_mm512_mul_ps(f1, s1), m1));
}

constexpr size_t code_bytes(int bits, int channels) { return size_t(channels) * size_t(bits) / 8; }

inline __m512 load_f16x16(const uint8_t* p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

template <int Bits>
void encode_k(const float* x, int n, int d, uint8_t* out) {
    uint8_t* codes = out + 4 * size_t(d);
    const size_t row_bytes = code_bytes(Bits, d);
    for (int c0 = 0; c0 < d; c0 += 32) {
        __m512 lo0 = _mm512_loadu_ps(x + c0), lo1 = _mm512_loadu_ps(x + c0 + 16);
        __m512 hi0 = lo0, hi1 = lo1;
        for (int t = 1; t < n; ++t) {
            const float* row = x + size_t(t) * size_t(d) + size_t(c0);
            const __m512 v0 = _mm512_loadu_ps(row), v1 = _mm512_loadu_ps(row + 16);
            lo0 = _mm512_min_ps(v0, lo0);
            lo1 = _mm512_min_ps(v1, lo1);
            hi0 = _mm512_max_ps(v0, hi0);
            hi1 = _mm512_max_ps(v1, hi1);
        }
        alignas(64) float lo_s[32], hi_s[32], m_s[32], inv_s[32];
        _mm512_store_ps(lo_s, lo0);
        _mm512_store_ps(lo_s + 16, lo1);
        _mm512_store_ps(hi_s, hi0);
        _mm512_store_ps(hi_s + 16, hi1);
        for (int c = 0; c < 32; ++c) {
            const KVQParams p = kv_qparams(lo_s[c], hi_s[c], (1 << Bits) - 1);
            store_scalar16(out, size_t(c0 + c), p.scale16);
            store_scalar16(out, size_t(d) + size_t(c0 + c), p.min16);
            m_s[c] = p.min;
            inv_s[c] = p.inv;
        }
        const __m512 m0 = _mm512_load_ps(m_s), m1 = _mm512_load_ps(m_s + 16);
        const __m512 i0 = _mm512_load_ps(inv_s), i1 = _mm512_load_ps(inv_s + 16);
        for (int t = 0; t < n; ++t) {
            encode_row32<Bits>(x + size_t(t) * size_t(d) + size_t(c0), m0, m1, i0, i1,
                               codes + size_t(t) * row_bytes + code_bytes(Bits, c0));
        }
    }
}

template <int Bits>
void decode_k(const uint8_t* in, int n, int d, float* x) {
    const uint8_t* codes = in + 4 * size_t(d);
    const size_t row_bytes = code_bytes(Bits, d);
    for (int c0 = 0; c0 < d; c0 += 32) {
        const __m512 s0 = load_f16x16(in + 2 * size_t(c0)), s1 = load_f16x16(in + 2 * size_t(c0 + 16));
        const __m512 m0 = load_f16x16(in + 2 * size_t(d + c0)), m1 = load_f16x16(in + 2 * size_t(d + c0 + 16));
        for (int t = 0; t < n; ++t) {
            decode_row32<Bits>(codes + size_t(t) * row_bytes + code_bytes(Bits, c0), s0, s1, m0, m1,
                               x + size_t(t) * size_t(d) + size_t(c0));
        }
    }
}

template <int Bits>
void encode_v(const float* x, int n, int d, uint8_t* out) {
    const int gpr = d / kKVValueGroup;
    const size_t groups = size_t(n) * size_t(gpr);
    uint8_t* codes = out + 4 * groups;
    const size_t row_bytes = code_bytes(Bits, d);
    for (int t = 0; t < n; ++t) {
        for (int j = 0; j < gpr; ++j) {
            const float* g = x + size_t(t) * size_t(d) + size_t(32 * j);
            const __m512 a = _mm512_loadu_ps(g), b = _mm512_loadu_ps(g + 16);
            const float lo = _mm512_reduce_min_ps(_mm512_min_ps(a, b));
            const float hi = _mm512_reduce_max_ps(_mm512_max_ps(a, b));
            const KVQParams p = kv_qparams(lo, hi, (1 << Bits) - 1);
            const size_t gi = size_t(t) * size_t(gpr) + size_t(j);
            store_scalar16(out, gi, p.scale16);
            store_scalar16(out, groups + gi, p.min16);
            const __m512 m = _mm512_set1_ps(p.min), inv = _mm512_set1_ps(p.inv);
            encode_row32<Bits>(g, m, m, inv, inv, codes + size_t(t) * row_bytes + code_bytes(Bits, 32 * j));
        }
    }
}

template <int Bits>
void decode_v(const uint8_t* in, int n, int d, float* x) {
    const int gpr = d / kKVValueGroup;
    const size_t groups = size_t(n) * size_t(gpr);
    const uint8_t* codes = in + 4 * groups;
    const size_t row_bytes = code_bytes(Bits, d);
    for (int t = 0; t < n; ++t) {
        for (int j = 0; j < gpr; ++j) {
            const size_t gi = size_t(t) * size_t(gpr) + size_t(j);
            uint16_t s16, m16;
            std::memcpy(&s16, in + 2 * gi, 2);
            std::memcpy(&m16, in + 2 * (groups + gi), 2);
            const __m512 s = _mm512_cvtph_ps(_mm256_set1_epi16(short(s16)));
            const __m512 m = _mm512_cvtph_ps(_mm256_set1_epi16(short(m16)));
            decode_row32<Bits>(codes + size_t(t) * row_bytes + code_bytes(Bits, 32 * j), s, s, m, m,
                               x + size_t(t) * size_t(d) + size_t(32 * j));
        }
    }
}

}  // namespace

const KVCodecKernels& kv_codec_avx512(int bits) {
    static const KVCodecKernels k8{encode_k<8>, decode_k<8>, encode_v<8>, decode_v<8>};
    static const KVCodecKernels k4{encode_k<4>, decode_k<4>, encode_v<4>, decode_v<4>};
    return bits == 8 ? k8 : k4;
}

}  // namespace nlm
