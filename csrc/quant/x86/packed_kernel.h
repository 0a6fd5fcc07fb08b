// Entry points of the kernels over 16-row repacked weights: AVX-512 VNNI (x86/avx512_packed.cpp) and AMX.
#pragma once

#include <cstdint>

#include "quant/packed.h"
#include "quant/q8.h"

namespace nlm {

// y[t * ldy + r] = row r of w times activation row x[t], for the rows of groups [g0, g1).
void matmul_packed_avx512(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                          int64_t g1);
// The same on AMX tiles for full tiles of 16 activation rows (x86/amx.cpp), the rest as above.
void matmul_packed_amx(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                       int64_t g1);

}  // namespace nlm
