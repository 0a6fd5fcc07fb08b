#include "model/model.h"

#include <omp.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>

#include "common/error.h"
#include "quant/formats.h"
#include "quant/fp16.h"

namespace nlm {

namespace {

std::string shape_str(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

// v.size() >= n, keeping what v holds; grows, never shrinks.
template <typename T>
void grow(std::vector<T>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// f(t) for t < n, over the threads when n > 1. A one-iteration loop runs inline: even a serialised
// OpenMP parallel region allocates in libgomp, and decode must allocate nothing.
template <typename F>
void for_each(int64_t n, int nt, const F& f) {
    if (n > 1) {
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t i = 0; i < n; ++i) f(i);
    } else {
        for (int64_t i = 0; i < n; ++i) f(i);
    }
}

template <typename T>
size_t capacity_bytes(const std::vector<T>& v) {
    return v.capacity() * sizeof(T);
}

}  // namespace

size_t RunState::bytes() const {
    size_t b = 0;
    for (const auto* f : {&x, &xn, &q, &k, &v, &att, &proj, &gate, &up, &xr, &rope_cos, &rope_sin, &scores, &kv_f32,
                          &kv_dec}) {
        b += capacity_bytes(*f);
    }
    for (const auto* i : {&plan_block, &plan_offset, &plan_ctx, &sorted_ids, &batch_seqs, &batch_new, &batch_len0,
                          &cow_blocks, &filled, &dec_blocks, &dec_slot}) {
        b += capacity_bytes(*i);
    }
    return b + capacity_bytes(h16) + capacity_bytes(seq_of) + capacity_bytes(dec_stamp) + q8.bytes();
}

Model::Model(const std::string& path, int n_ctx, int kv_blocks, int block_tokens, int n_threads, const KernelSet* kernels,
             KVType kv_type)
    : file_(std::make_unique<GGUFFile>(path)), ks_(kernels) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
    if (block_tokens <= 0) throw std::invalid_argument("block_tokens must be positive, got " + std::to_string(block_tokens));
    if (kv_blocks < 0) throw std::invalid_argument("kv_blocks must not be negative, got " + std::to_string(kv_blocks));
    set_n_threads(n_threads);
    load_hparams();
    load_weights();
    n_ctx_ = n_ctx;
    // In 64 bits: n_ctx + block_tokens - 1 overflows an int near INT_MAX (the quotient then fits).
    const int64_t blocks = kv_blocks > 0 ? int64_t(kv_blocks) : (int64_t(n_ctx) + block_tokens - 1) / block_tokens;
    KVShape shape{hp_.n_layer, hp_.n_head_kv, hp_.head_dim, block_tokens};
    pool_ = std::make_unique<KVPool>(shape, int(blocks), kv_type, attn_kernels());
    seqs_ = std::make_unique<SequenceTable>(*pool_, size_t((int64_t(n_ctx) + block_tokens - 1) / block_tokens));
    inv_freq_.resize(size_t(hp_.n_rot / 2));
    for (int i = 0; i < hp_.n_rot / 2; ++i) {
        inv_freq_[size_t(i)] = std::pow(double(hp_.rope_base), -2.0 * i / double(hp_.n_rot));
    }
}

void Model::mm(const WeightView& w, const float* x, int64_t m, float* y, int layer, ActKey::Input input) {
    if (ks_ != nullptr) {
        matmul(w, x, m, y, n_threads_, ks_, &rs_.q8, ActKey{rs_.step, layer, input});
    } else {
        matmul_ref(w, x, m, y, n_threads_);
    }
}

void Model::set_n_threads(int n) {
    if (n <= 0) n = omp_get_num_procs();
    n_threads_ = n;
}

void Model::load_hparams() {
    const std::string& p = file_->path();
    const GGUFValue* a = file_->find("general.architecture");
    if (a == nullptr || a->type != GGUFType::STRING) throw ModelError(p + ": metadata has no general.architecture string");
    hp_.arch = a->s;
    if (hp_.arch == "llama" || hp_.arch == "mistral") {
        hp_.rope_order = RopeOrder::Normal;
    } else if (hp_.arch == "qwen2") {
        hp_.rope_order = RopeOrder::NeoX;
    } else {
        throw ModelError(p + ": unsupported architecture '" + hp_.arch + "' (supported: llama, mistral, qwen2)");
    }
    const std::string pre = hp_.arch + ".";
    auto get = [&](const std::string& key) -> const GGUFValue& {
        const GGUFValue* v = file_->find(pre + key);
        if (v == nullptr) throw ModelError(p + ": required metadata key '" + pre + key + "' is missing");
        return *v;
    };
    auto get_int = [&](const std::string& key, int64_t lo, int64_t hi) -> int {
        const int64_t v = get(key).as_int(p + ": " + pre + key);
        if (v < lo || v > hi) {
            throw ModelError(p + ": " + pre + key + " = " + std::to_string(v) + " is outside [" + std::to_string(lo) + ", " +
                             std::to_string(hi) + "]");
        }
        return int(v);
    };
    auto has = [&](const std::string& key) { return file_->find(pre + key) != nullptr; };

    constexpr int64_t kBig = 1 << 24;
    hp_.n_ctx_train = get_int("context_length", 1, int64_t(1) << 30);
    hp_.n_embd = get_int("embedding_length", 1, kBig);
    hp_.n_layer = get_int("block_count", 1, 4096);
    hp_.n_ff = get_int("feed_forward_length", 1, kBig);
    hp_.n_head = get_int("attention.head_count", 1, 4096);
    hp_.n_head_kv = has("attention.head_count_kv") ? get_int("attention.head_count_kv", 1, hp_.n_head) : hp_.n_head;
    if (hp_.n_head % hp_.n_head_kv != 0) {
        throw ModelError(p + ": head_count " + std::to_string(hp_.n_head) + " is not a multiple of head_count_kv " +
                         std::to_string(hp_.n_head_kv));
    }
    if (has("attention.key_length")) {
        hp_.head_dim = get_int("attention.key_length", 1, kBig);
        if (has("attention.value_length") && get_int("attention.value_length", 1, kBig) != hp_.head_dim) {
            throw ModelError(p + ": key_length and value_length differ, which this engine does not support");
        }
    } else {
        if (hp_.n_embd % hp_.n_head != 0) throw ModelError(p + ": embedding_length is not a multiple of head_count");
        hp_.head_dim = hp_.n_embd / hp_.n_head;
    }
    hp_.n_rot = has("rope.dimension_count") ? get_int("rope.dimension_count", 2, hp_.head_dim) : hp_.head_dim;
    if (hp_.n_rot % 2 != 0) throw ModelError(p + ": rope.dimension_count must be even");
    hp_.rms_eps = float(get("attention.layer_norm_rms_epsilon").as_float(p + ": " + pre + "attention.layer_norm_rms_epsilon"));
    if (!(hp_.rms_eps > 0.0f)) throw ModelError(p + ": layer_norm_rms_epsilon must be positive");
    if (has("rope.freq_base")) hp_.rope_base = float(get("rope.freq_base").as_float(p + ": rope.freq_base"));
    if (!(hp_.rope_base > 0.0f)) throw ModelError(p + ": rope.freq_base must be positive");

    // RoPE scaling: "none" or "linear" (also the legacy rope.scale_linear key).
    std::string scaling = "none";
    if (has("rope.scaling.type")) {
        const GGUFValue& t = get("rope.scaling.type");
        if (t.type != GGUFType::STRING) throw ModelError(p + ": rope.scaling.type must be a string");
        scaling = t.s;
    }
    if (scaling == "linear") {
        hp_.rope_scale = float(get("rope.scaling.factor").as_float(p + ": rope.scaling.factor"));
    } else if (scaling == "none") {
        if (has("rope.scale_linear")) hp_.rope_scale = float(get("rope.scale_linear").as_float(p + ": rope.scale_linear"));
    } else {
        throw ModelError(p + ": RoPE scaling type '" + scaling + "' is not supported (none, linear)");
    }
    if (!(hp_.rope_scale > 0.0f)) throw ModelError(p + ": RoPE scaling factor must be positive");
}

// The tensor's bytes where the kernels may read them: in place when the mapping
// is aligned for the format's loads (a float needs 4 bytes, a half or a block's f16
// scale 2), else a copy at 64-byte alignment. GGUF's default alignment of 32 keeps
// every tensor in place; a file with general.alignment 1 may not.
const uint8_t* Model::aligned_data(const GGUFTensorInfo& t) {
    const uint8_t* p = file_->tensor_data(t);
    const uintptr_t need = static_cast<GGMLType>(t.type) == GGMLType::F32 ? 4 : 2;
    if (reinterpret_cast<uintptr_t>(p) % need == 0) return p;
    copies_.push_back(alloc_buffer(size_t(t.n_bytes), "an aligned copy of a tensor"));
    std::memcpy(copies_.back().get(), p, size_t(t.n_bytes));
    copied_bytes_ += size_t(t.n_bytes);
    return copies_.back().get();
}

WeightView Model::matrix(const std::string& name, int64_t rows, int64_t cols, bool required) {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (t == nullptr) {
        if (required) throw ModelError(file_->path() + ": tensor '" + name + "' is missing");
        return WeightView{};
    }
    if (t->ne.size() != 2 || t->ne[0] != cols || t->ne[1] != rows) {
        throw ModelError(file_->path() + ": tensor '" + name + "' has shape " + shape_str(t->ne) +
                         " but the metadata implies " + shape_str({cols, rows}));
    }
    WeightView w;
    w.data = aligned_data(*t);
    w.type = type_traits(t->type);
    w.type_id = t->type;
    w.rows = rows;
    w.cols = cols;
    w.row_stride = row_bytes(*w.type, cols);
    PackFormat pf;
    if (ks_ != nullptr && ks_->packed != nullptr && name != "token_embd.weight" &&
        pack_format(t->type, ks_->pack_rows, ks_->pack_signed_bytes, &pf)) {
        packed_.push_back(pack_weights(t->type, w.data, rows, cols, ks_->pack_rows, ks_->pack_signed_bytes));
        w.packed = packed_.back().get();
    }
    return w;
}

std::vector<float> Model::vector_f32(const std::string& name, int64_t n, bool required) {
    const GGUFTensorInfo* t = file_->find_tensor(name);
    if (t == nullptr) {
        if (required) throw ModelError(file_->path() + ": tensor '" + name + "' is missing");
        return {};
    }
    if (t->ne.size() != 1 || t->ne[0] != n) {
        throw ModelError(file_->path() + ": tensor '" + name + "' has shape " + shape_str(t->ne) + " but the metadata implies [" +
                         std::to_string(n) + "]");
    }
    std::vector<float> out(static_cast<size_t>(n));
    type_traits(t->type)->dequantize_ref(aligned_data(*t), out.data(), n);
    copied_bytes_ += out.size() * sizeof(float);
    return out;
}

void Model::load_weights() {
    const int64_t E = hp_.n_embd, HD = int64_t(hp_.n_head) * hp_.head_dim, GD = int64_t(hp_.n_head_kv) * hp_.head_dim;
    const int64_t F = hp_.n_ff;
    const GGUFTensorInfo* emb = file_->find_tensor("token_embd.weight");
    if (emb == nullptr) throw ModelError(file_->path() + ": tensor 'token_embd.weight' is missing");
    if (emb->ne.size() != 2) throw ModelError(file_->path() + ": token_embd.weight must be 2-D, has shape " + shape_str(emb->ne));
    if (emb->ne[1] > std::numeric_limits<int32_t>::max()) throw ModelError(file_->path() + ": vocabulary too large");
    hp_.n_vocab = int(emb->ne[1]);
    w_.tok_embd = matrix("token_embd.weight", hp_.n_vocab, E);
    w_.output_norm = vector_f32("output_norm.weight", E);
    w_.output = matrix("output.weight", hp_.n_vocab, E, false);
    w_.tied_output = w_.output.data == nullptr;
    if (w_.tied_output) {
        w_.output = w_.tok_embd;  // the embedding rows are read in place; the projection may use a packed copy
        PackFormat pf;
        if (ks_ != nullptr && ks_->packed != nullptr && pack_format(w_.output.type_id, ks_->pack_rows, ks_->pack_signed_bytes, &pf)) {
            packed_.push_back(pack_weights(w_.output.type_id, w_.output.data, w_.output.rows, w_.output.cols,
                                           ks_->pack_rows, ks_->pack_signed_bytes));
            w_.output.packed = packed_.back().get();
        }
    }

    w_.layers.resize(size_t(hp_.n_layer));
    for (int l = 0; l < hp_.n_layer; ++l) {
        const std::string b = "blk." + std::to_string(l) + ".";
        LayerWeights& lw = w_.layers[size_t(l)];
        lw.attn_norm = vector_f32(b + "attn_norm.weight", E);
        lw.wq = matrix(b + "attn_q.weight", HD, E);
        lw.wk = matrix(b + "attn_k.weight", GD, E);
        lw.wv = matrix(b + "attn_v.weight", GD, E);
        lw.wo = matrix(b + "attn_output.weight", E, HD);
        lw.bq = vector_f32(b + "attn_q.bias", HD, false);
        lw.bk = vector_f32(b + "attn_k.bias", GD, false);
        lw.bv = vector_f32(b + "attn_v.bias", GD, false);
        lw.ffn_norm = vector_f32(b + "ffn_norm.weight", E);
        lw.w_gate = matrix(b + "ffn_gate.weight", F, E);
        lw.w_up = matrix(b + "ffn_up.weight", F, E);
        lw.w_down = matrix(b + "ffn_down.weight", E, F);
    }
}

// Rotary embedding of entry t's heads, in place: x is (n_heads, D).
//   theta_i = (pos / scale) * base^(-2i / n_rot)     (cos, sin tabulated per entry by compute())
//   Normal: (x[2i], x[2i+1]) rotated by theta_i       (llama.cpp's layout for llama)
//   NeoX:   (x[i], x[i + n_rot/2]) rotated by theta_i (Hugging Face's rotate_half; qwen2)
void Model::rope(float* x, int n_heads, int64_t t) const {
    const int half = hp_.n_rot / 2;
    const float* cs = rs_.rope_cos.data() + t * half;
    const float* sn = rs_.rope_sin.data() + t * half;
    const bool normal = hp_.rope_order == RopeOrder::Normal;
    for (int h = 0; h < n_heads; ++h) {
        float* v = x + int64_t(h) * hp_.head_dim;
        for (int i = 0; i < half; ++i) {
            const int i0 = normal ? 2 * i : i;
            const int i1 = normal ? 2 * i + 1 : i + half;
            const float a = v[i0], b = v[i1];
            v[i0] = a * cs[i] - b * sn[i];
            v[i1] = a * sn[i] + b * cs[i];
        }
    }
}

void Model::validate(const BatchView& batch) {
    if (batch.n <= 0) throw std::invalid_argument("forward: the batch is empty");
    if (batch.n > int64_t(1) << 24) throw std::invalid_argument("forward: batch too large");
    for (int64_t i = 0; i < batch.n; ++i) {
        if (batch.tokens[i] < 0 || batch.tokens[i] >= hp_.n_vocab) {
            throw std::invalid_argument("forward: token id " + std::to_string(batch.tokens[i]) + " at entry " + std::to_string(i) +
                                        " is outside [0, " + std::to_string(hp_.n_vocab) + ")");
        }
        if (batch.positions[i] < 0) {
            throw std::invalid_argument("forward: negative position " + std::to_string(batch.positions[i]) + " at entry " +
                                        std::to_string(i));
        }
        if (!seqs_->contains(batch.seq_ids[i])) {
            throw std::invalid_argument("forward: unknown sequence id " + std::to_string(batch.seq_ids[i]) + " at entry " +
                                        std::to_string(i));
        }
    }
    for (int64_t j = 0; j < batch.n_logits; ++j) {
        const int32_t r = batch.logit_rows[j];
        if (r < 0 || r >= batch.n || (j > 0 && r <= batch.logit_rows[j - 1])) {
            throw std::invalid_argument("forward: logit rows must be ascending entry indices in [0, " + std::to_string(batch.n) + ")");
        }
    }

    // The batch's distinct sequences and how many entries each adds (sorted ids: no map, no allocation
    // once the scratch has grown).
    RunState& rs = rs_;
    rs.sorted_ids.assign(batch.seq_ids, batch.seq_ids + batch.n);
    std::sort(rs.sorted_ids.begin(), rs.sorted_ids.end());
    rs.batch_seqs.clear();
    rs.batch_new.clear();
    rs.batch_len0.clear();
    for (size_t i = 0; i < rs.sorted_ids.size(); ++i) {
        if (i == 0 || rs.sorted_ids[i] != rs.sorted_ids[i - 1]) {
            rs.batch_seqs.push_back(rs.sorted_ids[i]);
            rs.batch_new.push_back(0);
            rs.batch_len0.push_back(seqs_->at(rs.sorted_ids[i]).n_tokens);
        }
        ++rs.batch_new.back();
    }

    // Count the blocks needed before changing anything.
    const int64_t bt = pool_->shape().block_tokens;
    int64_t need = 0;
    rs.cow_blocks.clear();
    for (size_t i = 0; i < rs.batch_seqs.size(); ++i) {
        const Sequence& s = seqs_->at(rs.batch_seqs[i]);
        const int64_t total = int64_t(s.n_tokens) + rs.batch_new[i];
        if (total > n_ctx_) {
            throw std::invalid_argument("forward: sequence " + std::to_string(rs.batch_seqs[i]) + " would hold " +
                                        std::to_string(total) + " tokens, more than n_ctx = " + std::to_string(n_ctx_));
        }
        need += (total + bt - 1) / bt - int64_t(s.blocks.size());
        if (s.n_tokens % bt != 0 && pool_->refcount(s.blocks.back()) > 1) rs.cow_blocks.push_back(s.blocks.back());
    }
    // A shared partial block is copied for each sequence that writes to it, except that when every
    // sharer writes in this batch, the last one finds it no longer shared and writes in place.
    std::sort(rs.cow_blocks.begin(), rs.cow_blocks.end());
    for (size_t i = 0; i < rs.cow_blocks.size();) {
        size_t j = i;
        while (j < rs.cow_blocks.size() && rs.cow_blocks[j] == rs.cow_blocks[i]) ++j;
        const int64_t writers = int64_t(j - i);
        need += pool_->refcount(rs.cow_blocks[i]) > writers ? writers : writers - 1;
        i = j;
    }
    if (need > pool_->n_free()) {
        throw KVCacheFull("KV cache full: the batch needs " + std::to_string(need) + " free blocks, " +
                          std::to_string(pool_->n_free()) + " of " + std::to_string(pool_->n_blocks()) +
                          " are free; free sequences or load with a larger n_ctx");
    }

    // Reserve: copy shared partial blocks, grow block tables, assign slots.
    for (size_t i = 0; i < rs.batch_seqs.size(); ++i) {
        Sequence& s = seqs_->at(rs.batch_seqs[i]);
        if (s.n_tokens % bt != 0 && pool_->refcount(s.blocks.back()) > 1) {
            const int old = s.blocks.back();
            s.blocks.back() = pool_->copy_of(old);
            pool_->release(old);
        }
        // A codec block cut back to a partial one is sealed: decode it into staging to write on.
        if (pool_->quantized() && s.n_tokens % bt != 0 && !pool_->is_open(s.blocks.back())) pool_->reopen(s.blocks.back());
        const int64_t want = (int64_t(s.n_tokens) + rs.batch_new[i] + bt - 1) / bt;
        while (int64_t(s.blocks.size()) < want) s.blocks.push_back(pool_->allocate());
    }
    const size_t T = size_t(batch.n);
    grow(rs.plan_block, T);
    grow(rs.plan_offset, T);
    grow(rs.plan_ctx, T);
    grow(rs.seq_of, T);
    rs.filled.clear();
    for (size_t i = 0; i < T; ++i) {
        Sequence& s = seqs_->at(batch.seq_ids[i]);
        const int slot = s.n_tokens++;
        rs.plan_block[i] = s.blocks[size_t(slot / bt)];
        rs.plan_offset[i] = int(slot % bt);
        rs.plan_ctx[i] = slot + 1;
        rs.seq_of[i] = &s;
        if (pool_->quantized() && slot % bt == bt - 1) rs.filled.push_back(rs.plan_block[i]);
    }
}

void Model::rollback() {
    for (size_t i = 0; i < rs_.batch_seqs.size(); ++i) {
        if (seqs_->contains(rs_.batch_seqs[i])) seqs_->truncate(rs_.batch_seqs[i], rs_.batch_len0[i]);
    }
}

void Model::forward(const BatchView& batch, float* logits) {
    validate(batch);  // the plan compute() follows is always this batch's
    try {
        compute(batch, logits);
    } catch (...) {
        rollback();
        throw;
    }
    for (const int b : rs_.filled) pool_->close(b);  // sealed at every layer: the f16 rows go
}

void Model::compute(const BatchView& batch, float* logits) {
    const int64_t T = batch.n, E = hp_.n_embd, D = hp_.head_dim, H = hp_.n_head, G = hp_.n_head_kv, F = hp_.n_ff;
    const int64_t HD = H * D, GD = G * D, hpg = H / G, half = hp_.n_rot / 2;
    const int64_t bt = pool_->shape().block_tokens;
    const int nt = n_threads_;
    const float eps = hp_.rms_eps;
    const KernelSet& ak = attn_kernels();
    // An f16 or codec cache: Q, K, the probabilities and V meet at f16 precision (kv16). A codec cache
    // holds open blocks as f16 staging rows and sealed ones in the codec (kv/pool.h).
    const bool kvq = pool_->quantized();
    const bool kv16 = pool_->type() == KVType::F16 || kvq;
    RunState& rs = rs_;
    ++rs.step;  // a new key for every activation quantized in this call

    int64_t max_ctx = 0;
    for (int64_t t = 0; t < T; ++t) max_ctx = std::max<int64_t>(max_ctx, rs.plan_ctx[size_t(t)]);
    grow(rs.x, size_t(T * E));
    grow(rs.xn, size_t(T * E));
    grow(rs.q, size_t(T * HD));
    grow(rs.k, size_t(T * GD));
    grow(rs.v, size_t(T * GD));
    grow(rs.att, size_t(T * HD));
    grow(rs.proj, size_t(T * E));
    grow(rs.gate, size_t(T * F));
    grow(rs.up, size_t(T * F));
    grow(rs.rope_cos, size_t(T * half));
    grow(rs.rope_sin, size_t(T * half));
    // Per thread, sized for the longest context a sequence may reach, so that decoding never grows them:
    // (H/G, ctx) scores and H/G normalisers; one block's K or V as floats; Q, then probabilities, as f16.
    const size_t sc_stride = size_t(hpg) * size_t(n_ctx_ + 1);
    const size_t h16_stride = size_t(std::max<int64_t>(HD, n_ctx_));
    grow(rs.scores, size_t(nt) * sc_stride);
    grow(rs.kv_f32, size_t(nt) * size_t(bt * D));
    grow(rs.h16, size_t(nt) * h16_stride);
    float* x = rs.x.data();
    float* xn = rs.xn.data();
    float* q = rs.q.data();
    float* k = rs.k.data();
    float* v = rs.v.data();
    float* att = rs.att.data();
    float* proj = rs.proj.data();
    float* gate = rs.gate.data();
    float* up = rs.up.data();

    // RoPE angles once per entry for every layer: theta_i = (pos / scale) * base^(-2i / n_rot)
    // x = token_embd[tokens]
    for_each(T, nt, [&](int64_t t) {
        const double p = double(batch.positions[t]) / double(hp_.rope_scale);
        for (int64_t i = 0; i < half; ++i) {
            const double theta = p * inv_freq_[size_t(i)];
            rs.rope_cos[size_t(t * half + i)] = float(std::cos(theta));
            rs.rope_sin[size_t(t * half + i)] = float(std::sin(theta));
        }
        w_.tok_embd.type->dequantize_ref(w_.tok_embd.row(batch.tokens[t]), x + t * E, E);
    });

    // Codec pools: the sealed blocks that more than one entry attends to (a prompt's earlier blocks, a
    // shared prefix), decoded once per layer; a block one entry reads is decoded where it is read.
    const size_t dec_stride = size_t(2 * bt * D);  // one (block, head)'s keys then values
    if (kvq) {
        grow(rs.dec_slot, size_t(pool_->n_blocks()));
        grow(rs.dec_stamp, size_t(pool_->n_blocks()));
        rs.dec_blocks.clear();
        for (int64_t t = 0; t < T; ++t) {
            const std::vector<int>& table = rs.seq_of[size_t(t)]->blocks;
            const int64_t own = (rs.plan_ctx[size_t(t)] - 1) / bt;
            for (int64_t bi = 0; bi < own; ++bi) {
                const size_t b = size_t(table[size_t(bi)]);
                if (rs.dec_stamp[b] != rs.step) {  // first reader: decoded on the fly, in its thread's cache
                    rs.dec_stamp[b] = rs.step;
                    rs.dec_slot[b] = -1;
                } else if (rs.dec_slot[b] < 0) {   // a second reader: decoded once for all of them
                    rs.dec_slot[b] = int(rs.dec_blocks.size());
                    rs.dec_blocks.push_back(int(b));
                }
            }
        }
        grow(rs.kv_dec, rs.dec_blocks.size() * size_t(G) * dec_stride);
    }

    const float attn_scale = float(1.0 / std::sqrt(double(D)));
    for (int l = 0; l < hp_.n_layer; ++l) {
        const LayerWeights& lw = w_.layers[size_t(l)];

        // attention norm: xn = RMSNorm(x) * attn_norm
        for_each(T, nt, [&](int64_t t) { rms_norm(x + t * E, lw.attn_norm.data(), E, eps, xn + t * E); });

        // q, k, v = xn W_q^T + b_q, xn W_k^T + b_k, xn W_v^T + b_v (one quantization of xn for all three)
        mm(lw.wq, xn, T, q, l, ActKey::kAttnIn);
        mm(lw.wk, xn, T, k, l, ActKey::kAttnIn);
        mm(lw.wv, xn, T, v, l, ActKey::kAttnIn);

        // + biases, RoPE on q and k at each entry's position; then write k, v into the cache slots.
        // An f16 cache holds K and V at f16 precision, and Q meets K at that precision, as in
        // llama.cpp's default f16 KV cache (its K.Q dot converts Q to f16).
        for_each(T, nt, [&](int64_t t) {
            float* qt = q + t * HD;
            float* kt = k + t * GD;
            float* vt = v + t * GD;
            if (!lw.bq.empty()) for (int64_t i = 0; i < HD; ++i) qt[i] += lw.bq[size_t(i)];
            if (!lw.bk.empty()) for (int64_t i = 0; i < GD; ++i) kt[i] += lw.bk[size_t(i)];
            if (!lw.bv.empty()) for (int64_t i = 0; i < GD; ++i) vt[i] += lw.bv[size_t(i)];
            rope(qt, int(H), t);
            rope(kt, int(G), t);
            const int blk = rs.plan_block[size_t(t)], off = rs.plan_offset[size_t(t)];
            if (kv16) {
                uint16_t* q16 = rs.h16.data() + size_t(omp_get_thread_num()) * h16_stride;
                ak.f32_to_f16(qt, q16, HD);
                ak.f16_to_f32(q16, qt, HD);
                for (int64_t g = 0; g < G; ++g) {
                    uint16_t* kd = kvq ? pool_->stage_k(blk, l, int(g)) : reinterpret_cast<uint16_t*>(pool_->k(blk, l, int(g)));
                    uint16_t* vd = kvq ? pool_->stage_v(blk, l, int(g)) : reinterpret_cast<uint16_t*>(pool_->v(blk, l, int(g)));
                    ak.f32_to_f16(kt + g * D, kd + int64_t(off) * D, D);
                    ak.f32_to_f16(vt + g * D, vd + int64_t(off) * D, D);
                }
            } else {
                for (int64_t g = 0; g < G; ++g) {
                    std::memcpy(reinterpret_cast<float*>(pool_->k(blk, l, int(g))) + int64_t(off) * D, kt + g * D,
                                size_t(D) * sizeof(float));
                    std::memcpy(reinterpret_cast<float*>(pool_->v(blk, l, int(g))) + int64_t(off) * D, vt + g * D,
                                size_t(D) * sizeof(float));
                }
            }
        });

        // A codec cache encodes this layer of every block the batch filled, before any entry attends to it.
        if (kvq) {
            for_each(int64_t(rs.filled.size()), nt, [&](int64_t i) {
                pool_->seal(rs.filled[size_t(i)], l, rs.kv_f32.data() + size_t(omp_get_thread_num()) * size_t(bt * D));
            });
            // ... then decodes this layer of every sealed block several entries read, once.
            const KVCodecKernels& codec = pool_->codec();
            for_each(int64_t(rs.dec_blocks.size()) * G, nt, [&](int64_t i) {
                const int b = rs.dec_blocks[size_t(i / G)], g = int(i % G);
                float* dst = rs.kv_dec.data() + size_t(i) * dec_stride;
                codec.decode_k(pool_->k(b, l, g), int(bt), int(D), dst);
                codec.decode_v(pool_->v(b, l, g), int(bt), int(D), dst + size_t(bt * D));
            });
        }

        // att = softmax(q K^T / sqrt(D)) V over the entry's cached slots 0..ctx-1 (causal).
        // With a codec cache an entry reads its own block's f16 staging rows and every earlier
        // (full, sealed) block decoded from the codec: the full-precision window is the entry's block.
        // With an f16 cache every operand of both products is an f16 value: Q, K, the probabilities, V.
        // The H / G query heads that read one key/value head are done together, so each
        // cached key and value row is loaded (and converted from f16) once for all of them.
        // Iterations alternate between threads: later entries of a prompt attend further.
#pragma omp parallel for num_threads(nt) collapse(2) schedule(static, 1)
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t g = 0; g < G; ++g) {
                const size_t tid = size_t(omp_get_thread_num());
                float* sc = rs.scores.data() + tid * sc_stride;   // (hpg, max_ctx)
                float* inv = sc + hpg * max_ctx;                  // (hpg), within the n_ctx + 1 rows' room
                // n cached rows of one block as floats: in place for an f32 pool, converted for f16
                float* fbuf = rs.kv_f32.data() + tid * size_t(bt * D);
                const int64_t ctx = rs.plan_ctx[size_t(t)];
                const std::vector<int>& table = rs.seq_of[size_t(t)]->blocks;
                const int64_t own = (ctx - 1) / bt;  // the block of the entry's own slot
                auto rows = [&](int64_t bi, bool values, int n) -> const float* {
                    const int b = table[size_t(bi)];
                    if (kvq) {
                        if (bi == own) {
                            ak.f16_to_f32(values ? pool_->stage_v(b, l, int(g)) : pool_->stage_k(b, l, int(g)), fbuf, n * D);
                        } else if (rs.dec_slot[size_t(b)] >= 0) {
                            return rs.kv_dec.data() + (size_t(rs.dec_slot[size_t(b)]) * size_t(G) + size_t(g)) * dec_stride +
                                   (values ? size_t(bt * D) : 0);
                        } else if (values) {
                            pool_->codec().decode_v(pool_->v(b, l, int(g)), int(bt), int(D), fbuf);
                        } else {
                            pool_->codec().decode_k(pool_->k(b, l, int(g)), int(bt), int(D), fbuf);
                        }
                        return fbuf;
                    }
                    const uint8_t* block = values ? pool_->v(b, l, int(g)) : pool_->k(b, l, int(g));
                    if (!kv16) return reinterpret_cast<const float*>(block);
                    ak.f16_to_f32(reinterpret_cast<const uint16_t*>(block), fbuf, n * D);
                    return fbuf;
                };
                const float* qg = q + t * HD + g * hpg * D;         // (hpg, D)
                for (int64_t j0 = 0; j0 < ctx; j0 += bt) {          // scores, block by block
                    const int n = int(std::min(bt, ctx - j0));
                    const float* kf = rows(j0 / bt, false, n);
                    ak.attn_scores(qg, int(hpg), kf, n, int(D), attn_scale, sc + j0, max_ctx);
                }
                for (int64_t hh = 0; hh < hpg; ++hh) inv[hh] = 1.0f / ak.softmax(sc + hh * max_ctx, ctx);
                if (kv16) {
                    // The probabilities meet V at f16 too, as in llama.cpp's f16 cache (its V product
                    // converts them): normalised first, then rounded.
                    uint16_t* h16 = rs.h16.data() + tid * h16_stride;
                    for (int64_t hh = 0; hh < hpg; ++hh) {
                        float* p = sc + hh * max_ctx;
                        for (int64_t j = 0; j < ctx; ++j) p[j] *= inv[hh];
                        ak.f32_to_f16(p, h16, ctx);
                        ak.f16_to_f32(h16, p, ctx);
                    }
                }
                float* out = att + t * HD + g * hpg * D;            // (hpg, D)
                std::fill_n(out, hpg * D, 0.0f);
                for (int64_t j0 = 0; j0 < ctx; j0 += bt) {
                    const int n = int(std::min(bt, ctx - j0));
                    const float* vf = rows(j0 / bt, true, n);
                    ak.attn_values(sc + j0, max_ctx, int(hpg), vf, n, int(D), out);
                }
                if (!kv16) {
                    for (int64_t hh = 0; hh < hpg; ++hh) {
                        float* o = out + hh * D;
                        for (int64_t d = 0; d < D; ++d) o[d] *= inv[hh];
                    }
                }
            }
        }

