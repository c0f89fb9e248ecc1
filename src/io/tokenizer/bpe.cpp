#include "io/tokenizer/bpe.h"

#include <algorithm>
#include <atomic>
#include <limits>
#include <unordered_map>

#include "io/tokenizer/unicode.h"

namespace nb::tok {
namespace {

// Mapped (byte-to-unicode) text -> raw bytes; false when a character is outside the alphabet.
bool unmap_byte_level(std::string_view mapped, std::string* raw) {
  raw->clear();
  for (size_t i = 0; i < mapped.size();) {
    int b = unicode_to_byte(utf8_next(mapped, i));
    if (b < 0) return false;
    raw->push_back(static_cast<char>(b));
  }
  return true;
}

std::string map_byte_level(std::string_view raw) {
  std::string out;
  for (unsigned char b : raw) append_utf8(out, byte_to_unicode()[b]);
  return out;
}

constexpr uint32_t kNoToken = std::numeric_limits<uint32_t>::max();
constexpr const char* kMetaspace = "\xE2\x96\x81";  // U+2581

// True when every U+2581 in every token belongs to the token's leading run of U+2581.
bool metaspace_only_leads(const StringIdMap& vocab) {
  bool ok = true;
  vocab.for_each([&](std::string_view tok, int32_t) {
    size_t lead = 0;
    while (tok.compare(lead, 3, kMetaspace) == 0) lead += 3;
    if (tok.find(kMetaspace, lead) != std::string_view::npos) ok = false;
  });
  return ok;
}

// Per-thread cache of BPE results by word, one per model (HF keeps a similar thread-local cache).
struct WordCache {
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>()(s); }
  };
  std::unordered_map<std::string, std::vector<int32_t>, Hash, std::equal_to<>> words;
};
constexpr size_t kCacheWords = 16384;   // a full cache is cleared (recent words refill it fast)
constexpr size_t kCacheMaxWordLen = 256;

WordCache& cache_for(uint64_t id) {
  thread_local std::unordered_map<uint64_t, WordCache> caches;
  if (caches.size() > 8 && !caches.count(id)) caches.clear();  // bound memory with many models
  return caches[id];
}

}  // namespace

Result<BpeModel> BpeModel::build(BpeSpec spec, bool byte_level, const std::string& source) {
  BpeModel m;
  m.byte_level_ = byte_level;
  int64_t max_id = -1;
  for (const auto& [tok, id] : spec.vocab) {
    if (id < 0 || id >= std::numeric_limits<int32_t>::max())
      return format_error(strformat("%s: model.vocab: token '%s' has id %lld, expected 0 <= id < 2^31", source.c_str(), tok.c_str(),
                                    static_cast<long long>(id)));
    max_id = std::max(max_id, id);
  }
  m.vocab_.reserve(spec.vocab.size());
  m.id_spans_.assign(static_cast<size_t>(max_id + 1), {0u, kNoToken});
  std::string raw;
  if (byte_level) m.raw_vocab_.reserve(spec.vocab.size());
  for (const auto& [tok, id64] : spec.vocab) {
    int32_t id = static_cast<int32_t>(id64);
    m.vocab_.insert(tok, id);
    m.id_spans_[id] = {static_cast<uint32_t>(m.id_arena_.size()), static_cast<uint32_t>(tok.size())};
    m.id_arena_ += tok;
    // Tokens with characters outside the byte alphabet can never be produced by encoding.
    if (byte_level && unmap_byte_level(tok, &raw)) m.raw_vocab_.insert(raw, id);
  }
  for (int b = 0; b < 256; ++b) {
    char c = static_cast<char>(b);
    m.byte_ids_[b] = byte_level ? m.raw_vocab_.find(std::string_view(&c, 1)) : -1;
  }

  const std::string prefix = spec.continuing_subword_prefix.value_or("");
  const std::string suffix = spec.end_of_word_suffix.value_or("");
  if (byte_level && (!unmap_byte_level(prefix, &m.raw_prefix_) || !unmap_byte_level(suffix, &m.raw_suffix_)))
    return unsupported(strformat("%s: model: continuing_subword_prefix/end_of_word_suffix outside the byte-level alphabet", source.c_str()));
  if (!byte_level) {
    m.raw_prefix_ = prefix;
    m.raw_suffix_ = suffix;
  }
  m.simple_units_ = prefix.empty() && suffix.empty();

  m.merges_.reserve(spec.merges.size());
  std::string merged;
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    const auto& [a, b] = spec.merges[i];
    int32_t a_id = m.vocab_.find(a), b_id = m.vocab_.find(b);
    const std::string& missing = a_id < 0 ? a : b;
    if (a_id < 0 || b_id < 0)
      return format_error(strformat("%s: model.merges[%zu]: token '%s' is not in the vocabulary", source.c_str(), i, missing.c_str()));
    if (b.size() < prefix.size())
      return format_error(strformat("%s: model.merges[%zu]: '%s' is shorter than continuing_subword_prefix", source.c_str(), i, b.c_str()));
    merged.assign(a).append(b, prefix.size());
    int32_t new_id = m.vocab_.find(merged);
    if (new_id < 0)
      return format_error(strformat("%s: model.merges[%zu]: merged token '%s' is not in the vocabulary", source.c_str(), i, merged.c_str()));
    m.merges_.insert(a_id, b_id, {static_cast<int32_t>(i), new_id});
  }
  if (spec.unk_token) m.unk_id_ = m.vocab_.find(*spec.unk_token);
  if (!byte_level && m.simple_units_ && m.vocab_.find(kMetaspace) >= 0 && metaspace_only_leads(m.vocab_)) m.segment_marker_ = kMetaspace;
  static std::atomic<uint64_t> next_cache_id{1};
  m.cache_id_ = next_cache_id++;
  spec.vocab.clear();
  spec.merges.clear();
  m.opts_ = std::move(spec);
  return m;
}

