// The canonical float summation orders of kernels.h, in plain scalar code: the
// generic tier uses these, and the SIMD tiers reproduce them lane for lane.
#pragma once

#include <cmath>
#include <cstdint>

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

}  // namespace nlm
