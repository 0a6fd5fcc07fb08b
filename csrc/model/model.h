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

// Every scratch buffer of the forward pass (llama2.c's RunState): allocated once,
// grown only when a batch needs more, never freed between calls.
struct RunState {
    std::vector<float> x;          // (T, E) residual stream
    std::vector<float> xn;         // (T, E) normed input of a sub-layer
    std::vector<float> q;          // (T, H, D)
    std::vector<float> k, v;       // (T, G, D)
    std::vector<float> att;        // (T, H, D) attention output before W_o
    std::vector<float> proj;       // (T, E)
    std::vector<float> gate, up;   // (T, F)
    std::vector<float> xr;         // (R, E) normed rows that want logits
    std::vector<float> rope_cos, rope_sin;  // (T, n_rot / 2)
    std::vector<float> scores;     // (threads, H/G * (ctx + 1)) attention scores, then normalisers
    std::vector<float> kv_f32;     // (threads, B, D) one block's keys or values as floats (f16 pool)
    std::vector<uint16_t> h16;     // (threads, max(H * D, ctx)) queries, then probabilities, rounded through f16
    // Codec pools: the sealed blocks the batch attends to, decoded once per layer for every entry that reads
    // them (a prompt's entries share their earlier blocks): (blocks, G, K|V, B, D) floats.
    std::vector<int> dec_blocks;   // distinct block ids, in slot order
    std::vector<int> dec_slot;     // (pool blocks): a block's slot when dec_stamp matches this batch
    std::vector<uint64_t> dec_stamp;
    std::vector<float> kv_dec;
    std::vector<const Sequence*> seq_of;   // (T)
    std::vector<int> plan_block, plan_offset, plan_ctx;  // (T) where each entry's K/V go; slots it attends to
    // validate(): distinct sequences of the batch, their new-entry counts and lengths before the batch
    std::vector<int> sorted_ids, batch_seqs, batch_new, batch_len0, cow_blocks;
    std::vector<int> filled;       // codec pools: the blocks this batch fills, sealed layer by layer
    Q8Cache q8;                    // quantized activations, keyed by (step, layer, input)
    uint64_t step = 0;             // forward calls so far
    size_t bytes() const;
};

class Model {
public:
    // Loads and validates; throws GGUFError / ModelError naming the fault.
    // `kernels` is the matmul tier: nullptr for the reference path (dequantize + float).
    Model(const std::string& path, int n_ctx, int kv_blocks, int block_tokens, int n_threads, const KernelSet* kernels,
          KVType kv_type);

    const HParams& hparams() const { return hp_; }
    const GGUFFile& file() const { return *file_; }
    int n_ctx() const { return n_ctx_; }
    int n_threads() const { return n_threads_; }
    const char* kernels_name() const { return ks_ != nullptr ? ks_->name : "ref"; }
    KVType kv_type() const { return pool_->type(); }
    void set_n_threads(int n);
    const KVPool& pool() const { return *pool_; }

    int new_sequence() { return seqs_->create(); }
    int fork(int seq) { return seqs_->fork(seq); }
    void free_sequence(int seq) { seqs_->free(seq); }
    void truncate(int seq, int n_tokens) { seqs_->truncate(seq, n_tokens); }
    int sequence_length(int seq) { return seqs_->at(seq).n_tokens; }
    void append_block(int seq, const uint8_t* data) { seqs_->append_block(seq, data); }
    void export_block(int seq, int index, uint8_t* out) const { seqs_->export_block(seq, index, out); }
    std::vector<int> sequence_ids() const { return seqs_->ids(); }

    // Checks the batch, reserves its KV slots and runs it; writes (n_logits, V) floats
    // to `logits`. Throws, changing no sequence, when an id is out of range, a sequence
    // is unknown or too long, the pool is full (KVCacheFull), or the logits come out
    // non-finite (NumericError: the weights overflow).
    void forward(const BatchView& batch, float* logits);

    // Keys or values of one cached token, as floats: (G, D) written to `out`.
    void read_kv(int seq, int layer, int token, bool values, float* out) const;

    // Bytes held, by kind (Model.memory() in Python).
    struct Memory {
        size_t weights_mapped = 0, weights_repacked = 0, weights_copied = 0;
        size_t kv_pool = 0, kv_used = 0, kv_per_token = 0, kv_block = 0, kv_staging = 0;
        size_t scratch = 0;
    };
    Memory memory() const;

private:
    void load_hparams();
    void load_weights();
    const uint8_t* aligned_data(const GGUFTensorInfo& t);
    WeightView matrix(const std::string& name, int64_t rows, int64_t cols, bool required = true);
    std::vector<float> vector_f32(const std::string& name, int64_t n, bool required = true);
    void validate(const BatchView& batch);
    void compute(const BatchView& batch, float* logits);
    void rollback();
    void rope(float* x, int n_heads, int64_t t) const;
    void mm(const WeightView& w, const float* x, int64_t m, float* y, int layer, ActKey::Input input);
    const KernelSet& attn_kernels() const { return ks_ != nullptr ? *ks_ : kernels_generic(); }

    std::unique_ptr<GGUFFile> file_;
    HParams hp_;
    ModelWeights w_;
    int n_ctx_ = 0;
    int n_threads_ = 1;
    const KernelSet* ks_ = nullptr;
    std::vector<double> inv_freq_;  // (n_rot / 2)
    std::vector<std::unique_ptr<PackedWeights>> packed_;  // repacked copies the WeightViews point to
    std::vector<Buffer> copies_;     // tensors whose mapped data is not aligned for the kernels' loads
    size_t copied_bytes_ = 0;        // copies_ and the float vectors (norms, biases)
    std::unique_ptr<KVPool> pool_;
    std::unique_ptr<SequenceTable> seqs_;
    RunState rs_;
};

}  // namespace nlm
