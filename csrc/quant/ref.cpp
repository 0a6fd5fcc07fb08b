#include "quant/ref.h"

#include <cstring>

#include "quant/formats.h"
#include "quant/fp16.h"

namespace nlm {

namespace {

// Unpack the 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block.
inline void get_scale_min_k4(int j, const uint8_t* q, uint8_t* sc, uint8_t* mn) {
    if (j < 4) {
        *sc = q[j] & 63;
        *mn = q[j + 4] & 63;
    } else {
        *sc = uint8_t((q[j + 4] & 0x0f) | ((q[j - 4] >> 6) << 4));
        *mn = uint8_t((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }
}

template <typename Block>
const Block* blocks_of(const void* p) {
    return static_cast<const Block*>(p);
}

}  // namespace

void dequantize_row_f32_ref(const void* src, float* dst, int64_t k) {
    std::memcpy(dst, src, size_t(k) * sizeof(float));
}

void dequantize_row_f16_ref(const void* src, float* dst, int64_t k) {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < k; ++i) dst[i] = fp16_to_f32(s[i]);
}

void dequantize_row_bf16_ref(const void* src, float* dst, int64_t k) {
    const auto* s = static_cast<const uint16_t*>(src);
    for (int64_t i = 0; i < k; ++i) dst[i] = bf16_to_f32(s[i]);
}

void dequantize_row_q4_0_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q4_0>(src);
    for (int64_t ib = 0; ib < k / QK4_0; ++ib, dst += QK4_0) {
        const float d = fp16_to_f32(b[ib].d);
        for (int j = 0; j < QK4_0 / 2; ++j) {
            dst[j] = d * float((b[ib].qs[j] & 0x0f) - 8);
            dst[j + QK4_0 / 2] = d * float((b[ib].qs[j] >> 4) - 8);
        }
    }
}

void dequantize_row_q4_1_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q4_1>(src);
    for (int64_t ib = 0; ib < k / QK4_1; ++ib, dst += QK4_1) {
        const float d = fp16_to_f32(b[ib].d);
        const float m = fp16_to_f32(b[ib].m);
        for (int j = 0; j < QK4_1 / 2; ++j) {
            dst[j] = d * float(b[ib].qs[j] & 0x0f) + m;
            dst[j + QK4_1 / 2] = d * float(b[ib].qs[j] >> 4) + m;
        }
    }
}

void dequantize_row_q5_0_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q5_0>(src);
    for (int64_t ib = 0; ib < k / QK5_0; ++ib, dst += QK5_0) {
        const float d = fp16_to_f32(b[ib].d);
        uint32_t qh;
        std::memcpy(&qh, b[ib].qh, sizeof qh);
        for (int j = 0; j < QK5_0 / 2; ++j) {
            const int lo = (b[ib].qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
            const int hi = (b[ib].qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
            dst[j] = d * float(lo - 16);
            dst[j + QK5_0 / 2] = d * float(hi - 16);
        }
    }
}

void dequantize_row_q5_1_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q5_1>(src);
    for (int64_t ib = 0; ib < k / QK5_1; ++ib, dst += QK5_1) {
        const float d = fp16_to_f32(b[ib].d);
        const float m = fp16_to_f32(b[ib].m);
        uint32_t qh;
        std::memcpy(&qh, b[ib].qh, sizeof qh);
        for (int j = 0; j < QK5_1 / 2; ++j) {
            const int lo = (b[ib].qs[j] & 0x0f) | int(((qh >> j) & 1u) << 4);
            const int hi = (b[ib].qs[j] >> 4) | int(((qh >> (j + 16)) & 1u) << 4);
            dst[j] = d * float(lo) + m;
            dst[j + QK5_1 / 2] = d * float(hi) + m;
        }
    }
}

void dequantize_row_q8_0_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q8_0>(src);
    for (int64_t ib = 0; ib < k / QK8_0; ++ib, dst += QK8_0) {
        const float d = fp16_to_f32(b[ib].d);
        for (int j = 0; j < QK8_0; ++j) dst[j] = float(b[ib].qs[j]) * d;
    }
}

void dequantize_row_q4_K_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q4_K>(src);
    for (int64_t ib = 0; ib < k / QK_K; ++ib) {
        const float d = fp16_to_f32(b[ib].d);
        const float dmin = fp16_to_f32(b[ib].dmin);
        const uint8_t* q = b[ib].qs;
        for (int c = 0; c < 4; ++c, q += 32) {  // 4 pairs of 32-element sub-blocks
            uint8_t sc, mn;
            get_scale_min_k4(2 * c, b[ib].scales, &sc, &mn);
            const float d1 = d * float(sc), m1 = dmin * float(mn);
            get_scale_min_k4(2 * c + 1, b[ib].scales, &sc, &mn);
            const float d2 = d * float(sc), m2 = dmin * float(mn);
            for (int l = 0; l < 32; ++l) *dst++ = d1 * float(q[l] & 0x0f) - m1;
            for (int l = 0; l < 32; ++l) *dst++ = d2 * float(q[l] >> 4) - m2;
        }
    }
}

