#include "sample/sample.h"

#include <omp.h>

#include <algorithm>
#include <cstring>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "quant/kernels.h"

namespace nlm {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kScanBlock = 256;  // the inverse-CDF scan sums blocks first, then walks one block

// max over the row (NaN left out); -inf when every value is -inf or NaN
float row_max(const float* x, int64_t V) {
    float m = kNegInf;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < V; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

[[noreturn]] void all_masked(int64_t r) {
    throw std::invalid_argument("sample: every token of row " + std::to_string(r) +
                                " is masked (all logits are -inf or NaN)");
}

// w_i = exp((x_i - max x) / t) with the tier's softmax kernel (canonical float order, SIMD); returns
// the sum. A masked x_i (-inf) leaves a w_i below 2e-38 that every reader skips by testing x_i.
double weights(const float* x, int64_t V, float inv_t, float* w) {
#pragma omp simd
    for (int64_t i = 0; i < V; ++i) w[i] = x[i] * inv_t;
    return double(active_kernels().softmax(w, V));
}

// Most likely first, ties to the lower id.
struct ByScore {
    const float* s;
    bool operator()(int32_t a, int32_t b) const { return s[a] > s[b] || (s[a] == s[b] && a < b); }
};

// Indices with s[i] >= cut and x[i] not masked, in id order; returns the sum of their s.
double collect(const float* s, const float* x, int64_t V, float cut, std::vector<int32_t>& out) {
    out.clear();
    double sum = 0.0;
    for (int64_t i = 0; i < V; ++i) {
        if (s[i] >= cut && x[i] > kNegInf) {
            out.push_back(int32_t(i));
            sum += double(s[i]);
        }
    }
    return sum;
}

// The k highest-scoring unmasked indices, best first. Candidates are gathered above a falling cut
// (hi - 8, -32, -128 ... for logits; 1e-2, 1e-4, 1e-8 ... for weights), so the usual case selects
// among a few hundred indices, not the vocabulary; at the end every unmasked index is taken.
void top_indices(const float* s, const float* x, int64_t V, int64_t k, float hi, bool weights_scale,
                 std::vector<int32_t>& out) {
    static constexpr float kCutsW[] = {1e-2f, 1e-4f, 1e-8f, 1e-16f, 1e-32f};
    static constexpr float kCutsX[] = {8.0f, 32.0f, 128.0f, 1024.0f, 65536.0f};
    bool enough = false;
    for (int j = 0; j < 5 && !enough; ++j) {
        collect(s, x, V, weights_scale ? hi * kCutsW[j] : hi - kCutsX[j], out);
        enough = int64_t(out.size()) >= k;
    }
    if (!enough) collect(s, x, V, kNegInf, out);
    ByScore by{s};
    if (int64_t(out.size()) > k) {
        std::nth_element(out.begin(), out.begin() + k, out.end(), by);
        out.resize(size_t(k));
    }
    std::sort(out.begin(), out.end(), by);
}

// Of candidates ids (weights w, summing to sum), the shortest most-likely-first prefix whose sum
// reaches goal, arranged for sampling: the ones certainly in (a larger power-of-two band than the
// cut) in id order, then the band the cut falls in, sorted. Only that band is sorted.
double top_p_cut(const float* w, std::vector<int32_t>& ids, double goal, std::vector<int32_t>& tmp) {
    // bands: the float's exponent and 4 mantissa bits (16 per octave), from the weight's bits
    auto band = [&](int32_t i) {
        uint32_t b;
        std::memcpy(&b, &w[i], sizeof b);
        return int(b >> 19);
    };
    constexpr int kBands = (0x3F800000 >> 19) + 1;  // weights are in (0, 1]
    std::vector<double> mass(kBands, 0.0);
    for (int32_t i : ids) mass[size_t(band(i))] += double(w[i]);
    int cut = kBands - 1;
    double above = 0.0;  // mass of the bands above cut
    while (cut > 0 && above + mass[size_t(cut)] < goal) above += mass[size_t(cut--)];
    tmp.clear();
    size_t n_in = 0;
    for (int32_t i : ids) {
        const int b = band(i);
        if (b > cut) ids[n_in++] = i;
        else if (b == cut) tmp.push_back(i);
    }
    ids.resize(n_in);
    std::sort(tmp.begin(), tmp.end(), ByScore{w});
    double c = above;
    for (int32_t i : tmp) {
        if (c >= goal && c > 0.0) break;
        ids.push_back(i);
        c += double(w[i]);
    }
    return c;
}

// The candidates of one row in sampling order (empty: every unmasked token, in id order), per the
// rules in sample.h; returns the sum of their weights. w is scratch (V).
double candidates(const float* x, int64_t V, const SampleRow& p, float* w, std::vector<int32_t>& ids,
                  std::vector<int32_t>& tmp) {
    const double total = weights(x, V, 1.0f / p.temperature, w);
    const bool top_k = p.top_k > 0 && p.top_k < V;
    const bool top_p = p.top_p < 1.0f;
    ids.clear();
    if (!top_k && !top_p) {
        if (!(p.min_p > 0.0f)) return total;
        return collect(w, x, V, p.min_p, ids);  // the max w is 1; id order
    }
    double sum = total;
    if (top_k) {
        top_indices(w, x, V, p.top_k, 1.0f, true, ids);
        sum = 0.0;
        for (int32_t i : ids) sum += double(w[i]);
        if (top_p) {  // most likely first already: the prefix
            const double goal = double(p.top_p) * sum;
            double c = 0.0;
            size_t n = 0;
            while (n < ids.size() && !(c >= goal && c > 0.0)) c += double(w[ids[n++]]);
            ids.resize(n);
            sum = c;
        }
    } else {
        // the top_p set lies within any most-likely set whose mass reaches top_p * total
        const double goal = double(p.top_p) * total;
        bool enough = false;
        for (float c : {1e-3f, 1e-6f, 1e-12f, 1e-24f}) {
            if (collect(w, x, V, c, ids) >= goal) {
                enough = true;
                break;
            }
        }
        if (!enough) collect(w, x, V, 0.0f, ids);
        sum = top_p_cut(w, ids, goal, tmp);
    }
    if (p.min_p > 0.0f && !ids.empty()) {
        float wmax = 0.0f;
        for (int32_t i : ids) wmax = std::max(wmax, w[i]);
        const float keep = p.min_p * wmax;
        size_t n = 0;
        double c = 0.0;
        for (int32_t i : ids) {
            if (w[i] >= keep) {
                ids[n++] = i;
                c += double(w[i]);
            }
        }
        ids.resize(n);
        sum = c;
    }
    return sum;
}

int32_t argmax_row(const float* x, int64_t V, int64_t r) {
    const float m = row_max(x, V);
    if (!(m > kNegInf)) all_masked(r);
    for (int64_t i = 0; i < V; ++i) {
        if (x[i] == m) return int32_t(i);  // the lowest id among ties
    }
    all_masked(r);
}

// The token where the running sum of w over every unmasked id passes goal: blocks first.
int32_t scan_all(const float* x, const float* w, int64_t V, double goal) {
    double c = 0.0;
    int32_t last = -1;
    for (int64_t b0 = 0; b0 < V; b0 += kScanBlock) {
        const int64_t b1 = std::min(V, b0 + kScanBlock);
        float bs = 0.0f;
#pragma omp simd reduction(+ : bs)
        for (int64_t i = b0; i < b1; ++i) bs += x[i] > kNegInf ? w[i] : 0.0f;
        if (c + double(bs) <= goal) {
            c += double(bs);
            for (int64_t i = b1 - 1; i >= b0 && last < int32_t(b0); --i) {
                if (x[i] > kNegInf) last = int32_t(i);
            }
            continue;
        }
        for (int64_t i = b0; i < b1; ++i) {
            if (!(x[i] > kNegInf)) continue;
            c += double(w[i]);
            last = int32_t(i);
            if (c > goal) return last;
        }
    }
    return last;  // rounding left goal at the very end: the last unmasked token
}

int32_t sample_row(const float* x, int64_t V, const SampleRow& p, int64_t r, float* w, std::vector<int32_t>& ids,
                   std::vector<int32_t>& tmp) {
    if (p.temperature == 0.0f) return argmax_row(x, V, r);
    if (!(row_max(x, V) > kNegInf)) all_masked(r);
    const double sum = candidates(x, V, p, w, ids, tmp);
    const double goal = p.u * sum;
    int32_t last = -1;
    if (ids.empty() && !(p.min_p > 0.0f) && !(p.top_k > 0 && p.top_k < V) && !(p.top_p < 1.0f)) {
        last = scan_all(x, w, V, goal);
    } else {
        double c = 0.0;
        for (int32_t i : ids) {
            c += double(w[i]);
            last = i;
            if (c > goal) return last;
        }
    }
    if (last < 0) all_masked(r);
    return last;
}

}  // namespace

void sample_rows(const float* x, int64_t R, int64_t V, const SampleRow* rows, int32_t* tokens, int n_threads) {
    std::string error;
    const int nt = int(std::max<int64_t>(1, std::min<int64_t>(R, n_threads)));
#pragma omp parallel num_threads(nt)
    {
        // per-thread scratch kept between calls: a decode step allocates nothing here either
        thread_local std::vector<float> w;
        thread_local std::vector<int32_t> ids, tmp;
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < R; ++r) {
            try {
                if (rows[r].temperature != 0.0f && int64_t(w.size()) < V) w.resize(size_t(V));
                tokens[r] = sample_row(x + r * V, V, rows[r], r, w.data(), ids, tmp);
            } catch (const std::exception& e) {
#pragma omp critical
                if (error.empty()) error = e.what();
            }
        }
    }
    if (!error.empty()) throw std::invalid_argument(error);
}

