// safetensors reader / writer / checkpoint tests. Truths used: hand-built files (header JSON written
// here, byte by byte), the byte vectors of the reference implementation's own unit tests, a file
// written by the reference writer (tests/data/io/ref.safetensors, see
// tools/fixtures/make_safetensors_ref.py) with its numpy-side sidecar, and huggingface_hub's
// greedy sharding rule worked out by hand.
#include <gtest/gtest.h>
#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include <cstring>
#include <initializer_list>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "core/mmap.h"
#include "io/safetensors.h"

namespace nb {
namespace {

using Bytes = std::vector<uint8_t>;

// 8-byte little-endian header length + header text + data.
Bytes build_file(const std::string& header, const Bytes& data, int64_t n_override = -1) {
  uint64_t n = n_override >= 0 ? static_cast<uint64_t>(n_override) : header.size();
  // Sized once and filled by copy: GCC 12 misreads insert() into a fresh 8-byte vector as an
  // out-of-bounds memcpy (-Warray-bounds).
  Bytes out(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(n >> (8 * i));
  std::copy(header.begin(), header.end(), out.begin() + 8);
  std::copy(data.begin(), data.end(), out.begin() + 8 + static_cast<ptrdiff_t>(header.size()));
  return out;
}

Bytes random_bytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(1 + rng() % 255);  // never zero
  return b;
}

std::string make_temp_dir(const std::string& tag) {
  std::string tmpl = ::testing::TempDir() + "nb_io_" + tag + "_XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  const char* d = mkdtemp(buf.data());
  EXPECT_NE(d, nullptr);
  return d ? std::string(d) : tmpl;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> out;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d))
      if (std::string(e->d_name) != "." && std::string(e->d_name) != "..") out.push_back(e->d_name);
    closedir(d);
  }
  std::sort(out.begin(), out.end());
  return out;
}

void write_bytes(const std::string& path, const Bytes& b) {
  ASSERT_TRUE(write_text_file(path, std::string(b.begin(), b.end())).is_ok()) << path;
}

Bytes read_bytes(const std::string& path) {
  Result<std::string> s = read_text_file(path);
  EXPECT_TRUE(s.is_ok()) << s.status().to_string();
  return s.is_ok() ? Bytes(s->begin(), s->end()) : Bytes{};
}

template <typename T>
void expect_error(const Result<T>& r, std::initializer_list<const char*> needles) {
  ASSERT_FALSE(r.is_ok()) << "expected an error containing '" << *needles.begin() << "'";
  for (const char* n : needles) EXPECT_NE(r.status().message().find(n), std::string::npos)
      << "message: " << r.status().message() << "\nmissing: " << n;
}

Result<SafetensorsFile> parse_bytes(const Bytes& b) { return SafetensorsFile::parse("bad.safetensors", b.data(), b.size()); }

Bytes tensor_bytes(const TensorInfo& t) { return Bytes(t.data, t.data + t.nbytes()); }

// ---- reader on hand-built files ---------------------------------------------------------------

TEST(SafetensorsRead, HandBuiltUnalignedOffsetsAnyKeyOrder) {
  // Keys out of offset order, odd header length (data starts unaligned), F32 at offset 3, no padding.
  std::string header =
      R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[3,11]},"__metadata__":{"a":"bc"},)"
      R"("b":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},"s":{"dtype":"I16","shape":[],"data_offsets":[11,13]}})";
  ASSERT_EQ(header.size() % 2, 1u);
  Bytes data = random_bytes(13, 1);
  Bytes file = build_file(header, data);
  Result<SafetensorsFile> f = parse_bytes(file);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  ASSERT_EQ(f->tensors().size(), 3u);
  EXPECT_EQ(f->tensors()[0].name, "b");  // sorted by name
  EXPECT_EQ(f->tensors()[1].name, "s");
  EXPECT_EQ(f->tensors()[2].name, "w");
  const TensorInfo* w = f->find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (Shape{2}));
  EXPECT_EQ(tensor_bytes(*w), Bytes(data.begin() + 3, data.begin() + 11));
  float v[2];
  std::memcpy(v, w->data, 8);  // unaligned: copy before typed access
  float expect0;
  std::memcpy(&expect0, data.data() + 3, 4);
  EXPECT_EQ(std::memcmp(&v[0], &expect0, 4), 0);
  const TensorInfo* s = f->find("s");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  EXPECT_EQ(s->numel(), 1);
  EXPECT_EQ(tensor_bytes(*s), Bytes(data.begin() + 11, data.end()));
  EXPECT_EQ(f->metadata().at("a"), "bc");
  EXPECT_EQ(f->find("nope"), nullptr);
}

