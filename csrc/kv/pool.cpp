#include "kv/pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/error.h"

namespace nlm {

const char* kv_type_name(KVType t) {
    switch (t) {
        case KVType::F16: return "f16";
        case KVType::F32: return "f32";
        case KVType::Q8: return "int8";
        case KVType::Q4: return "int4";
    }
    return "?";
}

KVPool::KVPool(const KVShape& shape, int n_blocks, KVType type, const KernelSet& ks)
    : shape_(shape), n_blocks_(n_blocks), type_(type), ks_(ks) {
    if (n_blocks <= 0 || shape.block_tokens <= 0 || shape.n_layer <= 0 || shape.n_kv_head <= 0 || shape.head_dim <= 0) {
        throw std::invalid_argument("KV pool: every dimension and the block count must be positive");
    }
    if (quantized() && shape.head_dim % kKVValueGroup != 0) {
        throw std::invalid_argument(std::string("KV pool: the ") + kv_type_name(type) + " codec needs head_dim to be a multiple of " +
                                    std::to_string(kKVValueGroup) + ", this model's is " + std::to_string(shape.head_dim) +
                                    "; use kv_codec='f16'");
    }
    // n_blocks * n_layer * n_kv_head * block_tokens * head_dim * 4 bytes bounds every storage (the
    // codecs' bytes are fewer): each factor is below 2^31, so the product is checked one at a time.
    const size_t limit = std::numeric_limits<size_t>::max() / 8;
    size_t elems = 1;
    for (const int f : {shape.n_layer, shape.n_kv_head, shape.block_tokens, shape.head_dim, n_blocks}) {
        if (elems > limit / size_t(f)) {
            throw std::invalid_argument("KV pool: " + std::to_string(n_blocks) + " blocks of " +
                                        std::to_string(shape.block_tokens) + " tokens x " + std::to_string(shape.n_layer) +
                                        " layers x " + std::to_string(shape.n_kv_head) + " heads x " +
                                        std::to_string(shape.head_dim) + " do not fit in memory's address range");
        }
        elems *= size_t(f);
    }
    const size_t rows = size_t(shape.block_tokens) * size_t(shape.head_dim);
    switch (type) {
        case KVType::F16: k_head_ = v_head_ = 2 * rows; break;
        case KVType::F32: k_head_ = v_head_ = 4 * rows; break;
        case KVType::Q8:
        case KVType::Q4: {
            const int bits = type == KVType::Q8 ? 8 : 4;
            k_head_ = kv_codec_k_bytes(bits, shape.block_tokens, shape.head_dim);
            v_head_ = kv_codec_v_bytes(bits, shape.block_tokens, shape.head_dim);
            codec_ = bits == 8 ? ks.kv8 : ks.kv4;
            stage_bytes_ = 2 * 2 * rows * size_t(shape.n_layer) * size_t(shape.n_kv_head);
            scratch_.resize(rows);
            stage_of_.assign(size_t(n_blocks), -1);
            break;
        }
    }
    const size_t heads = size_t(n_blocks) * size_t(shape.n_layer) * size_t(shape.n_kv_head);
    // not zeroed: a slot is always written before it is read, and untouched pages cost no memory
    k_ = alloc_buffer(heads * k_head_, "the KV pool's keys", false);
    v_ = alloc_buffer(heads * v_head_, "the KV pool's values", false);
    refcount_.assign(size_t(n_blocks), 0);
    free_.reserve(size_t(n_blocks));
    for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out low ids first
}

int KVPool::allocate(bool open_it) {
    if (free_.empty()) {
        throw KVCacheFull("KV cache full: all " + std::to_string(n_blocks_) + " blocks of " +
                          std::to_string(shape_.block_tokens) + " tokens are in use; free sequences or load with a larger n_ctx");
    }
    const int b = free_.back();
    if (quantized() && open_it) open(b);  // before taking the block: a failed allocation changes nothing
    free_.pop_back();
    refcount_[size_t(b)] = 1;
    return b;
}

void KVPool::retain(int block) { ++refcount_[size_t(block)]; }

void KVPool::release(int block) {
    if (--refcount_[size_t(block)] == 0) {
        if (quantized() && is_open(block)) close(block);
        free_.push_back(block);
    }
}

int KVPool::copy_of(int block) {
    const int b = allocate(false);
    // Each of keys and values of a block is one span.
    const size_t heads = size_t(shape_.n_layer) * size_t(shape_.n_kv_head);
    std::memcpy(k_.get() + size_t(b) * heads * k_head_, k_.get() + size_t(block) * heads * k_head_, heads * k_head_);
    std::memcpy(v_.get() + size_t(b) * heads * v_head_, v_.get() + size_t(block) * heads * v_head_, heads * v_head_);
    if (quantized()) {
        try {
            if (is_open(block)) {
                open(b);
                std::memcpy(stages_[size_t(stage_of_[size_t(b)])].get(), stages_[size_t(stage_of_[size_t(block)])].get(),
                            stage_bytes_);
            } else {
                reopen(b);
            }
        } catch (...) {
            release(b);
            throw;
        }
    }
    return b;
}

void KVPool::open(int block) {
    if (stage_free_.empty()) {
        stages_.push_back(alloc_buffer(stage_bytes_, "a KV staging slot", false));
        stage_free_.reserve(stages_.capacity());  // closing a slot never allocates
        stage_free_.push_back(int(stages_.size() - 1));
    }
    stage_of_[size_t(block)] = stage_free_.back();
    stage_free_.pop_back();
}

void KVPool::close(int block) {
    stage_free_.push_back(stage_of_[size_t(block)]);
    stage_of_[size_t(block)] = -1;
}

uint16_t* KVPool::stage(int block, int layer, int head, bool values) {
    const size_t rows = size_t(shape_.block_tokens) * size_t(shape_.head_dim);
    const size_t half = rows * size_t(shape_.n_layer) * size_t(shape_.n_kv_head);
    uint16_t* base = reinterpret_cast<uint16_t*>(stages_[size_t(stage_of_[size_t(block)])].get());
    return base + (values ? half : 0) + (size_t(layer) * size_t(shape_.n_kv_head) + size_t(head)) * rows;
}

void KVPool::seal(int block, int layer, float* scratch) {
    const int n = shape_.block_tokens, d = shape_.head_dim;
    for (int g = 0; g < shape_.n_kv_head; ++g) {
        ks_.f16_to_f32(stage_k(block, layer, g), scratch, int64_t(n) * d);
        codec_->encode_k(scratch, n, d, k(block, layer, g));
        ks_.f16_to_f32(stage_v(block, layer, g), scratch, int64_t(n) * d);
        codec_->encode_v(scratch, n, d, v(block, layer, g));
    }
}

void KVPool::reopen(int block) {
    open(block);
    const int n = shape_.block_tokens, d = shape_.head_dim;
    float* scratch = scratch_.data();
    for (int l = 0; l < shape_.n_layer; ++l) {
        for (int g = 0; g < shape_.n_kv_head; ++g) {
            codec_->decode_k(k(block, l, g), n, d, scratch);
            ks_.f32_to_f16(scratch, stage_k(block, l, g), int64_t(n) * d);
            codec_->decode_v(v(block, l, g), n, d, scratch);
            ks_.f32_to_f16(scratch, stage_v(block, l, g), int64_t(n) * d);
        }
    }
}

void KVPool::decode_row(int block, int layer, int head, bool values, int row, float* out) const {
    const int n = shape_.block_tokens, d = shape_.head_dim;
    std::vector<float> rows(size_t(n) * size_t(d));
    if (values) {
        codec_->decode_v(v(block, layer, head), n, d, rows.data());
    } else {
        codec_->decode_k(k(block, layer, head), n, d, rows.data());
    }
    std::memcpy(out, rows.data() + size_t(row) * size_t(d), size_t(d) * sizeof(float));
}

SequenceTable::~SequenceTable() {
    for (auto& kv : seqs_) {
        for (int b : kv.second.blocks) pool_.release(b);
    }
}

int SequenceTable::create() {
    const int id = next_id_++;
    seqs_[id].blocks.reserve(max_blocks_);  // the block table never grows inside a forward pass
    return id;
}

Sequence& SequenceTable::at(int seq) {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) throw std::invalid_argument("unknown sequence id " + std::to_string(seq));
    return it->second;
}

