#include "lora/registry.h"

#include <algorithm>

namespace nb {

Status AdapterRegistryOptions::validate() const {
  if (max_loras < 0 || max_cpu_loras < 0)
    return invalid_argument(strformat("max_loras=%d and max_cpu_loras=%d must not be negative", max_loras,
                                      max_cpu_loras));
  if (max_cpu_loras > 0 && max_cpu_loras < max_loras)
    return invalid_argument(strformat("max_cpu_loras=%d must be at least max_loras=%d (or 0 for no limit)",
                                      max_cpu_loras, max_loras));
  if (dtype != DType::kF32 && dtype != DType::kBF16 && dtype != DType::kF16)
    return invalid_argument(strformat("LoRA dtype %s: expected F32, BF16 or F16", dtype_name(dtype)));
  return Status::ok();
}

AdapterRegistry::AdapterRegistry(std::vector<BaseModule> base, AdapterRegistryOptions options)
    : base_(std::move(base)), options_(options) {
  Status s = options_.validate();
  NB_CHECK(s.is_ok(), "%s", s.message().c_str());
  slots_.resize(static_cast<size_t>(options_.max_loras));
}

Status AdapterRegistry::unknown_locked(const std::string& name) const {
  std::string loaded;
  for (const auto& [n, _] : entries_) loaded += (loaded.empty() ? "" : ", ") + n;
  return not_found(strformat("adapter '%s' is not loaded; loaded: %s", name.c_str(),
                             loaded.empty() ? "(none)" : loaded.c_str()));
}

Status AdapterRegistry::unknown_adapter(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return unknown_locked(name);
}

size_t AdapterRegistry::resident_count_locked() const {
  size_t n = 0;
  for (const auto& [_, e] : entries_) n += e.adapter != nullptr;
  return n;
}

bool AdapterRegistry::shrink_locked(size_t limit, const std::vector<std::string>& keep) {
  while (resident_count_locked() > limit) {
    // Victim: unpinned, not held by a batch, reloadable; adapters idling in a slot go last (they
    // would need a new upload), LRU within each group.
    Entry* victim = nullptr;
    for (auto& [n, e] : entries_) {
      bool evictable = e.adapter && !e.pinned && e.slot_refs == 0 && !e.dir.empty() &&
                       std::find(keep.begin(), keep.end(), n) == keep.end();
      if (!evictable) continue;
      if (!victim || std::pair(e.slot >= 0, e.last_used) < std::pair(victim->slot >= 0, victim->last_used)) victim = &e;
    }
    if (!victim) return false;
    victim->adapter.reset();
    ++victim->evictions;
    if (victim->slot >= 0) slots_[static_cast<size_t>(victim->slot)] = Slot{};  // a slot implies residency
    victim->slot = -1;
  }
  return true;
}

Status AdapterRegistry::insert_locked(const std::string& name, Entry entry) {
  entry.last_used = ++tick_;
  entries_.emplace(name, std::move(entry));
  if (options_.max_cpu_loras > 0 && !shrink_locked(static_cast<size_t>(options_.max_cpu_loras), {name})) {
    entries_.erase(name);
    return out_of_range(strformat("cannot register adapter '%s': the CPU LoRA cache (max_cpu_loras=%d) is full of "
                                  "pinned or active adapters", name.c_str(), options_.max_cpu_loras));
  }
  return Status::ok();
}

Status AdapterRegistry::load(const std::string& name, const std::string& dir, bool pin) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (entries_.count(name)) return invalid_argument(strformat("adapter '%s' is already loaded", name.c_str()));
  }
  // Load outside the lock: it reads and converts files.
  NB_ASSIGN_OR_RETURN(LoraAdapter adapter, load_adapter(name, dir, base_, options_.dtype));
  return add(std::move(adapter), pin);
}

Status AdapterRegistry::add(LoraAdapter adapter, bool pin) {
  std::lock_guard<std::mutex> lock(mu_);
  std::string name = adapter.name;
  if (name.empty()) return invalid_argument("adapter name is empty");
  if (entries_.count(name)) return invalid_argument(strformat("adapter '%s' is already loaded", name.c_str()));
  Entry e;
  e.dir = adapter.dir;
  e.pinned = pin;
  e.loads = 1;
  e.adapter = std::make_shared<const LoraAdapter>(std::move(adapter));
  return insert_locked(name, std::move(e));
}

