// Portable scalar kernels: the same integer algorithm as the SIMD tiers (weight
// codes times Q8 activation codes, summed exactly in int32 per 32-element unit,
// then scaled) and the same float operations in the same order (kernels.h), so
// every SIMD tier gives these results bit for bit. Compiled with
// -ffp-contract=off: every fused multiply-add here is an explicit std::fma.
#include <cmath>
#include <cstring>

#include "quant/canon.h"
#include "quant/formats.h"
#include "quant/fp16.h"
#include "quant/kernels.h"

namespace nlm {

namespace {

inline void scale_min_k4(int j, const uint8_t* q, int* sc, int* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4);
        *mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// The canonical per-unit steps (kernels.h).
inline float acc_unit(float acc, int32_t i, float w_scale, float x_d) { return std::fma(float(i), w_scale * x_d, acc); }
inline float acc_min(float acc, float w_min, float x_s) { return std::fma(w_min, x_s, acc); }

inline uint16_t load_u16(const uint8_t* p) {
    uint16_t v;
    std::memcpy(&v, p, 2);
    return v;
}

float dot_q8_0(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q8_0*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; ++i) {
        int32_t s = 0;
        for (int j = 0; j < 32; ++j) s += int32_t(b[i].qs[j]) * x.qs[i * 32 + j];
        acc = acc_unit(acc, s, fp16_to_f32(b[i].d), x.d[i]);
    }
    return acc;
}

float dot_q4_0(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q4_0*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK4_0; ++i) {
        const int8_t* xq = x.qs + i * 32;
        int32_t s = 0;
        for (int j = 0; j < 16; ++j) s += ((b[i].qs[j] & 0x0f) - 8) * xq[j] + ((b[i].qs[j] >> 4) - 8) * xq[j + 16];
        acc = acc_unit(acc, s, fp16_to_f32(b[i].d), x.d[i]);
    }
    return acc;
}

float dot_q4_1(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q4_1*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK4_1; ++i) {
        const int8_t* xq = x.qs + i * 32;
        int32_t s = 0;
        for (int j = 0; j < 16; ++j) s += (b[i].qs[j] & 0x0f) * xq[j] + (b[i].qs[j] >> 4) * xq[j + 16];
        acc = acc_unit(acc, s, fp16_to_f32(b[i].d), x.d[i]);
        acc = acc_min(acc, fp16_to_f32(b[i].m), x.s[i]);
    }
    return acc;
}

template <typename Block>
inline int32_t dot5(const Block& b, const int8_t* xq, int offset) {
    uint32_t qh;
    std::memcpy(&qh, b.qh, 4);
    int32_t s = 0;
    for (int j = 0; j < 16; ++j) {
        const int lo = (b.qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
        const int hi = (b.qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
        s += (lo - offset) * xq[j] + (hi - offset) * xq[j + 16];
    }
    return s;
}

float dot_q5_0(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q5_0*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK5_0; ++i) acc = acc_unit(acc, dot5(b[i], x.qs + i * 32, 16), fp16_to_f32(b[i].d), x.d[i]);
    return acc;
}

float dot_q5_1(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q5_1*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK5_1; ++i) {
        acc = acc_unit(acc, dot5(b[i], x.qs + i * 32, 0), fp16_to_f32(b[i].d), x.d[i]);
        acc = acc_min(acc, fp16_to_f32(b[i].m), x.s[i]);
    }
    return acc;
}

// Q4_K / Q5_K: unit j of super-block i is activation block 8i + j;
// scale = d * sc[j], min = -(dmin * mn[j]) (as decode_unit computes them).
template <bool kFive, typename Block>
float dot_k45(const Block* b, const Q8Row& x, int64_t k) {
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        for (int j = 0; j < 8; ++j) {
            int sc, mn;
            scale_min_k4(j, b[i].scales, &sc, &mn);
            const uint8_t* q = b[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            const int8_t* xq = x.qs + (i * 8 + j) * 32;
            int32_t s = 0;
            for (int l = 0; l < 32; ++l) {
                int c = (q[l] >> shift) & 0x0f;
                if constexpr (kFive) c |= ((b[i].qh[l] >> j) & 1) << 4;
                s += c * xq[l];
            }
            acc = acc_unit(acc, s, d * float(sc), x.d[i * 8 + j]);
            acc = acc_min(acc, -(dmin * float(mn)), x.s[i * 8 + j]);
        }
    }
    return acc;
}

