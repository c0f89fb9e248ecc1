// Open-addressing hash maps for the BPE tables: string -> id (strings kept in one arena, so
// loading 150k tokens makes no per-token allocation) and (id, id) -> merge.
#pragma once

#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

namespace nb::tok {

class StringIdMap {
 public:
  void reserve(size_t n) {
    entries_.reserve(n);
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    if (cap > slots_.size()) rehash(cap);
  }
  // Inserts or overwrites (JSON objects with duplicate keys keep the last value, as serde does).
  void insert(std::string_view key, int32_t id) {
    if ((entries_.size() + 1) * 2 > slots_.size()) rehash(slots_.empty() ? 16 : slots_.size() * 2);
    size_t h = hash(key), mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      uint32_t s = slots_[i];
      if (s == 0) {
        entries_.push_back({static_cast<uint32_t>(arena_.size()), static_cast<uint32_t>(key.size()), id});
        arena_.append(key);
        slots_[i] = static_cast<uint32_t>(entries_.size());
        return;
      }
      if (key_of(s - 1) == key) {
        entries_[s - 1].id = id;
        return;
      }
    }
  }
  // The id of `key`, or -1.
  int32_t find(std::string_view key) const {
    if (slots_.empty()) return -1;
    size_t h = hash(key), mask = slots_.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      uint32_t s = slots_[i];
      if (s == 0) return -1;
      const Entry& e = entries_[s - 1];
      if (e.len == key.size() && std::memcmp(arena_.data() + e.off, key.data(), key.size()) == 0) return e.id;
    }
  }
  size_t size() const { return entries_.size(); }
  template <typename F>
  void for_each(F&& f) const {
    for (size_t i = 0; i < entries_.size(); ++i) f(key_of(i), entries_[i].id);
  }

 private:
  struct Entry {
    uint32_t off, len;
    int32_t id;
  };
  static size_t hash(std::string_view k) { return std::hash<std::string_view>()(k); }
  std::string_view key_of(size_t i) const { return {arena_.data() + entries_[i].off, entries_[i].len}; }
  void rehash(size_t cap) {
    slots_.assign(cap, 0);
    size_t mask = cap - 1;
    for (size_t e = 0; e < entries_.size(); ++e) {
      size_t i = hash(key_of(e)) & mask;
      while (slots_[i] != 0) i = (i + 1) & mask;
      slots_[i] = static_cast<uint32_t>(e + 1);
    }
  }
  std::string arena_;
  std::vector<Entry> entries_;
  std::vector<uint32_t> slots_;  // entry index + 1; 0 = empty
};

// (left id, right id) -> (rank, merged id).
class PairMap {
 public:
  struct Value {
    int32_t rank = -1;
    int32_t id = -1;
  };
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < n * 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Value{});
    size_ = 0;
  }
  // Later inserts of the same pair overwrite earlier ones (HF collects merges into a HashMap).
  void insert(int32_t a, int32_t b, Value v) {
    if ((size_ + 1) * 2 > keys_.size()) grow();
    uint64_t k = key(a, b);
    size_t mask = keys_.size() - 1;
    for (size_t i = mix(k) & mask;; i = (i + 1) & mask) {
      if (keys_[i] == kEmpty) {
        keys_[i] = k;
        values_[i] = v;
        ++size_;
        return;
      }
      if (keys_[i] == k) {
        values_[i] = v;
        return;
      }
    }
  }
  const Value* find(int32_t a, int32_t b) const {
    if (keys_.empty()) return nullptr;
    uint64_t k = key(a, b);
    size_t mask = keys_.size() - 1;
    for (size_t i = mix(k) & mask;; i = (i + 1) & mask) {
      if (keys_[i] == k) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  static uint64_t key(int32_t a, int32_t b) { return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b); }
  static size_t mix(uint64_t x) {  // splitmix64 finalizer
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    return static_cast<size_t>(x ^ (x >> 31));
  }
  void grow() {
    std::vector<uint64_t> keys = std::move(keys_);
    std::vector<Value> values = std::move(values_);
    reserve(keys.empty() ? 8 : keys.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      if (keys[i] != kEmpty) insert(static_cast<int32_t>(keys[i] >> 32), static_cast<int32_t>(keys[i] & 0xffffffffu), values[i]);
    }
  }
  std::vector<uint64_t> keys_;
  std::vector<Value> values_;
  size_t size_ = 0;
};

}  // namespace nb::tok
