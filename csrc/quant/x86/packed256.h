// Matmul over weights repacked in 8-row groups (quant/packed.h, R = 8) for
// 256-bit registers: one chunk of 32 bytes holds 4 codes of each of 8 rows, so one
// integer multiply against 4 broadcast activation codes sums 8 rows at once and
// the 8 row accumulators stay in one register: no horizontal sums.
//
// The integer product comes from a policy, so the same kernel serves two tiers:
//   MaddubsDot (AVX2)     vpmaddubsw (u8 x s8 -> pairs summed to s16) + vpmaddwd by ones (-> s32).
//                         The s16 sums cannot saturate: codes of b bits and |x| <= 127 let 2^(4-b+1)
//                         chunks share one s16 sum (Q4: 8, Q5: 4, Q6: 2). Q8_0 keeps its int8 codes and
//                         multiplies |w| by x carrying w's sign (vpsignb), one chunk per s16 sum.
//   VnniDot (AVX-VNNI)    vpdpbusd (u8 x s8, 4 products summed into s32) on unsigned codes; Q8_0's
//                         codes are q + 128, and 128 * sum(x) is taken back out.
// Prefill: up to kTokenBlock activation rows pass each unpacked weight unit (the
// codes stay in registers, the row accumulators in L1); decode (one row) keeps its
// accumulator in a register and prefetches the weight stream ahead.
// The float steps follow the canonical order of quant/kernels.h.
#pragma once

#include <immintrin.h>

#include <cstring>

#include "quant/packed.h"
#include "quant/q8.h"
#include "quant/x86/simd256.h"

namespace nlm {
namespace {

constexpr int kTokenBlock = 32;  // activation rows per pass over the weights (prefill)
constexpr size_t kAhead256 = 8;  // units prefetched ahead

inline int32_t load_i32(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return v;
}
inline __m256i bcast4(const int8_t* p) { return _mm256_set1_epi32(load_i32(p)); }

struct MaddubsDot {
    static constexpr bool kSignedBytes = true;
    // Sum over chunks [c0, c1) of codes c[j] . x[4j..4j+3], `group` chunks per s16 sum.
    template <int Group, bool Signed>
    static __m256i sum(const __m256i* c, const uint8_t* w, const int8_t* xq, int c0, int c1) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i acc = _mm256_setzero_si256();
        for (int g = c0; g < c1; g += Group) {
            __m256i s16 = _mm256_setzero_si256();
            for (int j = g; j < g + Group; ++j) {
                __m256i xb = bcast4(xq + 4 * j);
                if (Signed) xb = _mm256_sign_epi8(xb, load256(w + 32 * j));  // x * sign(w); c[j] holds |w|
                s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(c[j], xb));
            }
            acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones));
        }
        return acc;
    }
};

#if defined(__AVXVNNI__)
struct VnniDot {
    static constexpr bool kSignedBytes = false;
    template <int Group, bool Signed>
    static __m256i sum(const __m256i* c, const uint8_t*, const int8_t* xq, int c0, int c1) {
        // two independent chains, so consecutive vpdpbusd do not wait on each other
        __m256i a = _mm256_setzero_si256(), b = _mm256_setzero_si256();
        for (int j = c0; j < c1; j += 2) {
            a = _mm256_dpbusd_avx_epi32(a, c[j], bcast4(xq + 4 * j));
            b = _mm256_dpbusd_avx_epi32(b, c[j + 1], bcast4(xq + 4 * (j + 1)));
        }
        return _mm256_add_epi32(a, b);
    }
};
#endif

