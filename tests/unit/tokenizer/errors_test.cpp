// Bad inputs give clear errors (naming the file, JSON path, type or byte offset) and never crash.
#include <gtest/gtest.h>

#include <random>

#include "io/tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace nb::test {
namespace {

// A minimal valid byte-level BPE tokenizer.json that each test breaks in one place.
Json minimal() {
  return Json::parse(R"({
    "version": "1.0",
    "added_tokens": [{"id": 3, "content": "<s>", "single_word": false, "lstrip": false, "rstrip": false,
                      "normalized": false, "special": true}],
    "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
    "post_processor": null,
    "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
  })");
}

Status load(const Json& j) {
  auto t = Tokenizer::from_json(j.dump(), "", "tok.json");
  return t.is_ok() ? Status::ok() : t.status();
}

void expect_error(const Status& s, ErrorCode code, std::vector<std::string> needles) {
  ASSERT_FALSE(s.is_ok());
  EXPECT_EQ(s.code(), code) << s.to_string();
  for (const std::string& n : needles) EXPECT_NE(s.message().find(n), std::string::npos) << "'" << n << "' not in: " << s.message();
}

TEST(TokenizerErrors, MinimalLoads) {
  auto t = Tokenizer::from_json(minimal().dump());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  // BPE by definition: "a" + "b" merge into "ab"; "<s>" is matched as one added token.
  EXPECT_EQ(t->encode("ab<s>ba").value(), (std::vector<int32_t>{2, 3, 1, 0}));
}

TEST(TokenizerErrors, MalformedJson) {
  auto t = Tokenizer::from_json(R"({"model": {"type": "BPE", "vocab": {"a": 0}, )", "", "bad.json");
  expect_error(t.status(), ErrorCode::kFormat, {"bad.json", "invalid JSON"});
  expect_error(Tokenizer::from_json("[1, 2]", "", "arr.json").status(), ErrorCode::kFormat, {"arr.json", "object"});
  expect_error(Tokenizer::from_json("", "", "empty.json").status(), ErrorCode::kFormat, {"empty.json"});
}

TEST(TokenizerErrors, UnsupportedModels) {
  Json j = minimal();
  j["model"]["type"] = "WordPiece";
  expect_error(load(j), ErrorCode::kUnsupported, {"tok.json", "model.type", "WordPiece"});
  j = minimal();
  j["model"] = Json::parse(R"({"type": "Unigram", "unk_id": 0, "vocab": [["<unk>", 0.0], ["a", -1.0]]})");
  expect_error(load(j), ErrorCode::kUnsupported, {"model.type", "Unigram"});
  j = minimal();
  j["model"]["dropout"] = 0.1;
  expect_error(load(j), ErrorCode::kUnsupported, {"model.dropout"});
}

TEST(TokenizerErrors, UnknownStagesNameTheirPath) {
  Json j = minimal();
  j["normalizer"] = Json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]})");
  expect_error(load(j), ErrorCode::kUnsupported, {"normalizer.normalizers[1].type", "Lowercase"});
  j = minimal();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}]})");
  expect_error(load(j), ErrorCode::kUnsupported, {"pre_tokenizer.pretokenizers[0].type", "Whitespace"});
  j = minimal();
  j["decoder"] = Json::parse(R"({"type": "WordPiece", "prefix": "##"})");
  expect_error(load(j), ErrorCode::kUnsupported, {"decoder.type", "WordPiece"});
  j = minimal();
  j["post_processor"] = Json::parse(R"({"type": "Magic"})");
  expect_error(load(j), ErrorCode::kUnsupported, {"post_processor.type", "Magic"});
  j = minimal();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Sequence", "pretokenizers": [{"type": "ByteLevel"},
      {"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Isolated", "invert": false}]})");
  expect_error(load(j), ErrorCode::kUnsupported, {"pre_tokenizer.pretokenizers[1]", "after ByteLevel"});
}

