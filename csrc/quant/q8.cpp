#include "quant/q8.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "quant/fp16.h"

namespace nlm {

namespace {

// Codes of 32 values at scale 1/iscale; fills the per-lane sums; returns the code sum.
// Written as flat loops over the block so the compiler vectorises them.
int32_t encode(const float* x, float iscale, int8_t* qs, int32_t* sum_lane) {
    int32_t q[QK8];
#pragma omp simd
    for (int j = 0; j < QK8; ++j) {
        const int v = int(std::nearbyint(x[j] * iscale));
        q[j] = v > 127 ? 127 : v;
    }
    int32_t total = 0;
    for (int l = 0; l < QK8 / 4; ++l) {
        sum_lane[l] = q[4 * l] + q[4 * l + 1] + q[4 * l + 2] + q[4 * l + 3];
        total += sum_lane[l];
    }
    for (int j = 0; j < QK8; ++j) qs[j] = int8_t(q[j]);
    return total;
}

}  // namespace

void quantize_row_q8(const float* x, int64_t k, Q8Mode mode, int8_t* qs, float* d, float* s, float* d_lane,
                     int32_t* sum_lane) {
    const int span = mode == Q8Mode::Q8_0 ? QK8 : 256;  // values sharing one scale
    for (int64_t b0 = 0; b0 < k; b0 += span) {
        const float* xs = x + b0;
        float probe = 0.0f;  // 0 when every value is finite: x * 0 is NaN for NaN and infinities
#pragma omp simd reduction(+ : probe)
        for (int j = 0; j < span; ++j) probe += xs[j] * 0.0f;
        if (!(probe == 0.0f)) {
            const float nan = std::numeric_limits<float>::quiet_NaN();
            for (int64_t b = b0 / QK8; b < (b0 + span) / QK8; ++b) {
                std::fill_n(qs + b * QK8, QK8, int8_t(0));
                std::fill_n(sum_lane + b * (QK8 / 4), QK8 / 4, 0);
                d[b] = s[b] = nan;
                if (d_lane != nullptr) std::fill_n(d_lane + b * (QK8 / 4), QK8 / 4, nan);
            }
            continue;
        }
        float amax = 0.0f;
#pragma omp simd reduction(max : amax)
        for (int j = 0; j < span; ++j) amax = std::fabs(xs[j]) > amax ? std::fabs(xs[j]) : amax;
        float vmax = 0.0f;  // the first value of largest magnitude, with its sign (llama.cpp's Q8_K rule)
        if (mode == Q8Mode::Q8_K) {
            for (int j = 0; j < span; ++j) {
                if (std::fabs(xs[j]) == amax) {
                    vmax = xs[j];
                    break;
                }
            }
        }
        float dq, iscale;
        if (mode == Q8Mode::Q8_0) {
            iscale = amax != 0.0f ? 127.0f / amax : 0.0f;
            dq = fp16_to_f32(f32_to_fp16(amax / 127.0f));  // llama.cpp keeps the Q8_0 scale as f16
        } else {
            iscale = amax != 0.0f ? -127.0f / vmax : 0.0f;
            dq = amax != 0.0f ? 1.0f / iscale : 0.0f;
        }
        if (!std::isfinite(iscale)) {  // |x| below 127 / FLT_MAX: the codes would overflow; all round to 0
            iscale = 0.0f;
            dq = 0.0f;
        }
        for (int64_t b = b0 / QK8; b < (b0 + span) / QK8; ++b) {
            const int32_t total = encode(x + b * QK8, iscale, qs + b * QK8, sum_lane + b * (QK8 / 4));
            d[b] = dq;
            s[b] = dq * float(total);
            if (d_lane != nullptr) std::fill_n(d_lane + b * (QK8 / 4), QK8 / 4, dq);
        }
    }
}

void Q8Buffer::quantize(const float* x, int64_t m, int64_t k, Q8Mode mode, int n_threads) {
    m_ = m;
    k_ = k;
    const size_t n = size_t(m * k);
    if (qs_.size() < n) {
        qs_.resize(n);
        qu_.resize(n);
        d_.resize(n / QK8);
        s_.resize(n / QK8);
        sum_lane_.resize(n / 4);
        sum16_.resize(n / 16);
    }
    auto one = [&](int64_t i) {
        quantize_row_q8(x + i * k, k, mode, qs_.data() + i * k, d_.data() + i * (k / QK8), s_.data() + i * (k / QK8),
                        nullptr, sum_lane_.data() + i * (k / 4));
        const int8_t* q = qs_.data() + i * k;
        uint8_t* u = qu_.data() + i * k;
        for (int64_t j = 0; j < k; ++j) u[j] = uint8_t(q[j]) ^ 0x80;  // q + 128
        const int32_t* sl = sum_lane_.data() + i * (k / 4);
        int32_t* s16 = sum16_.data() + i * (k / 16);
        for (int64_t j = 0; j < k / 16; ++j) s16[j] = sl[4 * j] + sl[4 * j + 1] + sl[4 * j + 2] + sl[4 * j + 3];
    };
    if (m > 1) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t i = 0; i < m; ++i) one(i);
    } else {
        one(0);  // inline: even a serialised parallel region allocates in libgomp
    }
}

Q8Row Q8Buffer::row(int64_t i) const {
    Q8Row r;
    r.qs = qs_.data() + i * k_;
    r.qu = qu_.data() + i * k_;
    r.d = d_.data() + i * (k_ / QK8);
    r.s = s_.data() + i * (k_ / QK8);
    r.sum16 = sum16_.data() + i * (k_ / 16);
    r.k = k_;
    return r;
}

}  // namespace nlm
