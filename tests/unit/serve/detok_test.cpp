// Streaming text with stop strings: nothing that could still become a stop string is emitted,
// stop strings spanning tokens are found and trimmed, partial UTF-8 is held back, stop ids leave
// no text, and the concatenation of what is emitted equals the full decode when nothing stops.
#include "serve/detok.h"

#include <gtest/gtest.h>

#include <random>

namespace nb::serve {
namespace {

const std::string kDemo = std::string(NIBBLE_SOURCE_DIR) + "/models/demo";

TEST(StopStrings, FindAndHoldback) {
  EXPECT_EQ(find_stop("hello world", {"wor", "lo"}), (std::pair<size_t, int>{3, 1}));
  EXPECT_EQ(find_stop("hello world", {"xyz"}).second, -1);
  EXPECT_EQ(find_stop("abcd", {"bc", "bcd"}), (std::pair<size_t, int>{1, 1}));  // same start: the longer
  EXPECT_EQ(stop_holdback("hello wo", {"world"}), 2u);
  EXPECT_EQ(stop_holdback("hello w", {"world", "xx"}), 1u);
  EXPECT_EQ(stop_holdback("hello", {"world"}), 0u);
  EXPECT_EQ(stop_holdback("aaa", {"aab"}), 2u);
  EXPECT_EQ(stop_holdback("abc", {}), 0u);
  EXPECT_EQ(stop_holdback("world", {"world"}), 0u);  // a whole stop string is found, not held
}

class TextStreamTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto t = Tokenizer::load(kDemo);
    ASSERT_TRUE(t.is_ok()) << t.status().to_string();
    tok_ = new Tokenizer(std::move(t).value());
  }
  static void TearDownTestSuite() { delete tok_; }

  std::vector<int32_t> encode(const std::string& text) {
    auto ids = tok_->encode(text, false);
    EXPECT_TRUE(ids.is_ok());
    return *ids;
  }
  // Feeds every id; returns the pieces (finish() last).
  std::vector<std::string> run(TextStream& s, const std::vector<int32_t>& ids) {
    std::vector<std::string> pieces;
    for (int32_t id : ids) {
      auto p = s.push(id);
      EXPECT_TRUE(p.is_ok());
      pieces.push_back(*p);
    }
    auto rest = s.finish();
    EXPECT_TRUE(rest.is_ok());
    pieces.push_back(*rest);
    return pieces;
  }
  static std::string join(const std::vector<std::string>& v) {
    std::string s;
    for (const auto& p : v) s += p;
    return s;
  }
  static Tokenizer* tok_;
};
Tokenizer* TextStreamTest::tok_ = nullptr;

TEST_F(TextStreamTest, StopStringAcrossTokensIsTrimmed) {
  // " Hello world. STOP here" -> " He" "ll" "o" " world" "." " S" "T" "O" "P" " here"
  const std::vector<int32_t> ids = encode(" Hello world. STOP here");
  ASSERT_EQ(ids.size(), 10u);
  TextStream s(*tok_, {"STOP"}, {}, true, false);
  std::string out;
  size_t tokens_until_stop = 0;
  for (int32_t id : ids) {
    auto p = s.push(id);
    ASSERT_TRUE(p.is_ok());
    out += *p;
    ++tokens_until_stop;
    // Emitted text never contains a prefix of the stop string at its end ("S", "ST", "STO").
    EXPECT_EQ(out.find(" S"), out.npos) << out;
    if (s.stopped()) break;
  }
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(tokens_until_stop, 9u);  // stopped at "P"
  EXPECT_EQ(out, " Hello world. ");
  EXPECT_EQ(s.stop_string(), "STOP");
  EXPECT_EQ(*s.push(ids.back()), "");  // ignored after the stop
  EXPECT_EQ(*s.finish(), "");
}

TEST_F(TextStreamTest, IncludeStop) {
  TextStream s(*tok_, {"world"}, {}, true, true);
  EXPECT_EQ(join(run(s, encode(" Hello world. STOP"))), " Hello world");
}

TEST_F(TextStreamTest, HeldPrefixIsReleasedWhenItDoesNotBecomeAStop) {
  TextStream s(*tok_, {"world peace"}, {}, true, false);
  const std::vector<std::string> pieces = run(s, encode(" Hello world. STOP"));
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(join(pieces), " Hello world. STOP");
  // "world" was held until "." showed it was not "world peace".
  EXPECT_EQ(pieces[3], " ");
  EXPECT_EQ(pieces[4], "world.");
}

TEST_F(TextStreamTest, StopInTheLastToken) {
  TextStream s(*tok_, {"here"}, {}, true, false);
  std::vector<std::string> pieces = run(s, encode(" Hello here"));
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(join(pieces), " Hello ");
}

TEST_F(TextStreamTest, PartialUtf8IsHeldBack) {
  // "é" is the byte-level tokens "Ã" (0xC3) and "©" (0xA9).
  const int32_t c3 = tok_->token_to_id("Ã"), a9 = tok_->token_to_id("©");
  ASSERT_GE(c3, 0);
  ASSERT_GE(a9, 0);
  TextStream s(*tok_, {}, {}, true, false);
  EXPECT_EQ(*s.push(c3), "");
  EXPECT_EQ(*s.push(a9), "\xC3\xA9");
  // A stop string that starts with a multi-byte character.
  TextStream t(*tok_, {"\xC3\xA9t\xC3\xA9"}, {}, true, false);
  const int32_t x = encode("x")[0];
  EXPECT_EQ(*t.push(x), "x");
  EXPECT_EQ(*t.push(c3), "");
  EXPECT_EQ(*t.push(a9), "");  // "é" may start "été"
  EXPECT_EQ(*t.push(x), "\xC3\xA9x");
}

TEST_F(TextStreamTest, StopIdsLeaveNoText) {
  const std::vector<int32_t> ids = encode(" Hello");
  TextStream s(*tok_, {}, {ids[1]}, true, false);
  EXPECT_EQ(*s.push(ids[0]), " He");
  EXPECT_EQ(*s.push(ids[1]), "");
  EXPECT_TRUE(s.hit_stop_id());
  EXPECT_EQ(s.stop_id(), ids[1]);
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(*s.push(ids[2]), "");  // nothing after a stop id
  EXPECT_EQ(*s.finish(), "");
}

TEST_F(TextStreamTest, SpecialTokensSkippedOrShown) {
  const std::vector<int32_t> ids = {tok_->token_to_id("<|im_start|>"), encode("x")[0]};
  TextStream skip(*tok_, {}, {}, true, false);
  EXPECT_EQ(join(run(skip, ids)), "x");
  TextStream show(*tok_, {}, {}, false, false);
  EXPECT_EQ(join(run(show, ids)), "<|im_start|>x");
}

TEST_F(TextStreamTest, RandomIdsConcatenateToTheFullDecode) {
  // Any ids (invalid UTF-8 runs included) stream to exactly decode() of the whole, with or without
  // stop strings that never occur.
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> pick(3, tok_->vocab_size() - 1);
  for (int trial = 0; trial < 50; ++trial) {
    std::vector<int32_t> ids(40);
    for (int32_t& id : ids) id = pick(rng);
    auto full = tok_->decode(ids, true);
    ASSERT_TRUE(full.is_ok());
    std::vector<std::string> stops = {"\x01\x02never"};
    TextStream s(*tok_, trial % 2 ? stops : std::vector<std::string>{}, {}, true, false);
    EXPECT_EQ(join(run(s, ids)), *full) << "trial " << trial;
  }
}

}  // namespace
}  // namespace nb::serve
