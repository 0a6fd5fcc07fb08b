#include "quant/q8.h"

#include <cmath>

namespace nlm {

void quantize_row_q8(const float* x, int64_t k, int8_t* qs, float* d, float* s, float* d_lane, int32_t* sum_lane) {
    for (int64_t b = 0; b < k / QK8; ++b) {
        const float* xb = x + b * QK8;
        float amax = 0.0f;
        for (int j = 0; j < QK8; ++j) amax = std::fmax(amax, std::fabs(xb[j]));
        const float db = amax / 127.0f;
        const float id = db != 0.0f ? 1.0f / db : 0.0f;
        int32_t total = 0;
        for (int l = 0; l < QK8 / 4; ++l) {
            int32_t lane = 0;
            for (int j = 4 * l; j < 4 * l + 4; ++j) {
                const int q = int(std::nearbyint(xb[j] * id));
                qs[b * QK8 + j] = int8_t(q);
                lane += q;
            }
            sum_lane[b * (QK8 / 4) + l] = lane;
            d_lane[b * (QK8 / 4) + l] = db;
            total += lane;
        }
        d[b] = db;
        s[b] = db * float(total);
    }
}

void Q8Buffer::quantize(const float* x, int64_t m, int64_t k, int n_threads) {
    m_ = m;
    k_ = k;
    const size_t n = size_t(m * k);
    if (qs_.size() < n) {
        qs_.resize(n);
        d_.resize(n / QK8);
        s_.resize(n / QK8);
        d_lane_.resize(n / 4);
        sum_lane_.resize(n / 4);
    }
#pragma omp parallel for num_threads(n_threads) schedule(static) if (m > 1)
    for (int64_t i = 0; i < m; ++i) {
        quantize_row_q8(x + i * k, k, qs_.data() + i * k, d_.data() + i * (k / QK8), s_.data() + i * (k / QK8),
                        d_lane_.data() + i * (k / 4), sum_lane_.data() + i * (k / 4));
    }
}

Q8Row Q8Buffer::row(int64_t i) const {
    Q8Row r;
    r.qs = qs_.data() + i * k_;
    r.d = d_.data() + i * (k_ / QK8);
    r.s = s_.data() + i * (k_ / QK8);
    r.d_lane = d_lane_.data() + i * (k_ / 4);
    r.sum_lane = sum_lane_.data() + i * (k_ / 4);
    r.k = k_;
    return r;
}

}  // namespace nlm