void sample_distribution(const float* x, int64_t V, const SampleRow& row, std::vector<int32_t>& ids,
                         std::vector<double>& probs) {
    std::vector<float> w(static_cast<size_t>(V));
    std::vector<int32_t> tmp;
    probs.clear();
    if (row.temperature == 0.0f) {
        ids.assign(1, argmax_row(x, V, 0));
        probs.assign(1, 1.0);
        return;
    }
    if (!(row_max(x, V) > kNegInf)) all_masked(0);
    candidates(x, V, row, w.data(), ids, tmp);
    if (ids.empty() && !(row.min_p > 0.0f) && !(row.top_k > 0 && row.top_k < V) && !(row.top_p < 1.0f)) {
        for (int64_t i = 0; i < V; ++i) {
            if (x[i] > kNegInf) ids.push_back(int32_t(i));
        }
    }
    double s = 0.0;  // the candidates' own sum (masked tokens' tiny weights are not in it)
    for (int32_t i : ids) s += double(w[size_t(i)]);
    for (int32_t i : ids) probs.push_back(double(w[size_t(i)]) / s);
}

void apply_bitmask(float* x, int64_t V, const uint32_t* bits, int64_t n_words) {
    const int64_t covered = std::min(V, n_words * 32);
    for (int64_t w = 0; w * 32 < covered; ++w) {
        const uint32_t b = bits[w];
        if (b == 0xFFFFFFFFu) continue;  // the usual word: every token allowed
        const int64_t i0 = w * 32, n = std::min<int64_t>(32, covered - i0);
        for (int64_t j = 0; j < n; ++j) {
            if (!((b >> j) & 1u)) x[i0 + j] = kNegInf;
        }
    }
    for (int64_t i = covered; i < V; ++i) x[i] = kNegInf;
}

