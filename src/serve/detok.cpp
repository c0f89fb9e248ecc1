#include "serve/detok.h"

#include <algorithm>

namespace nb::serve {

std::pair<size_t, int> find_stop(std::string_view text, const std::vector<std::string>& stops) {
  size_t best = std::string_view::npos;
  int which = -1;
  for (size_t i = 0; i < stops.size(); ++i) {
    if (stops[i].empty()) continue;
    const size_t pos = text.find(stops[i]);
    if (pos == std::string_view::npos) continue;
    if (pos < best || (pos == best && stops[i].size() > stops[which].size())) {
      best = pos;
      which = static_cast<int>(i);
    }
  }
  return {best, which};
}

size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops) {
  size_t hold = 0;
  for (const std::string& s : stops) {
    if (s.empty()) continue;
    // Proper prefixes of s, longest first, that end `text`.
    for (size_t k = std::min(s.size() - 1, text.size()); k > hold; --k) {
      if (text.compare(text.size() - k, k, s, 0, k) == 0) {
        hold = k;
        break;
      }
    }
  }
  return hold;
}

TextStream::TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops, std::vector<int32_t> stop_ids,
                       bool skip_special_tokens, bool include_stop)
    : decoder_(tokenizer, skip_special_tokens),
      stops_(std::move(stops)),
      stop_ids_(std::move(stop_ids)),
      include_stop_(include_stop) {}

const std::string& TextStream::stop_string() const {
  static const std::string kNone;
  return stop_index_ >= 0 ? stops_[static_cast<size_t>(stop_index_)] : kNone;
}

std::string TextStream::release() {
  auto [pos, which] = find_stop(pending_, stops_);
  if (which >= 0) {
    stop_index_ = which;
    const size_t end = include_stop_ ? pos + stops_[static_cast<size_t>(which)].size() : pos;
    std::string out = pending_.substr(0, end);
    pending_.clear();
    return out;
  }
  // pending_ is whole UTF-8 characters and a stop string starts with a lead byte, so the cut
  // below falls between characters.
  const size_t keep = stop_holdback(pending_, stops_);
  std::string out = pending_.substr(0, pending_.size() - keep);
  pending_.erase(0, pending_.size() - keep);
  return out;
}

Result<std::string> TextStream::push(int32_t id) {
  if (stopped() || hit_stop_id_) return std::string();
  if (std::find(stop_ids_.begin(), stop_ids_.end(), id) != stop_ids_.end()) {
    hit_stop_id_ = true;
    stop_id_ = id;
    return std::string();
  }
  NB_ASSIGN_OR_RETURN(std::string piece, decoder_.step(id));
  pending_ += piece;
  return release();
}

Result<std::string> TextStream::finish() {
  // After a stop id the decoder still holds what came before it (a partial UTF-8 character).
  if (stopped()) return std::string();
  NB_ASSIGN_OR_RETURN(std::string rest, decoder_.flush());
  pending_ += rest;
  std::string out = release();
  out += pending_;  // no stop string can follow any more
  pending_.clear();
  return out;
}

}  // namespace nb::serve
