#include "model/model.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

#include "common/error.h"
#include "quant/fp16.h"

namespace nlm {

namespace {

void round_to_f16(float* x, int64_t n) {
    for (int64_t i = 0; i < n; ++i) x[i] = fp16_to_f32(f32_to_fp16(x[i]));
}

std::string shape_str(const std::vector<int64_t>& ne) {
    std::string s = "[";
    for (size_t i = 0; i < ne.size(); ++i) s += (i ? ", " : "") + std::to_string(ne[i]);
    return s + "]";
}

}  // namespace

Model::Model(const std::string& path, int n_ctx, int kv_blocks, int block_tokens, int n_threads, const KernelSet* kernels,
             bool kv_f16)
    : file_(std::make_unique<GGUFFile>(path)), ks_(kernels), kv_f16_(kv_f16) {
    if (n_ctx <= 0) throw std::invalid_argument("n_ctx must be positive, got " + std::to_string(n_ctx));
    if (block_tokens <= 0) throw std::invalid_argument("block_tokens must be positive, got " + std::to_string(block_tokens));
    set_n_threads(n_threads);
    load_hparams();
    load_weights();
    n_ctx_ = n_ctx;
    if (kv_blocks <= 0) kv_blocks = (n_ctx + block_tokens - 1) / block_tokens;
    KVShape shape{hp_.n_layer, hp_.n_head_kv, hp_.head_dim, block_tokens};
    pool_ = std::make_unique<KVPool>(shape, kv_blocks);
    seqs_ = std::make_unique<SequenceTable>(*pool_);
    inv_freq_.resize(size_t(hp_.n_rot / 2));
    for (int i = 0; i < hp_.n_rot / 2; ++i) {
        inv_freq_[size_t(i)] = std::pow(double(hp_.rope_base), -2.0 * i / double(hp_.n_rot));
    }
}

void Model::mm(const WeightView& w, const float* x, int64_t m, float* y) {
    if (ks_ != nullptr) {
        matmul(w, x, m, y, n_threads_, ks_, &q8_);
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
    w.data = file_->tensor_data(*t);
    w.type = type_traits(t->type);
    w.type_id = t->type;
    w.rows = rows;
    w.cols = cols;
    w.row_stride = row_bytes(*w.type, cols);
    PackFormat pf;
    if (ks_ != nullptr && ks_->packed != nullptr && name != "token_embd.weight" && pack_format(t->type, &pf)) {
        packed_.push_back(pack_weights(t->type, w.data, rows, cols));
        w.packed = packed_.back().get();
    }
    return w;
}

std::vector<float> Model::vector_f32(const std::string& name, int64_t n, bool required) const {
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
    type_traits(t->type)->dequantize_ref(file_->tensor_data(*t), out.data(), n);
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
        if (ks_ != nullptr && ks_->packed != nullptr && pack_format(w_.output.type_id, &pf)) {
            packed_.push_back(pack_weights(w_.output.type_id, w_.output.data, w_.output.rows, w_.output.cols));
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

// Rotary embedding of one token's heads, in place: x is (n_heads, D).
//   theta_i = (pos / scale) * base^(-2i / n_rot)
//   Normal: (x[2i], x[2i+1]) rotated by theta_i       (llama.cpp's layout for llama)
//   NeoX:   (x[i], x[i + n_rot/2]) rotated by theta_i (Hugging Face's rotate_half; qwen2)
void Model::rope(float* x, int n_heads, int pos) const {
    const double p = double(pos) / double(hp_.rope_scale);
    const int half = hp_.n_rot / 2;
    for (int i = 0; i < half; ++i) {
        const double theta = p * inv_freq_[size_t(i)];
        const float c = float(std::cos(theta)), s = float(std::sin(theta));
        for (int h = 0; h < n_heads; ++h) {
            float* v = x + int64_t(h) * hp_.head_dim;
            const int i0 = hp_.rope_order == RopeOrder::Normal ? 2 * i : i;
            const int i1 = hp_.rope_order == RopeOrder::Normal ? 2 * i + 1 : i + half;
            const float a = v[i0], b = v[i1];
            v[i0] = a * c - b * s;
            v[i1] = a * s + b * c;
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

    // Count the new slots of each sequence and the blocks they need, before changing anything.
    const int bt = pool_->shape().block_tokens;
    std::map<int, int> added;
    for (int64_t i = 0; i < batch.n; ++i) ++added[batch.seq_ids[i]];
    int need = 0;
    for (const auto& [id, n_new] : added) {
        const Sequence& s = seqs_->at(id);
        if (int64_t(s.n_tokens) + n_new > n_ctx_) {
            throw std::invalid_argument("forward: sequence " + std::to_string(id) + " would hold " +
                                        std::to_string(int64_t(s.n_tokens) + n_new) + " tokens, more than n_ctx = " +
                                        std::to_string(n_ctx_));
        }
        const int have = int(s.blocks.size());
        const int want = (s.n_tokens + n_new + bt - 1) / bt;
        need += want - have;
        if (s.n_tokens % bt != 0 && pool_->refcount(s.blocks.back()) > 1) ++need;  // copy on write
    }
    if (need > pool_->n_free()) {
        throw KVCacheFull("KV cache full: the batch needs " + std::to_string(need) + " free blocks, " +
                          std::to_string(pool_->n_free()) + " of " + std::to_string(pool_->n_blocks()) +
                          " are free; free sequences or load with a larger n_ctx");
    }

    // Reserve: copy shared partial blocks, grow block tables, assign slots.
    for (const auto& [id, n_new] : added) {
        Sequence& s = seqs_->at(id);
        if (s.n_tokens % bt != 0 && pool_->refcount(s.blocks.back()) > 1) {
            const int old = s.blocks.back();
            s.blocks.back() = pool_->copy_of(old);
            pool_->release(old);
        }
        const int want = (s.n_tokens + n_new + bt - 1) / bt;
        while (int(s.blocks.size()) < want) s.blocks.push_back(pool_->allocate());
    }
    plan_block_.resize(size_t(batch.n));
    plan_offset_.resize(size_t(batch.n));
    plan_ctx_.resize(size_t(batch.n));
    for (int64_t i = 0; i < batch.n; ++i) {
        Sequence& s = seqs_->at(batch.seq_ids[i]);
        const int slot = s.n_tokens++;
        plan_block_[size_t(i)] = s.blocks[size_t(slot / bt)];
        plan_offset_[size_t(i)] = slot % bt;
        plan_ctx_[size_t(i)] = slot + 1;
    }
}

void Model::forward(const BatchView& batch, float* logits) {
    const int64_t T = batch.n, E = hp_.n_embd, D = hp_.head_dim, H = hp_.n_head, G = hp_.n_head_kv, F = hp_.n_ff;
    const int64_t HD = H * D, GD = G * D;
    const int bt = pool_->shape().block_tokens;
    const int nt = n_threads_;
    const float eps = hp_.rms_eps;

    std::vector<float> x(size_t(T * E));      // (T, E) residual stream
    std::vector<float> xn(size_t(T * E));     // (T, E) normed input of a sub-layer
    std::vector<float> q(size_t(T * HD));     // (T, H, D)
    std::vector<float> k(size_t(T * GD));     // (T, G, D)
    std::vector<float> v(size_t(T * GD));     // (T, G, D)
    std::vector<float> att(size_t(T * HD));   // (T, H, D) attention output before W_o
    std::vector<float> proj(size_t(T * E));   // (T, E)
    std::vector<float> gate(size_t(T * F));   // (T, F)
    std::vector<float> up(size_t(T * F));     // (T, F)

    // Sequences' block tables, looked up once per entry.
    std::vector<const std::vector<int>*> tables(static_cast<size_t>(T));
    int max_ctx = 0;
    for (int64_t t = 0; t < T; ++t) {
        tables[size_t(t)] = &seqs_->at(batch.seq_ids[t]).blocks;
        max_ctx = std::max(max_ctx, plan_ctx_[size_t(t)]);
    }
    // per thread: (H/G, ctx) scores, then H/G normalisers
    const size_t scratch = size_t(H / G) * (size_t(max_ctx) + 1);
    std::vector<float> scores(size_t(nt) * scratch);

    // x = token_embd[tokens]
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t t = 0; t < T; ++t) {
        w_.tok_embd.type->dequantize_ref(w_.tok_embd.row(batch.tokens[t]), x.data() + t * E, E);
    }

    const float attn_scale = float(1.0 / std::sqrt(double(D)));
    for (int l = 0; l < hp_.n_layer; ++l) {
        const LayerWeights& lw = w_.layers[size_t(l)];

        // attention norm: xn = RMSNorm(x) * attn_norm
        for (int64_t t = 0; t < T; ++t) rms_norm(x.data() + t * E, lw.attn_norm.data(), E, eps, xn.data() + t * E);
        q8_.invalidate();

        // q, k, v = xn W_q^T + b_q, xn W_k^T + b_k, xn W_v^T + b_v
        mm(lw.wq, xn.data(), T, q.data());
        mm(lw.wk, xn.data(), T, k.data());
        mm(lw.wv, xn.data(), T, v.data());
        auto add_bias = [T](std::vector<float>& y, const std::vector<float>& b) {
            if (b.empty()) return;
            const size_t n = b.size();
            for (int64_t t = 0; t < T; ++t)
                for (size_t i = 0; i < n; ++i) y[size_t(t) * n + i] += b[i];
        };
        add_bias(q, lw.bq);
        add_bias(k, lw.bk);
        add_bias(v, lw.bv);

        // RoPE on q and k at each entry's position; then write k, v into the cache slots.
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t t = 0; t < T; ++t) {
            rope(q.data() + t * HD, int(H), batch.positions[t]);
            rope(k.data() + t * GD, int(G), batch.positions[t]);
            if (kv_f16_) {
                // The cache holds K and V at f16 precision, and Q meets K at that precision,
                // as in llama.cpp's default f16 KV cache (its K.Q dot converts Q to f16).
                round_to_f16(k.data() + t * GD, GD);
                round_to_f16(v.data() + t * GD, GD);
                round_to_f16(q.data() + t * HD, HD);
            }
            const int blk = plan_block_[size_t(t)], off = plan_offset_[size_t(t)];
            for (int64_t g = 0; g < G; ++g) {
                std::copy_n(k.data() + t * GD + g * D, D, pool_->k(blk, l, int(g)) + int64_t(off) * D);
                std::copy_n(v.data() + t * GD + g * D, D, pool_->v(blk, l, int(g)) + int64_t(off) * D);
            }
        }

        // att = softmax(q K^T / sqrt(D)) V over the entry's cached slots 0..ctx-1 (causal).
        // The H / G query heads that read one key/value head are done together, so each
        // cached key and value row is loaded once for all of them.
#pragma omp parallel for num_threads(nt) collapse(2) schedule(static)
        for (int64_t t = 0; t < T; ++t) {
            for (int64_t g = 0; g < G; ++g) {
                const int64_t hpg = H / G;
                float* sc = scores.data() + size_t(omp_get_thread_num()) * scratch;
                float* inv = sc + hpg * max_ctx;
                const int ctx = plan_ctx_[size_t(t)];
                const std::vector<int>& table = *tables[size_t(t)];
                const float* qg = q.data() + t * HD + g * hpg * D;  // (hpg, D)
                for (int j0 = 0; j0 < ctx; j0 += bt) {               // scores, block by block
                    const float* kb = pool_->k(table[size_t(j0 / bt)], l, int(g));
                    const int n = std::min(bt, ctx - j0);
                    for (int j = 0; j < n; ++j) {
                        for (int64_t hh = 0; hh < hpg; ++hh) {
                            sc[hh * max_ctx + j0 + j] = dot_f32(qg + hh * D, kb + int64_t(j) * D, D) * attn_scale;
                        }
                    }
                }
                for (int64_t hh = 0; hh < hpg; ++hh) inv[hh] = 1.0f / softmax_unnormalized(sc + hh * max_ctx, ctx);
                float* out = att.data() + t * HD + g * hpg * D;      // (hpg, D)
                std::fill_n(out, hpg * D, 0.0f);
                for (int j0 = 0; j0 < ctx; j0 += bt) {
                    const float* vb = pool_->v(table[size_t(j0 / bt)], l, int(g));
                    const int n = std::min(bt, ctx - j0);
                    for (int j = 0; j < n; ++j) {
                        const float* vj = vb + int64_t(j) * D;
                        for (int64_t hh = 0; hh < hpg; ++hh) {
                            const float p = sc[hh * max_ctx + j0 + j];
                            float* o = out + hh * D;
#pragma omp simd
                            for (int64_t d = 0; d < D; ++d) o[d] += p * vj[d];
                        }
                    }
                }
                for (int64_t hh = 0; hh < hpg; ++hh) {
                    float* o = out + hh * D;
                    for (int64_t d = 0; d < D; ++d) o[d] *= inv[hh];
                }
            }
        }

        // x = x + att W_o^T
        q8_.invalidate();
        mm(lw.wo, att.data(), T, proj.data());
        for (int64_t i = 0; i < T * E; ++i) x[size_t(i)] += proj[size_t(i)];

        // ffn norm, then SwiGLU: x = x + (silu(xn W_gate^T) * (xn W_up^T)) W_down^T
        for (int64_t t = 0; t < T; ++t) rms_norm(x.data() + t * E, lw.ffn_norm.data(), E, eps, xn.data() + t * E);
        q8_.invalidate();
        mm(lw.w_gate, xn.data(), T, gate.data());
        mm(lw.w_up, xn.data(), T, up.data());
#pragma omp parallel for num_threads(nt) schedule(static)
        for (int64_t t = 0; t < T; ++t) silu_mul(gate.data() + t * F, up.data() + t * F, F);
        q8_.invalidate();
        mm(lw.w_down, gate.data(), T, proj.data());
        for (int64_t i = 0; i < T * E; ++i) x[size_t(i)] += proj[size_t(i)];
    }

    // logits = RMSNorm(x[rows]) * output_norm @ W_out^T, for the rows asked for only
    const int64_t R = batch.n_logits;
    if (R == 0) return;
    std::vector<float> xr(size_t(R * E));
    for (int64_t j = 0; j < R; ++j) {
        rms_norm(x.data() + int64_t(batch.logit_rows[j]) * E, w_.output_norm.data(), E, eps, xr.data() + j * E);
    }
    q8_.invalidate();
    mm(w_.output, xr.data(), R, logits);
}

}  // namespace nlm
