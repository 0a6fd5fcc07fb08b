// AVX-512 F/BW/VL/DQ + VNNI tier: the 16-row packed matmul (avx512_packed.cpp),
// float dots in the canonical 32-lane order on two 512-bit accumulators, and the
// 256-bit attention kernels (head_dim rows are short; the order is the canonical one).
#include "quant/kernels.h"
#include "quant/x86/packed_kernel.h"
#include "quant/x86/simd256.h"

namespace nlm {

namespace {

// Lanes 0-15 in z0 and 16-31 in z1: v = (lo z0 + hi z0) + (lo z1 + hi z1), as kernels.h orders them.
inline float reduce32(__m512 z0, __m512 z1) {
    const __m256 a = _mm256_add_ps(_mm512_castps512_ps256(z0), _mm512_extractf32x8_ps(z0, 1));
    const __m256 b = _mm256_add_ps(_mm512_castps512_ps256(z1), _mm512_extractf32x8_ps(z1, 1));
    return hsum8(_mm256_add_ps(a, b));
}

template <typename Load16, typename Load1>
inline float dot32_512(const Load16& w16, const Load1& w1, const float* x, int64_t k) {
    __m512 z0 = _mm512_setzero_ps(), z1 = _mm512_setzero_ps();
    const int64_t k32 = k - k % 32;
    for (int64_t i = 0; i < k32; i += 32) {
        z0 = _mm512_fmadd_ps(w16(i), _mm512_loadu_ps(x + i), z0);
        z1 = _mm512_fmadd_ps(w16(i + 16), _mm512_loadu_ps(x + i + 16), z1);
    }
    float s = reduce32(z0, z1);
    for (int64_t i = k32; i < k; ++i) s = std::fma(w1(i), x[i], s);
    return s;
}

float dot_f32(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    return dot32_512([a](int64_t i) { return _mm512_loadu_ps(a + i); }, [a](int64_t i) { return a[i]; }, x, k);
}

float dot_f16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    return dot32_512([a](int64_t i) { return _mm512_cvtph_ps(load256(a + 2 * i)); },
                     [a](int64_t i) { return fp16_to_f32(load_u16(a + 2 * i)); }, x, k);
}

float dot_bf16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    auto widen = [](__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); };
    return dot32_512([a, widen](int64_t i) { return widen(load256(a + 2 * i)); },
                     [a](int64_t i) { return bf16_to_f32(load_u16(a + 2 * i)); }, x, k);
}

KernelSet make() {
    KernelSet ks = kernel_set_256("avx512");  // attention rows are short: the 256-bit kernels, canonical order
    ks.f[uint32_t(GGMLType::F32)] = dot_f32;
    ks.f[uint32_t(GGMLType::F16)] = dot_f16;
    ks.f[uint32_t(GGMLType::BF16)] = dot_bf16;
    ks.packed = matmul_packed_avx512;
    ks.pack_rows = 16;
    ks.pack_signed_bytes = false;
    ks.kv8 = &kv_codec_avx512(8);
    ks.kv4 = &kv_codec_avx512(4);
    return ks;
}

}  // namespace

const KernelSet& kernels_avx512() {
    static const KernelSet ks = make();
    return ks;
}

const KernelSet& kernels_amx() {
    static const KernelSet ks = [] {
        KernelSet k = make();
        k.name = "amx";
        k.packed = matmul_packed_amx;  // AMX tiles in prefill, the AVX-512 kernel in decode
        return k;
    }();
    return ks;
}

}  // namespace nlm
