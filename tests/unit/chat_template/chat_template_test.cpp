// Chat templates against jinja2 (configured as transformers' apply_chat_template configures it).
// The expected renders come from tools/chatref/make_refs.py and live in
// tests/data/chat_template/refs/; the Llama-3 and DeepSeek-V3 templates themselves are read from
// ../shared/data/tokenizers and the tests skip when that folder is absent.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/mmap.h"
#include "io/chat_template/chat_template.h"

namespace nb {
namespace {

using ojson = nlohmann::ordered_json;

const std::string kData = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/chat_template";
const std::string kShared = std::string(NIBBLE_SOURCE_DIR) + "/../shared/data/tokenizers";

ojson read_json(const std::string& path) {
  auto text = read_text_file(path);
  EXPECT_TRUE(text.is_ok()) << text.status().to_string();
  return text.is_ok() ? ojson::parse(*text) : ojson();
}

const ojson& refs(const std::string& file) {
  static std::map<std::string, ojson> cache;
  auto it = cache.find(file);
  if (it == cache.end()) it = cache.emplace(file, read_json(kData + "/refs/" + file)).first;
  return it->second;
}

// Checks one result against a reference case: the same text, or a failure too. A template's own
// raise_exception() must come back with exactly its message.
void expect_matches(const Result<std::string>& got, const ojson& ref, const std::string& label) {
  if (ref.contains("expected")) {
    ASSERT_TRUE(got.is_ok()) << label << ": " << got.status().to_string();
    EXPECT_EQ(*got, ref["expected"].get<std::string>()) << label;
    return;
  }
  ASSERT_FALSE(got.is_ok()) << label << ": jinja2 failed with " << ref["error_type"] << " " << ref["error"]
                            << " but we rendered:\n" << *got;
  if (ref["error_type"] == "TemplateError") {
    EXPECT_EQ(got.status().code(), ErrorCode::kInvalidArgument) << label;
    EXPECT_EQ(got.status().message(), ref["error"].get<std::string>()) << label;
  }
}

Result<std::string> parse_and_render(const std::string& source, const ojson& context) {
  NB_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::parse(source, "test"));
  return t.render(context);
}

// ---- real templates over conversations -------------------------------------------------------

void run_model_cases(const std::string& name, const ChatTemplate& tmpl) {
  const ojson& models = refs("models.json");
  EXPECT_EQ(tmpl.special_tokens(), models["templates"][name]["special_tokens"]) << name;
  int n = 0;
  for (const ojson& c : models["cases"]) {
    if (c["template"] != name) continue;
    const ojson& conv = models["conversations"][c["conversation"].get<std::string>()];
    ojson tools = conv.contains("tools") ? conv["tools"] : ojson();
    std::string label = name + " / " + c["conversation"].get<std::string>() +
                        (c["add_generation_prompt"].get<bool>() ? " +gen" : "") + " " + c["extra"].dump();
    expect_matches(tmpl.render_chat(conv["messages"], tools, c["add_generation_prompt"].get<bool>(), c["extra"]), c,
                   label);
    ++n;
  }
  EXPECT_GE(n, 20) << "too few reference cases for " << name;
}

TEST(ChatTemplateModels, Qwen3) {
  auto t = load_chat_template(kData + "/qwen3");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  run_model_cases("qwen3", *t);
}

void run_shared_model(const std::string& name) {
  std::string dir = kShared + "/" + name;
  if (!file_exists(dir + "/tokenizer_config.json")) GTEST_SKIP() << dir << " is absent (it is not committed: licence)";
  auto t = load_chat_template(dir);
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  run_model_cases(name, *t);
}

TEST(ChatTemplateModels, Llama3) { run_shared_model("llama3"); }
TEST(ChatTemplateModels, DeepSeekV3) { run_shared_model("deepseek_v3"); }

void run_mistral(const std::string& name) {
  auto t = load_chat_template("", kData + "/" + name + ".jinja");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  t->set_special_tokens(refs("models.json")["templates"][name]["special_tokens"]);
  run_model_cases(name, *t);
}

TEST(ChatTemplateModels, MistralInstV1) { run_mistral("mistral_v1"); }
TEST(ChatTemplateModels, MistralInstV3) { run_mistral("mistral_v3"); }

// ---- synthetic and random templates ----------------------------------------------------------

TEST(ChatTemplateSynthetic, EveryConstructMatchesJinja2) {
  const ojson& syn = refs("synthetic.json");
  ASSERT_GE(syn["cases"].size(), 80u);
  for (const ojson& c : syn["cases"])
    expect_matches(parse_and_render(c["template"], syn["context"]), c, c["name"].get<std::string>());
}

TEST(ChatTemplateFuzz, WhitespaceControlMatchesJinja2) {
  const ojson& fuzz = refs("fuzz.json");
  ASSERT_GE(fuzz["whitespace"].size(), 300u);
  int i = 0;
  for (const ojson& c : fuzz["whitespace"])
    expect_matches(parse_and_render(c["template"], fuzz["whitespace_context"]), c,
                   "whitespace #" + std::to_string(i++) + ": " + c["template"].dump());
}

TEST(ChatTemplateFuzz, ExpressionsMatchJinja2) {
  const ojson& fuzz = refs("fuzz.json");
  ASSERT_GE(fuzz["expressions"].size(), 500u);
  int i = 0;
  for (const ojson& c : fuzz["expressions"])
    expect_matches(parse_and_render(c["template"], fuzz["expression_context"]), c,
                   "expression #" + std::to_string(i++) + ": " + c["template"].dump());
}

// ---- errors name the construct and where it is -----------------------------------------------

std::string parse_error(const std::string& source) {
  auto t = ChatTemplate::parse(source, "t");
  EXPECT_FALSE(t.is_ok()) << "parsed: " << source;
  return t.is_ok() ? "" : t.status().message();
}

std::string render_error(const std::string& source, const ojson& context = ojson::object()) {
  auto t = ChatTemplate::parse(source, "t");
  EXPECT_TRUE(t.is_ok()) << t.status().to_string();
  if (!t.is_ok()) return "";
  auto r = t->render(context);
  EXPECT_FALSE(r.is_ok()) << "rendered: " << *r;
  return r.is_ok() ? "" : r.status().message();
}

TEST(ChatTemplateErrors, UnsupportedFilterNamesItAndItsPosition) {
  std::string m = parse_error("one\ntwo\nthree {{ x|wordwrap }}");
  EXPECT_EQ(m, "chat template 't' line 3, column 12: unsupported filter 'wordwrap'");
  // Columns count characters, not bytes.
  EXPECT_NE(parse_error("日本語 {{ x | center }}").find("line 1, column 12: unsupported filter 'center'"), std::string::npos);
  EXPECT_NE(parse_error("{{ x is palindrome }}").find("column 9: unsupported test 'palindrome'"), std::string::npos);
}

TEST(ChatTemplateErrors, UnclosedBlocksPointAtTheOpeningTag) {
  std::string m = parse_error("{% for m in messages %}\n  {% if m %}x{% endfor %}");
  EXPECT_NE(m.find("line 2, column 3"), std::string::npos) << m;
  EXPECT_NE(m.find("'endif'"), std::string::npos) << m;
  m = parse_error("text\n{% for m in messages %}{{ m }}");
  EXPECT_NE(m.find("line 2, column 1: unclosed 'for' block"), std::string::npos) << m;
  m = parse_error("{% endif %}");
  EXPECT_NE(m.find("line 1, column 4: unexpected tag 'endif'"), std::string::npos) << m;
  m = parse_error("{{ x }\n");
  EXPECT_NE(m.find("unexpected '}'"), std::string::npos) << m;
  m = parse_error("a {{ x ");
  EXPECT_NE(m.find("line 1, column 3"), std::string::npos) << m;
  m = parse_error("{# never closed");
  EXPECT_NE(m.find("line 1, column 1: missing end of comment tag"), std::string::npos) << m;
}

TEST(ChatTemplateErrors, BadSyntaxAndUnsupportedTags) {
  EXPECT_NE(parse_error("{{ 1 + }}").find("line 1, column 8: unexpected end of print statement"), std::string::npos);
  EXPECT_NE(parse_error("{% include 'x.jinja' %}").find("column 4: unsupported tag 'include'"), std::string::npos);
  EXPECT_NE(parse_error("{% frobnicate %}").find("unknown tag 'frobnicate'"), std::string::npos);
  EXPECT_NE(parse_error("{% break %}").find("'break' outside of a for loop"), std::string::npos);
  EXPECT_NE(parse_error("{{ 'abc }}").find("column 4: unterminated string literal"), std::string::npos);
  EXPECT_NE(parse_error("{{ a $ b }}").find("unexpected character '$'"), std::string::npos);
  EXPECT_NE(parse_error("{% for x in y recursive %}{% endfor %}").find("recursive"), std::string::npos);
  EXPECT_NE(parse_error(std::string("ok\n{{ '\xff' }}")).find("line 2, column 5: the template is not valid UTF-8"),
            std::string::npos);
}

TEST(ChatTemplateErrors, RaiseExceptionMessageReachesTheCaller) {
  auto t = ChatTemplate::parse("{% if messages[0].role != 'user' %}{{ raise_exception('First message must be from ' ~ 'the user') }}{% endif %}ok",
                               "t");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  ojson bad = {{"messages", ojson::array({{{"role", "assistant"}, {"content", "x"}}})}};
  auto r = t->render(bad);
  ASSERT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), ErrorCode::kInvalidArgument);
  EXPECT_EQ(r.status().message(), "First message must be from the user");
  ojson good = {{"messages", ojson::array({{{"role", "user"}, {"content", "x"}}})}};
  ASSERT_TRUE(t->render(good).is_ok());
  EXPECT_EQ(*t->render(good), "ok");
}