const Sequence& SequenceTable::at(int seq) const {
    auto it = seqs_.find(seq);
    if (it == seqs_.end()) throw std::invalid_argument("unknown sequence id " + std::to_string(seq));
    return it->second;
}

int SequenceTable::fork(int parent) {
    const Sequence& from = at(parent);
    const int id = next_id_++;
    Sequence& s = seqs_[id];
    s.blocks.reserve(max_blocks_);
    s.blocks = from.blocks;
    s.n_tokens = from.n_tokens;
    for (int b : s.blocks) pool_.retain(b);
    return id;
}

void SequenceTable::free(int seq) {
    Sequence& s = at(seq);
    for (int b : s.blocks) pool_.release(b);
    seqs_.erase(seq);
}

void SequenceTable::truncate(int seq, int n_tokens) {
    Sequence& s = at(seq);
    if (n_tokens < 0 || n_tokens > s.n_tokens) {
        throw std::invalid_argument("truncate: sequence " + std::to_string(seq) + " has " + std::to_string(s.n_tokens) +
                                    " tokens, cannot keep " + std::to_string(n_tokens));
    }
    const int bt = pool_.shape().block_tokens;
    const size_t keep = size_t((n_tokens + bt - 1) / bt);
    while (s.blocks.size() > keep) {
        pool_.release(s.blocks.back());
        s.blocks.pop_back();
    }
    s.n_tokens = n_tokens;
}

