// AVX2 + FMA + F16C tier. Compiled with -mavx2 -mfma -mf16c only.
#include "quant/kernels.h"
#include "quant/x86/packed256.h"
#include "quant/x86/simd256.h"

namespace nlm {

namespace {

void matmul_packed_avx2(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0, int64_t g1) {
    matmul_packed256<MaddubsDot>(w, x, m, y, ldy, g0, g1);
}

KernelSet make() {
    KernelSet ks = kernels_generic();  // row-wise integer dots for unpacked weights: the canonical results
    ks.name = "avx2";
    ks.f[uint32_t(GGMLType::F32)] = dot_f32_256;
    ks.f[uint32_t(GGMLType::F16)] = dot_f16_256;
    ks.f[uint32_t(GGMLType::BF16)] = dot_bf16_256;
    ks.packed = matmul_packed_avx2;
    ks.pack_rows = 8;
    ks.pack_signed_bytes = MaddubsDot::kSignedBytes;
    ks.attn_scores = attn_scores_256;
    ks.attn_values = attn_values_256;
    ks.f16_to_f32 = f16_to_f32_256;
    ks.f32_to_f16 = f32_to_f16_256;
    return ks;
}

}  // namespace

const KernelSet& kernels_avx2() {
    static const KernelSet ks = make();
    return ks;
}

}  // namespace nlm