TEST(ChatTemplateErrors, RuntimeErrorsNameThePosition) {
  EXPECT_EQ(render_error("x\n{{ 'a' + 1 }}"),
            "chat template 't' line 2, column 8: can only concatenate str (not \"int\") to str");
  EXPECT_NE(render_error("{{ missing.attr }}").find("line 1, column 11: 'missing' is undefined"), std::string::npos);
  EXPECT_NE(render_error("{{ [1].append(2) }}").find("unsafe"), std::string::npos);
  EXPECT_NE(render_error("{{ 'x'.zfill(3) }}").find("unsupported method str.zfill()"), std::string::npos);
  EXPECT_NE(render_error("{% set n = 9223372036854775807 %}{{ n + 1 }}").find("integer overflow"), std::string::npos);
  EXPECT_NE(render_error("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}").find("recursed too deeply"), std::string::npos);
}

TEST(ChatTemplateErrors, DeepNestingIsAnErrorNotACrash) {
  std::string deep = "{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}";
  EXPECT_NE(parse_error(deep).find("nested more than"), std::string::npos);
  std::string ifs;
  for (int i = 0; i < 3000; ++i) ifs += "{% if true %}";
  EXPECT_NE(parse_error(ifs).find("nested more than"), std::string::npos);
  std::string chain = "{{ 1";
  for (int i = 0; i < 3000; ++i) chain += " if true else 1";
  EXPECT_NE(parse_error(chain + " }}").find("nested more than"), std::string::npos);
  auto t = ChatTemplate::parse("{{ x }}", "t");
  ASSERT_TRUE(t.is_ok());
  ojson v = 1;
  for (int i = 0; i < 5000; ++i) {
    ojson outer = ojson::array();
    outer.push_back(std::move(v));
    v = std::move(outer);
  }
  auto r = t->render(ojson{{"x", v}});
  ASSERT_FALSE(r.is_ok());
  EXPECT_NE(r.status().message().find("nested more than"), std::string::npos);
}

