#include "engine/kv_cache_manager.h"

#include <algorithm>

namespace nb::engine {
namespace {

// splitmix64's finalizer: a bijection on 64 bits with full avalanche, so chaining it over the
// inputs spreads every input bit over the whole hash.
uint64_t mix64(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

// FNV-1a over the adapter name: names are short, and mix64 below spreads the result.
uint64_t hash_name(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

}  // namespace

uint64_t KvCacheManager::hash_block(uint64_t parent, std::string_view adapter, std::span<const int32_t> tokens) {
  constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
  uint64_t h = mix64(parent ^ kGolden);
  h = mix64(h ^ hash_name(adapter) ^ (static_cast<uint64_t>(adapter.size()) << 56));
  for (int32_t t : tokens) h = mix64(h + kGolden + static_cast<uint32_t>(t));
  return mix64(h ^ static_cast<uint64_t>(tokens.size()));
}

KvCacheManager::KvCacheManager(int num_blocks, int block_size) : block_size_(block_size) {
  NB_CHECK(num_blocks > 0 && block_size > 0, "num_blocks=%d block_size=%d", num_blocks, block_size);
  blocks_.resize(static_cast<size_t>(num_blocks));
  free_.reserve(blocks_.size());
  for (int32_t b = num_blocks - 1; b >= 0; --b) free_.push_back(b);  // low ids first
}

void KvCacheManager::check_block(int32_t block) const {
  NB_CHECK(block >= 0 && block < num_blocks(), "block %d outside [0, %d)", block, num_blocks());
}

int KvCacheManager::ref_count(int32_t block) const {
  check_block(block);
  return blocks_[block].ref_count;
}

bool KvCacheManager::is_registered(int32_t block) const {
  check_block(block);
  return blocks_[block].registered;
}

uint64_t KvCacheManager::block_hash(int32_t block) const {
  NB_CHECK(is_registered(block), "block %d is not registered", block);
  return blocks_[block].hash;
}

void KvCacheManager::unregister(int32_t block) {
  Block& b = blocks_[block];
  map_.erase(b.hash);
  b.registered = false;
  b.adapter.clear();
  b.tokens.clear();
}

int32_t KvCacheManager::allocate() {
  NB_CHECK(num_available() > 0, "KV cache: no block to allocate (%d used of %d)", num_used(), num_blocks());
  int32_t block;
  if (!free_.empty()) {
    block = free_.back();
    free_.pop_back();
  } else {
    block = lru_.front();  // evict the least recently freed prefix
    lru_.pop_front();
    unregister(block);
  }
  blocks_[block].ref_count = 1;
  return block;
}

void KvCacheManager::share(int32_t block) {
  check_block(block);
  Block& b = blocks_[block];
  NB_CHECK(b.registered, "share(%d): only registered (full, hashed) blocks are shared", block);
  if (b.ref_count == 0) lru_.erase(b.lru_pos);
  ++b.ref_count;
}

void KvCacheManager::release(int32_t block) {
  check_block(block);
  Block& b = blocks_[block];
  NB_CHECK(b.ref_count > 0, "release(%d): block is not in use", block);
  if (--b.ref_count > 0) return;
  if (b.registered) {
    b.lru_pos = lru_.insert(lru_.end(), block);
  } else {
    free_.push_back(block);
  }
}

int32_t KvCacheManager::lookup(uint64_t hash, uint64_t parent, std::string_view adapter,
                               std::span<const int32_t> tokens) const {
  auto it = map_.find(hash);
  if (it == map_.end()) return -1;
  const Block& b = blocks_[it->second];
  bool same = b.parent == parent && b.adapter == adapter &&
              std::equal(b.tokens.begin(), b.tokens.end(), tokens.begin(), tokens.end());
  return same ? it->second : -1;
}

bool KvCacheManager::register_block(int32_t block, uint64_t hash, uint64_t parent, std::string_view adapter,
                                    std::span<const int32_t> tokens) {
  check_block(block);
  Block& b = blocks_[block];
  NB_CHECK(b.ref_count > 0 && !b.registered, "register_block(%d): ref_count %d, registered %d", block,
           b.ref_count, static_cast<int>(b.registered));
  NB_CHECK(static_cast<int>(tokens.size()) == block_size_, "register_block(%d): %zu tokens, block size %d",
           block, tokens.size(), block_size_);
  if (!map_.emplace(hash, block).second) return false;
  b.registered = true;
  b.hash = hash;
  b.parent = parent;
  b.adapter.assign(adapter);
  b.tokens.assign(tokens.begin(), tokens.end());
  return true;
}

Status KvCacheManager::check_invariants() const {
  // 0 = used, 1 = free, 2 = cached; each block must be listed in exactly the place its state says.
  std::vector<int> seen(blocks_.size(), 0);
  for (int32_t b : free_) {
    if (seen[b]++ || blocks_[b].ref_count != 0 || blocks_[b].registered)
      return internal_error(strformat("free list: block %d listed twice, in use or registered", b));
  }
  for (int32_t b : lru_) {
    if (seen[b]++ || blocks_[b].ref_count != 0 || !blocks_[b].registered || *blocks_[b].lru_pos != b)
      return internal_error(strformat("LRU list: block %d listed twice, in use or not registered", b));
  }
  size_t registered = 0;
  for (size_t b = 0; b < blocks_.size(); ++b) {
    const Block& blk = blocks_[b];
    if (blk.ref_count < 0 || (blk.ref_count == 0 && !seen[b]))
      return internal_error(strformat("block %zu: ref_count %d but in neither free nor LRU list", b, blk.ref_count));
    if (!blk.registered) continue;
    ++registered;
    auto it = map_.find(blk.hash);
    if (it == map_.end() || it->second != static_cast<int32_t>(b))
      return internal_error(strformat("block %zu: registered but its hash maps elsewhere", b));
    if (static_cast<int>(blk.tokens.size()) != block_size_)
      return internal_error(strformat("block %zu: registered with %zu tokens, expected %d", b, blk.tokens.size(),
                                      block_size_));
  }
  if (registered != map_.size())
    return internal_error(strformat("hash map holds %zu entries, expected %zu registered blocks", map_.size(),
                                    registered));
  return Status::ok();
}

}  // namespace nb::engine
