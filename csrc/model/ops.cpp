#include "model/ops.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "quant/canon.h"

namespace nlm {

namespace {

// Weight rows dequantized per tile: 16 rows of up to 4864 floats stay in L2
// while every activation row streams past them, in groups of 4 rows so that
// each activation load feeds 4 FMAs.
constexpr int kRowTile = 16;
constexpr int kRowGroup = 4;

// y[0..3] = the dot products of four dequantized rows with x.
inline void dot4(const float* w, int64_t k, const float* x, float* y) {
    const float* w0 = w;
    const float* w1 = w + k;
    const float* w2 = w + 2 * k;
    const float* w3 = w + 3 * k;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
    for (int64_t i = 0; i < k; ++i) {
        s0 += w0[i] * x[i];
        s1 += w1[i] * x[i];
        s2 += w2[i] * x[i];
        s3 += w3[i] * x[i];
    }
    y[0] = s0;
    y[1] = s1;
    y[2] = s2;
    y[3] = s3;
}

}  // namespace

void matmul_ref(const WeightView& w, const float* x, int64_t m, float* y, int n_threads) {
    const int64_t n = w.rows, k = w.cols;
    const int64_t n_tiles = (n + kRowTile - 1) / kRowTile;
#pragma omp parallel num_threads(n_threads)
    {
        thread_local std::vector<float> buf;  // the dequantized tile; grown, kept across calls
        if (buf.size() < size_t(kRowTile * k)) buf.resize(size_t(kRowTile * k));
#pragma omp for schedule(static)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t r0 = t * kRowTile;
            const int64_t nr = std::min<int64_t>(kRowTile, n - r0);
            for (int64_t r = 0; r < nr; ++r) w.type->dequantize_ref(w.row(r0 + r), buf.data() + r * k, k);
            const int64_t n_groups = nr / kRowGroup;
            for (int64_t i = 0; i < m; ++i) {
                const float* xi = x + i * k;
                float* yi = y + i * n + r0;
                for (int64_t g = 0; g < n_groups; ++g) dot4(buf.data() + g * kRowGroup * k, k, xi, yi + g * kRowGroup);
                for (int64_t r = n_groups * kRowGroup; r < nr; ++r) {
                    float s = 0.0f;
                    const float* wr = buf.data() + r * k;
                    for (int64_t j = 0; j < k; ++j) s += wr[j] * xi[j];
                    yi[r] = s;
                }
            }
        }
    }
}

const std::vector<Q8Row>& Q8Cache::get(const ActKey& key, const float* x, int64_t m, int64_t k, Q8Mode mode,
                                       int n_threads) {
    const int i = mode == Q8Mode::Q8_0 ? 0 : 1;
    if (!(key.input != ActKey::kNone && key_[i] == key && m_[i] == m && k_[i] == k)) {
        buf_[i].quantize(x, m, k, mode, n_threads);
        if (rows_[i].size() < size_t(m)) rows_[i].resize(size_t(m));
        for (int64_t r = 0; r < m; ++r) rows_[i][size_t(r)] = buf_[i].row(r);
        key_[i] = key;
        m_[i] = m;
        k_[i] = k;
    }
    return rows_[i];
}

namespace {

// The per-thread cache used when the caller keeps none: quantizes on every call.
Q8Cache& own_cache() {
    thread_local Q8Cache own;
    return own;
}

}  // namespace

void matmul_packed(const PackedWeights& w, const float* x, int64_t m, float* y, int n_threads, const KernelSet& ks,
                   Q8Cache* cache, const ActKey& key) {
    if (cache == nullptr) cache = &own_cache();
    const std::vector<Q8Row>& rows = cache->get(key, x, m, w.cols, q8_mode_for(w.type), n_threads);
    const int64_t groups = w.groups;
#pragma omp parallel num_threads(n_threads)
    {
        // contiguous groups per thread: each streams its own slice of the weights
        const int64_t nth = omp_get_num_threads(), ith = omp_get_thread_num();
        const int64_t g0 = groups * ith / nth, g1 = groups * (ith + 1) / nth;
        if (g1 > g0) ks.packed(w, rows.data(), m, y, w.rows, g0, g1);
    }
}

void matmul(const WeightView& w, const float* x, int64_t m, float* y, int n_threads, const KernelSet* ks,
            Q8Cache* cache, const ActKey& key) {
    if (ks == nullptr) ks = &active_kernels();
    if (w.packed != nullptr && ks->packed != nullptr) {
        matmul_packed(*w.packed, x, m, y, n_threads, *ks, cache, key);
        return;
    }
    const int64_t n = w.rows, k = w.cols;
    const int64_t n_tiles = (n + kRowTile - 1) / kRowTile;
    if (uses_q8_activations(w.type_id)) {
        // One quantization of the activations per call, reused by every weight row.
        if (cache == nullptr) cache = &own_cache();
        const std::vector<Q8Row>& rows = cache->get(key, x, m, k, q8_mode_for(w.type_id), n_threads);
        const vec_dot_q8_fn dot = ks->q8[w.type_id];
#pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t r0 = t * kRowTile, r1 = std::min<int64_t>(n, r0 + kRowTile);
            for (int64_t i = 0; i < m; ++i) {
                for (int64_t r = r0; r < r1; ++r) y[i * n + r] = dot(w.row(r), rows[size_t(i)], k);
            }
        }
    } else {
        const vec_dot_float_fn dot = ks->f[w.type_id];
#pragma omp parallel for num_threads(n_threads) schedule(static)
        for (int64_t t = 0; t < n_tiles; ++t) {
            const int64_t r0 = t * kRowTile, r1 = std::min<int64_t>(n, r0 + kRowTile);
            for (int64_t i = 0; i < m; ++i) {
                for (int64_t r = r0; r < r1; ++r) y[i * n + r] = dot(w.row(r), x + i * k, k);
            }
        }
    }
}

void silu_mul(float* g, const float* u, int64_t n) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) g[i] = g[i] / (1.0f + exp_approx(-g[i])) * u[i];
}

void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out) {
    double ss = 0.0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
    const float scale = float(1.0 / std::sqrt(ss / double(n) + double(eps)));
    for (int64_t i = 0; i < n; ++i) out[i] = x[i] * scale * weight[i];
}

}  // namespace nlm