// Random edits of a real template must give an output or an error with a position, never a
// crash (run under the sanitizers in CI to catch out-of-bounds reads).
TEST(ChatTemplateErrors, MutatedTemplatesFailCleanly) {
  ojson config = read_json(kData + "/qwen3/tokenizer_config.json");
  std::string source = config["chat_template"];
  const ojson& models = refs("models.json");
  const ojson& conv = models["conversations"]["parallel_tool_calls"];
  ojson context = {{"messages", conv["messages"]}, {"tools", conv["tools"]}, {"add_generation_prompt", true}};
  const char* const pieces[] = {"{%", "%}", "{{", "}}", "{#", "#}", "-", "+", "(", ")", "[", "]", "'",
                                "\"", "\\", "|", ".", ":", ",", "if ", "endif", "for ", "is ", "~", "\n", "é"};
  std::mt19937 rng(1234);
  int rendered = 0, failed = 0;
  for (int i = 0; i < 300; ++i) {
    std::string s = source;
    for (int k = 0; k < 3; ++k) {
      size_t at = rng() % (s.size() + 1);
      if (rng() % 2) s.erase(at, 1 + rng() % 6);
      else s.insert(at, pieces[rng() % (sizeof(pieces) / sizeof(pieces[0]))]);
    }
    Result<std::string> r = parse_and_render(s, context);
    if (r.is_ok()) {
      ++rendered;
      continue;
    }
    ++failed;
    EXPECT_NE(r.status().message().find("chat template 'test' line "), std::string::npos) << r.status().message();
  }
  EXPECT_GT(failed, 100);
  EXPECT_GT(rendered, 10);
}

