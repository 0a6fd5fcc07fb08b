// Activation rows quantized on the fly for the integer dot products, with
// llama.cpp's own rounding so that both engines see the same activations:
//   Q8Mode::Q8_0  (for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 weights) scale per 32 values,
//                 d = max|x| / 127 stored as f16, q = round-to-even(x * 127 / max|x|);
//   Q8Mode::Q8_K  (for Q4_K/Q5_K/Q6_K weights) one scale per 256 values,
//                 d = -m / 127 where m is the value of largest magnitude, q = round-to-even(x / d), q <= 127.
// A span holding a NaN or an infinity has no finite scale: its codes are 0 and its
// scale (and scaled sum) NaN, so every product with it is NaN, as a float product
// with a non-finite value would be.
// Beside the codes, per-block scales and sums that the kernels load directly; blocks
// are always 32 values (a Q8_K scale repeats).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace nlm {

constexpr int QK8 = 32;  // activation block

enum class Q8Mode { Q8_0, Q8_K };

struct Q8Row {
    const int8_t* qs = nullptr;        // (k) codes
    const uint8_t* qu = nullptr;       // (k) codes + 128 as unsigned bytes (the u8 side of AMX's TDPBUSD)
    const float* d = nullptr;          // (k/32) block scales
    const float* s = nullptr;          // (k/32) d * sum of the block's codes (for formats with a minimum)
    const int32_t* sum16 = nullptr;    // (k/16) sum of each 16 codes
    int64_t k = 0;
};

// Storage for m quantized rows of k values (k a multiple of 32); reused across calls.
class Q8Buffer {
public:
    void quantize(const float* x, int64_t m, int64_t k, Q8Mode mode, int n_threads);
    Q8Row row(int64_t i) const;
    int64_t rows() const { return m_; }
    size_t bytes() const {
        return qs_.capacity() + qu_.capacity() + 4 * (d_.capacity() + s_.capacity() + sum_lane_.capacity() +
                                                      sum16_.capacity());
    }

private:
    int64_t m_ = 0, k_ = 0;
    std::vector<int8_t> qs_;
    std::vector<uint8_t> qu_;
    std::vector<float> d_, s_;
    std::vector<int32_t> sum_lane_, sum16_;
};

// Quantize one row (scalar; the reference for the buffer's layout).
// k must be a multiple of 32 (Q8_0) or 256 (Q8_K); d_lane may be null.
void quantize_row_q8(const float* x, int64_t k, Q8Mode mode, int8_t* qs, float* d, float* s, float* d_lane,
                     int32_t* sum_lane);

}  // namespace nlm