// Codes of one unit as 8 registers of unsigned bytes (|q| for signed Q8_0).
template <PackKind Kind, bool Signed>
inline void unpack256(const uint8_t* p, __m256i c[8]) {
    if (Kind == PackKind::Byte) {
        for (int j = 0; j < 8; ++j) c[j] = Signed ? _mm256_abs_epi8(load256(p + 32 * j)) : load256(p + 32 * j);
        return;
    }
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    for (int j = 0; j < 4; ++j) {
        const __m256i v = load256(p + 32 * j);
        c[j] = _mm256_and_si256(v, m4);
        c[j + 4] = _mm256_and_si256(_mm256_srli_epi16(v, 4), m4);
    }
    if (Kind == PackKind::Nibble5) {
        // bit c of each plane byte -> bit 4 (the shift keeps it inside its byte)
        const __m256i h = load256(p + 128), b4 = _mm256_set1_epi8(0x10);
        c[0] = _mm256_or_si256(c[0], _mm256_and_si256(_mm256_slli_epi16(h, 4), b4));
        c[1] = _mm256_or_si256(c[1], _mm256_and_si256(_mm256_slli_epi16(h, 3), b4));
        c[2] = _mm256_or_si256(c[2], _mm256_and_si256(_mm256_slli_epi16(h, 2), b4));
        c[3] = _mm256_or_si256(c[3], _mm256_and_si256(_mm256_slli_epi16(h, 1), b4));
        c[4] = _mm256_or_si256(c[4], _mm256_and_si256(h, b4));
        c[5] = _mm256_or_si256(c[5], _mm256_and_si256(_mm256_srli_epi16(h, 1), b4));
        c[6] = _mm256_or_si256(c[6], _mm256_and_si256(_mm256_srli_epi16(h, 2), b4));
        c[7] = _mm256_or_si256(c[7], _mm256_and_si256(_mm256_srli_epi16(h, 3), b4));
    }
    if (Kind == PackKind::Nibble6) {
        const __m256i m30 = _mm256_set1_epi8(0x30);
        for (int t = 0; t < 2; ++t) {
            const __m256i h = load256(p + 128 + 32 * t);  // bits 2j..2j+1 -> bits 4..5
            c[4 * t + 0] = _mm256_or_si256(c[4 * t + 0], _mm256_and_si256(_mm256_slli_epi16(h, 4), m30));
            c[4 * t + 1] = _mm256_or_si256(c[4 * t + 1], _mm256_and_si256(_mm256_slli_epi16(h, 2), m30));
            c[4 * t + 2] = _mm256_or_si256(c[4 * t + 2], _mm256_and_si256(h, m30));
            c[4 * t + 3] = _mm256_or_si256(c[4 * t + 3], _mm256_and_si256(_mm256_srli_epi16(h, 2), m30));
        }
    }
}

template <class Dot, PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin, bool Signed>
struct Packed256 {
    // Chunks per s16 sum for MaddubsDot (ignored by VnniDot).
    static constexpr int kGroup = Signed ? 1 : Kind == PackKind::Nibble ? (TwoScales ? 4 : 8)
                                  : Kind == PackKind::Nibble5 ? 4 : 2;

    struct Scales {
        __m256 sa, sb, mn;
    };

    static Scales scales(const uint8_t* p, size_t codes_bytes) {
        const uint8_t* ps = p + codes_bytes;
        Scales s;
        if (ScaleF16) {
            s.sa = f16x8(ps);
        } else {
            s.sa = _mm256_loadu_ps(reinterpret_cast<const float*>(ps));
        }
        s.sb = TwoScales ? _mm256_loadu_ps(reinterpret_cast<const float*>(ps + 32)) : _mm256_setzero_ps();
        s.mn = HasMin ? _mm256_loadu_ps(reinterpret_cast<const float*>(ps + (ScaleF16 ? 16 : 32) * (TwoScales ? 2 : 1)))
                      : _mm256_setzero_ps();
        return s;
    }

