// Against the real writer: checkpoints made by the official compressed-tensors library
// (tools/fixtures/ct_make_fixtures.py, committed under tests/data/quant/ct/). Bit for bit:
//  - nibble's loader + dequantization == the library's decompression;
//  - nibble's quantizer + packer on the same dense weight == the library's compressed tensors;
//  - `nibble quantize` output, decompressed by the library (ct_check_roundtrip.py), == nibble's own
//    dequantization of it.
#include <gtest/gtest.h>

#include <filesystem>
#include <sstream>

#include "quant/compressed_tensors.h"
#include "quant/quant_config.h"
#include "quant/quantizer.h"
#include "quant/writer.h"
#include "quant_test_util.h"

namespace nb::quant {
namespace {

namespace fs = std::filesystem;
const std::string kFixtures = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/quant/ct";
const char* kHowTo = "run tools/fixtures/ct_make_fixtures.py --nibble build/nibble (needs torch + compressed-tensors)";

std::vector<std::string> fixture_dirs() {
  std::vector<std::string> dirs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(kFixtures, ec))
    if (e.is_directory() && fs::exists(e.path() / "reference.safetensors")) dirs.push_back(e.path().string());
  std::sort(dirs.begin(), dirs.end());
  return dirs;
}

struct Fixture {
  Checkpoint ck;
  QuantConfig qc;
  SafetensorsFile ref;
};

Fixture open_fixture(const std::string& dir) {
  Result<Checkpoint> ck = Checkpoint::open_dir(dir);
  EXPECT_TRUE(ck.is_ok()) << ck.status().to_string();
  Result<QuantConfig> qc = load_quant_config(dir);
  EXPECT_TRUE(qc.is_ok()) << qc.status().to_string();
  Result<SafetensorsFile> ref = SafetensorsFile::open(dir + "/reference.safetensors");
  EXPECT_TRUE(ref.is_ok()) << ref.status().to_string();
  return {std::move(ck).value(), std::move(qc).value(), std::move(ref).value()};
}

bool ends_with(const std::string& s, const std::string& x) {
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}

void expect_same_bytes(const HostTensor& got, const TensorInfo& want, const std::string& what) {
  ASSERT_EQ(got.dtype(), want.dtype) << what;
  ASSERT_EQ(got.shape(), want.shape) << what;
  ASSERT_EQ(got.nbytes(), want.nbytes()) << what;
  size_t first_diff = got.nbytes();
  for (size_t i = 0; i < got.nbytes() && first_diff == got.nbytes(); ++i)
    if (static_cast<const uint8_t*>(got.data())[i] != want.data[i]) first_diff = i;
  EXPECT_EQ(first_diff, got.nbytes()) << what << ": first differing byte " << first_diff;
}

TEST(CtFixtures, LibraryCheckpointsDequantizeBitExactly) {
  const std::vector<std::string> dirs = fixture_dirs();
  if (dirs.empty()) GTEST_SKIP() << "no compressed-tensors fixtures in " << kFixtures << ": " << kHowTo;
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir);
    Fixture f = open_fixture(dir);
    int modules = 0;
    for (const TensorInfo& t : f.ref.tensors()) {
      if (!ends_with(t.name, ".dequant")) continue;
      const std::string prefix = t.name.substr(0, t.name.size() - 8);
      Result<LinearWeight> w = load_linear(f.ck, f.qc, prefix, t.shape[0], t.shape[1]);
      ASSERT_TRUE(w.is_ok()) << w.status().to_string();
      ASSERT_TRUE(w->is_quantized()) << prefix;
      expect_same_bytes(dequantize(*w->quantized, w->quantized->scale_dtype()), t, prefix);
      ++modules;
    }
    EXPECT_GT(modules, 0);
  }
}

