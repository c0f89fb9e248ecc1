// KV-cache block manager: pure bookkeeping, no device memory (design.md: engine). Each sequence
// owns a block table of physical block ids; a token at position p lives in block table[p / bs],
// slot table[p / bs] * bs + p % bs.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "core/status.h"

namespace nb::engine {

class BlockManager {
 public:
  BlockManager(int num_blocks, int block_size);

  int block_size() const { return block_size_; }
  int num_blocks() const { return num_blocks_; }
  int free_blocks() const { return static_cast<int>(free_.size()); }
  // Blocks needed to hold `tokens` tokens.
  int blocks_for(int64_t tokens) const { return static_cast<int>((tokens + block_size_ - 1) / block_size_); }

  // Grows sequence `seq` so it can hold `total_tokens` tokens. Fails (and changes nothing) when
  // the cache is full.
  Status reserve(int64_t seq, int64_t total_tokens);
  // Returns every block of `seq` to the free list. Unknown sequences are ignored.
  void release(int64_t seq);
  // Gives back the blocks of `seq` beyond its first `blocks` (all of them, and forgets it, at 0).
  void truncate(int64_t seq, int blocks);
  bool has(int64_t seq) const { return tables_.count(seq) != 0; }
  const std::vector<int32_t>& block_table(int64_t seq) const;
  // Physical slot of the token at `position` of `seq` (must be reserved).
  int32_t slot(int64_t seq, int64_t position) const;

 private:
  int num_blocks_;
  int block_size_;
  std::vector<int32_t> free_;  // stack of free block ids
  std::unordered_map<int64_t, std::vector<int32_t>> tables_;
};

}  // namespace nb::engine