TEST(SafetensorsRead, ZeroSizedTensorsShareOffsets) {
  std::string header = R"({"e1":{"dtype":"F32","shape":[0,4],"data_offsets":[0,0]},)"
                       R"("e2":{"dtype":"BF16","shape":[3,0],"data_offsets":[0,0]},)"
                       R"("x":{"dtype":"I8","shape":[2],"data_offsets":[0,2]}}   )";
  Result<SafetensorsFile> f = parse_bytes(build_file(header, random_bytes(2, 2)));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->find("e1")->nbytes(), 0u);
  EXPECT_EQ(f->find("x")->nbytes(), 2u);
}

// Byte vectors from the reference implementation's own tests (safetensors/src/tensor.rs,
// test_serialization / test_serialization_forced_alignement / test_empty).
TEST(SafetensorsRead, ReferenceImplementationVectors) {
  std::string h1 = R"({"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}})";
  ASSERT_EQ(h1.size(), 64u);
  Bytes data = {0, 0, 0, 0, 0, 0, 128, 63, 0, 0, 0, 64, 0, 0, 64, 64, 0, 0, 128, 64, 0, 0, 160, 64};
  Result<SafetensorsFile> f = parse_bytes(build_file(h1, data));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  const TensorInfo* t = f->find("attn.0");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->shape, (Shape{1, 2, 3}));
  for (int i = 0; i < 6; ++i) EXPECT_EQ(load_as_float(t->data, DType::kF32, static_cast<size_t>(i)), float(i));

  std::string h2 = R"({"attn0":{"dtype":"F32","shape":[1,1,2,3],"data_offsets":[0,24]}}       )";
  ASSERT_EQ(h2.size(), 72u);
  f = parse_bytes(build_file(h2, data));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->find("attn0")->shape, (Shape{1, 1, 2, 3}));

  Bytes empty = {8, 0, 0, 0, 0, 0, 0, 0, 123, 125, 32, 32, 32, 32, 32, 32};
  f = parse_bytes(empty);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_TRUE(f->tensors().empty());
  f = parse_bytes(build_file(R"({"__metadata__":{"framework":"pt"}}     )", {}));
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("framework"), "pt");
}

// ---- reader errors ------------------------------------------------------------------------------

const char* kGoodHeader = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"BF16","shape":[3],"data_offsets":[8,14]}})";

TEST(SafetensorsErrors, Truncated) {
  Bytes good = build_file(kGoodHeader, random_bytes(14, 3));
  ASSERT_TRUE(parse_bytes(good).is_ok());
  expect_error(parse_bytes(Bytes(good.begin(), good.begin() + 5)), {"bad.safetensors", "at least 8 bytes", "5-byte"});
  expect_error(parse_bytes(Bytes(good.begin(), good.begin() + 40)), {"bad.safetensors", "header length", "truncated"});
  expect_error(parse_bytes(Bytes(good.begin(), good.end() - 1)), {"bad.safetensors", "file truncated"});
}