void dequantize_row_q5_K_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q5_K>(src);
    for (int64_t ib = 0; ib < k / QK_K; ++ib) {
        const float d = fp16_to_f32(b[ib].d);
        const float dmin = fp16_to_f32(b[ib].dmin);
        const uint8_t* ql = b[ib].qs;
        const uint8_t* qh = b[ib].qh;
        for (int c = 0; c < 4; ++c, ql += 32) {
            uint8_t sc, mn;
            get_scale_min_k4(2 * c, b[ib].scales, &sc, &mn);
            const float d1 = d * float(sc), m1 = dmin * float(mn);
            get_scale_min_k4(2 * c + 1, b[ib].scales, &sc, &mn);
            const float d2 = d * float(sc), m2 = dmin * float(mn);
            const int bit1 = 2 * c, bit2 = 2 * c + 1;
            for (int l = 0; l < 32; ++l) *dst++ = d1 * float((ql[l] & 0x0f) | (((qh[l] >> bit1) & 1) << 4)) - m1;
            for (int l = 0; l < 32; ++l) *dst++ = d2 * float((ql[l] >> 4) | (((qh[l] >> bit2) & 1) << 4)) - m2;
        }
    }
}

void dequantize_row_q6_K_ref(const void* src, float* dst, int64_t k) {
    const auto* b = blocks_of<block_q6_K>(src);
    for (int64_t ib = 0; ib < k / QK_K; ++ib) {
        const float d = fp16_to_f32(b[ib].d);
        for (int h = 0; h < 2; ++h) {  // two halves of 128
            const uint8_t* ql = b[ib].ql + 64 * h;
            const uint8_t* qh = b[ib].qh + 32 * h;
            const int8_t* sc = b[ib].scales + 8 * h;
            for (int r = 0; r < 128; ++r) {
                const int lo = (ql[r % 64] >> (4 * (r / 64))) & 0x0f;
                const int hi = (qh[r % 32] >> (2 * (r / 32))) & 0x03;
                const int q = (lo | (hi << 4)) - 32;
                dst[128 * h + r] = (d * float(sc[r / 16])) * float(q);
            }
        }
        dst += QK_K;
    }
}

namespace {

// Dot product through the dequantizer, one block at a time, in double.
template <int QK, size_t BlockBytes, void (*Dequant)(const void*, float*, int64_t)>
float dot_via_dequant(const void* w, const float* x, int64_t k) {
    const auto* p = static_cast<const uint8_t*>(w);
    float tmp[QK];
    double acc = 0.0;
    for (int64_t i = 0; i < k; i += QK, p += BlockBytes) {
        Dequant(p, tmp, QK);
        for (int j = 0; j < QK; ++j) acc += double(tmp[j]) * double(x[i + j]);
    }
    return float(acc);
}

}  // namespace

float vec_dot_f32_ref(const void* w, const float* x, int64_t k) {
    const auto* a = static_cast<const float*>(w);
    double acc = 0.0;
    for (int64_t i = 0; i < k; ++i) acc += double(a[i]) * double(x[i]);
    return float(acc);
}

float vec_dot_f16_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<1, 2, dequantize_row_f16_ref>(w, x, k);
}
float vec_dot_bf16_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<1, 2, dequantize_row_bf16_ref>(w, x, k);
}
float vec_dot_q4_0_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK4_0, sizeof(block_q4_0), dequantize_row_q4_0_ref>(w, x, k);
}
float vec_dot_q4_1_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK4_1, sizeof(block_q4_1), dequantize_row_q4_1_ref>(w, x, k);
}
float vec_dot_q5_0_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK5_0, sizeof(block_q5_0), dequantize_row_q5_0_ref>(w, x, k);
}
float vec_dot_q5_1_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK5_1, sizeof(block_q5_1), dequantize_row_q5_1_ref>(w, x, k);
}
float vec_dot_q8_0_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK8_0, sizeof(block_q8_0), dequantize_row_q8_0_ref>(w, x, k);
}
float vec_dot_q4_K_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK_K, sizeof(block_q4_K), dequantize_row_q4_K_ref>(w, x, k);
}
float vec_dot_q5_K_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK_K, sizeof(block_q5_K), dequantize_row_q5_K_ref>(w, x, k);
}
float vec_dot_q6_K_ref(const void* w, const float* x, int64_t k) {
    return dot_via_dequant<QK_K, sizeof(block_q6_K), dequantize_row_q6_K_ref>(w, x, k);
}

}  // namespace nlm