void SequenceTable::append_block(int seq, const uint8_t* data) {
    Sequence& s = at(seq);
    const KVShape& sh = pool_.shape();
    const int bt = sh.block_tokens;
    if (s.n_tokens % bt != 0) {
        throw std::invalid_argument("append_block: sequence " + std::to_string(seq) + " holds " +
                                    std::to_string(s.n_tokens) + " tokens, not a whole number of blocks of " +
                                    std::to_string(bt));
    }
    if (s.blocks.size() + 1 > max_blocks_) {
        throw std::invalid_argument("append_block: sequence " + std::to_string(seq) + " would hold more than " +
                                    std::to_string(max_blocks_) + " blocks (n_ctx)");
    }
    const int blk = pool_.allocate(false);  // whole: a codec block arrives sealed
    const size_t kb = pool_.k_head_bytes(), vb = pool_.v_head_bytes();
    const uint8_t* p = data;
    for (int l = 0; l < sh.n_layer; ++l) {
        for (int g = 0; g < sh.n_kv_head; ++g) {
            std::memcpy(pool_.k(blk, l, g), p, kb);
            std::memcpy(pool_.v(blk, l, g), p + kb, vb);
            p += kb + vb;
        }
    }
    s.blocks.push_back(blk);
    s.n_tokens += bt;
}

void SequenceTable::export_block(int seq, int index, uint8_t* out) const {
    const Sequence& s = at(seq);
    const KVShape& sh = pool_.shape();
    const int bt = sh.block_tokens;
    if (index < 0 || int64_t(index + 1) * bt > s.n_tokens) {
        throw std::invalid_argument("export_block: sequence " + std::to_string(seq) + " has " +
                                    std::to_string(s.n_tokens / bt) + " full blocks, no block " + std::to_string(index));
    }
    const int blk = s.blocks[size_t(index)];
    const size_t kb = pool_.k_head_bytes(), vb = pool_.v_head_bytes();
    uint8_t* p = out;
    for (int l = 0; l < sh.n_layer; ++l) {
        for (int g = 0; g < sh.n_kv_head; ++g) {
            std::memcpy(p, pool_.k(blk, l, g), kb);
            std::memcpy(p + kb, pool_.v(blk, l, g), vb);
            p += kb + vb;
        }
    }
}

std::vector<int> SequenceTable::ids() const {
    std::vector<int> out;
    for (const auto& kv : seqs_) out.push_back(kv.first);
    return out;
}

}  // namespace nlm
