// nibble: INT4 + LoRA inference engine, command line entry point.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "tools/nibble/cli.h"

namespace {

void print_help() {
  std::printf("nibble — INT4 + LoRA inference engine\n\nusage: nibble COMMAND [ARGS...]\n\ncommands:\n");
  auto cmds = nb::cli::commands();
  std::sort(cmds.begin(), cmds.end(), [](const auto& a, const auto& b) { return a.name < b.name; });
  for (const auto& c : cmds) std::printf("  %-12s %s\n", c.name.c_str(), c.summary.c_str());
  std::printf("\nRun `nibble COMMAND --help` for the options of one command.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") || !std::strcmp(argv[1], "help")) {
    print_help();
    return argc < 2 ? 2 : 0;
  }
  std::string name = argv[1];
  std::vector<std::string> rest(argv + 2, argv + argc);
  for (const auto& c : nb::cli::commands()) {
    if (c.name != name) continue;
    if (std::find(rest.begin(), rest.end(), "--help") != rest.end() ||
        std::find(rest.begin(), rest.end(), "-h") != rest.end()) {
      std::printf("%s\n", c.usage.c_str());
      return 0;
    }
    return c.run(rest);
  }
  std::fprintf(stderr, "nibble: unknown command '%s' (run `nibble --help` for the list)\n", name.c_str());
  return 2;
}
