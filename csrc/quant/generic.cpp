// Portable scalar kernels: the same integer algorithm as the SIMD tiers
// (weight codes times Q8 activation codes, summed in int32 per block, then
// scaled), so SIMD results differ from these only by float summation order.
#include <cstring>

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

float dot_q8_0(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q8_0*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK8_0; ++i) {
        int32_t s = 0;
        for (int j = 0; j < 32; ++j) s += int32_t(b[i].qs[j]) * x.qs[i * 32 + j];
        acc += fp16_to_f32(b[i].d) * x.d[i] * float(s);
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
        acc += fp16_to_f32(b[i].d) * x.d[i] * float(s);
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
        acc += fp16_to_f32(b[i].d) * x.d[i] * float(s) + fp16_to_f32(b[i].m) * x.s[i];
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
    for (int64_t i = 0; i < k / QK5_0; ++i) acc += fp16_to_f32(b[i].d) * x.d[i] * float(dot5(b[i], x.qs + i * 32, 16));
    return acc;
}

float dot_q5_1(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q5_1*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK5_1; ++i) {
        acc += fp16_to_f32(b[i].d) * x.d[i] * float(dot5(b[i], x.qs + i * 32, 0)) + fp16_to_f32(b[i].m) * x.s[i];
    }
    return acc;
}

float dot_q4_K(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q4_K*>(w);
    float acc = 0.0f;
    for (int64_t i = 0; i < k / QK_K; ++i) {
        const float d = fp16_to_f32(b[i].d), dmin = fp16_to_f32(b[i].dmin);
        for (int j = 0; j < 8; ++j) {  // sub-block j of 32 = activation block 8i + j
            int sc, mn;
            scale_min_k4(j, b[i].scales, &sc, &mn);
            const uint8_t* q = b[i].qs + 32 * (j / 2);
            const int shift = 4 * (j % 2);
            const int8_t* xq = x.qs + (i * 8 + j) * 32;
            int32_t s = 0;
            for (int l = 0; l < 32; ++l) s += ((q[l] >> shift) & 0x0f) * xq[l];
            acc += d * float(sc) * x.d[i * 8 + j] * float(s) - dmin * float(mn) * x.s[i * 8 + j];
        }
    }
    return acc;
}

float dot_q5_K(const void* w, const Q8Row& x, int64_t k) {
    const auto* b = static_cast<const block_q5_K*>(w);
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
            for (int l = 0; l < 32; ++l) s += (((q[l] >> shift) & 0x0f) | (((b[i].qh[l] >> j) & 1) << 4)) * xq[l];
            acc += d * float(sc) * x.d[i * 8 + j] * float(s) - dmin * float(mn) * x.s[i * 8 + j];
        }
    }
    return acc;
}

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
            acc += d * x.d[i * 8 + u] * (float(sc[0]) * float(s[0]) + float(sc[1]) * float(s[1]));
        }
    }
    return acc;
}

float dot_f32(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    float s = 0.0f;
    for (int64_t i = 0; i < k; ++i) s += a[i] * x[i];
    return s;
}

float dot_f16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    float s = 0.0f;
    for (int64_t i = 0; i < k; ++i) s += fp16_to_f32(a[i]) * x[i];
    return s;
}

float dot_bf16(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const uint16_t*>(w);
    float s = 0.0f;
    for (int64_t i = 0; i < k; ++i) s += bf16_to_f32(a[i]) * x[i];
    return s;
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
    return ks;
}

}  // namespace

const KernelSet& kernels_generic() {
    static const KernelSet ks = make_generic();
    return ks;
}

}  // namespace nlm
