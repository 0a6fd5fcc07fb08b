#include "sample/sample.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <string>

#include "quant/canon.h"

namespace nlm {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// max over the row's values that are not NaN; -inf when there are none
float row_max(const float* x, int64_t V) {
    float m = kNegInf;
    for (int64_t i = 0; i < V; ++i) m = x[i] > m ? x[i] : m;
    return m;
}

[[noreturn]] void all_masked(int64_t r) {
    throw std::invalid_argument("sample: every token of row " + std::to_string(r) +
                                " is masked (all logits are -inf or NaN)");
}

// w_i = exp((x_i - m) * inv_t), 0 where x_i is -inf or NaN; returns the sum (8 double lanes).
double weights(const float* x, int64_t V, float m, float inv_t, float* w) {
    double lanes[8] = {};
    const int64_t v8 = V - V % 8;
    for (int64_t i = 0; i < v8; i += 8) {
        for (int j = 0; j < 8; ++j) {
            const float xi = x[i + j];
            const float e = exp_approx((xi - m) * inv_t);
            w[i + j] = xi > kNegInf ? e : 0.0f;  // false for NaN too
            lanes[j] += double(w[i + j]);
        }
    }
    double s = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
    for (int64_t i = v8; i < V; ++i) {
        const float e = exp_approx((x[i] - m) * inv_t);
        w[i] = x[i] > kNegInf ? e : 0.0f;
        s += double(w[i]);
    }
    return s;
}

// Indices whose score is at least cut, in id order.
void collect(const float* s, int64_t V, float cut, std::vector<int32_t>& out) {
    out.clear();
    for (int64_t i = 0; i < V; ++i) {
        if (s[i] >= cut) out.push_back(int32_t(i));
    }
}

// Most likely first, ties to the lower id.
struct ByScore {
    const float* s;
    bool operator()(int32_t a, int32_t b) const { return s[a] > s[b] || (s[a] == s[b] && a < b); }
};

// The k highest-scoring indices of s (scores > floor), best first. Candidates are gathered above a
// falling cut (hi * step^j, or hi - step * 4^j), so the usual case sorts a few hundred indices, not
// the vocabulary; after 8 cuts everything above the floor is taken. hi is the top score.
void top_indices(const float* s, int64_t V, int64_t k, float hi, float floor, float step, bool multiplicative,
                 std::vector<int32_t>& out) {
    float scale = multiplicative ? step : 1.0f;
    for (int it = 0;; ++it) {
        if (it == 8) {
            out.clear();
            for (int64_t i = 0; i < V; ++i) {
                if (s[i] > floor) out.push_back(int32_t(i));
            }
            break;
        }
        collect(s, V, multiplicative ? hi * scale : hi - step * scale, out);
        if (int64_t(out.size()) >= k) break;
        scale *= multiplicative ? step : 4.0f;
    }
    ByScore by{s};
    if (int64_t(out.size()) > k) {
        std::nth_element(out.begin(), out.begin() + k, out.end(), by);
        out.resize(size_t(k));
    }
    std::sort(out.begin(), out.end(), by);
}

// The candidates of one row (ids, weights) in sampling order, per the rules in sample.h.
// w is scratch (V); returns the sum of the kept weights.
double candidates(const float* x, int64_t V, const SampleRow& p, int64_t r, float* w, std::vector<int32_t>& ids) {
    const float m = row_max(x, V);
    if (!(m > kNegInf)) all_masked(r);
    const double total = weights(x, V, m, 1.0f / p.temperature, w);
    const bool top_k = p.top_k > 0 && p.top_k < V;
    const bool top_p = p.top_p < 1.0f;
    ids.clear();
    if (!top_k && !top_p) {
        if (!(p.min_p > 0.0f)) return total;  // ids empty: every token, in id order
        collect(w, V, p.min_p, ids);  // the max w is 1
        double sum = 0.0;
        for (int32_t i : ids) sum += double(w[i]);
        return sum;
    }
    if (top_k) {
        top_indices(w, V, p.top_k, 1.0f, 0.0f, 1e-2f, true, ids);
    } else {
        // the top_p set lies within any most-likely set whose sum reaches top_p * total
        for (float cut = 1e-3f;; cut *= 1e-3f) {
            const bool last = cut < 1e-30f;
            collect(w, V, last ? std::numeric_limits<float>::min() : cut, ids);
            if (last) {
                ids.erase(std::remove_if(ids.begin(), ids.end(), [&](int32_t i) { return !(w[i] > 0.0f); }),
                          ids.end());
            }
            double s = 0.0;
            for (int32_t i : ids) s += double(w[i]);
            if (s >= double(p.top_p) * total || last) break;
        }
        std::sort(ids.begin(), ids.end(), ByScore{w});
    }
    // top_p is relative to the mass top_k kept, or to the whole vocabulary's
    double sum = total;
    if (top_k) {
        sum = 0.0;
        for (int32_t i : ids) sum += double(w[i]);
    }
    if (top_p) {
        const double goal = double(p.top_p) * sum;
        double c = 0.0;
        size_t n = 0;
        while (n < ids.size()) {
            c += double(w[ids[n]]);
            ++n;
            if (c >= goal) break;
        }
        ids.resize(n);
        sum = c;
    }
    if (p.min_p > 0.0f && !ids.empty()) {
        const float keep = p.min_p * w[ids[0]];
        size_t n = 0;
        double c = 0.0;
        while (n < ids.size() && w[ids[n]] >= keep) c += double(w[ids[n++]]);
        ids.resize(n);
        sum = c;
    }
    return sum;
}

int32_t argmax_row(const float* x, int64_t V, int64_t r) {
    float m = kNegInf;
    int64_t best = -1;
    for (int64_t i = 0; i < V; ++i) {
        if (x[i] > m) {
            m = x[i];
            best = i;
        }
    }
    if (best < 0) all_masked(r);
    return int32_t(best);
}

int32_t sample_row(const float* x, int64_t V, const SampleRow& p, int64_t r, float* w, std::vector<int32_t>& ids) {
    if (p.temperature == 0.0f) return argmax_row(x, V, r);
    const double sum = candidates(x, V, p, r, w, ids);
    const double goal = p.u * sum;
    double c = 0.0;
    int32_t last = -1;
    if (ids.empty() && !(p.min_p > 0.0f)) {
        for (int64_t i = 0; i < V; ++i) {
            if (w[i] > 0.0f) {
                c += double(w[i]);
                last = int32_t(i);
                if (c > goal) return last;
            }
        }
    } else {
        for (int32_t i : ids) {
            c += double(w[i]);
            last = i;
            if (c > goal) return last;
        }
    }
    if (last < 0) all_masked(r);
    return last;  // rounding left goal at the very end: the last candidate
}

}  // namespace

