// Paged KV cache: a pool of blocks, each holding the keys and values of
// `block_tokens` consecutive tokens of one sequence for every layer, and the
// sequences' block tables. Blocks are reference-counted so that a forked
// sequence shares its parent's blocks; a shared block is copied before it is
// written (copy on write), so full shared blocks are never copied at all.
// Keys and values are stored as IEEE half floats (KVType::F16, llama.cpp's
// default cache), as floats (KVType::F32), or in an int8 / int4 codec (KVType::Q8 / Q4,
// kv/codec.h: keys grouped per channel over the block's tokens, values per token).
//
// A codec block's key groups span all of its tokens, so a block is encoded only once full.
// Until then it is *open*: its rows live as f16 in a staging slot (a full-precision window
// over a sequence's newest tokens, at most one block per sequence), and attention reads them
// there. The model seals a block layer by layer in the forward pass that fills it (encode),
// and closes its staging slot when that pass succeeds. A sealed block cut back to a partial
// one (truncate) is reopened by decoding it before it is written again.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "common/memory.h"
#include "quant/kernels.h"

namespace nlm {

enum class KVType { F16, F32, Q8, Q4 };

const char* kv_type_name(KVType t);  // "f16", "f32", "int8", "int4"

struct KVShape {
    int n_layer = 0;
    int n_kv_head = 0;
    int head_dim = 0;
    int block_tokens = 32;
};

class KVPool {
public:
    // Throws std::invalid_argument when a dimension is not positive, the pool's size does not fit
    // in memory's address range, or a codec meets a head_dim that is not a multiple of 32.
    // `ks`: the kernels that encode and decode codec blocks (and convert f16).
    KVPool(const KVShape& shape, int n_blocks, KVType type, const KernelSet& ks);

    const KVShape& shape() const { return shape_; }
    KVType type() const { return type_; }
    bool quantized() const { return type_ == KVType::Q8 || type_ == KVType::Q4; }
    int n_blocks() const { return n_blocks_; }
    int n_free() const { return int(free_.size()); }
    int refcount(int block) const { return refcount_[size_t(block)]; }
    // Bytes of one (block, layer, head)'s keys / values in the pool's storage.
    size_t k_head_bytes() const { return k_head_; }
    size_t v_head_bytes() const { return v_head_; }
    // Bytes of keys and values of one block (all layers), of the pool.
    size_t block_bytes() const { return (k_head_ + v_head_) * size_t(shape_.n_layer) * size_t(shape_.n_kv_head); }
    size_t bytes() const { return block_bytes() * size_t(n_blocks_); }
    // Staging (codec pools): bytes of one slot, and of the slots allocated so far.
    size_t stage_bytes() const { return stage_bytes_; }
    size_t staging_bytes() const { return stage_bytes_ * stages_.size(); }

    // A fresh block with refcount 1 (KVCacheFull when none is free). `open`: it is about to be
    // filled token by token, so a codec pool gives it a staging slot.
    int allocate(bool open = true);
    void retain(int block);       // one more owner
    void release(int block);      // one owner fewer; back to the free list at zero
    int copy_of(int block);       // a new block (refcount 1) holding the same entries, open when the source is

    // Keys / values of one (block, layer, kv head) as stored: (block_tokens, head_dim) elements of the
    // pool's float type, row per token; or the codec's bytes (kv/codec.h) of a sealed block.
    uint8_t* k(int block, int layer, int head) { return k_.get() + index(block, layer, head) * k_head_; }
    uint8_t* v(int block, int layer, int head) { return v_.get() + index(block, layer, head) * v_head_; }
    const uint8_t* k(int block, int layer, int head) const { return k_.get() + index(block, layer, head) * k_head_; }
    const uint8_t* v(int block, int layer, int head) const { return v_.get() + index(block, layer, head) * v_head_; }

    // Codec pools: the staging rows of an open block, (block_tokens, head_dim) f16.
    bool is_open(int block) const { return stage_of_[size_t(block)] >= 0; }
    uint16_t* stage_k(int block, int layer, int head) { return stage(block, layer, head, false); }
    uint16_t* stage_v(int block, int layer, int head) { return stage(block, layer, head, true); }
    const uint16_t* stage_k(int block, int layer, int head) const {
        return const_cast<KVPool*>(this)->stage(block, layer, head, false);
    }
    const uint16_t* stage_v(int block, int layer, int head) const {
        return const_cast<KVPool*>(this)->stage(block, layer, head, true);
    }
    // Encodes one layer of an open, filled block from its staging rows (`scratch`: block_tokens *
    // head_dim floats). Safe to call for different blocks from different threads.
    void seal(int block, int layer, float* scratch);
    void close(int block);        // drops an open block's staging slot (every layer sealed)
    void reopen(int block);       // gives a sealed block a staging slot holding its decoded rows
    // Decodes row `row` of one sealed (block, layer, head) to head_dim floats.
    void decode_row(int block, int layer, int head, bool values, int row, float* out) const;
    const KVCodecKernels& codec() const { return *codec_; }

private:
    size_t index(int block, int layer, int head) const {
        return (size_t(block) * size_t(shape_.n_layer) + size_t(layer)) * size_t(shape_.n_kv_head) + size_t(head);
    }
    uint16_t* stage(int block, int layer, int head, bool values);
    void open(int block);         // a staging slot, contents undefined

    KVShape shape_;
    int n_blocks_;
    KVType type_;
    const KernelSet& ks_;
    const KVCodecKernels* codec_ = nullptr;  // codec pools
    size_t k_head_ = 0, v_head_ = 0;
    Buffer k_{nullptr, nullptr};  // (n_blocks, n_layer, n_kv_head) x k_head_ bytes
    Buffer v_{nullptr, nullptr};  // (n_blocks, n_layer, n_kv_head) x v_head_ bytes
    std::vector<int> refcount_;   // (n_blocks)
    std::vector<int> free_;       // free block ids, popped from the back
    // Staging: slots of stage_bytes_ (keys (n_layer, n_kv_head, block_tokens, head_dim) f16, then values).
    size_t stage_bytes_ = 0;
    std::vector<Buffer> stages_;
    std::vector<int> stage_free_;
    std::vector<int> stage_of_;   // (n_blocks): a block's slot, or -1
    std::vector<float> scratch_;  // block_tokens * head_dim floats for reopen (single-threaded callers)
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
    // A codec pool's block is taken as stored (sealed): codes are not checked (the payload's CRC is).
    void append_block(int seq, const uint8_t* data);
    // Copies full block `index` of a sequence out: for each layer, for each kv head, its keys
    // then its values as stored (k_head_bytes() + v_head_bytes()). block_bytes() bytes.
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
