// Dense building blocks of the forward pass, over float activations.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "quant/canon.h"
#include "quant/kernels.h"
#include "quant/types.h"

namespace nlm {

// A weight matrix used in place in the mapped file: `rows` rows of `cols`
// elements in a GGUF block format. y = W x maps cols -> rows.
struct WeightView {
    const uint8_t* data = nullptr;
    const TypeTraits* type = nullptr;
    uint32_t type_id = 0;    // ggml type id
    int64_t rows = 0;        // output features (GGUF ne[1])
    int64_t cols = 0;        // input features (GGUF ne[0])
    size_t row_stride = 0;   // bytes per row
    const PackedWeights* packed = nullptr;  // the same values repacked, when the tier has a packed kernel
    const uint8_t* row(int64_t r) const { return data + size_t(r) * row_stride; }
};

// Which activations a buffer holds: the forward step that wrote them, the layer,
// and the input they are (ActKey::kAttnIn, ...). Matrices that read the same input
// (Q, K, V; gate, up) pass the same key and share one quantization.
struct ActKey {
    enum Input : int { kNone = 0, kAttnIn, kAttnOut, kFfnIn, kFfnHidden, kOutputIn };
    uint64_t step = 0;
    int layer = -1;
    Input input = kNone;
    bool operator==(const ActKey& o) const { return step == o.step && layer == o.layer && input == o.input; }
};

// Activations quantized to Q8 per key and mode (Q8_0 / Q8_K); a key that differs
// from the stored one is quantized afresh into the same buffers (grown, never shrunk).
class Q8Cache {
public:
    const std::vector<Q8Row>& get(const ActKey& key, const float* x, int64_t m, int64_t k, Q8Mode mode, int n_threads);
    size_t bytes() const { return buf_[0].bytes() + buf_[1].bytes(); }

private:
    Q8Buffer buf_[2];
    std::vector<Q8Row> rows_[2];
    ActKey key_[2];
    int64_t m_[2] = {0, 0}, k_[2] = {0, 0};
};

// y (M, rows) = x (M, cols) @ W^T with the kernels of `ks` (the active tier when null).
// Quantized weights meet activations quantized to Q8 blocks: by `cache` under `key`
// when given, else afresh in a per-thread buffer. Threads split the rows of W.
void matmul(const WeightView& w, const float* x, int64_t m, float* y, int n_threads, const KernelSet* ks = nullptr,
            Q8Cache* cache = nullptr, const ActKey& key = ActKey{});

// y (M, rows) = x (M, cols) @ W^T over repacked weights with the tier's packed kernel.
void matmul_packed(const PackedWeights& w, const float* x, int64_t m, float* y, int n_threads, const KernelSet& ks,
                   Q8Cache* cache = nullptr, const ActKey& key = ActKey{});

// The reference path: each weight tile dequantized to float, float dot products.
void matmul_ref(const WeightView& w, const float* x, int64_t m, float* y, int n_threads);

// out (n) = x (n) / sqrt(mean(x^2) + eps) * weight (n)
void rms_norm(const float* x, const float* weight, int64_t n, float eps, float* out);

// g[i] = silu(g[i]) * u[i], silu(v) = v / (1 + exp(-v)).
void silu_mul(float* g, const float* u, int64_t n);

}  // namespace nlm
