// KV block codecs: int8 and int4 codes with a per-group minimum and scale (asymmetric, as KIVI).
//
//   keys    grouped per channel: one (scale, minimum) per channel over the block's n tokens.
//           This model family's keys have outlier channels; a per-token group would spend its range
//           on them (llama.cpp's per-token q4_0 cache takes Qwen2.5-0.5B from 4.59 to 10.91 perplexity).
//   values  grouped per token: one (scale, minimum) per 32 consecutive channels of a row.
//
// Layouts, for n rows (tokens) of d channels (d a multiple of 32), bits b in {8, 4}:
//   keys    f16 scale[d] | f16 minimum[d] | codes (n rows of d * b / 8 bytes)
//   values  f16 scale[n * d / 32] | f16 minimum[n * d / 32] | codes (n rows of d * b / 8 bytes)
// int4 codes of a 32-channel chunk: byte i (0..15) holds channel i in its low nibble, i + 16 in its high.
//
// Every tier runs the same float operations, so all give bit-identical codes and values:
//   params     lo, hi = min, max of the group; lo += 0 (no -0); m = the largest f16 <= lo;
//              s = the smallest f16 >= (hi - m) / qmax; inv = s > 0 ? 1 / s : 0
//   encode     code = rne(min(max((x - m) * inv, 0), qmax))
//   decode     x' = float(code) * s + m        (a multiply, then an add: no fused multiply-add)
// so |x - x'| <= s / 2 plus the float rounding of those operations, s <= (hi - lo) / qmax (1 + 2^-10)
// plus f16's rounding of m.
#pragma once

#include <cstddef>
#include <cstdint>

namespace nlm {

constexpr int kKVValueGroup = 32;  // channels per value group; d must be a multiple of it

// Bytes of n rows of d channels of keys / values in the codec of `bits` (8 or 4).
inline size_t kv_codec_k_bytes(int bits, int n, int d) {
    return size_t(4) * size_t(d) + size_t(n) * size_t(d) * size_t(bits) / 8;
}
inline size_t kv_codec_v_bytes(int bits, int n, int d) {
    return size_t(4) * size_t(n) * size_t(d / kKVValueGroup) + size_t(n) * size_t(d) * size_t(bits) / 8;
}

// One codec's kernels: x holds n rows of d floats, row per token.
struct KVCodecKernels {
    void (*encode_k)(const float* x, int n, int d, uint8_t* out);
    void (*decode_k)(const uint8_t* in, int n, int d, float* x);
    void (*encode_v)(const float* x, int n, int d, uint8_t* out);
    void (*decode_v)(const uint8_t* in, int n, int d, float* x);
};

// The portable scalar kernels: the reference the SIMD ones are tested against.
const KVCodecKernels& kv_codec_generic(int bits);
#if defined(NLM_HAVE_X86_KERNELS)
const KVCodecKernels& kv_codec_avx2(int bits);    // AVX2 + F16C (x86/kv_codec_avx2.cpp)
const KVCodecKernels& kv_codec_avx512(int bits);  // AVX-512 F/BW (x86/kv_codec_avx512.cpp)
#endif

// A group's parameters (the `params` line above).
struct KVQParams {
    uint16_t scale16, min16;  // as stored
    float scale, min, inv;    // their float values, and the encoder's multiplier
};
KVQParams kv_qparams(float lo, float hi, int qmax);

}  // namespace nlm
