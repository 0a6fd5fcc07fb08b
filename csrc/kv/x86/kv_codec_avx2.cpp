// The KV codecs (kv/codec.h) with AVX2 + F16C: 32 channels (four 8-float vectors) at a time.
#include <immintrin.h>

#include <cstring>

#include "kv/codec.h"

namespace nlm {

namespace {

inline void store_scalar16(uint8_t* p, size_t i, uint16_t v) { std::memcpy(p + 2 * i, &v, 2); }

// Four vectors of 8 codes in 0..255 (channels 0-7, 8-15, 16-23, 24-31) -> 32 bytes in channel order.
inline void store_codes8(uint8_t* dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i ab = _mm256_packs_epi32(a, b), cd = _mm256_packs_epi32(c, d);
    const __m256i bytes = _mm256_packus_epi16(ab, cd);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), _mm256_permutevar8x32_epi32(bytes, order));
}

// Channels 0-15 in the low nibbles, 16-31 in the high: 16 bytes.
inline void store_codes4(uint8_t* dst, __m256i a, __m256i b, __m256i c, __m256i d) {
    const __m256i p = _mm256_or_si256(a, _mm256_slli_epi32(c, 4)), q = _mm256_or_si256(b, _mm256_slli_epi32(d, 4));
    const __m256i w = _mm256_packs_epi32(p, q);
    const __m256i bytes = _mm256_packus_epi16(w, w);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst),
                     _mm256_castsi256_si128(_mm256_permutevar8x32_epi32(bytes, order)));
}

inline __m256i code8(__m256 x, __m256 m, __m256 inv, __m256 qmax) {
    __m256 v = _mm256_mul_ps(_mm256_sub_ps(x, m), inv);
    v = _mm256_max_ps(v, _mm256_setzero_ps());
    v = _mm256_min_ps(v, qmax);
    return _mm256_cvtps_epi32(v);  // round to nearest even (MXCSR's default)
}

template <int Bits>
inline void encode_row32(const float* x, const __m256* m, const __m256* inv, uint8_t* dst) {
    const __m256 qmax = _mm256_set1_ps(float((1 << Bits) - 1));
    __m256i c[4];
    for (int i = 0; i < 4; ++i) c[i] = code8(_mm256_loadu_ps(x + 8 * i), m[i], inv[i], qmax);
    if (Bits == 8) {
        store_codes8(dst, c[0], c[1], c[2], c[3]);
    } else {
        store_codes4(dst, c[0], c[1], c[2], c[3]);
    }
}

// 32 channels of one row decoded with per-channel (or broadcast) scales and minimums.
template <int Bits>
inline void decode_row32(const uint8_t* src, const __m256* s, const __m256* m, float* x) {
    __m128i lo, hi;  // channels 0-15, 16-31 as bytes
    if (Bits == 8) {
        lo = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        hi = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + 16));
    } else {
        const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src));
        const __m128i mask = _mm_set1_epi8(0x0f);
        lo = _mm_and_si128(b, mask);
        hi = _mm_and_si128(_mm_srli_epi16(b, 4), mask);
    }
    const __m128i parts[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
    for (int i = 0; i < 4; ++i) {
        const __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(parts[i]));
        _mm256_storeu_ps(x + 8 * i, _mm256_add_ps(_mm256_mul_ps(f, s[i]), m[i]));
    }
}

inline float hmin(__m256 v) {
    __m128 a = _mm_min_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_min_ps(a, _mm_movehl_ps(a, a));
    a = _mm_min_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}
inline float hmax(__m256 v) {
    __m128 a = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    a = _mm_max_ps(a, _mm_movehl_ps(a, a));
    a = _mm_max_ss(a, _mm_shuffle_ps(a, a, 1));
    return _mm_cvtss_f32(a);
}

constexpr size_t code_bytes(int bits, int channels) { return size_t(channels) * size_t(bits) / 8; }

