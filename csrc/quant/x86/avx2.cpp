// AVX2 + FMA + F16C kernels. Compiled with -mavx2 -mfma -mf16c only.
#include "quant/kernels.h"
#include "quant/x86/units.h"

namespace nlm {

namespace {

// 8 int32 lanes: lane i = sum over elements 4i..4i+3 of code * x.
template <bool kSigned>
inline __m256i lane_dots(__m256i codes, __m256i xq) {
    const __m256i ones = _mm256_set1_epi16(1);
    if (kSigned) {
        // u8 x s8 multiply needs an unsigned side: |w| times x carrying w's sign.
        const __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(codes, codes), _mm256_sign_epi8(xq, codes));
        return _mm256_madd_epi16(p, ones);
    }
    // codes <= 63 and |x| <= 127: the pairwise int16 sums cannot saturate.
    return _mm256_madd_epi16(_mm256_maddubs_epi16(codes, xq), ones);
}

template <typename U>
float dot_q8(const void* w, const Q8Row& x, int64_t k) {
    __m256 acc = _mm256_setzero_ps();
    float min_acc = 0.0f;
    const int64_t n = k / 32;
    for (int64_t u = 0; u < n; ++u) {
        __m256i dot = lane_dots<U::kSigned>(U::codes(w, u), load256(x.qs + 32 * u));
        if (U::kShift >= 0) dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(load256(x.sum_lane + 8 * u), U::kShift));
        const __m256 scale = _mm256_mul_ps(U::lane_scale(w, u), _mm256_loadu_ps(x.d_lane + 8 * u));
        acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc);
        if (U::kHasMin) min_acc += U::min(w, u) * x.s[u];
    }
    return hsum256(acc) + min_acc;
}

float dot_f32(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < k; ++i) s += a[i] * x[i];
    return s;
}

float dot_f16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
        const __m256 wv = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
        acc = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), acc);
    }
    float s = hsum256(acc);
    for (; i < k; ++i) s += fp16_to_f32(a[i]) * x[i];
    return s;
}

float dot_bf16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) acc = _mm256_fmadd_ps(bf16x8(a + i), _mm256_loadu_ps(x + i), acc);
    float s = hsum256(acc);
    for (; i < k; ++i) s += bf16_to_f32(a[i]) * x[i];
    return s;
}

KernelSet make() {
    KernelSet ks;
    ks.name = "avx2";
    ks.q8[uint32_t(GGMLType::Q8_0)] = dot_q8<UQ8_0>;
    ks.q8[uint32_t(GGMLType::Q4_0)] = dot_q8<UQ4_0>;
    ks.q8[uint32_t(GGMLType::Q4_1)] = dot_q8<UQ4_1>;
    ks.q8[uint32_t(GGMLType::Q5_0)] = dot_q8<UQ5_0>;
    ks.q8[uint32_t(GGMLType::Q5_1)] = dot_q8<UQ5_1>;
    ks.q8[uint32_t(GGMLType::Q4_K)] = dot_q8<UQ4_K>;
    ks.q8[uint32_t(GGMLType::Q5_K)] = dot_q8<UQ5_K>;
    ks.q8[uint32_t(GGMLType::Q6_K)] = dot_q8<UQ6_K>;
    ks.f[uint32_t(GGMLType::F32)] = dot_f32;
    ks.f[uint32_t(GGMLType::F16)] = dot_f16;
    ks.f[uint32_t(GGMLType::BF16)] = dot_bf16;
    return ks;
}

}  // namespace

const KernelSet& kernels_avx2() {
    static const KernelSet ks = make();
    return ks;
}

}  // namespace nlm
