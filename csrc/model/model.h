// A LLaMA-family decoder (architectures llama / mistral and qwen2) over a GGUF
// file mapped read-only, with a paged KV cache and a batched forward pass.
//
// Shape letters used in comments:
//   T  entries in the batch        E  n_embd          V  n_vocab
//   H  query heads                 G  key/value heads  D  head_dim
//   F  feed-forward width          L  layers           B  block_tokens
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "gguf/gguf.h"
#include "kv/pool.h"
#include "model/ops.h"

namespace nlm {

enum class RopeOrder { Normal, NeoX };  // Normal rotates (2i, 2i+1); NeoX rotates (i, i + n_rot/2)

// Integers and scalars read from `<arch>.*` metadata.
struct HParams {
    std::string arch;
    int n_vocab = 0;
    int n_ctx_train = 0;
    int n_embd = 0;       // E
    int n_layer = 0;      // L
    int n_ff = 0;         // F
    int n_head = 0;       // H
    int n_head_kv = 0;    // G
    int head_dim = 0;     // D
    int n_rot = 0;        // rotated dimensions of each head (<= D)
    float rms_eps = 1e-5f;
    float rope_base = 10000.0f;
    float rope_scale = 1.0f;  // linear scaling: positions are divided by this factor
    RopeOrder rope_order = RopeOrder::Normal;
};

struct LayerWeights {
    std::vector<float> attn_norm;          // (E)
    WeightView wq, wk, wv, wo;             // (H*D, E), (G*D, E), (G*D, E), (E, H*D)
    std::vector<float> bq, bk, bv;         // (H*D), (G*D), (G*D); empty when the file has no bias
    std::vector<float> ffn_norm;           // (E)
    WeightView w_gate, w_up, w_down;       // (F, E), (F, E), (E, F)
};

struct ModelWeights {
    WeightView tok_embd;                   // (V, E)
    std::vector<LayerWeights> layers;      // (L)
    std::vector<float> output_norm;        // (E)
    WeightView output;                     // (V, E); the token embedding when tied
    bool tied_output = false;
};

// One forward step over entries from many sequences. Entries of one sequence
// are appended to its cache in the order given.
struct BatchView {
    const int32_t* tokens = nullptr;     // (T)
    const int32_t* positions = nullptr;  // (T) RoPE positions
    const int32_t* seq_ids = nullptr;    // (T)
    int64_t n = 0;                       // T
    const int32_t* logit_rows = nullptr; // indices of the entries that want logits, ascending
    int64_t n_logits = 0;
};

class Model {
public:
    // Loads and validates; throws GGUFError / ModelError naming the fault.
    // `kernels` is the matmul tier: nullptr for the reference path (dequantize + float).
    // `kv_f16`: keys and values kept at f16 precision (llama.cpp's default cache), else f32.
    Model(const std::string& path, int n_ctx, int kv_blocks, int block_tokens, int n_threads, const KernelSet* kernels,
          bool kv_f16);

    const HParams& hparams() const { return hp_; }
    const GGUFFile& file() const { return *file_; }
    int n_ctx() const { return n_ctx_; }
    int n_threads() const { return n_threads_; }
    const char* kernels_name() const { return ks_ != nullptr ? ks_->name : "ref"; }
    bool kv_f16() const { return kv_f16_; }
    void set_n_threads(int n);
    const KVPool& pool() const { return *pool_; }

    int new_sequence() { return seqs_->create(); }
    int fork(int seq) { return seqs_->fork(seq); }
    void free_sequence(int seq) { seqs_->free(seq); }
    void truncate(int seq, int n_tokens) { seqs_->truncate(seq, n_tokens); }
    int sequence_length(int seq) { return seqs_->at(seq).n_tokens; }
    std::vector<int> sequence_ids() const { return seqs_->ids(); }

    // Checks the batch and reserves its KV slots; throws (changing nothing) when
    // an id is out of range, a sequence is unknown or too long, or the pool is full.
    void validate(const BatchView& batch);
    // Runs the batch; writes (n_logits, V) floats to `logits`. Call validate first.
    void forward(const BatchView& batch, float* logits);

private:
    void load_hparams();
    void load_weights();
    WeightView matrix(const std::string& name, int64_t rows, int64_t cols, bool required = true);
    std::vector<float> vector_f32(const std::string& name, int64_t n, bool required = true) const;
    void rope(float* x, int n_heads, int pos) const;
    void mm(const WeightView& w, const float* x, int64_t m, float* y);

    std::unique_ptr<GGUFFile> file_;
    HParams hp_;
    ModelWeights w_;
    int n_ctx_ = 0;
    int n_threads_ = 1;
    const KernelSet* ks_ = nullptr;
    bool kv_f16_ = true;
    std::vector<double> inv_freq_;  // (n_rot / 2)
    std::vector<std::unique_ptr<PackedWeights>> packed_;  // repacked copies the WeightViews point to
    std::unique_ptr<KVPool> pool_;
    std::unique_ptr<SequenceTable> seqs_;
    // Slot plan of the validated batch: per entry, the block and offset its K/V go to,
    // and the number of cache slots it attends to.
    std::vector<int> plan_block_, plan_offset_, plan_ctx_;
    Q8Cache q8_;  // quantized activations shared by the matrices that read the same input
};

}  // namespace nlm
