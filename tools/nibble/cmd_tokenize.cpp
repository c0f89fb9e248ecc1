// nibble tokenize: encode text with a model's tokenizer.json and show ids and pieces; decode
// ids; or benchmark loading and encoding.
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>

#include <nlohmann/json.hpp>

#include "core/mmap.h"
#include "io/tokenizer/tokenizer.h"
#include "tools/nibble/cli.h"

namespace nb::cli {
namespace {

const char* kUsage =
    "usage: nibble tokenize MODEL_DIR TEXT [--no-special] [--json]\n"
    "       nibble tokenize MODEL_DIR --decode 1,2,3 [--skip-special]\n"
    "       nibble tokenize MODEL_DIR --bench FILE [--repeat N]\n"
    "\n"
    "Encodes TEXT with MODEL_DIR/tokenizer.json (+ tokenizer_config.json) and prints the ids, then\n"
    "one line per token: id, token as stored in tokenizer.json, and its decoded text.\n\n"
    "options:\n"
    "  --no-special     do not add BOS/EOS and treat special tokens in TEXT as plain text\n"
    "  --json           print {\"ids\": [...], \"tokens\": [...], \"pieces\": [...]}\n"
    "  --decode LIST    decode comma-separated ids instead of encoding\n"
    "  --skip-special   with --decode: drop special tokens\n"
    "  --bench FILE     time loading the tokenizer and encoding FILE (one core), print MB/s\n"
    "  --repeat N       with --bench: encode the file N times (default 5)\n";

std::string escape_visible(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (c == '\n') out += "\\n";
    else if (c == '\t') out += "\\t";
    else if (c == '\r') out += "\\r";
    else if (c < 0x20 || c == 0x7f) out += strformat("\\x%02x", c);
    else out += static_cast<char>(c);
  }
  return out;
}

// Wall and CPU time of this thread: on a busy machine the CPU time is what one idle core takes.
struct Timer {
  std::chrono::steady_clock::time_point wall = std::chrono::steady_clock::now();
  double cpu = thread_cpu();
  static double thread_cpu() {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
  }
  double wall_s() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall).count(); }
  double cpu_s() const { return thread_cpu() - cpu; }
};

int bench(const std::string& dir, const std::string& file, int64_t repeat) {
  Timer load_t;
  auto tok = Tokenizer::load(dir);
  double load_wall = load_t.wall_s(), load_cpu = load_t.cpu_s();
  if (!tok.is_ok()) return fail("tokenize", tok.status());
  auto text = read_text_file(file);
  if (!text.is_ok()) return fail("tokenize", text.status());
  size_t n_ids = 0;
  double first_cpu = 0, best_cpu = 1e30, best_wall = 1e30;
  for (int64_t r = 0; r < repeat; ++r) {  // the first pass fills the word cache
    Timer t;
    auto ids = tok->encode(*text, false, true);
    double cpu = t.cpu_s(), wall = t.wall_s();
    if (!ids.is_ok()) return fail("tokenize", ids.status());
    n_ids = ids->size();
    if (r == 0) first_cpu = cpu;
    best_cpu = std::min(best_cpu, cpu);
    best_wall = std::min(best_wall, wall);
  }
  auto ids = tok->encode(*text, false, true);
  Timer dt;
  auto back = tok->decode(*ids);
  double dec_cpu = dt.cpu_s();
  if (!back.is_ok()) return fail("tokenize", back.status());
  double mb = static_cast<double>(text->size()) / 1e6;
  std::printf("load: %.1f ms CPU (%.1f ms wall)\n", load_cpu * 1e3, load_wall * 1e3);
  std::printf("encode: %zu bytes -> %zu tokens; first pass %.2f MB/s, best of %lld %.2f MB/s (CPU time; wall %.2f MB/s)\n",
              text->size(), n_ids, mb / first_cpu, static_cast<long long>(repeat), mb / best_cpu, mb / best_wall);
  std::printf("decode: %.2f MB/s (CPU time), round trip %s\n", mb / dec_cpu, *back == *text ? "exact" : "differs (normalization)");
  return 0;
}

int decode_ids(const Tokenizer& tok, const std::string& list, bool skip) {
  auto ids64 = parse_int_list(list);
  if (!ids64.is_ok()) return fail("tokenize", ids64.status());
  std::vector<int32_t> ids(ids64->begin(), ids64->end());
  auto text = tok.decode(ids, skip);
  if (!text.is_ok()) return fail("tokenize", text.status());
  std::printf("%s\n", text->c_str());
  return 0;
}

int run(const std::vector<std::string>& argv) {
  auto parsed = Args::parse(argv, {"no-special", "json", "skip-special"});
  if (!parsed.is_ok()) return fail("tokenize", parsed.status());
  const Args& args = *parsed;
  if (Status s = args.check_known({"no-special", "json", "decode", "skip-special", "bench", "repeat"}); !s.is_ok()) return fail("tokenize", s);
  const auto& pos = args.positional();
  if (args.has("bench")) {
    if (pos.size() != 1) return fail("tokenize", invalid_argument(std::string("expected MODEL_DIR\n") + kUsage));
    auto repeat = args.get_int("repeat", 5);
    if (!repeat.is_ok()) return fail("tokenize", repeat.status());
    return bench(pos[0], args.get("bench"), std::max<int64_t>(1, *repeat));
  }
  bool decoding = args.has("decode");
  if (pos.size() != (decoding ? 1u : 2u)) return fail("tokenize", invalid_argument(std::string("expected MODEL_DIR and TEXT\n") + kUsage));
  auto tok = Tokenizer::load(pos[0]);
  if (!tok.is_ok()) return fail("tokenize", tok.status());
  if (decoding) return decode_ids(*tok, args.get("decode"), args.has("skip-special"));
  bool special = !args.has("no-special");
  auto ids = tok->encode(pos[1], special, special);
  if (!ids.is_ok()) return fail("tokenize", ids.status());
  nlohmann::json tokens = nlohmann::json::array(), pieces = nlohmann::json::array();
  for (int32_t id : *ids) {
    tokens.push_back(tok->id_to_token(id).value_or(""));
    auto piece = tok->decode(std::span<const int32_t>(&id, 1));
    pieces.push_back(piece.is_ok() ? *piece : "");
  }
  if (args.has("json")) {
    nlohmann::json out = {{"ids", *ids}, {"tokens", tokens}, {"pieces", pieces}};
    std::printf("%s\n", out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
    return 0;
  }
  std::string line;
  for (size_t i = 0; i < ids->size(); ++i) {
    if (i) line += ' ';
    line += std::to_string((*ids)[i]);
  }
  std::printf("ids (%zu): %s\n", ids->size(), line.c_str());
  for (size_t i = 0; i < ids->size(); ++i)
    std::printf("%8d  %-24s  \"%s\"\n", (*ids)[i], escape_visible(tokens[i].get<std::string>()).c_str(),
                escape_visible(pieces[i].get<std::string>()).c_str());
  return 0;
}

}  // namespace

NB_REGISTER_COMMAND(tokenize_cmd, "tokenize", "encode text with a model's tokenizer (ids and pieces), decode ids, benchmark",
                    kUsage, run);

}  // namespace nb::cli
