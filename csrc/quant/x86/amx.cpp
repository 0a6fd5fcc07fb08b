// AMX-INT8 prefill over the 16-row packed layout of the avx512 tier (quant/packed.h).
//
// TDPBUSD multiplies a tile of unsigned bytes A (rows m, 4K bytes) by a tile of signed bytes B in
// VNNI layout (K rows of 64 bytes: row k holds bytes 4k..4k+3 of 16 columns) into 16 x 16 int32:
//   C[m][n] += sum_k A[m][k] * B[k][n]
// The unpacked chunks of a packed unit are exactly such a B tile (chunk c: byte 4r+i = row r,
// element 4c+i), so with
//   A = 16 activation rows of one unit, as q + 128 (Q8Row::qu), and
//   B = the unit's codes of 16 weight rows, made signed (code - offset),
// C[t][r] = sum (q + 128) * w' = i[t][r] + 128 * W[r], where i is the exact integer every tier
// computes (sum of (code - offset) * q) and W[r] the sum of row r's signed codes. From the
// integer on, the float steps are the canonical ones (quant/kernels.h): this path gives the
// avx512 tier's results bit for bit. Scales are per 32-element unit, so one TDPBUSD covers one
// unit (K = 32; Q6_K's two 16-element halves take two, K = 16).
// Full tiles of 16 activation rows go through AMX; the rows left over, and decode, through the
// AVX-512 kernel. The tier is offered only where the OS grants the tile state and a self-test
// at start-up reproduces the avx512 tier exactly (quant/dispatch.cpp).
#include <immintrin.h>

#include <cstring>

#include "quant/packed.h"
#include "quant/q8.h"
#include "quant/x86/packed512.h"
#include "quant/x86/packed_kernel.h"