Status AdapterRegistry::remove(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return unknown_locked(name);
  if (it->second.slot_refs > 0)
    return invalid_argument(strformat("adapter '%s' is in use by %d running batch(es)", name.c_str(),
                                      it->second.slot_refs));
  if (it->second.slot >= 0) slots_[static_cast<size_t>(it->second.slot)] = Slot{};
  entries_.erase(it);
  return Status::ok();
}

bool AdapterRegistry::contains(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  return entries_.count(name) != 0;
}

bool AdapterRegistry::is_resident(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  return it != entries_.end() && it->second.adapter != nullptr;
}

std::vector<std::string> AdapterRegistry::list() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::string> out;
  for (const auto& [n, _] : entries_) out.push_back(n);
  return out;
}

std::vector<std::string> AdapterRegistry::resident() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::pair<uint64_t, std::string>> v;
  for (const auto& [n, e] : entries_)
    if (e.adapter) v.emplace_back(e.last_used, n);
  std::sort(v.rbegin(), v.rend());
  std::vector<std::string> out;
  for (auto& [_, n] : v) out.push_back(n);
  return out;
}

Status AdapterRegistry::make_resident_locked(const std::string& name, Entry& e, const std::vector<std::string>& keep) {
  e.last_used = ++tick_;
  if (e.adapter) return Status::ok();
  size_t limit = options_.max_cpu_loras > 0 ? static_cast<size_t>(options_.max_cpu_loras) - 1 : SIZE_MAX;
  if (!shrink_locked(limit, keep))
    return out_of_range(strformat("cannot reload adapter '%s': the CPU LoRA cache (max_cpu_loras=%d) is full of "
                                  "pinned or active adapters", name.c_str(), options_.max_cpu_loras));
  // Reloading under the lock keeps the bookkeeping simple; it only happens after an eviction.
  NB_ASSIGN_OR_RETURN(LoraAdapter adapter, load_adapter(name, e.dir, base_, options_.dtype));
  e.adapter = std::make_shared<const LoraAdapter>(std::move(adapter));
  ++e.loads;
  return Status::ok();
}

std::vector<AdapterRegistry::State> AdapterRegistry::states() const {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<State> out;
  for (const auto& [n, e] : entries_) out.push_back(State{n, e.dir, e.adapter != nullptr, e.slot, e.pinned, e.loads, e.evictions});
  return out;
}

Result<std::shared_ptr<const LoraAdapter>> AdapterRegistry::get(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return unknown_locked(name);
  NB_RETURN_IF_ERROR(make_resident_locked(name, it->second, {name}));
  return it->second.adapter;
}

Result<LoraAdapter> AdapterRegistry::read(const std::string& name) const {
  std::string dir;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = entries_.find(name);
    if (it == entries_.end()) return unknown_locked(name);
    dir = it->second.dir;
  }
  if (dir.empty()) return invalid_argument(strformat("adapter '%s' has no directory to read it from", name.c_str()));
  return load_adapter(name, dir, base_, options_.dtype);  // the slow part, unlocked
}

Status AdapterRegistry::restore(const std::string& name, LoraAdapter adapter) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return unknown_locked(name);  // removed meanwhile
  Entry& e = it->second;
  e.last_used = ++tick_;
  if (e.adapter) return Status::ok();  // resident again already
  const size_t limit = options_.max_cpu_loras > 0 ? static_cast<size_t>(options_.max_cpu_loras) - 1 : SIZE_MAX;
  if (!shrink_locked(limit, {name}))
    return out_of_range(strformat("cannot reload adapter '%s': the CPU LoRA cache (max_cpu_loras=%d) is full of "
                                  "pinned or active adapters", name.c_str(), options_.max_cpu_loras));
  e.adapter = std::make_shared<const LoraAdapter>(std::move(adapter));
  ++e.loads;
  return Status::ok();
}

Status AdapterRegistry::pin(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return unknown_locked(name);
  NB_RETURN_IF_ERROR(make_resident_locked(name, it->second, {name}));
  it->second.pinned = true;
  return Status::ok();
}

Status AdapterRegistry::unpin(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  if (it == entries_.end()) return unknown_locked(name);
  it->second.pinned = false;
  return Status::ok();
}

int AdapterRegistry::slot_of(const std::string& name) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(name);
  return it == entries_.end() ? -1 : it->second.slot;
}

