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
    KernelSet ks = kernel_set_256("avx2");
    ks.packed = matmul_packed_avx2;
    ks.pack_rows = 8;
    ks.pack_signed_bytes = MaddubsDot::kSignedBytes;
    return ks;
}

}  // namespace

const KernelSet& kernels_avx2() {
    static const KernelSet ks = make();
    return ks;
}

}  // namespace nlm
