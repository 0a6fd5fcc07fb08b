// The kernel tiers and the one dispatch point.
//
//   ref      quant/ref.cpp          dequantize, then a double-precision dot (the oracle)
//   generic  quant/generic.cpp      portable scalar: integer dot products against Q8 activations
//   avx2     quant/x86/avx2.cpp     AVX2 + FMA + F16C: 8-row packed groups, vpmaddubsw + vpmaddwd
//   avxvnni  quant/x86/avxvnni.cpp  AVX-VNNI (VEX vpdpbusd) on the same 8-row groups
//   avx512   quant/x86/avx512.cpp   AVX-512 F/BW/VL/DQ + VNNI: 16-row packed groups
//   amx      quant/x86/amx.cpp      avx512 with AMX-INT8 tiles for prefill (offered only after a self-test)
//
// Quantized formats are multiplied against activations quantized to Q8 blocks
// (quant/q8.h); F32/F16/BF16 weights against float activations. Each ISA's file
// is compiled with its own flags; the tier is chosen once from the CPU's features
// (or by NLM_KERNELS=generic|avx2|avxvnni|avx512|amx).
//
// Every tier computes the same float operations in the same order, so all tiers
// give bit-identical results (the integer parts are exact; only float rounding
// could differ, and it cannot when the order is fixed). The orders:
//   quantized row . Q8 row   per unit u of 32 elements, in order, with the exact
//                            integer i_u = sum (code - offset) * q_x:
//                              acc = fma(float(i_u), w_scale_u * x_d_u, acc)
//                            Q6_K (two 16-element halves):
//                              acc = fma(fma(float(i_u1), w_scale_u1, float(i_u0) * w_scale_u0), x_d_u, acc)
//                            then, for formats with a minimum: acc = fma(w_min_u, x_s_u, acc).
//   float row . float row    32 lanes, lane j = fma-chain over elements i = j (mod 32) below k - k % 32;
//                            v_j = (l_j + l_{8+j}) + (l_{16+j} + l_{24+j}), s = reduce8(v), then the
//                            tail elements fma'd into s in order.
//   attention q . k          8 lanes the same way (lane j over d = j (mod 8)), s = reduce8(l), tail
//                            fma'd in order, times the scale.
//   softmax                  e_i = exp_approx(x_i - max) (quant/canon.h); the sum over 8 lanes, reduce8, tail.
//   reduce8(v)               ((v0 + v1) + (v2 + v3)) + ((v4 + v5) + (v6 + v7))
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kv/codec.h"
#include "quant/packed.h"
#include "quant/q8.h"

namespace nlm {

using vec_dot_q8_fn = float (*)(const void* w, const Q8Row& x, int64_t k);
using vec_dot_float_fn = float (*)(const void* w, const float* x, int64_t k);
// Rows of groups [g0, g1) of repacked weights times m activation rows: y[t * ldy + r].
using matmul_packed_fn = void (*)(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy,
                                  int64_t g0, int64_t g1);
// Attention over n cached rows of d floats (one KV block of one head), for nh query heads:
//   scores: s[h * lds + j] = scale * (q_h . k_j)            q: (nh, d), k: (n, d)
//   values: out[h * d + e] += sum_j p[h * ldp + j] * v_j[e]   in order of j, one fma each
using attn_scores_fn = void (*)(const float* q, int nh, const float* k, int n, int d, float scale, float* s,
                                int64_t lds);
using attn_values_fn = void (*)(const float* p, int64_t ldp, int nh, const float* v, int n, int d, float* out);
// x[i] = exp(x[i] - max x) in place, returning the sum (quant/canon.h: canon_softmax).
using softmax_fn = float (*)(float* x, int64_t n);
// Exact f16 -> f32 and round-to-nearest-even f32 -> f16 of n values.
using f16_to_f32_fn = void (*)(const uint16_t* src, float* dst, int64_t n);
using f32_to_f16_fn = void (*)(const float* src, uint16_t* dst, int64_t n);

constexpr int kMaxTypeId = 32;

struct KernelSet {
    const char* name = "";
    vec_dot_q8_fn q8[kMaxTypeId] = {};       // by ggml type id; null for float formats
    vec_dot_float_fn f[kMaxTypeId] = {};     // F32, F16, BF16
    matmul_packed_fn packed = nullptr;       // tiers with a repacked-weights kernel
    int pack_rows = 0;                       // rows per packed group (8 or 16)
    bool pack_signed_bytes = false;          // Q8_0 packed as int8 codes
    attn_scores_fn attn_scores = nullptr;
    attn_values_fn attn_values = nullptr;
    softmax_fn softmax = nullptr;
    f16_to_f32_fn f16_to_f32 = nullptr;
    f32_to_f16_fn f32_to_f16 = nullptr;
    const KVCodecKernels* kv8 = nullptr;     // the int8 / int4 KV codecs (kv/codec.h)
    const KVCodecKernels* kv4 = nullptr;
};

// Whether weights of this type are multiplied against Q8 activations, and which kind.
bool uses_q8_activations(uint32_t type);
Q8Mode q8_mode_for(uint32_t type);

const KernelSet& kernels_generic();
#if defined(NLM_HAVE_X86_KERNELS)
const KernelSet& kernels_avx2();
const KernelSet& kernels_avxvnni();
const KernelSet& kernels_avx512();
const KernelSet& kernels_amx();
#endif

// Every tier this CPU can run, portable first, best last.
std::vector<const KernelSet*> available_kernel_sets();
// The tier in use: the best available, unless NLM_KERNELS names another.
const KernelSet& active_kernels();
// A tier by name ("generic", "avx2", "avxvnni", "avx512", "amx"); nullptr if unknown or unsupported here.
const KernelSet* find_kernel_set(const std::string& name);
// The names of every tier this build knows, supported here or not (for messages).
const char* kernel_tier_names();

}  // namespace nlm
