#include "io/chat_template/chat_template.h"

#include <algorithm>

#include "core/mmap.h"
#include "io/chat_template/ast.h"
#include "io/chat_template/interpreter.h"
#include "io/chat_template/parser.h"

namespace nb {

Result<ChatTemplate> ChatTemplate::parse(const std::string& source, const std::string& name) {
  NB_ASSIGN_OR_RETURN(std::shared_ptr<const jinja::Program> program, jinja::parse_program(source, name));
  ChatTemplate t;
  t.program_ = std::move(program);
  t.source_ = source;
  return t;
}

const std::string& ChatTemplate::name() const { return program_->source.name; }

namespace {

constexpr int kMaxContextDepth = 128;

// Nesting depth of a JSON value, counting no further than `limit` (so it never recurses deeply).
template <typename J>
int json_depth(const J& j, int limit) {
  if (limit <= 0 || !j.is_structured()) return 0;
  int deepest = 0;
  for (const auto& child : j) deepest = std::max(deepest, json_depth(child, limit - 1));
  return deepest + 1;
}

template <typename J>
Result<std::string> render_json(const jinja::Program& program, const std::string& name, const J& context) {
  if (!context.is_object())
    return invalid_argument(strformat("chat template '%s': the context must be a JSON object, got %s", name.c_str(),
                                      context.type_name()));
  if (json_depth(context, kMaxContextDepth + 1) > kMaxContextDepth)
    return invalid_argument(strformat("chat template '%s': the context is nested more than %d levels deep",
                                      name.c_str(), kMaxContextDepth));
  jinja::Value vars = jinja::value_from_json(context);
  return jinja::render_program(program, vars.as_dict());
}

}  // namespace

Result<std::string> ChatTemplate::render(const nlohmann::ordered_json& context) const {
  return render_json(*program_, name(), context);
}

Result<std::string> ChatTemplate::render(const nlohmann::json& context) const {
  return render_json(*program_, name(), context);
}

Result<std::string> ChatTemplate::render_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                              bool add_generation_prompt, const nlohmann::ordered_json& extra) const {
  if (!messages.is_array())
    return invalid_argument(strformat("chat template '%s': messages must be a JSON array, got %s", name().c_str(),
                                      messages.type_name()));
  if (!tools.is_null() && !tools.is_array())
    return invalid_argument(strformat("chat template '%s': tools must be a JSON array or null, got %s",
                                      name().c_str(), tools.type_name()));
  if (!extra.is_object())
    return invalid_argument(strformat("chat template '%s': extra variables must be a JSON object", name().c_str()));
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  context["messages"] = messages;
  context["tools"] = tools;
  context["documents"] = nullptr;
  context["add_generation_prompt"] = add_generation_prompt;
  for (auto it = special_tokens_.begin(); it != special_tokens_.end(); ++it) context[it.key()] = it.value();
  for (auto it = extra.begin(); it != extra.end(); ++it) context[it.key()] = it.value();
  return render(context);
}

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

Result<nlohmann::ordered_json> read_json(const std::string& path) {
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(path));
  nlohmann::ordered_json j = nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return format_error(path + ": not valid JSON");
  if (!j.is_object()) return format_error(path + ": expected a JSON object at the top level");
  return j;
}

// The "chat_template" field: a string, or a list of {name, template} (the "default" one is used).
Result<std::string> template_field(const nlohmann::ordered_json& j, const std::string& path) {
  const auto& t = j["chat_template"];
  if (t.is_string()) return t.get<std::string>();
  if (!t.is_array())
    return format_error(strformat("%s: \"chat_template\" must be a string or a list of {name, template}, got %s",
                                  path.c_str(), t.type_name()));
  std::string names;
  for (const auto& entry : t) {
    if (!entry.is_object() || !entry.contains("name") || !entry["name"].is_string() || !entry.contains("template") ||
        !entry["template"].is_string())
      return format_error(path + ": each entry of \"chat_template\" needs string fields \"name\" and \"template\"");
    if (entry["name"] == "default") return entry["template"].get<std::string>();
    names += (names.empty() ? "" : ", ") + entry["name"].get<std::string>();
  }
  return format_error(path + ": \"chat_template\" has no template named \"default\" (it has: " + names + ")");
}