TEST(SafetensorsErrors, HeaderNotJsonNotObjectTooLarge) {
  expect_error(parse_bytes(build_file(R"({"a": [1, 2)", {})), {"bad.safetensors", "invalid JSON"});
  expect_error(parse_bytes(build_file(R"([1, 2])", {})), {"bad.safetensors", "expected a JSON object starting with '{'"});
  expect_error(parse_bytes(build_file("", {})), {"bad.safetensors", "empty header"});
  expect_error(parse_bytes(build_file("{}", {}, 100000001)), {"bad.safetensors", "header too large", "100000001"});
  expect_error(parse_bytes(build_file(R"({"a":1})", {})), {"bad.safetensors", "tensor 'a'", "expected an object"});
  // Trailing garbage after the object (only spaces may pad it).
  expect_error(parse_bytes(build_file("{}  x", {})), {"bad.safetensors", "invalid JSON"});
}

void expect_tensor_error(const std::string& header, size_t data_size, const char* tensor, const char* what) {
  SCOPED_TRACE(header);
  expect_error(parse_bytes(build_file(header, random_bytes(data_size, 4))), {"bad.safetensors", tensor, what});
}

TEST(SafetensorsErrors, PerTensorFields) {
  expect_tensor_error(R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", 8, "tensor 'w'", "\"F33\"");
  expect_tensor_error(R"({"w":{"shape":[2],"data_offsets":[0,8]}})", 8, "tensor 'w'", "dtype");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8, "tensor 'w'", "shape[0]");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", 8, "tensor 'w'", "non-negative integer");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})", 8, "tensor 'w'", "shape");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8, "tensor 'w'", "data_offsets");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,-8]}})", 8, "tensor 'w'", "data_offsets");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8, "tensor 'w'", "end >= begin");
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1e30]}})", 8, "tensor 'w'", "data_offsets");
  // Size mismatch: 3 F32 need 12 bytes.
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8, "tensor 'w'", "expected 12 bytes");
  // 3 x F4 = 12 bits: not a whole number of bytes.
  expect_tensor_error(R"({"w":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2, "tensor 'w'", "multiple of 8");
  // Element count and byte size overflows.
  expect_tensor_error(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296,2],"data_offsets":[0,8]}})", 8,
                      "tensor 'w'", "overflows");
  expect_tensor_error(R"({"w":{"dtype":"F64","shape":[1152921504606846976,2],"data_offsets":[0,8]}})", 8, "tensor 'w'",
                      "overflows");
}

TEST(SafetensorsErrors, Layout) {
  // Out of range: the last tensor ends past the buffer.
  expect_error(parse_bytes(build_file(R"({"w":{"dtype":"U8","shape":[16],"data_offsets":[0,16]}})", random_bytes(8, 5))),
               {"bad.safetensors", "file truncated"});
  // Overlap.
  expect_tensor_error(R"({"a":{"dtype":"U8","shape":[8],"data_offsets":[0,8]},"b":{"dtype":"U8","shape":[4],"data_offsets":[4,8]}})",
                      8, "tensor 'b'", "overlap");
  // Hole.
  expect_tensor_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}})",
                      10, "tensor 'b'", "a hole");
  // First tensor not at 0.
  expect_tensor_error(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}})", 6, "tensor 'a'", "start of the buffer");
  // Trailing unindexed bytes.
  expect_error(parse_bytes(build_file(R"({"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}})", random_bytes(7, 6))),
               {"bad.safetensors", "trailing unindexed bytes", "7 bytes"});
}

TEST(SafetensorsErrors, DuplicateKeysAndMetadata) {
  expect_error(parse_bytes(build_file(R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                                      random_bytes(2, 7))),
               {"bad.safetensors", "duplicate key 'a'"});
  expect_error(parse_bytes(build_file(R"({"a":{"dtype":"U8","dtype":"I8","shape":[1],"data_offsets":[0,1]}})", random_bytes(1, 8))),
               {"bad.safetensors", "duplicate key 'dtype'"});
  expect_error(parse_bytes(build_file(R"({"__metadata__":{"k":1}})", {})), {"bad.safetensors", "__metadata__ key 'k'", "expected a string"});
  expect_error(parse_bytes(build_file(R"({"__metadata__":{"k":{"x":"y"}}})", {})), {"bad.safetensors", "'k'", "expected a string"});
  expect_error(parse_bytes(build_file(R"({"__metadata__":["x"]})", {})), {"bad.safetensors", "__metadata__", "expected an object"});
}

