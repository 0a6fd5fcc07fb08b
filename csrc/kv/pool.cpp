#include "kv/pool.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>

#include "common/error.h"

namespace nlm {

KVPool::KVPool(const KVShape& shape, int n_blocks, KVType type) : shape_(shape), n_blocks_(n_blocks), type_(type) {
    if (n_blocks <= 0 || shape.block_tokens <= 0 || shape.n_layer <= 0 || shape.n_kv_head <= 0 || shape.head_dim <= 0) {
        throw std::invalid_argument("KV pool: every dimension and the block count must be positive");
    }
    // n_blocks * n_layer * n_kv_head * block_tokens * head_dim * element bytes, for keys and for values:
    // each factor is below 2^31, so the product is checked one factor at a time.
    const size_t limit = std::numeric_limits<size_t>::max() / 4;
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
    block_elems_ = elems / size_t(n_blocks);
    const size_t total = elems * elem_bytes();
    // not zeroed: a slot is always written before it is read, and untouched pages cost no memory
    k_ = alloc_buffer(total, "the KV pool's keys", false);
    v_ = alloc_buffer(total, "the KV pool's values", false);
    refcount_.assign(size_t(n_blocks), 0);
    free_.reserve(size_t(n_blocks));
    for (int b = n_blocks - 1; b >= 0; --b) free_.push_back(b);  // hand out low ids first
}

int KVPool::allocate() {
    if (free_.empty()) {
        throw KVCacheFull("KV cache full: all " + std::to_string(n_blocks_) + " blocks of " +
                          std::to_string(shape_.block_tokens) + " tokens are in use; free sequences or load with a larger n_ctx");
    }
    const int b = free_.back();
    free_.pop_back();
    refcount_[size_t(b)] = 1;
    return b;
}

void KVPool::retain(int block) { ++refcount_[size_t(block)]; }

void KVPool::release(int block) {
    if (--refcount_[size_t(block)] == 0) free_.push_back(block);
}

int KVPool::copy_of(int block) {
    const int b = allocate();
    // Keys and values of a block are not contiguous across K and V, but each is one span.
    const size_t n = block_elems_ * elem_bytes();
    std::memcpy(k_.get() + size_t(b) * n, k_.get() + size_t(block) * n, n);
    std::memcpy(v_.get() + size_t(b) * n, v_.get() + size_t(block) * n, n);
    return b;
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
    const int blk = pool_.allocate();
    const size_t half = size_t(bt) * size_t(sh.head_dim) * pool_.elem_bytes();
    const uint8_t* p = data;
    for (int l = 0; l < sh.n_layer; ++l) {
        for (int g = 0; g < sh.n_kv_head; ++g) {
            std::memcpy(pool_.k(blk, l, g), p, half);
            std::memcpy(pool_.v(blk, l, g), p + half, half);
            p += 2 * half;
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
    const size_t half = size_t(bt) * size_t(sh.head_dim) * pool_.elem_bytes();
    uint8_t* p = out;
    for (int l = 0; l < sh.n_layer; ++l) {
        for (int g = 0; g < sh.n_kv_head; ++g) {
            std::memcpy(p, pool_.k(blk, l, g), half);
            std::memcpy(p + half, pool_.v(blk, l, g), half);
            p += 2 * half;
        }
    }
}

std::vector<int> SequenceTable::ids() const {
    std::vector<int> out;
    for (const auto& kv : seqs_) out.push_back(kv.first);
    return out;
}

}  // namespace nlm