TEST(TokenizerErrors, BadFields) {
  Json j = minimal();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"Regex": "(unclosed"}, "behavior": "Isolated", "invert": false})");
  expect_error(load(j), ErrorCode::kFormat, {"pre_tokenizer.pattern", "(unclosed"});
  j = minimal();
  j["pre_tokenizer"] = Json::parse(R"({"type": "Split", "pattern": {"Regex": "a"}, "behavior": "Sideways", "invert": false})");
  expect_error(load(j), ErrorCode::kFormat, {"pre_tokenizer.behavior", "Sideways"});
  j = minimal();
  j["decoder"] = Json::parse(R"({"type": "Strip", "content": " ", "start": -1, "stop": 0})");
  expect_error(load(j), ErrorCode::kFormat, {"decoder.start"});
  j = minimal();
  j["added_tokens"][0]["id"] = "three";
  expect_error(load(j), ErrorCode::kFormat, {"added_tokens[0].id"});
  j = minimal();
  j["model"]["merges"] = Json::parse(R"(["a c"])");
  expect_error(load(j), ErrorCode::kFormat, {"model.merges[0]", "'c'"});
  j = minimal();
  j["model"]["merges"] = Json::parse(R"(["a b c"])");
  expect_error(load(j), ErrorCode::kFormat, {"model.merges[0]"});
  j = minimal();
  j["model"]["merges"] = Json::parse(R"([["a", "b", "c"]])");
  expect_error(load(j), ErrorCode::kFormat, {"model.merges[0]", "pair"});
  j = minimal();
  j["model"]["vocab"]["a"] = "zero";
  expect_error(load(j), ErrorCode::kFormat, {"model.vocab['a']"});
  j = minimal();
  j["model"]["vocab"]["a"] = -5;
  expect_error(load(j), ErrorCode::kFormat, {"'a'", "-5"});
  j = minimal();
  j["post_processor"] = Json::parse(R"({"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<x>", "type_id": 0}},
      {"Sequence": {"id": "A", "type_id": 0}}], "special_tokens": {}})");
  expect_error(load(j), ErrorCode::kFormat, {"post_processor.single[0]", "<x>"});
}

TEST(TokenizerErrors, BadConfig) {
  auto t = Tokenizer::from_json(minimal().dump(), R"({"eos_token": "</nope>"})", "tok.json");
  expect_error(t.status(), ErrorCode::kFormat, {"tokenizer_config.json", "eos_token", "</nope>"});
  t = Tokenizer::from_json(minimal().dump(), R"({"tokenizer_class": "LlamaTokenizerFast"})", "tok.json");
  expect_error(t.status(), ErrorCode::kFormat, {"add_bos_token", "bos_token"});
  t = Tokenizer::from_json(minimal().dump(), "{not json", "tok.json");
  expect_error(t.status(), ErrorCode::kFormat, {"tokenizer_config.json", "invalid JSON"});
  t = Tokenizer::from_json(minimal().dump(), R"({"tokenizer_class": "LlamaTokenizerFast", "bos_token": {"content": "<s>"}})");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(t->encode("a").value(), (std::vector<int32_t>{3, 0}));  // the Llama rule adds BOS
  EXPECT_EQ(t->bos_id(), 3);
}

TEST(TokenizerErrors, MissingDirectory) {
  auto t = Tokenizer::load("/nonexistent/model");
  expect_error(t.status(), ErrorCode::kIo, {"/nonexistent/model/tokenizer.json"});
}

TEST(TokenizerErrors, InvalidUtf8InputNamesTheOffset) {
  auto t = Tokenizer::from_json(minimal().dump()).value();
  expect_error(t.encode("ab\xC3(").status(), ErrorCode::kInvalidArgument, {"UTF-8", "offset 2", "0xC3"});
  expect_error(t.encode("\xED\xA0\x80").status(), ErrorCode::kInvalidArgument, {"offset 0"});  // a surrogate
  expect_error(t.encode("abc\xF0\x9F\x98").status(), ErrorCode::kInvalidArgument, {"offset 3"});
}

TEST(TokenizerErrors, DecodeRejectsUnknownIds) {
  auto t = Tokenizer::from_json(minimal().dump()).value();
  std::vector<int32_t> bad = {0, 4};
  expect_error(t.decode(bad).status(), ErrorCode::kOutOfRange, {"ids[1] = 4"});
  bad = {-1};
  expect_error(t.decode(bad).status(), ErrorCode::kOutOfRange, {"ids[0] = -1"});
  StreamDecoder sd(t);
  EXPECT_FALSE(sd.step(99).is_ok());
  EXPECT_EQ(sd.step(0).value(), "a");  // a failed step leaves the stream usable
}

// Truncated and corrupted files must give an error or a tokenizer, never a crash.
TEST(TokenizerErrors, CorruptedFilesNeverCrash) {
  const std::string text = minimal().dump();
  for (size_t n = 0; n < text.size(); ++n) (void)Tokenizer::from_json(text.substr(0, n));
  std::random_device rd;
  std::mt19937 rng(rd());
  for (int i = 0; i < 2000; ++i) {
    std::string s = text;
    for (int k = 0; k < 3; ++k) s[rng() % s.size()] = static_cast<char>(rng() % 256);
    auto t = Tokenizer::from_json(s);
    if (t.is_ok()) {
      auto ids = t->encode("ab ba <s> a\xC3\xA9");
      if (ids.is_ok()) (void)t->decode(*ids);
    }
  }
}

}  // namespace
}  // namespace nb::test
