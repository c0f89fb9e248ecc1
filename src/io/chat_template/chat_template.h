// Chat templates: the Jinja program in a model's tokenizer_config.json that turns messages into
// the prompt text. Rendering equals transformers' apply_chat_template(tokenize=False): jinja2's
// ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols]),
// transformers' tojson (json.dumps, ensure_ascii=False) and raise_exception / strftime_now.
//
//   NB_ASSIGN_OR_RETURN(ChatTemplate t, load_chat_template(model_dir, flags.chat_template));
//   NB_ASSIGN_OR_RETURN(std::string prompt, t.render_chat(messages, tools, true, {{"enable_thinking", false}}));
//
// Pass nlohmann::ordered_json: `tojson` prints keys in the order it finds them, and transformers
// keeps the request's order (plain nlohmann::json sorts keys).
#pragma once

#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "core/status.h"

namespace nb {

namespace jinja {
struct Program;
}

class ChatTemplate {
 public:
  // Parses once; the result renders many times, from any number of threads at once. Syntax
  // errors and unsupported constructs fail here: "chat template 'qwen3' line 3, column 12:
  // unsupported filter 'wordwrap'".
  static Result<ChatTemplate> parse(const std::string& source, const std::string& name);

  // Renders with `context` as the template's variables (a JSON object). Errors name the line and
  // column; a template's raise_exception("msg") fails with exactly "msg" (kInvalidArgument).
  Result<std::string> render(const nlohmann::ordered_json& context) const;
  Result<std::string> render(const nlohmann::json& context) const;

  // What apply_chat_template passes: messages, tools (null -> None, as transformers does),
  // documents = None, add_generation_prompt, the special tokens read by load_chat_template
  // (bos_token, eos_token, ...), then `extra` (enable_thinking, or bos_token to override).
  Result<std::string> render_chat(const nlohmann::ordered_json& messages, const nlohmann::ordered_json& tools,
                                  bool add_generation_prompt,
                                  const nlohmann::ordered_json& extra = nlohmann::ordered_json::object()) const;

  const std::string& name() const;
  const std::string& source() const { return source_; }
  // Special tokens as strings ({"bos_token": "<s>", ...}); render_chat passes them.
  const nlohmann::ordered_json& special_tokens() const { return special_tokens_; }
  void set_special_tokens(nlohmann::ordered_json tokens) { special_tokens_ = std::move(tokens); }

 private:
  ChatTemplate() = default;  // only parse() makes one, so program_ is never null
  std::shared_ptr<const jinja::Program> program_;
  std::string source_;
  nlohmann::ordered_json special_tokens_ = nlohmann::ordered_json::object();
};

// The model's template, as transformers finds it: `override_path` if not empty (--chat-template
// FILE: a Jinja file, or a .json file with a "chat_template" field), else chat_template.jinja,
// else chat_template.json, else the "chat_template" of tokenizer_config.json (a string, or a list
// of {name, template} from which "default" is used). Special tokens come from
// tokenizer_config.json when it exists. No template anywhere is an error suggesting
// --chat-template FILE.
Result<ChatTemplate> load_chat_template(const std::string& model_dir, const std::string& override_path = "");

}  // namespace nb
