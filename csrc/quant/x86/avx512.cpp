// AVX-512 F/BW/VL/DQ + VNNI kernels: two 32-element units per 512-bit step.
#include "quant/kernels.h"
#include "quant/x86/packed_kernel.h"
#include "quant/x86/units.h"

namespace nlm {

namespace {

inline __m512i join(__m256i lo, __m256i hi) { return _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1); }
inline __m512 join(__m256 lo, __m256 hi) { return _mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1); }

template <typename U>
float dot_q8(const void* w, const Q8Row& x, int64_t k) {
    // Signed Q8_0 codes are biased by 128 into u8 for vpdpbusd, and the bias is taken
    // back out with the lane sums of x: (q + 128) . x - 128 * sum(x).
    constexpr int kShift = U::kSigned ? 7 : U::kShift;
    __m512 acc = _mm512_setzero_ps();
    float min_acc = 0.0f;
    const int64_t n = k / 32;
    int64_t u = 0;
    for (; u + 2 <= n; u += 2) {
        __m512i c = join(U::codes(w, u), U::codes(w, u + 1));
        if (U::kSigned) c = _mm512_xor_si512(c, _mm512_set1_epi8(char(0x80)));
        __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), c, _mm512_loadu_si512(x.qs + 32 * u));
        if (kShift >= 0) dot = _mm512_sub_epi32(dot, _mm512_slli_epi32(_mm512_loadu_si512(x.sum_lane + 8 * u), kShift));
        const __m512 scale = _mm512_mul_ps(join(U::lane_scale(w, u), U::lane_scale(w, u + 1)), _mm512_loadu_ps(x.d_lane + 8 * u));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), scale, acc);
        if (U::kHasMin) min_acc += U::min(w, u) * x.s[u] + U::min(w, u + 1) * x.s[u + 1];
    }
    float total = _mm512_reduce_add_ps(acc) + min_acc;
    if (u < n) {  // odd unit count: one 256-bit step
        __m256i c = U::codes(w, u);
        if (U::kSigned) c = _mm256_xor_si256(c, _mm256_set1_epi8(char(0x80)));
        __m256i dot = _mm256_dpbusd_epi32(_mm256_setzero_si256(), c, load256(x.qs + 32 * u));
        if (kShift >= 0) dot = _mm256_sub_epi32(dot, _mm256_slli_epi32(load256(x.sum_lane + 8 * u), kShift));
        const __m256 scale = _mm256_mul_ps(U::lane_scale(w, u), _mm256_loadu_ps(x.d_lane + 8 * u));
        total += hsum256(_mm256_mul_ps(_mm256_cvtepi32_ps(dot), scale));
        if (U::kHasMin) total += U::min(w, u) * x.s[u];
    }
    return total;
}

float dot_f32(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= k; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(x + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
    }
    if (i + 16 <= k) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(x + i), acc0);
        i += 16;
    }
    if (i < k) {  // masked tail
        const __mmask16 m = __mmask16((1u << (k - i)) - 1);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, x + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

float dot_f16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        const __m512 wv = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i)));
        acc = _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + i), acc);
    }
    if (i < k) {
        const __mmask16 m = __mmask16((1u << (k - i)) - 1);
        const __m512 wv = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, a + i));
        acc = _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

float dot_bf16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    auto widen = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
    for (; i + 16 <= k; i += 16) {
        acc = _mm512_fmadd_ps(widen(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i))), _mm512_loadu_ps(x + i), acc);
    }
    if (i < k) {
        const __mmask16 m = __mmask16((1u << (k - i)) - 1);
        acc = _mm512_fmadd_ps(widen(_mm256_maskz_loadu_epi16(m, a + i)), _mm512_maskz_loadu_ps(m, x + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

KernelSet make() {
    KernelSet ks;
    ks.name = "avx512";
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
    ks.packed = matmul_packed_avx512;
    return ks;
}

}  // namespace

const KernelSet& kernels_avx512() {
    static const KernelSet ks = make();
    return ks;
}

}  // namespace nlm