void sample_rows(const float* x, int64_t R, int64_t V, const SampleRow* rows, int32_t* tokens, int n_threads) {
    std::string error;
    const int nt = int(std::max<int64_t>(1, std::min<int64_t>(R, n_threads)));
#pragma omp parallel num_threads(nt)
    {
        std::vector<float> w;
        std::vector<int32_t> ids;
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < R; ++r) {
            try {
                if (rows[r].temperature != 0.0f && w.empty()) w.resize(size_t(V));
                tokens[r] = sample_row(x + r * V, V, rows[r], r, w.data(), ids);
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
    probs.clear();
    if (row.temperature == 0.0f) {
        ids.assign(1, argmax_row(x, V, 0));
        probs.assign(1, 1.0);
        return;
    }
    const double sum = candidates(x, V, row, 0, w.data(), ids);
    if (ids.empty() && !(row.min_p > 0.0f)) {
        for (int64_t i = 0; i < V; ++i) {
            if (w[size_t(i)] > 0.0f) ids.push_back(int32_t(i));
        }
    }
    for (int32_t i : ids) probs.push_back(double(w[size_t(i)]) / sum);
}

void logprob_rows(const float* x, int64_t R, int64_t V, const int32_t* tokens, int k, float* token_lp,
                  int32_t* top_ids, float* top_lp, double* lse, int n_threads) {
    const int nt = int(std::max<int64_t>(1, std::min<int64_t>(R, n_threads)));
    const int64_t kk = std::min<int64_t>(k, V);
#pragma omp parallel num_threads(nt)
    {
        std::vector<float> w(static_cast<size_t>(V));
        std::vector<int32_t> ids;
#pragma omp for schedule(dynamic, 1)
        for (int64_t r = 0; r < R; ++r) {
            const float* xr = x + r * V;
            const float m = row_max(xr, V);
            double l = m;
            if (m > kNegInf && m < std::numeric_limits<float>::infinity()) {
                l = double(m) + std::log(weights(xr, V, m, 1.0f, w.data()));
            }
            lse[r] = l;
            if (tokens != nullptr) token_lp[r] = float(double(xr[tokens[r]]) - l);
            if (k > 0) {
                top_indices(xr, V, kk, m, kNegInf, 8.0f, false, ids);
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