std::optional<std::string_view> BpeModel::id_to_token(int32_t id) const {
  if (id < 0 || id >= id_bound() || id_spans_[id].second == kNoToken) return std::nullopt;
  return std::string_view(id_arena_.data() + id_spans_[id].first, id_spans_[id].second);
}

// HF BPE::merge_word before merge_all: one symbol per character (per byte in byte-level mode),
// with byte fallback, unk and fuse_unk exactly as the reference orders them.
Status BpeModel::initial_symbols(std::string_view word, std::vector<Symbol>* syms) const {
  auto push = [&](int32_t id, int32_t len) {
    int32_t n = static_cast<int32_t>(syms->size());
    if (n > 0) (*syms)[n - 1].next = n;
    syms->push_back({id, n - 1, -1, len});
  };
  if (byte_level_ && simple_units_) {
    bool all_known = true;
    for (unsigned char b : word) all_known &= byte_ids_[b] >= 0;
    if (all_known) {
      for (unsigned char b : word) push(byte_ids_[b], 1);
      return Status::ok();
    }
  }
  int32_t unk_pending = -1;  // length of a pending unk symbol, -1 when none
  std::string unit;
  for (size_t i = 0; i < word.size();) {
    size_t len = byte_level_ ? 1 : utf8_seq_len(static_cast<uint8_t>(word[i]));
    bool first = i == 0, last = i + len >= word.size();
    unit.clear();
    if (!first) unit += raw_prefix_;
    unit.append(word.substr(i, len));
    if (last) unit += raw_suffix_;
    i += len;
    int32_t id = find_unit(unit);
    if (id >= 0) {
      if (unk_pending >= 0) push(unk_id_, unk_pending);
      unk_pending = -1;
      push(id, static_cast<int32_t>(len));
      continue;
    }
    if (opts_.byte_fallback) {
      std::string in_file = byte_level_ ? map_byte_level(unit) : unit;
      std::vector<int32_t> ids;
      for (unsigned char b : in_file) {
        int32_t bid = vocab_.find(strformat("<0x%02X>", b));
        if (bid < 0) break;
        ids.push_back(bid);
      }
      if (ids.size() == in_file.size()) {  // HF leaves a pending unk where it is here
        for (int32_t bid : ids) push(bid, 1);
        continue;
      }
    }
    if (!opts_.unk_token) continue;  // no unk token: the character is dropped, as in HF
    if (unk_id_ < 0)
      return invalid_argument(strformat("unk token '%s' is not in the vocabulary", opts_.unk_token->c_str()));
    if (unk_pending >= 0 && opts_.fuse_unk) {
      unk_pending += static_cast<int32_t>(len);
    } else {
      if (unk_pending >= 0) push(unk_id_, unk_pending);
      unk_pending = static_cast<int32_t>(len);
    }
  }
  if (unk_pending >= 0) push(unk_id_, unk_pending);
  return Status::ok();
}

