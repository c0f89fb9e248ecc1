// Paged KV block pool with reference counts and automatic prefix caching (design.md: engine). Pure
// bookkeeping: a block id indexes the KV storage that the model runner owns; this class never
// touches that memory.
//
// Every block is in exactly one of three states:
//   used    ref_count > 0: in the block table of at least one live sequence;
//   cached  ref_count == 0 and registered under a content hash: a later prefix lookup may take it
//           back; evictable, least recently freed first, when a block is needed;
//   free    ref_count == 0 and no hash.
// Allocation takes a free block first and evicts a cached one only when none is free, so reusable
// prefixes live as long as memory allows.
//
// A registered block's hash is hash_block(parent, adapter, tokens): parent is the hash of the block
// before it in its sequence (kRootHash for the first), so one hash names the adapter and every
// token from position 0 to the end of the block. A lookup also compares the stored parent hash,
// adapter and tokens, so a 64-bit collision between different contents never shares KV.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace nb::engine {

class KvCacheManager {
 public:
  static constexpr uint64_t kRootHash = 0x6e6962626c65ULL;  // "nibble": parent of a sequence's first block
  // Content hash of one full block: parent block hash, adapter name ("" = base), the block's tokens.
  static uint64_t hash_block(uint64_t parent, std::string_view adapter, std::span<const int32_t> tokens);

  KvCacheManager(int num_blocks, int block_size);

  int num_blocks() const { return static_cast<int>(blocks_.size()); }
  int block_size() const { return block_size_; }
  int num_free() const { return static_cast<int>(free_.size()); }
  int num_cached() const { return static_cast<int>(lru_.size()); }
  int num_used() const { return num_blocks() - num_free() - num_cached(); }
  // Blocks allocate() can hand out now: free ones, then cached ones by eviction.
  int num_available() const { return num_free() + num_cached(); }

  int ref_count(int32_t block) const;
  // True while `block` is registered in the prefix cache (used or cached).
  bool is_registered(int32_t block) const;
  // The hash `block` is registered under; is_registered(block) must hold.
  uint64_t block_hash(int32_t block) const;

  // A block with reference count 1: a free one, else the least recently freed cached one (which
  // leaves the prefix cache). num_available() must be > 0.
  int32_t allocate();
  // One more sequence holds `block` (a prefix-cache hit). A cached block becomes used again.
  void share(int32_t block);
  // One sequence fewer holds `block`. At zero it becomes cached if registered, else free.
  void release(int32_t block);

  // The registered block holding exactly this content, or -1.
  int32_t lookup(uint64_t hash, uint64_t parent, std::string_view adapter, std::span<const int32_t> tokens) const;
  // Registers a used block that just became full of computed tokens. Returns false (and changes
  // nothing) when a block with this hash is already registered: the first copy stays the cached one
  // and this block is freed, not cached, when released. `tokens` must hold block_size tokens.
  bool register_block(int32_t block, uint64_t hash, uint64_t parent, std::string_view adapter,
                      std::span<const int32_t> tokens);

  // Consistency of the three states, the free list, the LRU list and the hash map (for tests).
  Status check_invariants() const;

 private:
  struct Block {
    int ref_count = 0;
    bool registered = false;
    uint64_t hash = 0, parent = 0;
    std::string adapter;
    std::vector<int32_t> tokens;           // the block's tokens, to rule out hash collisions
    std::list<int32_t>::iterator lru_pos;  // valid while cached
  };

  void check_block(int32_t block) const;
  void unregister(int32_t block);

  int block_size_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_;                  // stack of free blocks
  std::list<int32_t> lru_;                     // cached blocks, least recently freed first
  std::unordered_map<uint64_t, int32_t> map_;  // hash -> registered block
};

}  // namespace nb::engine
