// Paged KV cache: a pool of blocks, each holding the keys and values of
// `block_tokens` consecutive tokens of one sequence for every layer, and the
// sequences' block tables. Blocks are reference-counted so that a forked
// sequence shares its parent's blocks; a shared block is copied before it is
// written (copy on write), so full shared blocks are never copied at all.
// Keys and values are stored as IEEE half floats (KVType::F16, llama.cpp's
// default cache) or as floats (KVType::F32).
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "common/memory.h"

namespace nlm {

enum class KVType { F16, F32 };

struct KVShape {
    int n_layer = 0;
    int n_kv_head = 0;
    int head_dim = 0;
    int block_tokens = 32;
};

class KVPool {
public:
    // Throws std::invalid_argument when a dimension is not positive or the pool's
    // size does not fit in memory's address range.
    KVPool(const KVShape& shape, int n_blocks, KVType type);

    const KVShape& shape() const { return shape_; }
    KVType type() const { return type_; }
    int n_blocks() const { return n_blocks_; }
    int n_free() const { return int(free_.size()); }
    int refcount(int block) const { return refcount_[size_t(block)]; }
    size_t elem_bytes() const { return type_ == KVType::F16 ? 2 : 4; }
    // Bytes of keys and values of one block (all layers), of one token, of the pool.
    size_t block_bytes() const { return 2 * block_elems_ * elem_bytes(); }
    size_t token_bytes() const { return block_bytes() / size_t(shape_.block_tokens); }
    size_t bytes() const { return block_bytes() * size_t(n_blocks_); }

    int allocate();               // a fresh block with refcount 1; KVCacheFull when none is free
    void retain(int block);       // one more owner
    void release(int block);      // one owner fewer; back to the free list at zero
    int copy_of(int block);       // a new block (refcount 1) holding the same entries

    // Keys / values of one (block, layer, kv head): (block_tokens, head_dim) elements
    // of the pool's type, row per token.
    uint8_t* k(int block, int layer, int head) { return k_.get() + offset(block, layer, head); }
    uint8_t* v(int block, int layer, int head) { return v_.get() + offset(block, layer, head); }
    const uint8_t* k(int block, int layer, int head) const { return k_.get() + offset(block, layer, head); }
    const uint8_t* v(int block, int layer, int head) const { return v_.get() + offset(block, layer, head); }

private:
    size_t offset(int block, int layer, int head) const {
        return (((size_t(block) * size_t(shape_.n_layer) + size_t(layer)) * size_t(shape_.n_kv_head) + size_t(head)) *
                size_t(shape_.block_tokens) * size_t(shape_.head_dim)) *
               elem_bytes();
    }

    KVShape shape_;
    int n_blocks_;
    KVType type_;
    size_t block_elems_;          // n_layer * n_kv_head * block_tokens * head_dim
    Buffer k_{nullptr, nullptr};  // (n_blocks, n_layer, n_kv_head, block_tokens, head_dim)
    Buffer v_{nullptr, nullptr};  // (n_blocks, n_layer, n_kv_head, block_tokens, head_dim)
    std::vector<int> refcount_;   // (n_blocks)
    std::vector<int> free_;       // free block ids, popped from the back
};

struct Sequence {
    std::vector<int> blocks;  // block table: token slot s lives in blocks[s / block_tokens]
    int n_tokens = 0;         // filled slots
};

// The sequences of one model and the blocks they own.
class SequenceTable {
public:
    // `max_blocks`: the most blocks one sequence can hold (n_ctx / block_tokens, rounded up).
    SequenceTable(KVPool& pool, size_t max_blocks) : pool_(pool), max_blocks_(max_blocks) {}
    ~SequenceTable();

    int create();                 // an empty sequence
    int fork(int parent);         // shares every block of parent
    void free(int seq);
    void truncate(int seq, int n_tokens);  // keep the first n_tokens slots
    // Fills a new block with `data` (block_bytes(), the layout of export_block) and appends it to a
    // sequence that holds whole blocks only: restoring a stored block. KVCacheFull when none is free.
    void append_block(int seq, const uint8_t* data);
    // Copies full block `index` of a sequence out: for each layer, for each kv head, its keys
    // (block_tokens, head_dim) then its values, in the pool's type. block_bytes() bytes.
    void export_block(int seq, int index, uint8_t* out) const;
    Sequence& at(int seq);        // ValueError-style std::invalid_argument when unknown
    const Sequence& at(int seq) const;
    bool contains(int seq) const { return seqs_.count(seq) != 0; }
    std::vector<int> ids() const;

private:
    KVPool& pool_;
    size_t max_blocks_;
    std::map<int, Sequence> seqs_;
    int next_id_ = 0;
};

}  // namespace nlm