// ---- writer -------------------------------------------------------------------------------------

struct Spec {
  std::string name;
  DType dtype;
  Shape shape;
  Bytes data;
};

std::vector<Spec> random_specs() {
  std::vector<Spec> s = {
      {"model.layers.1.w", DType::kBF16, {3, 5}, {}},  {"model.layers.0.w", DType::kBF16, {7}, {}},
      {"model.layers.0.q", DType::kI32, {2, 3}, {}},   {"lm_head.weight", DType::kF32, {5, 3}, {}},
      {"z.bytes", DType::kU8, {13}, {}},               {"a.scalar", DType::kF64, {}, {}},
      {"a.empty", DType::kF16, {0, 9}, {}},            {"b.i64", DType::kI64, {3}, {}},
      {"c.f16", DType::kF16, {1, 3}, {}},              {"d.bool", DType::kBool, {5}, {}},
  };
  uint32_t seed = 100;
  for (Spec& t : s) t.data = random_bytes(dtype_bytes(t.dtype, static_cast<size_t>(shape_numel(t.shape))), seed++);
  return s;
}

TEST(SafetensorsWriter, RoundTripLayoutAndMetadata) {
  std::string dir = make_temp_dir("writer");
  std::string path = path_join(dir, "out.safetensors");
  std::vector<Spec> specs = random_specs();
  {
    SafetensorsWriter w(path);
    for (const Spec& t : specs) ASSERT_TRUE(w.add(t.name, t.dtype, t.shape, t.data.data()).is_ok());
    ASSERT_TRUE(w.finish({{"quant", "w4a16"}}).is_ok());
  }
  Bytes file = read_bytes(path);
  ASSERT_GE(file.size(), 8u);
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | file[static_cast<size_t>(i)];
  EXPECT_EQ(n % 8, 0u);  // header padded to 8
  Result<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("quant"), "w4a16");
  ASSERT_EQ(f->tensors().size(), specs.size());
  for (const Spec& t : specs) {
    const TensorInfo* info = f->find(t.name);
    ASSERT_NE(info, nullptr) << t.name;
    EXPECT_EQ(info->dtype, t.dtype) << t.name;
    EXPECT_EQ(info->shape, t.shape) << t.name;
    EXPECT_EQ(tensor_bytes(*info), t.data) << t.name;
    EXPECT_EQ(info->begin % static_cast<uint64_t>(dtype_bits(t.dtype) / 8), 0u) << t.name << ": dtype-sorted layout";
    EXPECT_EQ(info->file, path);
  }
  // Descending dtype (enum order ... F32, C64, F64, I64, U64), then name.
  EXPECT_EQ(f->find("b.i64")->begin, 0u);
  EXPECT_EQ(f->find("a.scalar")->begin, 24u);
  EXPECT_EQ(f->find("z.bytes")->end + 8 + n, file.size() - 5);  // BOOL last
  EXPECT_LT(f->find("model.layers.0.w")->begin, f->find("model.layers.1.w")->begin);
  // No temporary left behind: the directory holds only the output.
  EXPECT_EQ(list_dir(dir), std::vector<std::string>{"out.safetensors"});
}

TEST(SafetensorsWriter, CallerMetadataWinsAndMisuseIsAnError) {
  std::string path = path_join(make_temp_dir("writer2"), "x.safetensors");
  SafetensorsWriter w(path);
  Bytes d = random_bytes(4, 9);
  ASSERT_TRUE(w.add("t", DType::kF32, {1}, d.data()).is_ok());
  Status dup = w.add("t", DType::kF32, {1}, d.data());
  EXPECT_FALSE(dup.is_ok());
  EXPECT_NE(dup.message().find("'t'"), std::string::npos) << dup.message();
  EXPECT_FALSE(w.add("__metadata__", DType::kF32, {1}, d.data()).is_ok());
  EXPECT_FALSE(w.add("f4", DType::kF4, {3}, d.data()).is_ok());
  EXPECT_FALSE(w.add(std::string("bad\xff"), DType::kF32, {1}, d.data()).is_ok());
  ASSERT_TRUE(w.finish({{"format", "mlx"}}).is_ok());
  EXPECT_FALSE(w.finish().is_ok());
  EXPECT_FALSE(w.add("u", DType::kF32, {1}, d.data()).is_ok());
  Result<SafetensorsFile> f = SafetensorsFile::open(path);
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  EXPECT_EQ(f->metadata().at("format"), "mlx");
}

