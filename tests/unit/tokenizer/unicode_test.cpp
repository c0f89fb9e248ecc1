// Unicode layer: regex classes against Oniguruma's (as HF tokenizers uses it) over every code
// point, NFC against HF's NFC, lossy UTF-8 decoding and validation against ICU.
#include <gtest/gtest.h>
#include <unicode/utf8.h>
#include <unicode/ustring.h>

#include <random>

#include "io/tokenizer/regex.h"
#include "io/tokenizer/unicode.h"
#include "tokenizer_test_util.h"

namespace nb::test {
namespace {

using tok::append_utf8;

std::string utf8_of(char32_t c) {
  std::string s;
  append_utf8(s, c);
  return s;
}

// Every scalar value in order, and the code point starting at each byte offset.
struct AllCodePoints {
  std::string text;
  std::vector<char32_t> at_offset;
  AllCodePoints() {
    at_offset.reserve(4500000);
    for (char32_t c = 0; c < 0x110000; ++c) {
      if (c >= 0xD800 && c <= 0xDFFF) continue;
      size_t before = text.size();
      append_utf8(text, c);
      at_offset.resize(text.size(), 0);
      at_offset[before] = c;
    }
  }
};

TEST(UnicodeClasses, MatchOnigurumaOnEveryCodePoint) {
  static const AllCodePoints all;
  Json refs = read_json(tokenizer_data_dir() + "/refs/unicode_classes.json");
  ASSERT_GE(refs["classes"].size(), 13u);
  for (const auto& [cls, ranges] : refs["classes"].items()) {
    std::vector<bool> expected(0x110000, false);
    for (const Json& r : ranges)
      for (uint32_t c = r[0]; c <= r[1].get<uint32_t>(); ++c) expected[c] = true;
    auto re = tok::Regex::compile("(?:" + cls + ")+", "test");
    ASSERT_TRUE(re.is_ok()) << re.status().to_string();
    std::vector<std::pair<size_t, size_t>> m;
    ASSERT_TRUE(re->find_all(all.text, &m).is_ok());
    std::vector<bool> actual(0x110000, false);
    for (auto [s, e] : m) {
      for (size_t i = s; i < e; i += tok::utf8_seq_len(static_cast<uint8_t>(all.text[i]))) actual[all.at_offset[i]] = true;
    }
    int reported = 0;
    for (uint32_t c = 0; c < 0x110000; ++c) {
      if (expected[c] != actual[c] && reported++ < 5)
        ADD_FAILURE() << cls << ": U+" << std::hex << c << " expected " << expected[c] << ", PCRE2 form gives " << actual[c];
    }
  }
}

TEST(Nfc, MatchesReferenceOnEveryCodePoint) {
  Json refs = read_json(tokenizer_data_dir() + "/refs/nfc.json");
  std::vector<std::string> changed(0x110000);
  for (const Json& e : refs["changed_code_points"]) changed[e[0].get<uint32_t>()] = e[1].get<std::string>();
  ASSERT_GT(refs["changed_code_points"].size(), 1000u);
  int reported = 0;
  for (char32_t c = 0x80; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    std::string in = utf8_of(c);
    const std::string& want = changed[c].empty() ? in : changed[c];
    auto got = tok::unicode_normalize(in, tok::NormalForm::kNFC);
    ASSERT_TRUE(got.is_ok());
    if (*got != want && reported++ < 5) ADD_FAILURE() << "NFC(U+" << std::hex << static_cast<uint32_t>(c) << ")";
  }
  for (const Json& s : refs["strings"]) {
    auto got = tok::unicode_normalize(s["input"].get<std::string>(), tok::NormalForm::kNFC);
    ASSERT_TRUE(got.is_ok());
    EXPECT_EQ(*got, s["nfc"].get<std::string>()) << s["input"].dump();
  }
}

// ICU's UTF-8 -> UTF-16 conversion with U+FFFD substitution uses the same "maximal subpart"
// policy as Rust's from_utf8_lossy; it is the oracle for utf8_lossy and utf8_invalid_offset.
std::string icu_lossy(const std::string& bytes) {
  std::vector<UChar> u16(bytes.size() * 2 + 4);
  int32_t len = 0, subs = 0;
  UErrorCode err = U_ZERO_ERROR;
  u_strFromUTF8WithSub(u16.data(), static_cast<int32_t>(u16.size()), &len, bytes.data(), static_cast<int32_t>(bytes.size()), 0xFFFD, &subs, &err);
  EXPECT_TRUE(U_SUCCESS(err));
  std::string out(static_cast<size_t>(len) * 3 + 4, '\0');
  int32_t out_len = 0;
  u_strToUTF8(out.data(), static_cast<int32_t>(out.size()), &out_len, u16.data(), len, &err);
  out.resize(out_len);
  return out;
}

size_t icu_invalid_offset(const std::string& s) {
  int32_t i = 0, n = static_cast<int32_t>(s.size());
  while (i < n) {
    int32_t start = i;
    UChar32 c;
    U8_NEXT(reinterpret_cast<const uint8_t*>(s.data()), i, n, c);
    if (c < 0) return static_cast<size_t>(start);
  }
  return tok::kValidUtf8;
}

std::string random_bytes(std::mt19937& rng) {
  // Mostly plausible UTF-8 pieces, with lead bytes, continuation bytes and invalid bytes mixed in.
  static const std::vector<std::string> pieces = {"a", " ", "\xC3\xA9", "\xE4\xBD\xA0", "\xF0\x9F\x98\x80", "\xE2\x96\x81"};
  std::string s;
  int n = std::uniform_int_distribution<int>(0, 12)(rng);
  for (int i = 0; i < n; ++i) {
    int kind = std::uniform_int_distribution<int>(0, 3)(rng);
    if (kind == 0) s += pieces[rng() % pieces.size()];
    else if (kind == 1) s += static_cast<char>(0x80 + rng() % 0x40);
    else if (kind == 2) s += static_cast<char>(0xC0 + rng() % 0x40);
    else s += static_cast<char>(rng() % 256);
  }
  return s;
}

TEST(Utf8, LossyAndValidationMatchIcu) {
  std::random_device rd;
  const uint32_t seed = rd();
  std::mt19937 rng(seed);
  for (int i = 0; i < 20000; ++i) {
    std::string s = random_bytes(rng);
    ASSERT_EQ(tok::utf8_lossy(s), icu_lossy(s)) << "seed " << seed;
    ASSERT_EQ(tok::utf8_invalid_offset(s), icu_invalid_offset(s)) << "seed " << seed;
  }
}

TEST(Utf8, IncompleteTailOfValidText) {
  // Cutting valid text inside a character leaves an unfinished sequence of exactly the bytes
  // of that character already present; cutting at a boundary leaves none.
  const std::string text = "a\xC3\xA9\xE4\xBD\xA0\xF0\x9F\x98\x80z\xE2\x96\x81";
  size_t char_start = 0;
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    if (cut < text.size() && (static_cast<uint8_t>(text[cut]) & 0xC0) != 0x80) char_start = cut;
    size_t want = (cut == text.size() || (static_cast<uint8_t>(text[cut]) & 0xC0) != 0x80) ? 0 : cut - char_start;
    EXPECT_EQ(tok::utf8_incomplete_tail(text.substr(0, cut)), want) << "cut " << cut;
  }
  // A prefix that no continuation can complete is not "incomplete" (Unicode Table 3-7).
  EXPECT_EQ(tok::utf8_incomplete_tail("\xE0\x80"), 0u);      // overlong
  EXPECT_EQ(tok::utf8_incomplete_tail("\xED\xA0"), 0u);      // surrogate
  EXPECT_EQ(tok::utf8_incomplete_tail("\xF4\x90"), 0u);      // above U+10FFFF
  EXPECT_EQ(tok::utf8_incomplete_tail("\xC0"), 0u);          // never valid
  EXPECT_EQ(tok::utf8_incomplete_tail("x\xF0\x9F\x98"), 3u);
}

TEST(ByteLevel, AlphabetIsABijection) {
  std::vector<bool> seen(512, false);
  for (int b = 0; b < 256; ++b) {
    char32_t c = tok::byte_to_unicode()[b];
    ASSERT_LT(c, 512u);
    EXPECT_FALSE(seen[c]);
    seen[c] = true;
    EXPECT_EQ(tok::unicode_to_byte(c), b);
    // Printable Latin-1 maps to itself, everything else above U+00FF (GPT-2's bytes_to_unicode).
    EXPECT_EQ(c == static_cast<char32_t>(b), c < 256) << b;
  }
  EXPECT_EQ(tok::unicode_to_byte(0x20), -1);
  EXPECT_EQ(tok::unicode_to_byte(0x2581), -1);
}

}  // namespace
}  // namespace nb::test