// A free slot, else the least recently used idle slot of an unpinned adapter not in `exclude`.
Result<int> AdapterRegistry::pick_slot_locked(const std::vector<std::string>& exclude) {
  int best = -1;
  for (size_t s = 0; s < slots_.size(); ++s) {
    if (slots_[s].name.empty()) return static_cast<int>(s);
    const Entry& e = entries_.at(slots_[s].name);
    bool idle = e.slot_refs == 0 && !e.pinned &&
                std::find(exclude.begin(), exclude.end(), slots_[s].name) == exclude.end();
    if (idle && (best < 0 || slots_[s].last_used < slots_[static_cast<size_t>(best)].last_used))
      best = static_cast<int>(s);
  }
  if (best < 0)
    return out_of_range(strformat("all %d LoRA slots (max_loras) are held by running batches or pinned adapters",
                                  options_.max_loras));
  entries_.at(slots_[static_cast<size_t>(best)].name).slot = -1;
  slots_[static_cast<size_t>(best)] = Slot{};
  return best;
}

Result<std::vector<SlotGrant>> AdapterRegistry::acquire_slots(const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(mu_);
  if (names.size() > slots_.size())
    return out_of_range(strformat("a batch uses %zu adapters but there are only %d LoRA slots (max_loras)",
                                  names.size(), options_.max_loras));
  for (const std::string& n : names) {
    if (!entries_.count(n)) return unknown_locked(n);
    if (std::count(names.begin(), names.end(), n) > 1)
      return invalid_argument(strformat("adapter '%s' listed twice", n.c_str()));
  }
  // Feasibility first (all or nothing): slots already held, plus free or idle others.
  size_t have = 0, available = 0;
  for (const std::string& n : names) have += entries_.at(n).slot >= 0;
  for (const Slot& s : slots_) {
    if (s.name.empty()) { ++available; continue; }
    const Entry& e = entries_.at(s.name);
    if (e.slot_refs == 0 && !e.pinned && std::find(names.begin(), names.end(), s.name) == names.end()) ++available;
  }
  if (have + available < names.size())
    return out_of_range(strformat("need %zu LoRA slots for this batch, only %zu of %d are free or idle",
                                  names.size() - have, available, options_.max_loras));
  // Resident first (the only step that can still fail), keeping the whole batch in memory.
  for (const std::string& n : names) NB_RETURN_IF_ERROR(make_resident_locked(n, entries_.at(n), names));
  std::vector<SlotGrant> grants;
  for (const std::string& n : names) {
    Entry& e = entries_.at(n);
    SlotGrant g;
    if (e.slot < 0) {
      NB_ASSIGN_OR_RETURN(e.slot, pick_slot_locked(names));
      slots_[static_cast<size_t>(e.slot)].name = n;
      g.needs_upload = true;
    }
    slots_[static_cast<size_t>(e.slot)].last_used = ++tick_;
    ++e.slot_refs;
    g.slot = e.slot;
    g.adapter = e.adapter;
    grants.push_back(std::move(g));
  }
  return grants;
}

void AdapterRegistry::release_slots(const std::vector<std::string>& names) {
  std::lock_guard<std::mutex> lock(mu_);
  for (const std::string& n : names) {
    auto it = entries_.find(n);
    NB_CHECK(it != entries_.end() && it->second.slot_refs > 0, "release_slots('%s') without acquire", n.c_str());
    --it->second.slot_refs;
  }
}

Result<BatchAdapterMap> BatchAdapterMap::build(AdapterRegistry& registry, const std::vector<std::string>& rows) {
  BatchAdapterMap map;
  map.row_index_.reserve(rows.size());
  std::map<std::string, int> index;
  for (const std::string& n : rows) {
    if (n.empty()) {
      map.row_index_.push_back(-1);
      continue;
    }
    auto it = index.find(n);
    if (it == index.end()) {
      NB_ASSIGN_OR_RETURN(std::shared_ptr<const LoraAdapter> a, registry.get(n));
      it = index.emplace(n, static_cast<int>(map.names_.size())).first;
      map.names_.push_back(n);
      map.adapters_.push_back(std::move(a));
    }
    map.row_index_.push_back(it->second);
  }
  return map;
}

std::vector<int> BatchAdapterMap::row_slots(const std::vector<int>& slot_of_adapter) const {
  NB_CHECK(slot_of_adapter.size() == names_.size(), "row_slots: %zu slots for %zu adapters", slot_of_adapter.size(),
           names_.size());
  std::vector<int> out;
  out.reserve(row_index_.size());
  for (int i : row_index_) out.push_back(i < 0 ? -1 : slot_of_adapter[static_cast<size_t>(i)]);
  return out;
}

std::vector<int> BatchAdapterMap::row_slots(const std::vector<SlotGrant>& grants) const {
  std::vector<int> slots;
  for (const SlotGrant& g : grants) slots.push_back(g.slot);
  return row_slots(slots);
}

}  // namespace nb