        // x = x + att W_o^T
        mm(lw.wo, att, T, proj, l, ActKey::kAttnOut);
        for_each(T, nt, [&](int64_t t) {
            for (int64_t i = 0; i < E; ++i) x[t * E + i] += proj[t * E + i];
            // ffn norm: xn = RMSNorm(x) * ffn_norm
            rms_norm(x + t * E, lw.ffn_norm.data(), E, eps, xn + t * E);
        });

        // SwiGLU: x = x + (silu(xn W_gate^T) * (xn W_up^T)) W_down^T
        mm(lw.w_gate, xn, T, gate, l, ActKey::kFfnIn);
        mm(lw.w_up, xn, T, up, l, ActKey::kFfnIn);
        const int64_t n_ff = T * F, chunk = 1024;
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t c = 0; c < n_ff; c += chunk) silu_mul(gate + c, up + c, std::min(chunk, n_ff - c));
        mm(lw.w_down, gate, T, proj, l, ActKey::kFfnHidden);
        for_each(T, nt, [&](int64_t t) {
            for (int64_t i = 0; i < E; ++i) x[t * E + i] += proj[t * E + i];
        });
    }

    // logits = RMSNorm(x[rows]) * output_norm @ W_out^T, for the rows asked for only
    const int64_t R = batch.n_logits;
    if (R == 0) return;
    grow(rs.xr, size_t(R * E));
    float* xr = rs.xr.data();
    for_each(R, nt, [&](int64_t j) {
        rms_norm(x + int64_t(batch.logit_rows[j]) * E, w_.output_norm.data(), E, eps, xr + j * E);
    });
    mm(w_.output, xr, R, logits, hp_.n_layer, ActKey::kOutputIn);

    // Non-finite logits mean the weights or activations overflowed: undo the batch, say so.
    const int64_t V = hp_.n_vocab;
    int64_t bad = -1;
    for (int64_t j = 0; j < R && bad < 0; ++j) {
        const float* row = logits + j * V;
        float probe = 0.0f;  // x * 0 is NaN exactly for NaN and infinities
#pragma omp simd reduction(+ : probe)
        for (int64_t i = 0; i < V; ++i) probe += row[i] * 0.0f;
        if (!(probe == 0.0f)) bad = j;
    }
    if (bad >= 0) {
        throw NumericError("forward: the logits of entry " + std::to_string(batch.logit_rows[bad]) +
                           " are not finite (NaN or infinity): the model's weights or activations overflow");
    }
}

