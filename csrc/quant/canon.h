// The canonical float summation orders of kernels.h, in plain scalar code: the
// generic tier uses these, and the SIMD tiers reproduce them lane for lane.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

namespace nlm {

// ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))
inline float reduce8(const float* v) { return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7])); }

// sum_i w(i) * x[i] over 32 lanes, then the tail (kernels.h).
template <typename W>
inline float canon_dot32(const W& w, const float* x, int64_t k) {
    float l[32] = {};
    const int64_t k32 = k - k % 32;
    for (int64_t i = 0; i < k32; i += 32) {
        for (int j = 0; j < 32; ++j) l[j] = std::fma(w(i + j), x[i + j], l[j]);
    }
    float v[8];
    for (int j = 0; j < 8; ++j) v[j] = (l[j] + l[8 + j]) + (l[16 + j] + l[24 + j]);
    float s = reduce8(v);
    for (int64_t i = k32; i < k; ++i) s = std::fma(w(i), x[i], s);
    return s;
}

// a . b over 8 lanes, then the tail (kernels.h: attention q . k).
inline float canon_dot8(const float* a, const float* b, int64_t n) {
    float l[8] = {};
    const int64_t n8 = n - n % 8;
    for (int64_t i = 0; i < n8; i += 8) {
        for (int j = 0; j < 8; ++j) l[j] = std::fma(a[i + j], b[i + j], l[j]);
    }
    float s = reduce8(l);
    for (int64_t i = n8; i < n; ++i) s = std::fma(a[i], b[i], s);
    return s;
}

// e^x to about 2e-7 relative, in plain arithmetic (each step one IEEE operation, so a SIMD
// version that performs the same steps gives the same bits):
// e^x = 2^n * e^g, n = round(x log2 e), g = x - n ln 2 in [-ln2/2, ln2/2],
// e^g by its Taylor series to g^7 (error < 3e-9 relative on that interval). NaN gives NaN.
inline float exp_approx(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = std::nearbyint(x * 1.44269504088896341f);
    const float g = std::fma(n, -0.693145751953125f, x) - n * 1.42860682030941723212e-6f;  // Cody-Waite ln 2
    float p = 1.0f / 5040.0f;
    p = std::fma(p, g, 1.0f / 720.0f);
    p = std::fma(p, g, 1.0f / 120.0f);
    p = std::fma(p, g, 1.0f / 24.0f);
    p = std::fma(p, g, 1.0f / 6.0f);
    p = std::fma(p, g, 0.5f);
    p = std::fma(p, g, 1.0f);
    p = std::fma(p, g, 1.0f);
    const int32_t bits = ((n == n ? int32_t(n) : 0) + 127) << 23;  // NaN: p is NaN already
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

// x[i] = exp(x[i] - max(x)) in place (NaNs left out of the max); returns the sum, over 8 lanes then
// reduce8 and the tail (kernels.h: softmax). softmax = x / sum.
inline float canon_softmax(float* x, int64_t n) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
    float lanes[8] = {};
    const int64_t n8 = n - n % 8;
    for (int64_t i = 0; i < n8; i += 8) {
        for (int j = 0; j < 8; ++j) {
            x[i + j] = exp_approx(x[i + j] - mx);
            lanes[j] += x[i + j];
        }
    }
    float sum = reduce8(lanes);
    for (int64_t i = n8; i < n; ++i) {
        x[i] = exp_approx(x[i] - mx);
        sum += x[i];
    }
    return sum;
}

}  // namespace nlm