TEST(CtFixtures, QuantizerMatchesTheLibraryBitForBit) {
  const std::vector<std::string> dirs = fixture_dirs();
  if (dirs.empty()) GTEST_SKIP() << "no compressed-tensors fixtures in " << kFixtures << ": " << kHowTo;
  for (const auto& dir : dirs) {
    SCOPED_TRACE(dir);
    Fixture f = open_fixture(dir);
    for (const TensorInfo& t : f.ref.tensors()) {
      if (!ends_with(t.name, ".input")) continue;
      const std::string prefix = t.name.substr(0, t.name.size() - 6);
      std::optional<QuantScheme> s = f.qc.scheme_for(prefix);
      if (!s) {  // left dense: stored as given
        const TensorInfo* w = f.ck.find(prefix + ".weight");
        ASSERT_NE(w, nullptr) << prefix;
        expect_same_bytes(copy_tensor(t, t.shape), *w, prefix);
        continue;
      }
      if (s->act_order) continue;  // round-to-nearest has no activation order; loading is checked above
      HostTensor input = copy_tensor(t, t.shape);
      Result<QuantizedWeight> q = quantize_rtn(input.view(), {s->bits, s->strategy, s->group_size, s->symmetric});
      ASSERT_TRUE(q.is_ok()) << q.status().to_string();
      for (const NamedTensor& nt : compressed_tensors_tensors(prefix, *q)) {
        const TensorInfo* lib = f.ck.find(nt.name);
        ASSERT_NE(lib, nullptr) << nt.name;
        HostTensor mine(nt.dtype, nt.shape);
        std::memcpy(mine.data(), nt.data.data(), nt.data.size());
        expect_same_bytes(mine, *lib, nt.name);
      }
    }
  }
}

// "--scheme w4a16 --group-size 32 --asym" → options, as the CLI parses them.
QuantizeCheckpointOptions parse_args(const std::string& args) {
  QuantizeCheckpointOptions o;
  o.progress = false;
  std::istringstream in(args);
  std::string a;
  while (in >> a) {
    if (a == "--scheme") {
      in >> a;
      o.spec.bits = a == "w8a16" ? 8 : 4;
    } else if (a == "--group-size") {
      in >> a;
      if (a == "channel" || a == "-1") {
        o.spec.strategy = QuantStrategy::kChannel;
        o.spec.group_size = 0;
      } else {
        o.spec.group_size = std::stoll(a);
      }
    } else if (a == "--asym") {
      o.spec.symmetric = false;
    } else {
      ADD_FAILURE() << "unknown argument in fixture metadata: " << a;
    }
  }
  return o;
}

TEST(CtFixtures, NibbleQuantizeDecompressedByTheLibrary) {
  std::vector<std::string> refs;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(kFixtures, ec)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("nibble_", 0) == 0 && ends_with(name, ".safetensors")) refs.push_back(e.path().string());
  }
  if (refs.empty() || !fs::exists(kFixtures + "/nibble_input/config.json"))
    GTEST_SKIP() << "no nibble_*.safetensors references in " << kFixtures << ": " << kHowTo;
  std::sort(refs.begin(), refs.end());
  for (const auto& path : refs) {
    SCOPED_TRACE(path);
    Result<SafetensorsFile> ref = SafetensorsFile::open(path);
    ASSERT_TRUE(ref.is_ok()) << ref.status().to_string();
    auto args = ref->metadata().find("args");
    ASSERT_NE(args, ref->metadata().end());
    testing::TempDir tmp;
    Result<QuantizeCheckpointReport> rep =
        quantize_checkpoint(kFixtures + "/nibble_input", tmp.sub("out"), parse_args(args->second));
    ASSERT_TRUE(rep.is_ok()) << rep.status().to_string();
    Result<Checkpoint> ck = Checkpoint::open_dir(tmp.sub("out"));
    Result<QuantConfig> qc = load_quant_config(tmp.sub("out"));
    ASSERT_TRUE(ck.is_ok() && qc.is_ok());
    int modules = 0;
    for (const TensorInfo& t : ref->tensors()) {
      const std::string prefix = t.name.substr(0, t.name.size() - 8);
      Result<LinearWeight> w = load_linear(*ck, *qc, prefix, t.shape[0], t.shape[1]);
      ASSERT_TRUE(w.is_ok()) << w.status().to_string();
      ASSERT_TRUE(w->is_quantized());
      expect_same_bytes(dequantize(*w->quantized, w->quantized->scale_dtype()), t, prefix);
      ++modules;
    }
    EXPECT_EQ(modules, rep->quantized);
  }
}

}  // namespace
}  // namespace nb::quant
