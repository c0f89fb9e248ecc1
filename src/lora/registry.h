// Adapter registry: the adapters a server knows by name, a CPU cache of loaded adapters with an
// LRU budget and pinning, and device slots for the backend; plus the per-row adapter map of a
// batch.
//
// Three levels:
//   registered - name -> directory, validated once at registration (fail closed, early);
//   resident   - tensors in host memory; at most `max_cpu_loras` (0 = no limit). The least
//                recently used resident adapter that is neither pinned nor held by a batch is
//                evicted (those idling in a slot last; eviction frees the slot) and reloaded from
//                its directory on next use;
//   in a slot  - one of `max_loras` device slots (the CUDA backend uploads factors there). A slot
//                held by a running batch (refcount > 0) is never reassigned; an idle slot keeps its
//                adapter (warm) until the LRU idle slot is needed for another adapter.
// A pinned adapter is never evicted from host memory nor from its slot once it has one.
// Adapters handed out are shared_ptr<const>: eviction never frees tensors a batch still reads.
// All methods are thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/status.h"
#include "lora/adapter.h"

namespace nb {

struct AdapterRegistryOptions {
  int max_loras = 0;      // device slots; 0 = no slots (CPU backend)
  int max_cpu_loras = 0;  // resident adapters in host memory; 0 = no limit
  DType dtype = DType::kF32;  // factor dtype on load

  // Non-negative sizes; max_cpu_loras 0 or >= max_loras (an adapter in a slot stays resident).
  // Callers with user-given sizes check this; the constructor aborts on invalid options.
  Status validate() const;
};

// acquire_slots result for one adapter.
struct SlotGrant {
  int slot = -1;
  bool needs_upload = false;  // the slot did not hold this adapter before: copy the factors in
  std::shared_ptr<const LoraAdapter> adapter;
};

class AdapterRegistry {
 public:
  AdapterRegistry(std::vector<BaseModule> base, AdapterRegistryOptions options = {});

  // Loads and validates `dir` and registers it as `name`. Errors: duplicate name, load failure,
  // or a full CPU cache whose adapters are all pinned or in slots.
  Status load(const std::string& name, const std::string& dir, bool pin = false);
  // Registers an adapter built elsewhere (already validated). Its `dir`, when set, is used to
  // reload it after eviction; an adapter without a dir cannot be reloaded and is never evicted.
  Status add(LoraAdapter adapter, bool pin = false);
  // Forgets an adapter. Refused while a batch holds its slot.
  Status remove(const std::string& name);

  bool contains(const std::string& name) const;
  bool is_resident(const std::string& name) const;
  std::vector<std::string> list() const;  // registered names, sorted
  std::vector<std::string> resident() const;  // resident names, most recently used first
  // The adapter, reloading it when evicted; marks it most recently used.
  Result<std::shared_ptr<const LoraAdapter>> get(const std::string& name);

  // Bringing an evicted adapter back in two halves, so that the slow half runs beside the batches:
  // read() loads `name` from its directory without holding the registry's lock and changes nothing
  // (any thread); restore() puts the result back in host memory, evicting others as the cache
  // requires (call it between batches, when no slot is held, or eviction may find nothing to
  // evict). restore() is a no-op when the adapter is resident again already. Errors: unknown name,
  // the files (changed or gone since registration), a full cache of pinned or active adapters.
  Result<LoraAdapter> read(const std::string& name) const;
  Status restore(const std::string& name, LoraAdapter adapter);

  Status pin(const std::string& name);
  Status unpin(const std::string& name);

  // Device slots for all `names` (distinct), all or nothing; each grant adds a reference that
  // release_slots drops. Error when an adapter is unknown or fewer than names.size() slots are
  // free or idle.
  Result<std::vector<SlotGrant>> acquire_slots(const std::vector<std::string>& names);
  void release_slots(const std::vector<std::string>& names);
  int slot_of(const std::string& name) const;  // -1 when none
  int max_loras() const { return options_.max_loras; }

  // "adapter 'x' is not loaded; loaded: a, b"
  Status unknown_adapter(const std::string& name) const;

  // Where each registered adapter is now, and how often it was read from disk / evicted.
  struct State {
    std::string name, dir;
    bool resident = false;  // in host memory
    int slot = -1;          // device slot, -1 = none
    bool pinned = false;
    int64_t loads = 0;      // reads from disk: the first load and every reload after an eviction
    int64_t evictions = 0;  // evictions from host memory
  };
  std::vector<State> states() const;

 private:
  struct Entry {
    std::string dir;
    std::shared_ptr<const LoraAdapter> adapter;  // null when evicted
    bool pinned = false;
    uint64_t last_used = 0;
    int slot = -1;
    int slot_refs = 0;
    int64_t loads = 0, evictions = 0;
  };
  struct Slot {
    std::string name;  // "" = empty
    uint64_t last_used = 0;
  };

  Status unknown_locked(const std::string& name) const;
  Status insert_locked(const std::string& name, Entry entry);
  // Reloads an evicted adapter (evicting others, never those in `keep`) and marks it used.
  Status make_resident_locked(const std::string& name, Entry& e, const std::vector<std::string>& keep);
  // Evicts LRU evictable residents until at most `limit` remain (never those in `keep`).
  // False when impossible.
  bool shrink_locked(size_t limit, const std::vector<std::string>& keep);
  size_t resident_count_locked() const;
  Result<int> pick_slot_locked(const std::vector<std::string>& exclude);

  std::vector<BaseModule> base_;
  AdapterRegistryOptions options_;
  mutable std::mutex mu_;
  std::map<std::string, Entry> entries_;
  std::vector<Slot> slots_;
  uint64_t tick_ = 0;
};

// Per-row adapter mapping for one batch: rows name their adapter ("" = base model only).
class BatchAdapterMap {
 public:
  // Unknown names fail with "adapter 'x' is not loaded; loaded: a, b". Resolves (and reloads if
  // evicted) each distinct adapter once.
  static Result<BatchAdapterMap> build(AdapterRegistry& registry, const std::vector<std::string>& row_adapters);

  // [rows]: index into names()/adapters(), -1 = base model only.
  const std::vector<int>& row_index() const { return row_index_; }
  // Distinct adapters, in order of first use.
  const std::vector<std::string>& names() const { return names_; }
  const std::vector<std::shared_ptr<const LoraAdapter>>& adapters() const { return adapters_; }
  // [rows]: device slot per row (-1 = base), given slot_of_adapter[i] for names()[i].
  std::vector<int> row_slots(const std::vector<int>& slot_of_adapter) const;
  std::vector<int> row_slots(const std::vector<SlotGrant>& grants) const;

 private:
  std::vector<int> row_index_;
  std::vector<std::string> names_;
  std::vector<std::shared_ptr<const LoraAdapter>> adapters_;
};

}  // namespace nb
