// The text of one generated sequence as it streams: incremental detokenization that never emits
// part of a UTF-8 character (StreamDecoder), stop ids whose text is left out, and stop strings.
//
// Stop strings: text that may still turn into a stop string is held back, so what was emitted never
// has to be taken back. When a stop string appears, the text ends just before it (or after it with
// include_stop), and the caller cancels the request.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "core/status.h"
#include "io/tokenizer/tokenizer.h"

namespace nb::serve {

// The earliest occurrence of any stop string in `text`: (position, index of the stop string), or
// (npos, -1). At equal positions the longest string wins.
std::pair<size_t, int> find_stop(std::string_view text, const std::vector<std::string>& stops);
// The length of the longest suffix of `text` that is a proper prefix of a stop string: the bytes
// that must be held back because more text may complete a stop string.
size_t stop_holdback(std::string_view text, const std::vector<std::string>& stops);

class TextStream {
 public:
  // stop_ids: tokens that end the generation; their text is not part of the output.
  TextStream(const Tokenizer& tokenizer, std::vector<std::string> stops, std::vector<int32_t> stop_ids,
             bool skip_special_tokens, bool include_stop);

  // Feeds one generated token; returns the text that became final (possibly empty). After a stop
  // string was found (stopped()), further tokens are ignored.
  Result<std::string> push(int32_t id);
  // End of the generation (length or stop id): the held-back text. A stop string completed by it
  // still stops (and trims) it.
  Result<std::string> finish();

  bool stopped() const { return stop_index_ >= 0; }
  // The stop string that ended the text ("" when none).
  const std::string& stop_string() const;
  bool hit_stop_id() const { return hit_stop_id_; }
  int32_t stop_id() const { return stop_id_; }

 private:
  // Emits pending_ up to the hold-back, or up to the stop string found in it.
  std::string release();

  StreamDecoder decoder_;
  std::vector<std::string> stops_;
  std::vector<int32_t> stop_ids_;
  bool include_stop_;
  std::string pending_;  // decoded, not yet emitted
  int stop_index_ = -1;
  bool hit_stop_id_ = false;
  int32_t stop_id_ = -1;
};

}  // namespace nb::serve
