// The `nibble` command line: subcommands register themselves; a tiny argument parser.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "core/status.h"

namespace nb::cli {

// Parsed arguments: positionals in order, options by name ("--max-tokens 8" -> "max-tokens").
// An option given several times keeps every value (e.g. --lora a=DIR --lora b=DIR).
class Args {
 public:
  // flag_names: options that take no value (e.g. "json", "chat").
  static Result<Args> parse(const std::vector<std::string>& argv, const std::vector<std::string>& flag_names);

  const std::vector<std::string>& positional() const { return positional_; }
  bool has(const std::string& name) const { return options_.count(name) != 0; }
  std::string get(const std::string& name, const std::string& def = "") const;
  std::vector<std::string> get_all(const std::string& name) const;
  Result<int64_t> get_int(const std::string& name, int64_t def) const;
  Result<double> get_double(const std::string& name, double def) const;
  // Fails naming the first option not in `known` (typos must not pass silently).
  Status check_known(const std::vector<std::string>& known) const;

 private:
  std::vector<std::string> positional_;
  std::map<std::string, std::vector<std::string>> options_;
};

struct Command {
  std::string name;
  std::string summary;  // one line for `nibble --help`
  std::string usage;    // full text for `nibble NAME --help`
  int (*run)(const std::vector<std::string>& argv);
};

void register_command(const Command& cmd);
const std::vector<Command>& commands();

// Prints "nibble NAME: <status>" to stderr and returns exit code 1.
int fail(const std::string& command, const Status& status);
// Parses "1,2,3" into integers.
Result<std::vector<int64_t>> parse_int_list(const std::string& text);

struct Registrar {
  explicit Registrar(const Command& cmd) { register_command(cmd); }
};

}  // namespace nb::cli

#define NB_REGISTER_COMMAND(var, ...) static ::nb::cli::Registrar var{::nb::cli::Command{__VA_ARGS__}}
