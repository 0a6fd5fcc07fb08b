// 256-bit float kernels in the canonical orders of quant/kernels.h: weight-row
// dots for F32/F16/BF16, attention over one KV block, f16 conversion. Included
// by each x86 ISA's source file (compiled with its own flags, at least AVX2 +
// FMA + F16C); the anonymous namespace keeps every copy private to its file.
#pragma once

#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "quant/canon.h"
#include "quant/formats.h"
#include "quant/fp16.h"
#include "quant/kernels.h"

namespace nlm {
namespace {

inline __m256i load256(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

// reduce8 of kernels.h: ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7)).
inline float hsum8(__m256 v) {
    __m256 h = _mm256_hadd_ps(v, v);  // v0+v1, v2+v3, ., . | v4+v5, v6+v7, ., .
    h = _mm256_hadd_ps(h, h);         // (v0+v1)+(v2+v3) ... | (v4+v5)+(v6+v7) ...
    return _mm_cvtss_f32(_mm_add_ss(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}

// Lane j = reduce8(a[j]): eight reductions at once.
inline __m256 hsum8x8(const __m256* a) {
    const __m256 h01 = _mm256_hadd_ps(a[0], a[1]), h23 = _mm256_hadd_ps(a[2], a[3]);
    const __m256 h45 = _mm256_hadd_ps(a[4], a[5]), h67 = _mm256_hadd_ps(a[6], a[7]);
    const __m256 h0123 = _mm256_hadd_ps(h01, h23);  // a0..a3: (0+1)+(2+3) | a0..a3: (4+5)+(6+7)
    const __m256 h4567 = _mm256_hadd_ps(h45, h67);
    return _mm256_add_ps(_mm256_permute2f128_ps(h0123, h4567, 0x20), _mm256_permute2f128_ps(h0123, h4567, 0x31));
}

inline __m256 f16x8(const void* p) { return _mm256_cvtph_ps(_mm_loadu_si128(static_cast<const __m128i*>(p))); }
inline __m256 bf16x8(const void* p) {
    const __m128i h = _mm_loadu_si128(static_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
inline uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

// The 32-lane canonical dot: four 8-lane accumulators, (A0 + A1) + (A2 + A3), then the tail.
template <typename Load8, typename Load1>
inline float dot32(const Load8& w8, const Load1& w1, const float* x, int64_t k) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    const int64_t k32 = k - k % 32;
    for (int64_t i = 0; i < k32; i += 32) {
        a0 = _mm256_fmadd_ps(w8(i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(w8(i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(w8(i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(w8(i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    float s = hsum8(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (int64_t i = k32; i < k; ++i) s = std::fma(w1(i), x[i], s);
    return s;
}

inline float dot_f32_256(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    return dot32([a](int64_t i) { return _mm256_loadu_ps(a + i); }, [a](int64_t i) { return a[i]; }, x, k);
}

inline float dot_f16_256(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    return dot32([a](int64_t i) { return f16x8(a + 2 * i); }, [a](int64_t i) { return fp16_to_f32(load_u16(a + 2 * i)); },
                 x, k);
}

inline float dot_bf16_256(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    return dot32([a](int64_t i) { return bf16x8(a + 2 * i); }, [a](int64_t i) { return bf16_to_f32(load_u16(a + 2 * i)); },
                 x, k);
}

// s[h * lds + j] = scale * (q_h . k_j): 8 keys at a time share each query load, and
// their 8 lane sums are reduced together (hsum8x8); a head_dim tail is added per key.
inline void attn_scores_256(const float* q, int nh, const float* k, int n, int d, float scale, float* s, int64_t lds) {
    const int d8 = d - d % 8;
    const __m256 vs = _mm256_set1_ps(scale);
    for (int h = 0; h < nh; ++h) {
        const float* qh = q + int64_t(h) * d;
        float* sh = s + int64_t(h) * lds;
        int j = 0;
        for (; j + 8 <= n; j += 8) {
            const float* kj = k + int64_t(j) * d;
            __m256 a[8];
            for (int t = 0; t < 8; ++t) a[t] = _mm256_setzero_ps();
            for (int e = 0; e < d8; e += 8) {
                const __m256 qv = _mm256_loadu_ps(qh + e);
                for (int t = 0; t < 8; ++t) a[t] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(kj + int64_t(t) * d + e), a[t]);
            }
            __m256 r = hsum8x8(a);
            if (d8 < d) {
                alignas(32) float tmp[8];
                _mm256_store_ps(tmp, r);
                for (int t = 0; t < 8; ++t) {
                    for (int e = d8; e < d; ++e) tmp[t] = std::fma(qh[e], kj[int64_t(t) * d + e], tmp[t]);
                }
                r = _mm256_load_ps(tmp);
            }
            _mm256_storeu_ps(sh + j, _mm256_mul_ps(r, vs));
        }
        for (; j < n; ++j) {
            const float* kj = k + int64_t(j) * d;
            __m256 a = _mm256_setzero_ps();
            for (int e = 0; e < d8; e += 8) a = _mm256_fmadd_ps(_mm256_loadu_ps(qh + e), _mm256_loadu_ps(kj + e), a);
            float r = hsum8(a);
            for (int e = d8; e < d; ++e) r = std::fma(qh[e], kj[e], r);
            sh[j] = r * scale;
        }
    }
}

// out[h * d + e] += sum_j p[h * ldp + j] * v_j[e], NC chunks of 8 columns held in registers
// (compile-time, so they stay there) while the block's keys pass.
template <int NC>
inline void values_chunk(const float* ph, const float* v, int n, int d, float* o) {
    __m256 acc[NC];
    for (int c = 0; c < NC; ++c) acc[c] = _mm256_loadu_ps(o + 8 * c);
    for (int j = 0; j < n; ++j) {
        const __m256 pj = _mm256_set1_ps(ph[j]);
        const float* vj = v + int64_t(j) * d;
        for (int c = 0; c < NC; ++c) acc[c] = _mm256_fmadd_ps(pj, _mm256_loadu_ps(vj + 8 * c), acc[c]);
    }
    for (int c = 0; c < NC; ++c) _mm256_storeu_ps(o + 8 * c, acc[c]);
}

inline void attn_values_256(const float* p, int64_t ldp, int nh, const float* v, int n, int d, float* out) {
    const int d8 = d - d % 8;
    for (int h = 0; h < nh; ++h) {
        const float* ph = p + int64_t(h) * ldp;
        float* o = out + int64_t(h) * d;
        int e0 = 0;
        for (; e0 + 64 <= d8; e0 += 64) values_chunk<8>(ph, v + e0, n, d, o + e0);
        switch ((d8 - e0) / 8) {
            case 7: values_chunk<7>(ph, v + e0, n, d, o + e0); break;
            case 6: values_chunk<6>(ph, v + e0, n, d, o + e0); break;
            case 5: values_chunk<5>(ph, v + e0, n, d, o + e0); break;
            case 4: values_chunk<4>(ph, v + e0, n, d, o + e0); break;
            case 3: values_chunk<3>(ph, v + e0, n, d, o + e0); break;
            case 2: values_chunk<2>(ph, v + e0, n, d, o + e0); break;
            case 1: values_chunk<1>(ph, v + e0, n, d, o + e0); break;
            default: break;
        }
        for (int e = d8; e < d; ++e) {
            for (int j = 0; j < n; ++j) o[e] = std::fma(ph[j], v[int64_t(j) * d + e], o[e]);
        }
    }
}

// exp_approx (quant/canon.h) of 8 values, step for step.
inline __m256 exp8(__m256 x) {
    // max/min return their second operand for a NaN: NaN stays NaN, as in the scalar clamp
    x = _mm256_min_ps(_mm256_set1_ps(88.0f), _mm256_max_ps(_mm256_set1_ps(-87.0f), x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256 g = _mm256_sub_ps(_mm256_fmadd_ps(n, _mm256_set1_ps(-0.693145751953125f), x),
                                   _mm256_mul_ps(n, _mm256_set1_ps(1.42860682030941723212e-6f)));
    __m256 p = _mm256_set1_ps(1.0f / 5040.0f);
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f / 720.0f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f / 120.0f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f / 24.0f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f / 6.0f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, g, _mm256_set1_ps(1.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// canon_softmax (quant/canon.h), 8 values at a time.
inline float softmax_256(float* x, int64_t n) {
    const int64_t n8 = n - n % 8;
    __m256 mv = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
    for (int64_t i = 0; i < n8; i += 8) mv = _mm256_max_ps(_mm256_loadu_ps(x + i), mv);  // a NaN x is passed over
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mv);
    float mx = -std::numeric_limits<float>::infinity();
    for (int j = 0; j < 8; ++j) mx = lanes[j] > mx ? lanes[j] : mx;
    for (int64_t i = n8; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    const __m256 m8 = _mm256_set1_ps(mx);
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n8; i += 8) {
        const __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(x + i), m8));
        _mm256_storeu_ps(x + i, e);
        acc = _mm256_add_ps(acc, e);
    }
    float sum = hsum8(acc);
    for (int64_t i = n8; i < n; ++i) {
        x[i] = exp_approx(x[i] - mx);
        sum += x[i];
    }
    return sum;
}

inline void f16_to_f32_256(const uint16_t* src, float* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, f16x8(src + i));
    for (; i < n; ++i) dst[i] = fp16_to_f32(src[i]);
}

inline void f32_to_f16_256(const float* src, uint16_t* dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
    }
    for (; i < n; ++i) dst[i] = f32_to_fp16(src[i]);
}

// A tier built on the generic one (its row-wise integer dots serve unpacked weights, with the
// canonical results) with these 256-bit float, attention and conversion kernels.
inline KernelSet kernel_set_256(const char* name) {
    KernelSet ks = kernels_generic();
    ks.name = name;
    ks.f[uint32_t(GGMLType::F32)] = dot_f32_256;
    ks.f[uint32_t(GGMLType::F16)] = dot_f16_256;
    ks.f[uint32_t(GGMLType::BF16)] = dot_bf16_256;
    ks.attn_scores = attn_scores_256;
    ks.attn_values = attn_values_256;
    ks.softmax = softmax_256;
    ks.f16_to_f32 = f16_to_f32_256;
    ks.f32_to_f16 = f32_to_f16_256;
    ks.kv8 = &kv_codec_avx2(8);
    ks.kv4 = &kv_codec_avx2(4);
    return ks;
}

}  // namespace
}  // namespace nlm
