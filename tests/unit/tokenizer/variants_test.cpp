// Synthetic pipelines (tools/tokref/variants.py): Metaspace schemes, unk/fuse_unk, added-token
// flags (lstrip, rstrip, single_word, normalized, overlapping special/non-special), Split
// behaviours, subword prefix/suffix, no decoder, RobertaProcessing. Each is a JSON merge patch over
// a committed tokenizer.json; references come from Hugging Face tokenizers.
#include <gtest/gtest.h>

#include "io/tokenizer/tokenizer.h"
#include "tokenizer_test_util.h"

namespace nb::test {
namespace {

struct Variant {
  std::string name;
  Json def;
};

std::vector<Variant> variants() {
  std::vector<Variant> out;
  Json all = read_json(tokenizer_data_dir() + "/variants.json");
  for (const Json& v : all) out.push_back({v["name"], v});
  return out;
}

Result<Tokenizer> build_variant(const Json& def) {
  if (def.contains("full")) return Tokenizer::from_json(def["full"].dump(), "", def["name"].get<std::string>());
  const std::string base = tokenizer_data_dir() + "/" + def["base"].get<std::string>();
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(base + "/tokenizer.json"));
  NB_ASSIGN_OR_RETURN(std::string config, read_text_file(base + "/tokenizer_config.json"));
  Json j = Json::parse(text);
  j.merge_patch(def["patch"]);
  return Tokenizer::from_json(j.dump(), config, def["name"].get<std::string>());
}

class VariantTest : public ::testing::TestWithParam<std::string> {};

TEST_P(VariantTest, MatchesReference) {
  Json def;
  for (const Variant& v : variants()) {
    if (v.name == GetParam()) def = v.def;
  }
  ASSERT_FALSE(def.is_null()) << "variant " << GetParam() << " not in variants.json";
  auto tok = build_variant(def);
  ASSERT_TRUE(tok.is_ok()) << tok.status().to_string();
  Json refs = read_json(tokenizer_data_dir() + "/refs/variants/" + GetParam() + ".json");
  ASSERT_GT(refs["cases"].size(), 50u);
  for (const Json& c : refs["cases"]) {
    const std::string text = c["text"];
    const std::string where = GetParam() + " case '" + c["name"].get<std::string>() + "'";
    auto with = tok->encode(text, true, true);
    ASSERT_TRUE(with.is_ok()) << where << ": " << with.status().to_string();
    EXPECT_EQ(*with, ids_of(c["ids_with_special"])) << where;
    auto without = tok->encode(text, false, false);
    ASSERT_TRUE(without.is_ok()) << where;
    EXPECT_EQ(*without, ids_of(c["ids_without_special_handling"])) << where;
    auto d = tok->decode(ids_of(c["ids_with_special"]));
    ASSERT_TRUE(d.is_ok()) << where;
    EXPECT_EQ(*d, c["decoded"].get<std::string>()) << where;
    auto ds = tok->decode(ids_of(c["ids_with_special"]), true);
    ASSERT_TRUE(ds.is_ok()) << where;
    EXPECT_EQ(*ds, c["decoded_skip_special"].get<std::string>()) << where;
  }
  for (const Json& c : refs["decode_cases"]) {
    auto d = tok->decode(ids_of(c["ids"]));
    ASSERT_TRUE(d.is_ok()) << d.status().to_string();
    EXPECT_EQ(*d, c["decoded"].get<std::string>()) << GetParam() << " ids " << c["ids"].dump();
    // Streaming gives the same text.
    StreamDecoder sd(*tok);
    std::string streamed;
    for (int32_t id : ids_of(c["ids"])) streamed += sd.step(id).value();
    streamed += sd.flush().value();
    EXPECT_EQ(streamed, c["decoded"].get<std::string>()) << GetParam() << " streamed ids " << c["ids"].dump();
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, VariantTest,
                         ::testing::Values("metaspace_first", "metaspace_always_split", "metaspace_never", "unk_fused", "unk_unfused",
                                           "added_flags", "split_behaviors", "tiny_prefix_suffix"));

TEST(VariantList, EveryVariantIsTested) {
  // variants.json is generated from tools/tokref/variants.py; a new variant needs a test value.
  EXPECT_EQ(variants().size(), 8u);
}

}  // namespace
}  // namespace nb::test
