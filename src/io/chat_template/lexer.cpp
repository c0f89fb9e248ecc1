#include "io/chat_template/lexer.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "io/chat_template/unicode.h"

namespace nb::jinja {

// ---- positions -------------------------------------------------------------------------------

std::string SourceInfo::where(uint32_t pos) const {
  return strformat("chat template '%s' ", name.c_str()) + line_column(pos);
}

std::string SourceInfo::line_column(uint32_t pos) const {
  size_t line = 1, line_start = 0;
  for (size_t i = 0; i < pos && i < text.size(); ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  size_t end = std::min<size_t>(pos, text.size());
  size_t column = utf8_length(std::string_view(text).substr(line_start, end - line_start)) + 1;
  return strformat("line %zu, column %zu", line, column);
}

Status SourceInfo::parse_error(uint32_t pos, const std::string& message) const {
  return format_error(where(pos) + ": " + message);
}

Status SourceInfo::render_error(uint32_t pos, const std::string& message) const {
  return invalid_argument(where(pos) + ": " + message);
}

std::string normalize_template_source(const std::string& source) {
  std::string out;
  out.reserve(source.size());
  for (size_t i = 0; i < source.size(); ++i) {
    if (source[i] == '\r') {
      out += '\n';
      if (i + 1 < source.size() && source[i + 1] == '\n') ++i;
    } else {
      out += source[i];
    }
  }
  if (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

namespace {

bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_name_start(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool is_name_char(char c) { return is_name_start(c) || is_digit(c); }

// Decodes the code point at s[i] (1 byte for invalid UTF-8) and its byte length.
char32_t code_point_at(const std::string& s, size_t i, size_t* len) {
  size_t n = 1;
  unsigned char c = static_cast<unsigned char>(s[i]);
  if (c >= 0xC0) n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
  if (i + n > s.size()) n = 1;
  std::u32string cps = utf8_decode(std::string_view(s).substr(i, n));
  *len = cps.size() == 1 ? n : 1;
  return cps[0];
}

// Python's str.rstrip() with no arguments.
std::string py_rstrip(const std::string& text) {
  std::u32string cps = utf8_decode(text);
  size_t end = cps.size();
  while (end > 0 && py_isspace(cps[end - 1])) --end;
  return utf8_encode(std::u32string_view(cps).substr(0, end));
}

bool all_space(std::string_view text) {
  if (text.empty()) return false;
  for (char32_t c : utf8_decode(text))
    if (!py_isspace(c)) return false;
  return true;
}

class Lexer {
 public:
  explicit Lexer(const SourceInfo& src) : src_(src), s_(src.text) {}

  Result<std::vector<Token>> run() {
    while (pos_ < s_.size()) {
      size_t i = find_tag_start(pos_);
      if (i == std::string::npos) {
        emit_data(s_.substr(pos_), pos_);
        pos_ = s_.size();
        break;
      }
      NB_RETURN_IF_ERROR(lex_tag_at(i));
    }
    Token eof;
    eof.type = Tok::kEof;
    eof.pos = static_cast<uint32_t>(s_.size());
    out_.push_back(eof);
    return std::move(out_);
  }

 private:
  size_t find_tag_start(size_t from) const {
    for (size_t i = s_.find('{', from); i != std::string::npos; i = s_.find('{', i + 1)) {
      if (i + 1 < s_.size() && (s_[i + 1] == '{' || s_[i + 1] == '%' || s_[i + 1] == '#')) return i;
    }
    return std::string::npos;
  }

  void emit_data(std::string text, size_t pos) {
    if (text.empty()) return;
    Token t;
    t.type = Tok::kData;
    t.pos = static_cast<uint32_t>(pos);
    t.value = std::move(text);
    out_.push_back(std::move(t));
  }

  void emit(Tok type, size_t pos, std::string value = "") {
    Token t;
    t.type = type;
    t.pos = static_cast<uint32_t>(pos);
    t.value = std::move(value);
    out_.push_back(std::move(t));
  }

  // The text before a tag loses trailing whitespace for `-`, or (lstrip_blocks) the spaces that
  // precede a block or comment tag on its own line, unless the tag says `+`.
  std::string strip_text(std::string text, char sign, bool lstrip_applies) const {
    if (sign == '-') return py_rstrip(text);
    if (sign == '+' || !lstrip_applies) return text;
    size_t nl = text.rfind('\n');
    size_t l_pos = nl == std::string::npos ? 0 : nl + 1;
    if ((l_pos > 0 || line_starting_) && all_space(std::string_view(text).substr(l_pos))) text.resize(l_pos);
    return text;
  }

  Status lex_tag_at(size_t i) {
    char kind = s_[i + 1];
    size_t p = i + 2;
    char sign = (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ? s_[p] : 0;
    size_t raw_end = 0;
    bool raw = kind == '%' && match_raw_begin(i, &raw_end);
    emit_data(strip_text(s_.substr(pos_, i - pos_), sign, kind != '{'), pos_);
    if (raw) {
      pos_ = raw_end;
      line_starting_ = s_[raw_end - 1] == '\n';
      return lex_raw_body(i);
    }
    pos_ = p + (sign ? 1 : 0);
    if (kind == '#') return lex_comment(i);
    return lex_tag(kind == '%', i);
  }

  size_t skip_space(size_t p) const {
    while (p < s_.size()) {
      size_t len = 1;
      if (!py_isspace(code_point_at(s_, p, &len))) break;
      p += len;
    }
    return p;
  }

  // `{%[-+]? raw [-]?%}` at i; *end receives the position after it (and after `-%}`'s whitespace).
  bool match_raw_begin(size_t i, size_t* end) const {
    size_t p = i + 2;
    if (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ++p;
    p = skip_space(p);
    if (s_.compare(p, 3, "raw") != 0) return false;
    p = skip_space(p + 3);
    if (s_.compare(p, 3, "-%}") == 0) {
      *end = skip_space(p + 3);
      return true;
    }
    if (s_.compare(p, 2, "%}") == 0) {
      *end = p + 2;
      return true;
    }
    return false;
  }

  // Matches a block end at p: `+%}`, `-%}` plus whitespace, or `%}` plus one newline.
  bool match_block_end(size_t p, size_t* end) const {
    if (s_.compare(p, 3, "+%}") == 0) {
      *end = p + 3;
    } else if (s_.compare(p, 3, "-%}") == 0) {
      *end = skip_space(p + 3);
    } else if (s_.compare(p, 2, "%}") == 0) {
      *end = p + 2;
      if (*end < s_.size() && s_[*end] == '\n') ++*end;  // trim_blocks
    } else {
      return false;
    }
    return true;
  }

  Status lex_raw_body(size_t start) {
    for (size_t j = s_.find("{%", pos_); j != std::string::npos; j = s_.find("{%", j + 1)) {
      size_t p = j + 2;
      char sign = (p < s_.size() && (s_[p] == '-' || s_[p] == '+')) ? s_[p] : 0;
      p = skip_space(p + (sign ? 1 : 0));
      if (s_.compare(p, 6, "endraw") != 0) continue;
      size_t end = 0;
      if (!match_block_end(skip_space(p + 6), &end)) continue;
      emit_data(strip_text(s_.substr(pos_, j - pos_), sign, true), pos_);
      pos_ = end;
      line_starting_ = s_[end - 1] == '\n';
      return Status::ok();
    }
    return src_.parse_error(static_cast<uint32_t>(start), "missing end of raw directive ({% endraw %})");
  }

  Status lex_comment(size_t start) {
    for (size_t j = pos_; j < s_.size(); ++j) {
      size_t end = 0;
      if (s_.compare(j, 3, "+#}") == 0) {
        end = j + 3;
      } else if (s_.compare(j, 3, "-#}") == 0) {
        end = skip_space(j + 3);
      } else if (s_.compare(j, 2, "#}") == 0) {
        end = j + 2;
        if (end < s_.size() && s_[end] == '\n') ++end;
      } else {
        continue;
      }
      pos_ = end;
      line_starting_ = s_[end - 1] == '\n';
      return Status::ok();
    }
    return src_.parse_error(static_cast<uint32_t>(start), "missing end of comment tag '#}'");
  }

  // Inside {{ }} or {% %}: tokens until the end delimiter (only recognised outside brackets).
  Status lex_tag(bool block, size_t start) {
    emit(block ? Tok::kBlockBegin : Tok::kVarBegin, start);
    std::vector<char> balance;
    while (true) {
      if (pos_ >= s_.size())
        return src_.parse_error(static_cast<uint32_t>(start),
                                strformat("unexpected end of template: tag is not closed with '%s'",
                                          block ? "%}" : "}}"));
      size_t end = 0;
      if (balance.empty() && (block ? match_block_end(pos_, &end) : match_var_end(pos_, &end))) {
        emit(block ? Tok::kBlockEnd : Tok::kVarEnd, pos_);
        pos_ = end;
        line_starting_ = s_[end - 1] == '\n';
        return Status::ok();
      }
      size_t after_space = skip_space(pos_);
      if (after_space != pos_) {
        pos_ = after_space;
        continue;
      }
      NB_RETURN_IF_ERROR(lex_token(balance));
    }
  }

  bool match_var_end(size_t p, size_t* end) const {
    if (s_.compare(p, 3, "-}}") == 0) {
      *end = skip_space(p + 3);
      return true;
    }
    if (s_.compare(p, 2, "}}") == 0) {
      *end = p + 2;
      return true;
    }
    return false;
  }

  Status lex_token(std::vector<char>& balance) {
    char c = s_[pos_];
    if (is_digit(c)) {
      if (lex_float()) return Status::ok();
      return lex_int();
    }
    if (is_name_start(c)) {
      size_t b = pos_;
      while (pos_ < s_.size() && is_name_char(s_[pos_])) ++pos_;
      emit(Tok::kName, b, s_.substr(b, pos_ - b));
      return Status::ok();
    }
    if (c == '\'' || c == '"') return lex_string();
    return lex_operator(balance);
  }

  // (\d+_)*\d+ at p; returns the end, or p when there is no digit.
  size_t scan_digits(size_t p) const {
    size_t q = p;
    while (q < s_.size() && is_digit(s_[q])) ++q;
    if (q == p) return p;
    while (q + 1 < s_.size() && s_[q] == '_' && is_digit(s_[q + 1])) {
      ++q;
      while (q < s_.size() && is_digit(s_[q])) ++q;
    }
    return q;
  }

  size_t scan_exponent(size_t p) const {
    if (p >= s_.size() || (s_[p] != 'e' && s_[p] != 'E')) return p;
    size_t q = p + 1;
    if (q < s_.size() && (s_[q] == '+' || s_[q] == '-')) ++q;
    size_t d = scan_digits(q);
    return d == q ? p : d;
  }

  size_t scan_fraction(size_t p) const {
    if (p >= s_.size() || s_[p] != '.') return p;
    size_t d = scan_digits(p + 1);
    return d == p + 1 ? p : d;
  }

  // jinja2's float_re: digits ((.digits)? e[+-]?digits | .digits), never right after a '.'.
  bool lex_float() {
    if (pos_ > 0 && s_[pos_ - 1] == '.') return false;
    size_t b = pos_, ip = scan_digits(pos_);
    size_t frac = scan_fraction(ip);
    size_t end = ip;
    if (frac != ip && scan_exponent(frac) != frac) end = scan_exponent(frac);
    else if (scan_exponent(ip) != ip) end = scan_exponent(ip);
    else if (frac != ip) end = frac;
    if (end == ip) return false;
    std::string text;
    for (size_t i = b; i < end; ++i)
      if (s_[i] != '_') text += s_[i];
    Token t;
    t.type = Tok::kFloat;
    t.pos = static_cast<uint32_t>(b);
    t.value = s_.substr(b, end - b);
    t.float_value = std::strtod(text.c_str(), nullptr);
    out_.push_back(std::move(t));
    pos_ = end;
    return true;
  }

  Status lex_int() {
    size_t b = pos_;
    int base = 10;
    size_t digits_from = pos_;
    char x = pos_ + 1 < s_.size() ? static_cast<char>(s_[pos_ + 1] | 0x20) : 0;
    auto valid = [&](char ch) {
      ch = static_cast<char>(ch | 0x20);
      if (base == 2) return ch == '0' || ch == '1';
      if (base == 8) return ch >= '0' && ch <= '7';
      return is_digit(ch) || (ch >= 'a' && ch <= 'f');
    };
    if (s_[pos_] == '0' && (x == 'b' || x == 'o' || x == 'x') && pos_ + 2 < s_.size()) {
      base = x == 'b' ? 2 : x == 'o' ? 8 : 16;
      size_t q = pos_ + 2;
      if (s_[q] == '_') ++q;
      if (q < s_.size() && valid(s_[q])) digits_from = pos_ + 2;
      else base = 10;
    }
    size_t end;
    if (base != 10) {
      end = digits_from;
      while (end < s_.size() && (valid(s_[end]) || (s_[end] == '_' && end + 1 < s_.size() && valid(s_[end + 1]))))
        ++end;
    } else if (s_[pos_] == '0') {
      end = pos_ + 1;
      while (end < s_.size() && (s_[end] == '0' || (s_[end] == '_' && end + 1 < s_.size() && s_[end + 1] == '0')))
        ++end;
    } else {
      end = scan_digits(pos_);
    }
    std::string text;
    for (size_t i = digits_from; i < end; ++i)
      if (s_[i] != '_') text += s_[i];
    errno = 0;
    char* stop = nullptr;
    long long v = std::strtoll(text.c_str(), &stop, base);
    if (errno == ERANGE) return src_.parse_error(static_cast<uint32_t>(b), "integer literal too large: " + s_.substr(b, end - b));
    Token t;
    t.type = Tok::kInt;
    t.pos = static_cast<uint32_t>(b);
    t.value = s_.substr(b, end - b);
    t.int_value = v;
    out_.push_back(std::move(t));
    pos_ = end;
    return Status::ok();
  }

  Status lex_string();
  Status lex_operator(std::vector<char>& balance);

  const SourceInfo& src_;
  const std::string& s_;
  size_t pos_ = 0;
  bool line_starting_ = true;
  std::vector<Token> out_;
};

// Python's "unicode-escape" decoding of a string literal's body.
Result<std::string> unescape(const std::string& body, const SourceInfo& src, size_t pos) {
  std::string out;
  for (size_t i = 0; i < body.size(); ++i) {
    if (body[i] != '\\' || i + 1 >= body.size()) {
      out += body[i];
      continue;
    }
    char e = body[++i];
    auto hex = [&](size_t n) -> Result<char32_t> {
      char32_t v = 0;
      for (size_t k = 1; k <= n; ++k) {
        char h = i + k < body.size() ? static_cast<char>(body[i + k] | 0x20) : 0;
        if (!is_digit(h) && !(h >= 'a' && h <= 'f'))
          return src.parse_error(static_cast<uint32_t>(pos), strformat("truncated \\%c escape in string literal", e));
        v = v * 16 + static_cast<char32_t>(is_digit(h) ? h - '0' : h - 'a' + 10);
      }
      i += n;
      return v;
    };
    switch (e) {
      case '\n': break;
      case '\\': out += '\\'; break;
      case '\'': out += '\''; break;
      case '"': out += '"'; break;
      case 'a': out += '\a'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      case 'n': out += '\n'; break;
      case 'r': out += '\r'; break;
      case 't': out += '\t'; break;
      case 'v': out += '\v'; break;
      case 'x':
      case 'u':
      case 'U': {
        NB_ASSIGN_OR_RETURN(char32_t cp, hex(e == 'x' ? 2 : e == 'u' ? 4 : 8));
        if (cp > 0x10FFFF) return src.parse_error(static_cast<uint32_t>(pos), "illegal Unicode character in string literal");
        append_utf8(out, cp);
        break;
      }
      case 'N': return src.parse_error(static_cast<uint32_t>(pos), "unsupported \\N{...} escape in string literal");
      default:
        if (e >= '0' && e <= '7') {
          char32_t v = static_cast<char32_t>(e - '0');
          for (int k = 0; k < 2 && i + 1 < body.size() && body[i + 1] >= '0' && body[i + 1] <= '7'; ++k)
            v = v * 8 + static_cast<char32_t>(body[++i] - '0');
          append_utf8(out, v);
        } else {
          out += '\\';
          out += e;
        }
    }
  }
  return out;
}

Status Lexer::lex_string() {
  char q = s_[pos_];
  size_t b = pos_;
  for (size_t i = pos_ + 1; i < s_.size(); ++i) {
    if (s_[i] == '\\') {
      ++i;
      continue;
    }
    if (s_[i] == q) {
      NB_ASSIGN_OR_RETURN(std::string value, unescape(s_.substr(b + 1, i - b - 1), src_, b));
      emit(Tok::kString, b, std::move(value));
      pos_ = i + 1;
      return Status::ok();
    }
  }
  return src_.parse_error(static_cast<uint32_t>(b), "unterminated string literal");
}

Status Lexer::lex_operator(std::vector<char>& balance) {
  static const char* kTwo[] = {"//", "**", "==", "!=", ">=", "<="};
  for (const char* op : kTwo) {
    if (s_.compare(pos_, 2, op) == 0) {
      emit(Tok::kOp, pos_, op);
      pos_ += 2;
      return Status::ok();
    }
  }
  char c = s_[pos_];
  static const std::string kOne = "+-/*%~[](){}><=.:|,;";
  if (kOne.find(c) == std::string::npos) {
    size_t len = 1;
    char32_t cp = code_point_at(s_, pos_, &len);
    std::string shown;
    append_utf8(shown, cp);
    return src_.parse_error(static_cast<uint32_t>(pos_), "unexpected character '" + shown + "'");
  }
  if (c == '(' || c == '[' || c == '{') balance.push_back(c == '(' ? ')' : c == '[' ? ']' : '}');
  if (c == ')' || c == ']' || c == '}') {
    if (balance.empty()) return src_.parse_error(static_cast<uint32_t>(pos_), strformat("unexpected '%c'", c));
    if (balance.back() != c)
      return src_.parse_error(static_cast<uint32_t>(pos_), strformat("unexpected '%c', expected '%c'", c, balance.back()));
    balance.pop_back();
  }
  emit(Tok::kOp, pos_, std::string(1, c));
  ++pos_;
  return Status::ok();
}

}  // namespace

Result<std::vector<Token>> tokenize(const SourceInfo& src) {
  Lexer lexer(src);
  return lexer.run();
}

}  // namespace nb::jinja
