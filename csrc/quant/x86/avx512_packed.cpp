// AVX-512 VNNI matmul over repacked weights (quant/packed.h): each 512-bit
// vpdpbusd multiplies 4 codes of 16 rows by 4 broadcast activation codes, so a
// group of 16 output rows accumulates in one register with no horizontal sums.
// Up to kTokens activation rows share every unpacked weight unit (prefill).
#include <immintrin.h>

#include <cstring>

#include "quant/packed.h"
#include "quant/q8.h"
#include "quant/x86/packed512.h"
#include "quant/x86/packed_kernel.h"

namespace nlm {

namespace {

constexpr int kTokens = 8;  // activation rows sharing one unpacked weight unit
constexpr int64_t kTokenBlock512 = 64;  // activation rows per pass over a thread's weights (kept in L2)
constexpr size_t kAhead = 6;  // units prefetched ahead

inline int32_t load_i32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}

template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
    const size_t codes_bytes = w.fmt.codes_bytes();
    const size_t scales_bytes = w.fmt.scales_bytes();
    for (int64_t b0 = 0; b0 < m; b0 += kTokenBlock512) {
        const int64_t b1 = m - b0 < kTokenBlock512 ? m : b0 + kTokenBlock512;
        for (int64_t g = g0; g < g1; ++g) {
            for (int64_t t0 = b0; t0 < b1; t0 += kTokens) {
                const int nt = int(b1 - t0 < kTokens ? b1 - t0 : kTokens);
                __m512 acc[kTokens];
                for (int t = 0; t < kTokens; ++t) acc[t] = _mm512_setzero_ps();
                for (int64_t u = 0; u < w.units; ++u) {
                    const uint8_t* p = w.unit(g, u);
                    // Decode streams the weights once from memory: ask for a few units ahead
                    // (contiguous across groups; prefetching past the end cannot fault).
                    for (size_t o = 0; o < w.unit_bytes; o += 64) _mm_prefetch(reinterpret_cast<const char*>(p + kAhead * w.unit_bytes + o), _MM_HINT_T0);
                    __m512i c[8];
                    unpack512<Kind>(p, c);
                    const uint8_t* ps = p + codes_bytes;
                    __m512 sa, sb = _mm512_setzero_ps(), mn = _mm512_setzero_ps();
                    if (ScaleF16) {
                        sa = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps)));
                    } else {
                        sa = _mm512_loadu_ps(reinterpret_cast<const float*>(ps));
                        if (TwoScales) sb = _mm512_loadu_ps(reinterpret_cast<const float*>(ps + 64));
                    }
                    if (HasMin) mn = _mm512_loadu_ps(reinterpret_cast<const float*>(ps + scales_bytes));
                    for (int t = 0; t < nt; ++t) {
                        const Q8Row& xr = x[t0 + t];
                        const int8_t* xq = xr.qs + 32 * u;
                        const __m512 dx = _mm512_set1_ps(xr.d[u]);
                        if (TwoScales) {
                            __m512i a0 = _mm512_setzero_si512(), a1 = _mm512_setzero_si512();
                            for (int j = 0; j < 4; ++j) a0 = _mm512_dpbusd_epi32(a0, c[j], _mm512_set1_epi32(load_i32(xq + 4 * j)));
                            for (int j = 4; j < 8; ++j) a1 = _mm512_dpbusd_epi32(a1, c[j], _mm512_set1_epi32(load_i32(xq + 4 * j)));
                            if (Shift >= 0) {
                                a0 = _mm512_sub_epi32(a0, _mm512_set1_epi32(xr.sum16[2 * u] * (1 << Shift)));
                                a1 = _mm512_sub_epi32(a1, _mm512_set1_epi32(xr.sum16[2 * u + 1] * (1 << Shift)));
                            }
                            const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), sb, _mm512_mul_ps(_mm512_cvtepi32_ps(a0), sa));
                            acc[t] = _mm512_fmadd_ps(f, dx, acc[t]);
                        } else {
                            __m512i a = _mm512_setzero_si512();
                            for (int j = 0; j < 8; ++j) a = _mm512_dpbusd_epi32(a, c[j], _mm512_set1_epi32(load_i32(xq + 4 * j)));
                            if (Shift >= 0) {
                                a = _mm512_sub_epi32(a, _mm512_set1_epi32((xr.sum16[2 * u] + xr.sum16[2 * u + 1]) * (1 << Shift)));
                            }
                            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(sa, dx), acc[t]);
                        }
                        if (HasMin) acc[t] = _mm512_fmadd_ps(mn, _mm512_set1_ps(xr.s[u]), acc[t]);
                    }
                }
                const int64_t r0 = g * 16;
                const int64_t nr = w.rows - r0 < 16 ? w.rows - r0 : 16;
                const __mmask16 keep = __mmask16((1u << nr) - 1);
                for (int t = 0; t < nt; ++t) _mm512_mask_storeu_ps(y + (t0 + t) * ldy + r0, keep, acc[t]);
            }
        }
    }
}

struct Runner {
    template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
    static void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
        nlm::run<Kind, Shift, ScaleF16, TwoScales, HasMin>(w, x, m, y, ldy, g0, g1);
    }
};

}  // namespace

void matmul_packed_avx512(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                          int64_t g1) {
    with_pack_format<Runner, false>(w.fmt, w, x, m, y, ldy, g0, g1);
}

}  // namespace nlm