// huggingface_hub split_state_dict_into_shards, worked by hand for sizes 40, 40, 100, 30 bytes
// with a 64-byte limit: [t1] [t3 alone: over the limit] [t2] [t4].
TEST(SafetensorsWriter, NonUtf8MetadataIsAnError) {
  std::string dir = make_temp_dir("writer3");
  SafetensorsWriter w(path_join(dir, "x.safetensors"));
  Bytes d = random_bytes(4, 10);
  ASSERT_TRUE(w.add("t", DType::kF32, {1}, d.data()).is_ok());
  Status st = w.finish({{"note", "\xc3("}});
  ASSERT_FALSE(st.is_ok());
  EXPECT_NE(st.message().find("'note'"), std::string::npos) << st.message();
  EXPECT_TRUE(list_dir(dir).empty());  // no output, no temporary
}

TEST(SafetensorsWriter, ShardedRoundTrip) {
  std::string dir = path_join(make_temp_dir("shards"), "ckpt");
  std::vector<Spec> specs = {{"t1", DType::kF32, {10}, random_bytes(40, 11)},
                             {"t2", DType::kBF16, {4, 5}, random_bytes(40, 12)},
                             {"t3", DType::kU8, {100}, random_bytes(100, 13)},
                             {"t4", DType::kI16, {15}, random_bytes(30, 14)}};
  {
    SafetensorsWriter w(dir, 64);
    for (const Spec& t : specs) ASSERT_TRUE(w.add(t.name, t.dtype, t.shape, t.data.data()).is_ok());
    ASSERT_TRUE(w.finish().is_ok());
  }
  Result<std::string> index_text = read_text_file(path_join(dir, "model.safetensors.index.json"));
  ASSERT_TRUE(index_text.is_ok());
  nlohmann::json index = nlohmann::json::parse(*index_text);
  EXPECT_EQ(index["metadata"]["total_size"], 210);
  EXPECT_EQ(index["weight_map"]["t1"], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["t3"], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["t2"], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"]["t4"], "model-00004-of-00004.safetensors");
  EXPECT_FALSE(file_exists(path_join(dir, "model.safetensors")));

  Result<Checkpoint> c = Checkpoint::open_dir(dir);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->num_files(), 4u);
  EXPECT_EQ(c->total_bytes(), 210u);
  EXPECT_EQ(c->names(), (std::vector<std::string>{"t1", "t2", "t3", "t4"}));
  for (const Spec& t : specs) {
    Result<const TensorInfo*> info = c->get(t.name);
    ASSERT_TRUE(info.is_ok()) << info.status().to_string();
    EXPECT_EQ(tensor_bytes(**info), t.data);
    EXPECT_EQ((*info)->shape, t.shape);
  }
  expect_error(c->get("t5"), {"'t5'", "not found", dir.c_str()});
}

TEST(SafetensorsWriter, OneShardIsPlainModelSafetensors) {
  std::string dir = path_join(make_temp_dir("oneshard"), "ckpt");
  Bytes d = random_bytes(12, 15);
  SafetensorsWriter w(dir, 1 << 20);
  ASSERT_TRUE(w.add("x", DType::kF32, {3}, d.data()).is_ok());
  ASSERT_TRUE(w.finish().is_ok());
  EXPECT_TRUE(file_exists(path_join(dir, "model.safetensors")));
  EXPECT_FALSE(file_exists(path_join(dir, "model.safetensors.index.json")));
  Result<Checkpoint> c = Checkpoint::open_dir(dir);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(tensor_bytes(*c->find("x")), d);
}

// ---- the reference writer's file ----------------------------------------------------------------