void logprob_rows(const float* x, int64_t R, int64_t V, const int32_t* tokens, int k, float* token_lp,
                  int32_t* top_ids, float* top_lp, double* lse, int n_threads) {
    const int nt = int(std::max<int64_t>(1, std::min<int64_t>(R, n_threads)));
    const int64_t kk = std::min<int64_t>(k, V);
#pragma omp parallel num_threads(nt)
    {
        thread_local std::vector<float> w;
        thread_local std::vector<int32_t> ids;
        if (int64_t(w.size()) < V) w.resize(size_t(V));
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < R; ++r) {
            const float* xr = x + r * V;
            const float m = row_max(xr, V);
            double l = m;
            if (m > kNegInf && m < std::numeric_limits<float>::infinity()) {
                std::memcpy(w.data(), xr, size_t(V) * sizeof(float));
                l = double(m) + std::log(double(active_kernels().softmax(w.data(), V)));
            }
            lse[r] = l;
            if (tokens != nullptr) token_lp[r] = float(double(xr[tokens[r]]) - l);
            if (k > 0) {
                top_indices(xr, xr, V, kk, m, false, ids);
                for (int64_t j = 0; j < k; ++j) {
                    const bool have = j < int64_t(ids.size());
                    top_ids[r * k + j] = have ? ids[size_t(j)] : -1;
                    top_lp[r * k + j] = have ? float(double(xr[ids[size_t(j)]]) - l) : kNegInf;
                }
            }
        }
    }
}

}  // namespace nlm
