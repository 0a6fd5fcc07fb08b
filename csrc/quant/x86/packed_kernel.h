// Entry point of the AVX-512 VNNI kernel over repacked weights (x86/avx512_packed.cpp).
#pragma once

#include <cstdint>

#include "quant/packed.h"
#include "quant/q8.h"

namespace nlm {

// y[t * ldy + r] = row r of w times activation row x[t], for the rows of groups [g0, g1).
void matmul_packed_avx512(const PackedWeights& w, const Q8Row* x, int64_t m, float* y, int64_t ldy, int64_t g0,
                          int64_t g1);

}  // namespace nlm