Bytes from_hex(const std::string& hex) {
  Bytes b;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) b.push_back(static_cast<uint8_t>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  return b;
}

DType numpy_dtype(const std::string& s) {
  static const std::map<std::string, DType> m = {
      {"float32", DType::kF32}, {"bfloat16", DType::kBF16}, {"float16", DType::kF16}, {"int32", DType::kI32},
      {"int64", DType::kI64},   {"int8", DType::kI8},       {"uint8", DType::kU8},    {"bool", DType::kBool},
      {"float64", DType::kF64}, {"uint16", DType::kU16},    {"int16", DType::kI16}};
  EXPECT_TRUE(m.count(s)) << s;
  return m.count(s) ? m.at(s) : DType::kU8;
}

TEST(SafetensorsReference, ReadsAndReproducesReferenceWriterFile) {
  const std::string data_dir = std::string(NIBBLE_SOURCE_DIR) + "/tests/data/io/";
  Result<std::string> sidecar = read_text_file(data_dir + "ref_expected.json");
  ASSERT_TRUE(sidecar.is_ok()) << sidecar.status().to_string();
  nlohmann::json expected = nlohmann::json::parse(*sidecar)["tensors"];
  Result<SafetensorsFile> f = SafetensorsFile::open(data_dir + "ref.safetensors");
  ASSERT_TRUE(f.is_ok()) << f.status().to_string();
  ASSERT_EQ(f->tensors().size(), expected.size());
  std::string out = path_join(make_temp_dir("ref"), "mine.safetensors");
  SafetensorsWriter w(out);
  // Add in reverse name order: the writer must impose the reference order itself.
  std::vector<std::string> names;
  for (auto it = expected.begin(); it != expected.end(); ++it) names.insert(names.begin(), it.key());
  std::vector<Bytes> keep;
  for (const std::string& name : names) {
    const nlohmann::json& e = expected[name];
    const TensorInfo* t = f->find(name);
    ASSERT_NE(t, nullptr) << name;
    DType dt = numpy_dtype(e["dtype"]);
    EXPECT_EQ(t->dtype, dt) << name;
    EXPECT_EQ(t->shape, e["shape"].get<Shape>()) << name;
    keep.push_back(from_hex(e["hex"]));
    EXPECT_EQ(tensor_bytes(*t), keep.back()) << name;
    ASSERT_TRUE(w.add(name, dt, e["shape"].get<Shape>(), keep.back().data()).is_ok());
  }
  ASSERT_TRUE(w.finish().is_ok());
  Bytes mine = read_bytes(out), ref = read_bytes(data_dir + "ref.safetensors");
  EXPECT_EQ(mine.size(), ref.size());
  EXPECT_TRUE(mine == ref) << "nibble's writer differs from the reference writer's bytes";
}

// ---- checkpoints --------------------------------------------------------------------------------

void write_file_with(const std::string& path, const std::vector<Spec>& specs) {
  SafetensorsWriter w(path);
  for (const Spec& t : specs) ASSERT_TRUE(w.add(t.name, t.dtype, t.shape, t.data.data()).is_ok());
  ASSERT_TRUE(w.finish().is_ok());
}

TEST(Checkpoint, DirectoryForms) {
  std::string empty = make_temp_dir("ck_empty");
  expect_error(Checkpoint::open_dir(empty), {empty.c_str(), "model.safetensors", "model.safetensors.index.json", "*.safetensors"});
  expect_error(Checkpoint::open_dir(empty + "/missing"), {"missing", "not a directory"});

  std::string one = make_temp_dir("ck_one");
  write_file_with(path_join(one, "adapter_model.safetensors"), {{"x", DType::kF32, {2}, random_bytes(8, 20)}});
  Result<Checkpoint> c = Checkpoint::open_dir(one);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_NE(c->find("x"), nullptr);
  EXPECT_EQ(c->location(), one);

  write_file_with(path_join(one, "other.safetensors"), {{"y", DType::kF32, {2}, random_bytes(8, 21)}});
  expect_error(Checkpoint::open_dir(one), {"adapter_model.safetensors", "other.safetensors", "exactly one"});
  // model.safetensors takes precedence.
  write_file_with(path_join(one, "model.safetensors"), {{"z", DType::kF32, {2}, random_bytes(8, 22)}});
  c = Checkpoint::open_dir(one);
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->names(), std::vector<std::string>{"z"});

  Result<Checkpoint> file = Checkpoint::open_file(path_join(one, "other.safetensors"));
  ASSERT_TRUE(file.is_ok());
  EXPECT_EQ(file->names(), std::vector<std::string>{"y"});
  expect_error(Checkpoint::open_file(path_join(one, "nope.safetensors")), {"nope.safetensors", "cannot open"});
}