// transformers' special_tokens_map: bos_token, eos_token, ... as strings (tokenizer_config.json may
// store AddedToken objects), and additional_special_tokens when not empty.
nlohmann::ordered_json special_tokens_of(const nlohmann::ordered_json& config) {
  static const char* const kNames[] = {"bos_token", "eos_token", "unk_token", "sep_token",
                                       "pad_token", "cls_token", "mask_token"};
  nlohmann::ordered_json out = nlohmann::ordered_json::object();
  for (const char* name : kNames) {
    if (!config.contains(name)) continue;
    const auto& v = config[name];
    if (v.is_string()) out[name] = v;
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) out[name] = v["content"];
  }
  if (config.contains("additional_special_tokens") && config["additional_special_tokens"].is_array() &&
      !config["additional_special_tokens"].empty()) {
    nlohmann::ordered_json list = nlohmann::ordered_json::array();
    for (const auto& v : config["additional_special_tokens"]) {
      if (v.is_string()) list.push_back(v);
      else if (v.is_object() && v.contains("content") && v["content"].is_string()) list.push_back(v["content"]);
    }
    out["additional_special_tokens"] = list;
  }
  return out;
}

Result<ChatTemplate> parse_named(const std::string& source, const std::string& name, const nlohmann::ordered_json& tokens) {
  NB_ASSIGN_OR_RETURN(ChatTemplate t, ChatTemplate::parse(source, name));
  t.set_special_tokens(tokens);
  return t;
}

}  // namespace

Result<ChatTemplate> load_chat_template(const std::string& model_dir, const std::string& override_path) {
  std::string config_path = path_join(model_dir, "tokenizer_config.json");
  nlohmann::ordered_json config = nlohmann::ordered_json::object();
  if (!model_dir.empty() && file_exists(config_path)) {
    NB_ASSIGN_OR_RETURN(config, read_json(config_path));
  }
  nlohmann::ordered_json tokens = special_tokens_of(config);

  if (!override_path.empty()) {
    if (ends_with(override_path, ".json")) {
      NB_ASSIGN_OR_RETURN(nlohmann::ordered_json j, read_json(override_path));
      if (!j.contains("chat_template")) return format_error(override_path + ": no \"chat_template\" field");
      NB_ASSIGN_OR_RETURN(std::string source, template_field(j, override_path));
      return parse_named(source, override_path, tokens);
    }
    NB_ASSIGN_OR_RETURN(std::string source, read_text_file(override_path));
    return parse_named(source, override_path, tokens);
  }
  // transformers: a chat_template.jinja file beside the config clobbers the config's template.
  std::string jinja_path = path_join(model_dir, "chat_template.jinja");
  if (file_exists(jinja_path)) {
    NB_ASSIGN_OR_RETURN(std::string source, read_text_file(jinja_path));
    return parse_named(source, jinja_path, tokens);
  }
  std::string json_path = path_join(model_dir, "chat_template.json");
  if (file_exists(json_path)) {
    NB_ASSIGN_OR_RETURN(nlohmann::ordered_json j, read_json(json_path));
    if (j.contains("chat_template")) {
      NB_ASSIGN_OR_RETURN(std::string source, template_field(j, json_path));
      return parse_named(source, json_path, tokens);
    }
  }
  if (config.contains("chat_template") && !config["chat_template"].is_null()) {
    NB_ASSIGN_OR_RETURN(std::string source, template_field(config, config_path));
    return parse_named(source, config_path + " (chat_template)", tokens);
  }
  return not_found(strformat("%s: the model has no chat template (looked for chat_template.jinja, "
                             "chat_template.json and \"chat_template\" in tokenizer_config.json); "
                             "pass one with --chat-template FILE",
                             model_dir.c_str()));
}

}  // namespace nb
