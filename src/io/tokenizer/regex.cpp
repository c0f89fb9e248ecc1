#include "io/tokenizer/regex.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "io/tokenizer/unicode.h"

namespace nb::tok {
namespace {

#include "io/tokenizer/unicode_extras.inc"

// Unicode White_Space, as class items.
constexpr const char* kWhiteSpaceItems =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

template <size_t N>
std::string range_items(const char32_t (&ranges)[N][2]) {
  std::string s;
  for (const auto& r : ranges) {
    if (r[0] == 0 && r[1] == 0) continue;
    s += strformat("\\x{%X}", static_cast<unsigned>(r[0]));
    if (r[1] != r[0]) s += strformat("-\\x{%X}", static_cast<unsigned>(r[1]));
  }
  return s;
}

// Class items that Oniguruma has and PCRE2 lacks for the general category `name`, or nullptr
// when nibble knows of no difference for that property.
const std::string* extra_items(std::string_view name) {
  static const std::string kL = range_items(kExtraL), kN = range_items(kExtraN), kP = range_items(kExtraP),
                           kS = range_items(kExtraS), kM = range_items(kExtraM);
  if (name == "L") return &kL;
  if (name == "N") return &kN;
  if (name == "P") return &kP;
  if (name == "S") return &kS;
  if (name == "M") return &kM;
  return nullptr;
}

// Rewrites one escape starting at p[i] == '\\'; advances i past it.
void rewrite_escape(std::string_view p, size_t& i, bool in_class, std::string& out) {
  if (i + 1 >= p.size()) { out += p[i++]; return; }
  const char c = p[i + 1];
  if (c == 's' || (c == 'S' && !in_class)) {
    const char* open = c == 's' ? "[" : "[^";
    out += in_class ? std::string(kWhiteSpaceItems) : std::string(open) + kWhiteSpaceItems + "]";
    i += 2;
    return;
  }
  if (c == 'h' || (c == 'H' && !in_class)) {
    out += in_class ? "0-9a-fA-F" : (c == 'h' ? "[0-9a-fA-F]" : "[^0-9a-fA-F]");
    i += 2;
    return;
  }
  if (c == 'p' || c == 'P') {
    size_t end = i + 2;
    std::string_view name;
    if (end < p.size() && p[end] == '{') {
      size_t close = p.find('}', end);
      if (close != std::string_view::npos) {
        name = p.substr(end + 1, close - end - 1);
        end = close + 1;
      }
    } else if (end < p.size()) {
      name = p.substr(end, 1);
      end += 1;
    }
    const std::string* extra = extra_items(name);
    std::string_view original = p.substr(i, end - i);
    if (extra && (c == 'p' || !in_class)) {
      std::string items = "\\p{" + std::string(name) + "}" + *extra;
      out += in_class ? items : (c == 'p' ? "[" : "[^") + items + "]";
    } else {
      out += original;
    }
    i = end;
    return;
  }
  // Any other escape: copy the backslash and the whole (possibly multi-byte) next character.
  size_t len = 1 + utf8_seq_len(static_cast<uint8_t>(c));
  out += p.substr(i, len);
  i += len;
}

}  // namespace

std::string regex_escape(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    bool plain = u >= 0x80 || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
    if (!plain) out += '\\';
    out += c;
  }
  return out;
}

std::string oniguruma_to_pcre2(std::string_view p) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  size_t class_start = 0;  // index in p just after '[' or '[^'
  for (size_t i = 0; i < p.size();) {
    const char c = p[i];
    if (c == '\\') {
      rewrite_escape(p, i, in_class, out);
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      ++i;
      if (i < p.size() && p[i] == '^') out += p[i++];
      class_start = i;
      continue;
    }
    if (in_class && c == ']' && i != class_start) in_class = false;  // a leading ']' is literal
    out += c;
    ++i;
  }
  return out;
}

struct Regex::Code {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Code() { pcre2_code_free(code); }
};

Result<Regex> Regex::compile(std::string_view pattern, const std::string& source) {
  std::string pcre = oniguruma_to_pcre2(pattern);
  int err = 0;
  PCRE2_SIZE err_off = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pcre.data()), pcre.size(), PCRE2_UTF | PCRE2_UCP,
                                   &err, &err_off, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof(msg));
    return format_error(strformat("%s: cannot compile regex '%.*s': %s (at offset %zu of the PCRE2 form)", source.c_str(),
                                  static_cast<int>(pattern.size()), pattern.data(), reinterpret_cast<char*>(msg),
                                  static_cast<size_t>(err_off)));
  }
  auto c = std::make_shared<Code>();
  c->code = code;
  c->jit = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  Regex r;
  r.code_ = std::move(c);
  r.pattern_ = std::string(pattern);
  return r;
}

Result<Regex> Regex::literal(std::string_view text, const std::string& source) {
  if (text.empty()) return compile("", source);  // the empty pattern matches between characters
  Regex r;
  r.pattern_ = regex_escape(text);
  r.literal_ = std::string(text);
  r.is_literal_ = true;
  return r;
}

namespace {
// Per-thread match state: a one-pair match data block and a JIT stack large enough for long
// runs such as 100k spaces against \s+(?!\S).
struct MatchState {
  pcre2_match_data* data = pcre2_match_data_create(1, nullptr);
  pcre2_match_context* context = pcre2_match_context_create(nullptr);
  pcre2_jit_stack* stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
  MatchState() { pcre2_jit_stack_assign(context, nullptr, stack); }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};
}  // namespace

Status Regex::find_all(std::string_view text, std::vector<std::pair<size_t, size_t>>* out) const {
  out->clear();
  if (is_literal_) {
    for (size_t p = text.find(literal_); p != std::string_view::npos; p = text.find(literal_, p + literal_.size()))
      out->emplace_back(p, p + literal_.size());
    return Status::ok();
  }
  thread_local MatchState st;
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t last_end = 0;
  bool have_last = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    int rc = code_->jit ? pcre2_jit_match(code_->code, subject, text.size(), last_end, 0, st.data, st.context)
                        : pcre2_match(code_->code, subject, text.size(), last_end, PCRE2_NO_UTF_CHECK, st.data,
                                      st.context);
    if (rc == PCRE2_ERROR_NOMATCH) break;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof(msg));
      return internal_error(strformat("regex '%s' failed at byte %zu of a %zu-byte text: %s", pattern_.c_str(), last_end,
                                      text.size(), reinterpret_cast<char*>(msg)));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.data);
    size_t s = ov[0], e = ov[1];
    if (s == e && have_last && last_match_end == e) {
      // An empty match right after the previous match: step one character and retry.
      if (last_end >= text.size()) break;
      last_end += utf8_seq_len(static_cast<uint8_t>(text[last_end]));
      continue;
    }
    out->emplace_back(s, e);
    have_last = true;
    last_match_end = e;
    if (e == s) {
      if (e >= text.size()) break;
      last_end = e + utf8_seq_len(static_cast<uint8_t>(text[e]));
    } else {
      last_end = e;
    }
  }
  return Status::ok();
}

}  // namespace nb::tok