    // acc (8 rows) += this unit of the rows times activation row x, unit u.
    static __m256 step(__m256 acc, const __m256i* c, const uint8_t* p, const Scales& s, const Q8Row& x, int64_t u) {
        const int8_t* xq = x.qs + 32 * u;
        const __m256 dx = _mm256_set1_ps(x.d[u]);
        if (TwoScales) {
            __m256i a0 = Dot::template sum<kGroup, Signed>(c, p, xq, 0, 4);
            __m256i a1 = Dot::template sum<kGroup, Signed>(c, p, xq, 4, 8);
            if (Shift >= 0) {
                a0 = _mm256_sub_epi32(a0, _mm256_set1_epi32(x.sum16[2 * u] * (1 << Shift)));
                a1 = _mm256_sub_epi32(a1, _mm256_set1_epi32(x.sum16[2 * u + 1] * (1 << Shift)));
            }
            const __m256 f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a1), s.sb, _mm256_mul_ps(_mm256_cvtepi32_ps(a0), s.sa));
            acc = _mm256_fmadd_ps(f, dx, acc);
        } else {
            __m256i a = Dot::template sum<kGroup, Signed>(c, p, xq, 0, 8);
            if (Shift >= 0) a = _mm256_sub_epi32(a, _mm256_set1_epi32((x.sum16[2 * u] + x.sum16[2 * u + 1]) * (1 << Shift)));
            acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_mul_ps(s.sa, dx), acc);
        }
        if (HasMin) acc = _mm256_fmadd_ps(s.mn, _mm256_set1_ps(x.s[u]), acc);
        return acc;
    }

    static void store(float* y, int64_t nr, __m256 v) {
        if (nr == 8) {
            _mm256_storeu_ps(y, v);
            return;
        }
        alignas(32) float tmp[8];
        _mm256_store_ps(tmp, v);
        std::memcpy(y, tmp, size_t(nr) * sizeof(float));
    }

    static void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
        const size_t codes_bytes = w.fmt.codes_bytes();
        if (m == 1) {  // decode: stream the weights once, accumulator in a register
            for (int64_t g = g0; g < g1; ++g) {
                __m256 acc = _mm256_setzero_ps();
                for (int64_t u = 0; u < w.units; ++u) {
                    const uint8_t* p = w.unit(g, u);
                    // prefetching past the end cannot fault
                    for (size_t o = 0; o < w.unit_bytes; o += 64) {
                        _mm_prefetch(reinterpret_cast<const char*>(p + kAhead256 * w.unit_bytes + o), _MM_HINT_T0);
                    }
                    __m256i c[8];
                    unpack256<Kind, Signed>(p, c);
                    acc = step(acc, c, p, scales(p, codes_bytes), x[0], u);
                }
                store(y + g * 8, w.rows - g * 8 < 8 ? w.rows - g * 8 : 8, acc);
            }
            return;
        }
        for (int64_t t0 = 0; t0 < m; t0 += kTokenBlock) {  // prefill: token blocks outside, weights inside
            const int nt = int(m - t0 < kTokenBlock ? m - t0 : kTokenBlock);
            for (int64_t g = g0; g < g1; ++g) {
                __m256 acc[kTokenBlock];
                for (int t = 0; t < nt; ++t) acc[t] = _mm256_setzero_ps();
                for (int64_t u = 0; u < w.units; ++u) {
                    const uint8_t* p = w.unit(g, u);
                    __m256i c[8];
                    unpack256<Kind, Signed>(p, c);
                    const Scales s = scales(p, codes_bytes);
                    for (int t = 0; t < nt; ++t) acc[t] = step(acc[t], c, p, s, x[t0 + t], u);
                }
                const int64_t nr = w.rows - g * 8 < 8 ? w.rows - g * 8 : 8;
                for (int t = 0; t < nt; ++t) store(y + (t0 + t) * ldy + g * 8, nr, acc[t]);
            }
        }
    }
};

template <class Dot>
struct Run256 {
    template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
    static void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
        constexpr bool kSigned = Kind == PackKind::Byte && Dot::kSignedBytes;
        Packed256<Dot, Kind, Shift, ScaleF16, TwoScales, HasMin, kSigned>::run(w, x, m, y, ldy, g0, g1);
    }
};

template <class Dot>
void matmul_packed256(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
    with_pack_format<Run256<Dot>, Dot::kSignedBytes>(w.fmt, w, x, m, y, ldy, g0, g1);
}

}  // namespace
}  // namespace nlm