template <int Bits>
void encode_k(const float* x, int n, int d, uint8_t* out) {
    uint8_t* codes = out + 4 * size_t(d);
    const size_t row_bytes = code_bytes(Bits, d);
    for (int c0 = 0; c0 < d; c0 += 32) {
        __m256 lo[4], hi[4];
        for (int i = 0; i < 4; ++i) lo[i] = hi[i] = _mm256_loadu_ps(x + c0 + 8 * i);
        for (int t = 1; t < n; ++t) {
            const float* row = x + size_t(t) * size_t(d) + size_t(c0);
            for (int i = 0; i < 4; ++i) {
                const __m256 v = _mm256_loadu_ps(row + 8 * i);
                lo[i] = _mm256_min_ps(v, lo[i]);
                hi[i] = _mm256_max_ps(v, hi[i]);
            }
        }
        alignas(32) float lo_s[32], hi_s[32], m_s[32], inv_s[32];
        for (int i = 0; i < 4; ++i) {
            _mm256_store_ps(lo_s + 8 * i, lo[i]);
            _mm256_store_ps(hi_s + 8 * i, hi[i]);
        }
        for (int c = 0; c < 32; ++c) {
            const KVQParams p = kv_qparams(lo_s[c], hi_s[c], (1 << Bits) - 1);
            store_scalar16(out, size_t(c0 + c), p.scale16);
            store_scalar16(out, size_t(d) + size_t(c0 + c), p.min16);
            m_s[c] = p.min;
            inv_s[c] = p.inv;
        }
        __m256 m[4], inv[4];
        for (int i = 0; i < 4; ++i) {
            m[i] = _mm256_load_ps(m_s + 8 * i);
            inv[i] = _mm256_load_ps(inv_s + 8 * i);
        }
        for (int t = 0; t < n; ++t) {
            encode_row32<Bits>(x + size_t(t) * size_t(d) + size_t(c0), m, inv,
                               codes + size_t(t) * row_bytes + code_bytes(Bits, c0));
        }
    }
}

template <int Bits>
void decode_k(const uint8_t* in, int n, int d, float* x) {
    const uint8_t* codes = in + 4 * size_t(d);
    const size_t row_bytes = code_bytes(Bits, d);
    for (int c0 = 0; c0 < d; c0 += 32) {
        __m256 s[4], m[4];
        for (int i = 0; i < 4; ++i) {
            s[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * size_t(c0 + 8 * i))));
            m[i] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * size_t(d + c0 + 8 * i))));
        }
        for (int t = 0; t < n; ++t) {
            decode_row32<Bits>(codes + size_t(t) * row_bytes + code_bytes(Bits, c0), s, m,
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
        const float* row = x + size_t(t) * size_t(d);
        for (int j = 0; j < gpr; ++j) {
            const float* g = row + 32 * j;
            const __m256 a = _mm256_loadu_ps(g), b = _mm256_loadu_ps(g + 8), c = _mm256_loadu_ps(g + 16),
                         e = _mm256_loadu_ps(g + 24);
            const float lo = hmin(_mm256_min_ps(_mm256_min_ps(a, b), _mm256_min_ps(c, e)));
            const float hi = hmax(_mm256_max_ps(_mm256_max_ps(a, b), _mm256_max_ps(c, e)));
            const KVQParams p = kv_qparams(lo, hi, (1 << Bits) - 1);
            const size_t gi = size_t(t) * size_t(gpr) + size_t(j);
            store_scalar16(out, gi, p.scale16);
            store_scalar16(out, groups + gi, p.min16);
            const __m256 m[4] = {_mm256_set1_ps(p.min), _mm256_set1_ps(p.min), _mm256_set1_ps(p.min),
                                 _mm256_set1_ps(p.min)};
            const __m256 inv[4] = {_mm256_set1_ps(p.inv), _mm256_set1_ps(p.inv), _mm256_set1_ps(p.inv),
                                   _mm256_set1_ps(p.inv)};
            encode_row32<Bits>(g, m, inv, codes + size_t(t) * row_bytes + code_bytes(Bits, 32 * j));
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
            const __m256 sv = _mm256_cvtph_ps(_mm_set1_epi16(short(s16)));
            const __m256 mv = _mm256_cvtph_ps(_mm_set1_epi16(short(m16)));
            const __m256 s[4] = {sv, sv, sv, sv}, m[4] = {mv, mv, mv, mv};
            decode_row32<Bits>(codes + size_t(t) * row_bytes + code_bytes(Bits, 32 * j), s, m,
                               x + size_t(t) * size_t(d) + size_t(32 * j));
        }
    }
}

}  // namespace

const KVCodecKernels& kv_codec_avx2(int bits) {
    static const KVCodecKernels k8{encode_k<8>, decode_k<8>, encode_v<8>, decode_v<8>};
    static const KVCodecKernels k4{encode_k<4>, decode_k<4>, encode_v<4>, decode_v<4>};
    return bits == 8 ? k8 : k4;
}

}  // namespace nlm