// A two-shard checkpoint written by hand, with an index we then corrupt in each way.
class CheckpointIndex : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = make_temp_dir("ck_index");
    write_file_with(path_join(dir_, "s1.safetensors"), {{"a", DType::kF32, {2}, random_bytes(8, 30)},
                                                          {"b", DType::kU8, {3}, random_bytes(3, 31)}});
    write_file_with(path_join(dir_, "s2.safetensors"), {{"c", DType::kBF16, {2, 2}, random_bytes(8, 32)}});
  }
  Result<Checkpoint> open_with(const std::string& index) {
    EXPECT_TRUE(write_text_file(path_join(dir_, "model.safetensors.index.json"), index).is_ok());
    return Checkpoint::open_dir(dir_);
  }
  std::string dir_;
};

TEST_F(CheckpointIndex, Valid) {
  Result<Checkpoint> c = open_with(R"({"metadata":{"total_size":19,"total_parameters":9},
    "weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}})");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->num_files(), 2u);
  EXPECT_EQ(c->total_bytes(), 19u);
  EXPECT_EQ(c->find("c")->file, path_join(dir_, "s2.safetensors"));
  // total_size written as an integral float by some writers.
  EXPECT_TRUE(open_with(R"({"metadata":{"total_size":19.0},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}})").is_ok());
}

TEST_F(CheckpointIndex, Errors) {
  expect_error(open_with(R"({"weight_map":{"a":"s1.safetensors","c":"s3.safetensors"}})"),
               {"model.safetensors.index.json", "s3.safetensors", "does not exist", "'c'"});
  expect_error(open_with(R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s1.safetensors"}})"),
               {"model.safetensors.index.json", "tensor 'c'", "s1.safetensors", "does not contain"});
  expect_error(open_with(R"({"metadata":{"total_size":20},"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s2.safetensors"}})"),
               {"total_size", "expected 19", "got 20"});
  expect_error(open_with(R"({"weight_map":{"a":"../s1.safetensors"}})"), {"tensor 'a'", "inside the checkpoint directory", "../s1"});
  expect_error(open_with(R"({"weight_map":{"a":"/etc/passwd"}})"), {"tensor 'a'", "inside the checkpoint directory"});
  expect_error(open_with(R"({"weight_map":{"a":1}})"), {"model.safetensors.index.json", "weight_map.a", "shard file name"});
  expect_error(open_with(R"({"metadata":{}})"), {"model.safetensors.index.json", "weight_map", "missing"});
  expect_error(open_with(R"({"weight_map":)"), {"model.safetensors.index.json", "invalid JSON"});
  // A tensor present in two shards.
  write_file_with(path_join(dir_, "s3.safetensors"), {{"a", DType::kF32, {2}, random_bytes(8, 33)}});
  expect_error(open_with(R"({"weight_map":{"a":"s1.safetensors","b":"s1.safetensors","c":"s3.safetensors"}})"),
               {"tensor 'a'", "s1.safetensors", "s3.safetensors", "both"});
  // A broken shard: its own error, naming the shard.
  write_bytes(path_join(dir_, "s4.safetensors"), Bytes{1, 2, 3});
  expect_error(open_with(R"({"weight_map":{"a":"s4.safetensors"}})"), {"s4.safetensors", "at least 8 bytes"});
}

}  // namespace
}  // namespace nb
