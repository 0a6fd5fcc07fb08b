// AVX-VNNI tier: the AVX2 tier's kernels with the VEX-encoded vpdpbusd.
// Compiled with -mavx2 -mfma -mf16c -mavxvnni only (no AVX-512).
#include "quant/kernels.h"
#include "quant/x86/packed256.h"
#include "quant/x86/simd256.h"

namespace nlm {

namespace {

void matmul_packed_avxvnni(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                           int64_t g1) {
    matmul_packed256<VnniDot>(w, x, m, y, ldy, g0, g1);
}

KernelSet make() {
    KernelSet ks = kernel_set_256("avxvnni");
    ks.packed = matmul_packed_avxvnni;
    ks.pack_rows = 8;
    ks.pack_signed_bytes = VnniDot::kSignedBytes;
    return ks;
}

}  // namespace

const KernelSet& kernels_avxvnni() {
    static const KernelSet ks = make();
    return ks;
}

}  // namespace nlm
