// The kernel tiers and the one dispatch point.
//
//   ref      quant/ref.cpp       dequantize, then a double-precision dot (the oracle)
//   generic  quant/generic.cpp   portable scalar: integer dot products against Q8 activations
//   avx2     quant/x86/avx2.cpp  AVX2 + FMA + F16C
//   avx512   quant/x86/avx512.cpp AVX-512 F/BW/VL/DQ + VNNI
//
// Quantized formats are multiplied against activations quantized to Q8 blocks
// (quant/q8.h); F32/F16/BF16 weights against float activations. Each ISA's file
// is compiled with its own flags; the tier is chosen once from the CPU's features
// (or by NLM_KERNELS=generic|avx2|avx512).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "quant/packed.h"
#include "quant/q8.h"

namespace nlm {

using vec_dot_q8_fn = float (*)(const void* w, const Q8Row& x, int64_t k);
using vec_dot_float_fn = float (*)(const void* w, const float* x, int64_t k);
// Rows of groups [g0, g1) of repacked weights times m activation rows: y[t * ldy + r].
using matmul_packed_fn = void (*)(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy,
                                  int64_t g0, int64_t g1);

constexpr int kMaxTypeId = 32;

struct KernelSet {
    const char* name = "";
    vec_dot_q8_fn q8[kMaxTypeId] = {};       // by ggml type id; null for float formats
    vec_dot_float_fn f[kMaxTypeId] = {};     // F32, F16, BF16
    matmul_packed_fn packed = nullptr;       // tiers with a repacked-weights kernel
};

// Whether weights of this type are multiplied against Q8 activations, and which kind.
bool uses_q8_activations(uint32_t type);
Q8Mode q8_mode_for(uint32_t type);

const KernelSet& kernels_generic();
#if defined(NLM_HAVE_X86_KERNELS)
const KernelSet& kernels_avx2();
const KernelSet& kernels_avx512();
#endif

// Every tier this CPU can run, portable first.
std::vector<const KernelSet*> available_kernel_sets();
// The tier in use: the best available, unless NLM_KERNELS names another.
const KernelSet& active_kernels();
// A tier by name ("generic", "avx2", "avx512"); nullptr if unknown or unsupported here.
const KernelSet* find_kernel_set(const std::string& name);

}  // namespace nlm
