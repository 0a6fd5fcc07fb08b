// Scalar reference kernels (the oracle tier): one dequantizer and one dot
// product against a float activation row per weight format. Plain C++, no
// intrinsics, compiled without FP contraction so that dequantization rounds
// exactly like ggml's reference C and gguf-py's numpy code.
#pragma once

#include <cstdint>

namespace nlm {

// Dequantize k elements (k a multiple of the format's block size) from src.
void dequantize_row_f32_ref(const void* src, float* dst, int64_t k);
void dequantize_row_f16_ref(const void* src, float* dst, int64_t k);
void dequantize_row_bf16_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q4_0_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q4_1_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q5_0_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q5_1_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q8_0_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q4_K_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q5_K_ref(const void* src, float* dst, int64_t k);
void dequantize_row_q6_K_ref(const void* src, float* dst, int64_t k);

// sum_i w[i] * x[i] over one weight row of k elements, accumulated in double.
float vec_dot_f32_ref(const void* w, const float* x, int64_t k);
float vec_dot_f16_ref(const void* w, const float* x, int64_t k);
float vec_dot_bf16_ref(const void* w, const float* x, int64_t k);
float vec_dot_q4_0_ref(const void* w, const float* x, int64_t k);
float vec_dot_q4_1_ref(const void* w, const float* x, int64_t k);
float vec_dot_q5_0_ref(const void* w, const float* x, int64_t k);
float vec_dot_q5_1_ref(const void* w, const float* x, int64_t k);
float vec_dot_q8_0_ref(const void* w, const float* x, int64_t k);
float vec_dot_q4_K_ref(const void* w, const float* x, int64_t k);
float vec_dot_q5_K_ref(const void* w, const float* x, int64_t k);
float vec_dot_q6_K_ref(const void* w, const float* x, int64_t k);

}  // namespace nlm