// ---- API details -----------------------------------------------------------------------------

TEST(ChatTemplateApi, RendersConcurrentlyFromOneParse) {
  auto t = load_chat_template(kData + "/qwen3");
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  const ojson& conv = refs("models.json")["conversations"]["parallel_tool_calls"];
  auto expected = t->render_chat(conv["messages"], conv["tools"], true);
  ASSERT_TRUE(expected.is_ok()) << expected.status().to_string();
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      for (int i = 0; i < 20; ++i) {
        auto r = t->render_chat(conv["messages"], conv["tools"], true);
        if (!r.is_ok() || *r != *expected) ++mismatches[k];
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

TEST(ChatTemplateApi, ContextKeyOrderFollowsTheJsonType) {
  auto t = ChatTemplate::parse("{{ x | tojson }}", "t");
  ASSERT_TRUE(t.is_ok());
  ojson ordered = {{"x", {{"b", 1}, {"a", 2}}}};
  EXPECT_EQ(*t->render(ordered), "{\"b\": 1, \"a\": 2}");
  nlohmann::json sorted = {{"x", {{"b", 1}, {"a", 2}}}};
  EXPECT_EQ(*t->render(sorted), "{\"a\": 2, \"b\": 1}");
  EXPECT_FALSE(t->render(ojson::array()).is_ok());
  EXPECT_FALSE(t->render_chat(ojson::object(), ojson(), true).is_ok());
}

TEST(ChatTemplateApi, RenderChatPassesWhatTransformersPasses) {
  auto t = ChatTemplate::parse(
      "{{ tools is none }}|{{ documents is none }}|{{ add_generation_prompt }}|{{ bos_token }}|{{ flag }}|"
      "{{ messages | length }}",
      "t");
  ASSERT_TRUE(t.is_ok());
  t->set_special_tokens({{"bos_token", "<s>"}, {"eos_token", "</s>"}});
  ojson messages = ojson::array({{{"role", "user"}, {"content", "hi"}}});
  EXPECT_EQ(*t->render_chat(messages, ojson(), true, {{"flag", 3}}), "True|True|True|<s>|3|1");
  EXPECT_EQ(*t->render_chat(messages, ojson::array(), false, {{"bos_token", "<B>"}}), "False|True|False|<B>||1");
}

// ---- loading ---------------------------------------------------------------------------------

class ChatTemplateLoad : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("nibble_chat_" + std::to_string(::getpid()) + "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string path(const std::string& f) const { return (dir_ / f).string(); }
  void write(const std::string& f, const std::string& text) { ASSERT_TRUE(write_text_file(path(f), text).is_ok()); }
  std::string render(const ChatTemplate& t) {
    auto r = t.render_chat(ojson::array({{{"role", "user"}, {"content", "hi"}}}), ojson(), false);
    return r.is_ok() ? *r : "ERROR " + r.status().message();
  }
  std::filesystem::path dir_;
};

TEST_F(ChatTemplateLoad, ReadsTheConfigAndItsSpecialTokens) {
  write("tokenizer_config.json",
        R"({"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
            "bos_token": {"__type": "AddedToken", "content": "<B>"}, "eos_token": "<E>", "unk_token": null})");
  auto t = load_chat_template(dir_.string());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(render(*t), "<B>hi<E>");
  EXPECT_EQ(t->special_tokens(), ojson({{"bos_token", "<B>"}, {"eos_token", "<E>"}}));
}

TEST_F(ChatTemplateLoad, PicksTheDefaultOfNamedTemplates) {
  write("tokenizer_config.json",
        R"({"chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D{{ messages|length }}"}]})");
  auto t = load_chat_template(dir_.string());
  ASSERT_TRUE(t.is_ok()) << t.status().to_string();
  EXPECT_EQ(render(*t), "D1");
  write("tokenizer_config.json", R"({"chat_template": [{"name": "tool_use", "template": "T"}]})");
  auto none = load_chat_template(dir_.string());
  ASSERT_FALSE(none.is_ok());
  EXPECT_NE(none.status().message().find("no template named \"default\" (it has: tool_use)"), std::string::npos);
}

TEST_F(ChatTemplateLoad, JinjaFileBesideTheConfigWins) {
  write("tokenizer_config.json", R"({"chat_template": "config", "eos_token": "<E>"})");
  write("chat_template.json", R"({"chat_template": "json file"})");
  auto t = load_chat_template(dir_.string());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(render(*t), "json file");
  write("chat_template.jinja", "jinja file {{ eos_token }}\n");
  t = load_chat_template(dir_.string());
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(render(*t), "jinja file <E>");
}

TEST_F(ChatTemplateLoad, OverrideFileWinsOverEverything) {
  write("tokenizer_config.json", R"({"chat_template": "config", "bos_token": "<B>"})");
  write("mine.jinja", "{{ bos_token }}override");
  write("mine.json", R"({"chat_template": "from json {{ bos_token }}"})");
  auto t = load_chat_template(dir_.string(), path("mine.jinja"));
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(render(*t), "<B>override");
  t = load_chat_template(dir_.string(), path("mine.json"));
  ASSERT_TRUE(t.is_ok());
  EXPECT_EQ(render(*t), "from json <B>");
  EXPECT_FALSE(load_chat_template(dir_.string(), path("absent.jinja")).is_ok());
}

TEST_F(ChatTemplateLoad, NoTemplateSuggestsTheFlag) {
  write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  auto t = load_chat_template(dir_.string());
  ASSERT_FALSE(t.is_ok());
  EXPECT_EQ(t.status().code(), ErrorCode::kNotFound);
  EXPECT_NE(t.status().message().find("--chat-template FILE"), std::string::npos) << t.status().message();
  write("tokenizer_config.json", "{not json");
  t = load_chat_template(dir_.string());
  ASSERT_FALSE(t.is_ok());
  EXPECT_NE(t.status().message().find("tokenizer_config.json"), std::string::npos);
  write("tokenizer_config.json", R"({"chat_template": "{% if x %}"})");
  t = load_chat_template(dir_.string());
  ASSERT_FALSE(t.is_ok());
  EXPECT_NE(t.status().message().find("tokenizer_config.json (chat_template)' line 1, column 1: unclosed 'if'"),
            std::string::npos)
      << t.status().message();
}

}  // namespace
}  // namespace nb
