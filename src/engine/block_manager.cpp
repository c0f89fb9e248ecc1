#include "engine/block_manager.h"

namespace nb::engine {

BlockManager::BlockManager(int num_blocks, int block_size) : num_blocks_(num_blocks), block_size_(block_size) {
  NB_CHECK(num_blocks > 0 && block_size > 0, "num_blocks=%d block_size=%d", num_blocks, block_size);
  free_.reserve(static_cast<size_t>(num_blocks));
  // Hand out low block ids first (pop from the back).
  for (int b = num_blocks - 1; b >= 0; --b) free_.push_back(b);
}

Status BlockManager::reserve(int64_t seq, int64_t total_tokens) {
  auto& table = tables_[seq];
  int need = blocks_for(total_tokens) - static_cast<int>(table.size());
  if (need <= 0) return Status::ok();
  if (need > free_blocks()) {
    if (table.empty()) tables_.erase(seq);
    return out_of_range(strformat("KV cache full: sequence %lld needs %d more blocks of %d tokens, %d free of %d",
                                  static_cast<long long>(seq), need, block_size_, free_blocks(), num_blocks_));
  }
  for (int i = 0; i < need; ++i) {
    table.push_back(free_.back());
    free_.pop_back();
  }
  return Status::ok();
}

void BlockManager::release(int64_t seq) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  for (auto it2 = it->second.rbegin(); it2 != it->second.rend(); ++it2) free_.push_back(*it2);
  tables_.erase(it);
}

void BlockManager::truncate(int64_t seq, int blocks) {
  auto it = tables_.find(seq);
  if (it == tables_.end()) return;
  if (blocks <= 0) return release(seq);
  while (static_cast<int>(it->second.size()) > blocks) {
    free_.push_back(it->second.back());
    it->second.pop_back();
  }
}

const std::vector<int32_t>& BlockManager::block_table(int64_t seq) const {
  auto it = tables_.find(seq);
  NB_CHECK(it != tables_.end(), "sequence %lld has no blocks", static_cast<long long>(seq));
  return it->second;
}

int32_t BlockManager::slot(int64_t seq, int64_t position) const {
  const auto& table = block_table(seq);
  size_t b = static_cast<size_t>(position / block_size_);
  NB_CHECK(b < table.size(), "position %lld beyond reserved blocks", static_cast<long long>(position));
  return table[b] * block_size_ + static_cast<int32_t>(position % block_size_);
}

}  // namespace nb::engine
