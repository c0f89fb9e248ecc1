#include "tools/nibble/cli.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>

namespace nb::cli {

Result<Args> Args::parse(const std::vector<std::string>& argv, const std::vector<std::string>& flag_names) {
  Args a;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& s = argv[i];
    if (s.size() > 2 && s.rfind("--", 0) == 0) {
      std::string name = s.substr(2), value;
      size_t eq = name.find('=');
      bool is_flag = std::find(flag_names.begin(), flag_names.end(), name) != flag_names.end();
      if (eq != std::string::npos && !is_flag) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
      } else if (!is_flag) {
        if (i + 1 >= argv.size()) return invalid_argument(strformat("option --%s expects a value", name.c_str()));
        value = argv[++i];
      }
      a.options_[name].push_back(value);
    } else {
      a.positional_.push_back(s);
    }
  }
  return a;
}

std::string Args::get(const std::string& name, const std::string& def) const {
  auto it = options_.find(name);
  return it == options_.end() ? def : it->second.back();
}

std::vector<std::string> Args::get_all(const std::string& name) const {
  auto it = options_.find(name);
  return it == options_.end() ? std::vector<std::string>{} : it->second;
}

Result<int64_t> Args::get_int(const std::string& name, int64_t def) const {
  if (!has(name)) return def;
  std::string v = get(name);
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  if (v.empty() || *end) return invalid_argument(strformat("--%s expects an integer, got '%s'", name.c_str(), v.c_str()));
  return static_cast<int64_t>(x);
}

Result<double> Args::get_double(const std::string& name, double def) const {
  if (!has(name)) return def;
  std::string v = get(name);
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  if (v.empty() || *end) return invalid_argument(strformat("--%s expects a number, got '%s'", name.c_str(), v.c_str()));
  return x;
}

Status Args::check_known(const std::vector<std::string>& known) const {
  for (const auto& [name, _] : options_) {
    if (std::find(known.begin(), known.end(), name) == known.end())
      return invalid_argument(strformat("unknown option --%s (see --help)", name.c_str()));
  }
  return Status::ok();
}

std::vector<Command>& mutable_commands() {
  static std::vector<Command> cmds;
  return cmds;
}

void register_command(const Command& cmd) { mutable_commands().push_back(cmd); }
const std::vector<Command>& commands() { return mutable_commands(); }

int fail(const std::string& command, const Status& status) {
  std::fprintf(stderr, "nibble %s: %s\n", command.c_str(), status.to_string().c_str());
  return 1;
}

Result<std::vector<int64_t>> parse_int_list(const std::string& text) {
  std::vector<int64_t> out;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t comma = text.find(',', pos);
    std::string item = text.substr(pos, comma == std::string::npos ? std::string::npos : comma - pos);
    char* end = nullptr;
    long long v = std::strtoll(item.c_str(), &end, 10);
    if (item.empty() || *end) return invalid_argument(strformat("expected a comma-separated list of integers, got '%s'", text.c_str()));
    out.push_back(v);
    if (comma == std::string::npos) break;
    pos = comma + 1;
  }
  return out;
}

}  // namespace nb::cli