float dot_q4_K(const void* w, const Q8Row& x, int64_t k) { return dot_k45<false>(static_cast<const block_q4_K*>(w), x, k); }
float dot_q5_K(const void* w, const Q8Row& x, int64_t k) { return dot_k45<true>(static_cast<const block_q5_K*>(w), x, k); }

float dot_q6_K(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q6_K*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = fp16_to_f32(b[i].d);
        for (int u = 0; u < 8; ++u) {  // 32-element unit u = activation block 8i + u
            const int h = u / 4, r0 = (u % 4) * 32;
            const uint8_t* ql = b[i].ql + 64 * h + r0 % 64;
            const uint8_t* qh = b[i].qh + 32 * h;
            const int lshift = 4 * (r0 / 64), hshift = 2 * (u % 4);
            const int8_t* xq = x.qs + (i * 8 + u) * 32;
            int32_t s[2] = {0, 0};
            for (int l = 0; l < 32; ++l) {
                const int q = (((ql[l] >> lshift) & 0x0f) | (((qh[l] >> hshift) & 3) << 4)) - 32;
                s[l / 16] += q * xq[l];
            }
            const int8_t* sc = b[i].scales + 8 * h + 2 * (u % 4);
            const float f = std::fma(float(s[1]), d * float(sc[1]), float(s[0]) * (d * float(sc[0])));
            acc = std::fma(f, x.d[i * 8 + u], acc);
        }
    }
    return acc;
}

float dot_f32(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    return canon_dot32([a](int64_t i) { return a[i]; }, x, k);
}

float dot_f16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    return canon_dot32([a](int64_t i) { return fp16_to_f32(load_u16(a + 2 * i)); }, x, k);
}

float dot_bf16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint8_t*>(w);
    return canon_dot32([a](int64_t i) { return bf16_to_f32(load_u16(a + 2 * i)); }, x, k);
}

void attn_scores(const float* q, int nh, const float* k, int n, int d, float scale, float* s, int64_t lds) {
    for (int h = 0; h < nh; ++h) {
        for (int j = 0; j < n; ++j) s[h * lds + j] = canon_dot8(q + int64_t(h) * d, k + int64_t(j) * d, d) * scale;
    }
}

void attn_values(const float* p, int64_t ldp, int nh, const float* v, int n, int d, float* out) {
    for (int h = 0; h < nh; ++h) {
        float* o = out + int64_t(h) * d;
        for (int j = 0; j < n; ++j) {
            const float pj = p[h * ldp + j];
            const float* vj = v + int64_t(j) * d;
            for (int e = 0; e < d; ++e) o[e] = std::fma(pj, vj[e], o[e]);
        }
    }
}

void f16_to_f32_row(const uint16_t* src, float* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = fp16_to_f32(src[i]);
}

void f32_to_f16_row(const float* src, uint16_t* dst, int64_t n) {
    for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_fp16(src[i]);
}

KernelSet make_generic() {
    KernelSet ks;
    ks.name = "generic";
    ks.q8[uint32_t(GGMLType::Q8_0)] = dot_q8_0;
    ks.q8[uint32_t(GGMLType::Q4_0)] = dot_q4_0;
    ks.q8[uint32_t(GGMLType::Q4_1)] = dot_q4_1;
    ks.q8[uint32_t(GGMLType::Q5_0)] = dot_q5_0;
    ks.q8[uint32_t(GGMLType::Q5_1)] = dot_q5_1;
    ks.q8[uint32_t(GGMLType::Q4_K)] = dot_q4_K;
    ks.q8[uint32_t(GGMLType::Q5_K)] = dot_q5_K;
    ks.q8[uint32_t(GGMLType::Q6_K)] = dot_q6_K;
    ks.f[uint32_t(GGMLType::F32)] = dot_f32;
    ks.f[uint32_t(GGMLType::F16)] = dot_f16;
    ks.f[uint32_t(GGMLType::BF16)] = dot_bf16;
    ks.attn_scores = attn_scores;
    ks.attn_values = attn_values;
    ks.softmax = canon_softmax;
    ks.f16_to_f32 = f16_to_f32_row;
    ks.f32_to_f16 = f32_to_f16_row;
    ks.kv8 = &kv_codec_generic(8);
    ks.kv4 = &kv_codec_generic(4);
    return ks;
}

}  // namespace

const KernelSet& kernels_generic() {
    static const KernelSet ks = make_generic();
    return ks;
}

}  // namespace nlm