namespace nlm {

namespace {

constexpr int kTile = 16;        // activation rows per tile
constexpr int kTileBlock = 4;    // tiles (64 activation rows) per pass over a thread's weights

// tmm0, tmm1: C (16 x 16 int32); tmm2, tmm3: A (16 rows x 32 or 16 bytes); tmm4, tmm5: B (8 or 4 rows x 64 bytes).
struct alignas(64) TileConfig {
    uint8_t palette = 1;
    uint8_t start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t colsb[16] = {};
    uint8_t rows[16] = {};
};

TileConfig config(bool halves) {
    TileConfig c;
    c.colsb[0] = c.colsb[1] = 64;
    c.rows[0] = c.rows[1] = kTile;
    c.colsb[2] = c.colsb[3] = halves ? 16 : 32;
    c.rows[2] = c.rows[3] = kTile;
    c.colsb[4] = c.colsb[5] = 64;
    c.rows[4] = c.rows[5] = halves ? 4 : 8;
    return c;
}

template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
void run_tiles(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
    const size_t codes_bytes = w.fmt.codes_bytes();
    const size_t scales_bytes = w.fmt.scales_bytes();
    const int64_t k = w.cols;
    alignas(64) uint8_t stage[8 * 64];      // B: the unit's signed codes, 8 chunks of 64 bytes
    alignas(64) int32_t cbuf[2][kTile][16];  // C tiles stored back
    alignas(64) float acc[kTileBlock * kTile][16];
    const __m512i ones = _mm512_set1_epi8(1);
    for (int64_t b0 = 0; b0 < m; b0 += kTileBlock * kTile) {
        const int n_tiles = int((m - b0 < kTileBlock * kTile ? m - b0 : kTileBlock * kTile) / kTile);
        for (int64_t g = g0; g < g1; ++g) {
            std::memset(acc, 0, sizeof acc);
            for (int64_t u = 0; u < w.units; ++u) {
                const uint8_t* p = w.unit(g, u);
                __m512i c[8];
                unpack512<Kind>(p, c);
                // signed codes and their row sums (per half for Q6_K)
                __m512i wsum0 = _mm512_setzero_si512(), wsum1 = _mm512_setzero_si512();
                for (int j = 0; j < 8; ++j) {
                    if (Shift >= 0) c[j] = _mm512_sub_epi8(c[j], _mm512_set1_epi8(char(1 << Shift)));
                    _mm512_store_si512(stage + 64 * j, c[j]);
                    if (TwoScales && j >= 4) {
                        wsum1 = _mm512_dpbusd_epi32(wsum1, ones, c[j]);
                    } else {
                        wsum0 = _mm512_dpbusd_epi32(wsum0, ones, c[j]);
                    }
                }
                const __m512i corr0 = _mm512_slli_epi32(wsum0, 7), corr1 = _mm512_slli_epi32(wsum1, 7);
                const uint8_t* ps = p + codes_bytes;
                __m512 sa, sb = _mm512_setzero_ps(), mn = _mm512_setzero_ps();
                if (ScaleF16) {
                    sa = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(ps)));
                } else {
                    sa = _mm512_loadu_ps(reinterpret_cast<const float*>(ps));
                    if (TwoScales) sb = _mm512_loadu_ps(reinterpret_cast<const float*>(ps + 64));
                }
                if (HasMin) mn = _mm512_loadu_ps(reinterpret_cast<const float*>(ps + scales_bytes));
                if (TwoScales) {
                    _tile_loadd(4, stage, 64);
                    _tile_loadd(5, stage + 256, 64);
                } else {
                    _tile_loadd(4, stage, 64);
                }
                for (int tile = 0; tile < n_tiles; ++tile) {
                    const int64_t t0 = b0 + int64_t(tile) * kTile;
                    const uint8_t* a = x[t0].qu + 32 * u;  // 16 rows at stride k (one Q8 buffer)
                    _tile_zero(0);
                    if (TwoScales) {
                        _tile_zero(1);
                        _tile_loadd(2, a, k);
                        _tile_loadd(3, a + 16, k);
                        _tile_dpbusd(0, 2, 4);
                        _tile_dpbusd(1, 3, 5);
                        _tile_stored(0, cbuf[0], 64);
                        _tile_stored(1, cbuf[1], 64);
                    } else {
                        _tile_loadd(2, a, k);
                        _tile_dpbusd(0, 2, 4);
                        _tile_stored(0, cbuf[0], 64);
                    }
                    for (int t = 0; t < kTile; ++t) {
                        const Q8Row& xr = x[t0 + t];
                        float* at = acc[tile * kTile + t];
                        __m512 av = _mm512_load_ps(at);
                        const __m512 dx = _mm512_set1_ps(xr.d[u]);
                        if (TwoScales) {
                            const __m512i a0 = _mm512_sub_epi32(_mm512_load_si512(cbuf[0][t]), corr0);
                            const __m512i a1 = _mm512_sub_epi32(_mm512_load_si512(cbuf[1][t]), corr1);
                            const __m512 f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a1), sb, _mm512_mul_ps(_mm512_cvtepi32_ps(a0), sa));
                            av = _mm512_fmadd_ps(f, dx, av);
                        } else {
                            const __m512i a0 = _mm512_sub_epi32(_mm512_load_si512(cbuf[0][t]), corr0);
                            av = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a0), _mm512_mul_ps(sa, dx), av);
                        }
                        if (HasMin) av = _mm512_fmadd_ps(mn, _mm512_set1_ps(xr.s[u]), av);
                        _mm512_store_ps(at, av);
                    }
                }
            }
            const int64_t r0 = g * 16;
            const int64_t nr = w.rows - r0 < 16 ? w.rows - r0 : 16;
            const __mmask16 keep = __mmask16((1u << nr) - 1);
            for (int t = 0; t < n_tiles * kTile; ++t) {
                _mm512_mask_storeu_ps(y + (b0 + t) * ldy + r0, keep, _mm512_load_ps(acc[t]));
            }
        }
    }
}

template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
    const int64_t full = m / kTile * kTile;
    // The tiles read activation rows at one stride: they must be rows of one buffer.
    bool strided = full > 0;
    for (int64_t t = 1; t < full && strided; ++t) strided = x[t].qu == x[0].qu + t * w.cols;
    if (!strided) return matmul_packed_avx512(w, x, m, y, ldy, g0, g1);
    const TileConfig cfg = config(TwoScales);
    _tile_loadconfig(&cfg);
    run_tiles<Kind, Shift, ScaleF16, TwoScales, HasMin>(w, x, full, y, ldy, g0, g1);
    _tile_release();
    if (full < m) matmul_packed_avx512(w, x + full, m - full, y + full * ldy, ldy, g0, g1);
}

struct Runner {
    template <PackKind Kind, int Shift, bool ScaleF16, bool TwoScales, bool HasMin>
    static void run(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
        nlm::run<Kind, Shift, ScaleF16, TwoScales, HasMin>(w, x, m, y, ldy, g0, g1);
    }
};

}  // namespace

void matmul_packed_amx(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                       int64_t g1) {
    if (m < kTile) return matmul_packed_avx512(w, x, m, y, ldy, g0, g1);  // decode: no full tile
    with_pack_format<Runner, false>(w.fmt, w, x, m, y, ldy, g0, g1);
}

}  // namespace nlm
