#include "kv/codec.h"

#include <cmath>
#include <cstring>

#include "quant/fp16.h"

namespace nlm {

namespace {

constexpr uint16_t kF16MaxBits = 0x7bff;     // 65504
constexpr uint16_t kF16NegMaxBits = 0xfbff;  // -65504

// The next f16 below / above a finite half (bit patterns: sign-magnitude).
uint16_t f16_step_down(uint16_t h) {
    if (h & 0x8000u) return uint16_t(h + 1);
    return h == 0 ? uint16_t(0x8001) : uint16_t(h - 1);
}
uint16_t f16_step_up(uint16_t h) {
    if (!(h & 0x8000u)) return uint16_t(h + 1);
    return h == 0x8000u ? uint16_t(0x0001) : uint16_t(h - 1);
}

// The largest finite f16 <= x, and the smallest finite f16 >= x (clamped to +-65504; NaN gives the bound).
uint16_t f16_down(float x) {
    if (!(x >= -65504.0f)) return kF16NegMaxBits;
    if (x >= 65504.0f) return kF16MaxBits;
    uint16_t h = f32_to_fp16(x);
    if (fp16_to_f32(h) > x) h = f16_step_down(h);
    return h;
}
uint16_t f16_up(float x) {
    if (!(x <= 65504.0f)) return kF16MaxBits;
    if (x <= -65504.0f) return kF16NegMaxBits;
    uint16_t h = f32_to_fp16(x);
    if (fp16_to_f32(h) < x) h = f16_step_up(h);
    return h;
}

void put16(uint8_t* p, size_t i, uint16_t v) { std::memcpy(p + 2 * i, &v, 2); }
uint16_t get16(const uint8_t* p, size_t i) {
    uint16_t v;
    std::memcpy(&v, p + 2 * i, 2);
    return v;
}

inline int encode1(float x, const KVQParams& p, float qmax) {
    float v = (x - p.min) * p.inv;
    v = v > 0.0f ? v : 0.0f;  // NaN -> 0, as the SIMD max(v, 0) gives
    v = v < qmax ? v : qmax;
    return int(std::nearbyint(v));
}

// Code of channel c of row t (d channels per row).
template <int Bits>
inline void put_code(uint8_t* codes, int d, int t, int c, int q) {
    if (Bits == 8) {
        codes[size_t(t) * size_t(d) + size_t(c)] = uint8_t(q);
    } else {
        const int i = c & 31;
        uint8_t& b = codes[size_t(t) * size_t(d / 2) + size_t(c >> 5) * 16 + size_t(i & 15)];
        b = uint8_t(i < 16 ? (b & 0xf0) | q : (b & 0x0f) | (q << 4));
    }
}
template <int Bits>
inline int get_code(const uint8_t* codes, int d, int t, int c) {
    if (Bits == 8) return codes[size_t(t) * size_t(d) + size_t(c)];
    const int i = c & 31;
    const uint8_t b = codes[size_t(t) * size_t(d / 2) + size_t(c >> 5) * 16 + size_t(i & 15)];
    return i < 16 ? b & 0x0f : b >> 4;
}

template <int Bits>
void encode_k(const float* x, int n, int d, uint8_t* out) {
    const float qmax = float((1 << Bits) - 1);
    uint8_t* codes = out + 4 * size_t(d);
    for (int c = 0; c < d; ++c) {
        float lo = x[c], hi = x[c];
        for (int t = 1; t < n; ++t) {
            const float v = x[size_t(t) * size_t(d) + size_t(c)];
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        const KVQParams p = kv_qparams(lo, hi, (1 << Bits) - 1);
        put16(out, size_t(c), p.scale16);
        put16(out, size_t(d) + size_t(c), p.min16);
        for (int t = 0; t < n; ++t) put_code<Bits>(codes, d, t, c, encode1(x[size_t(t) * size_t(d) + size_t(c)], p, qmax));
    }
}

template <int Bits>
void decode_k(const uint8_t* in, int n, int d, float* x) {
    const uint8_t* codes = in + 4 * size_t(d);
    for (int c = 0; c < d; ++c) {
        const float s = fp16_to_f32(get16(in, size_t(c))), m = fp16_to_f32(get16(in, size_t(d) + size_t(c)));
        for (int t = 0; t < n; ++t) x[size_t(t) * size_t(d) + size_t(c)] = float(get_code<Bits>(codes, d, t, c)) * s + m;
    }
}

template <int Bits>
void encode_v(const float* x, int n, int d, uint8_t* out) {
    const float qmax = float((1 << Bits) - 1);
    const size_t groups = size_t(n) * size_t(d / kKVValueGroup);
    uint8_t* codes = out + 4 * groups;
    for (int t = 0; t < n; ++t) {
        const float* row = x + size_t(t) * size_t(d);
        for (int c0 = 0; c0 < d; c0 += kKVValueGroup) {
            float lo = row[c0], hi = row[c0];
            for (int c = c0 + 1; c < c0 + kKVValueGroup; ++c) {
                lo = row[c] < lo ? row[c] : lo;
                hi = row[c] > hi ? row[c] : hi;
            }
            const KVQParams p = kv_qparams(lo, hi, (1 << Bits) - 1);
            const size_t g = size_t(t) * size_t(d / kKVValueGroup) + size_t(c0 / kKVValueGroup);
            put16(out, g, p.scale16);
            put16(out, groups + g, p.min16);
            for (int c = c0; c < c0 + kKVValueGroup; ++c) put_code<Bits>(codes, d, t, c, encode1(row[c], p, qmax));
        }
    }
}

template <int Bits>
void decode_v(const uint8_t* in, int n, int d, float* x) {
    const size_t groups = size_t(n) * size_t(d / kKVValueGroup);
    const uint8_t* codes = in + 4 * groups;
    for (int t = 0; t < n; ++t) {
        for (int c0 = 0; c0 < d; c0 += kKVValueGroup) {
            const size_t g = size_t(t) * size_t(d / kKVValueGroup) + size_t(c0 / kKVValueGroup);
            const float s = fp16_to_f32(get16(in, g)), m = fp16_to_f32(get16(in, groups + g));
            for (int c = c0; c < c0 + kKVValueGroup; ++c) {
                x[size_t(t) * size_t(d) + size_t(c)] = float(get_code<Bits>(codes, d, t, c)) * s + m;
            }
        }
    }
}

}  // namespace

KVQParams kv_qparams(float lo, float hi, int qmax) {
    lo += 0.0f;  // -0 -> +0, so that every tier stores the same bits whatever order it reduced in
    hi += 0.0f;
    KVQParams p;
    p.min16 = f16_down(lo);
    p.min = fp16_to_f32(p.min16);
    p.scale16 = f16_up((hi - p.min) / float(qmax));
    p.scale = fp16_to_f32(p.scale16);
    p.inv = p.scale > 0.0f ? 1.0f / p.scale : 0.0f;
    return p;
}

const KVCodecKernels& kv_codec_generic(int bits) {
    static const KVCodecKernels k8{encode_k<8>, decode_k<8>, encode_v<8>, decode_v<8>};
    static const KVCodecKernels k4{encode_k<4>, decode_k<4>, encode_v<4>, decode_v<4>};
    return bits == 8 ? k8 : k4;
}

}  // namespace nlm