void Model::read_kv(int seq, int layer, int token, bool values, float* out) const {
    if (!seqs_->contains(seq)) throw std::invalid_argument("read_kv: unknown sequence id " + std::to_string(seq));
    const Sequence& s = static_cast<const SequenceTable&>(*seqs_).at(seq);
    if (layer < 0 || layer >= hp_.n_layer) {
        throw std::invalid_argument("read_kv: layer " + std::to_string(layer) + " is outside [0, " +
                                    std::to_string(hp_.n_layer) + ")");
    }
    if (token < 0 || token >= s.n_tokens) {
        throw std::invalid_argument("read_kv: token " + std::to_string(token) + " is outside [0, " +
                                    std::to_string(s.n_tokens) + ")");
    }
    const int bt = pool_->shape().block_tokens, D = hp_.head_dim;
    const int blk = s.blocks[size_t(token / bt)], off = token % bt;
    for (int g = 0; g < hp_.n_head_kv; ++g) {
        if (pool_->quantized()) {
            if (pool_->is_open(blk)) {
                const uint16_t* h = (values ? pool_->stage_v(blk, layer, g) : pool_->stage_k(blk, layer, g)) + int64_t(off) * D;
                for (int d = 0; d < D; ++d) out[g * D + d] = fp16_to_f32(h[d]);
            } else {
                pool_->decode_row(blk, layer, g, values, off, out + g * D);
            }
            continue;
        }
        const uint8_t* src = values ? pool_->v(blk, layer, g) : pool_->k(blk, layer, g);
        if (pool_->type() == KVType::F16) {
            const uint16_t* h = reinterpret_cast<const uint16_t*>(src) + int64_t(off) * D;
            for (int d = 0; d < D; ++d) out[g * D + d] = fp16_to_f32(h[d]);
        } else {
            std::memcpy(out + g * D, reinterpret_cast<const float*>(src) + int64_t(off) * D, size_t(D) * sizeof(float));
        }
    }
}

Model::Memory Model::memory() const {
    Memory m;
    m.weights_mapped = size_t(file_->file_size());
    for (const auto& p : packed_) m.weights_repacked += p->n_bytes();
    m.weights_copied = copied_bytes_;
    m.kv_pool = pool_->bytes();
    m.kv_block = pool_->block_bytes();
    m.kv_used = size_t(pool_->n_blocks() - pool_->n_free()) * pool_->block_bytes();
    m.kv_per_token = pool_->block_bytes() / size_t(pool_->shape().block_tokens);
    m.kv_staging = pool_->staging_bytes();
    m.scratch = rs_.bytes();
    return m;
}

}  // namespace nlm