// HF Word::merge_all: repeatedly apply the lowest-rank merge, leftmost first, via a heap of
// candidate pairs; stale entries are skipped when popped.
void BpeModel::merge_all(std::vector<Symbol>* syms_ptr) const {
  std::vector<Symbol>& syms = *syms_ptr;
  struct Cand {
    int32_t rank, pos, new_id;
    bool operator<(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }  // min-heap
  };
  thread_local std::vector<Cand> heap;  // std::push_heap/pop_heap, reused across calls
  heap.clear();
  for (size_t i = 0; i + 1 < syms.size(); ++i) {
    if (const PairMap::Value* m = merges_.find(syms[i].id, syms[i + 1].id))
      heap.push_back({m->rank, static_cast<int32_t>(i), m->id});
  }
  std::make_heap(heap.begin(), heap.end());
  auto push = [&](Cand c) {
    heap.push_back(c);
    std::push_heap(heap.begin(), heap.end());
  };
  while (!heap.empty()) {
    std::pop_heap(heap.begin(), heap.end());
    Cand top = heap.back();
    heap.pop_back();
    Symbol& left = syms[top.pos];
    if (left.len == 0 || left.next < 0) continue;
    const Symbol right = syms[left.next];
    const PairMap::Value* m = merges_.find(left.id, right.id);
    if (m == nullptr || m->id != top.new_id) continue;
    left.id = top.new_id;
    left.len += right.len;
    syms[left.next].len = 0;
    left.next = right.next;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const PairMap::Value* pm = merges_.find(syms[left.prev].id, left.id)) push({pm->rank, left.prev, pm->id});
    }
    if (left.next >= 0) {
      if (const PairMap::Value* nm = merges_.find(left.id, syms[left.next].id)) push({nm->rank, top.pos, nm->id});
    }
  }
}

Status BpeModel::bpe_word(std::string_view word, std::vector<int32_t>* out) const {
  WordCache* cache = nullptr;
  if (word.size() <= kCacheMaxWordLen) {
    cache = &cache_for(cache_id_);
    auto it = cache->words.find(word);
    if (it != cache->words.end()) {
      out->insert(out->end(), it->second.begin(), it->second.end());
      return Status::ok();
    }
  }
  thread_local std::vector<Symbol> syms;
  syms.clear();
  NB_RETURN_IF_ERROR(initial_symbols(word, &syms));
  merge_all(&syms);
  const size_t start = out->size();
  for (const Symbol& s : syms) {
    if (s.len != 0) out->push_back(s.id);
  }
  if (cache != nullptr) {
    if (cache->words.size() >= kCacheWords) cache->words.clear();
    cache->words.emplace(std::string(word), std::vector<int32_t>(out->begin() + static_cast<std::ptrdiff_t>(start), out->end()));
  }
  return Status::ok();
}

Status BpeModel::tokenize(std::string_view word, std::vector<int32_t>* out) const {
  if (word.empty()) return Status::ok();
  if (opts_.ignore_merges) {
    if (int32_t id = find_unit(word); id >= 0) {
      out->push_back(id);
      return Status::ok();
    }
  }
  if (segment_marker_.empty() || word.size() <= kCacheMaxWordLen) return bpe_word(word, out);
  // Split before each marker that follows another character.
  const std::string_view m = segment_marker_;
  size_t begin = 0;
  for (size_t p = word.find(m, 1); p != std::string_view::npos; p = word.find(m, p + m.size())) {
    if (p >= m.size() && word.compare(p - m.size(), m.size(), m) == 0) continue;  // inside a run of markers
    NB_RETURN_IF_ERROR(bpe_word(word.substr(begin, p - begin), out));
    begin = p;
  }
  return bpe_word(word.substr(begin), out);
}

}  // namespace nb::tok
