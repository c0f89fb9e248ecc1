// safetensors: the reader (formats.md §1.1-1.3), checkpoints (single file, sharded §1.4) and the
// streaming writer.
#include "io/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "core/log.h"
#include "io/json_util.h"

namespace nb {

namespace {

constexpr uint64_t kMaxHeaderSize = 100000000;  // MAX_HEADER_SIZE of the reference reader

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// Parses the header JSON, rejecting duplicate keys at any depth (nlohmann keeps the last one
// silently; the reference reader refuses them).
Result<Json> parse_header_json(const std::string& name, const char* text, size_t size) {
  std::vector<std::set<std::string>> keys_per_object;
  std::string duplicate;
  auto callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys_per_object.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys_per_object.empty()) keys_per_object.pop_back();
    } else if (event == Json::parse_event_t::key && !keys_per_object.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys_per_object.back().insert(key).second && duplicate.empty()) duplicate = key;
    }
    return true;
  };
  Json j = Json::parse(text, text + size, callback, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    NB_ASSIGN_OR_RETURN(Json unused, parse_json(std::string_view(text, size), name + ": header"));
    (void)unused;
    return format_error(strformat("%s: header: invalid JSON", name.c_str()));
  }
  if (!duplicate.empty())
    return format_error(strformat("%s: header: duplicate key '%s' (keys must be unique)", name.c_str(),
                                  duplicate.c_str()));
  if (!j.is_object())
    return format_error(strformat("%s: header: expected a JSON object, got %s", name.c_str(),
                                  describe_json(j).c_str()));
  return j;
}

Status tensor_error(const std::string& file, const std::string& tensor, const std::string& what) {
  return format_error(strformat("%s: tensor '%s': %s", file.c_str(), tensor.c_str(), what.c_str()));
}

bool json_u64(const Json& v, uint64_t* out) {
  if (!v.is_number_unsigned()) return false;  // negative numbers are number_integer, floats number_float
  *out = v.get<uint64_t>();
  return true;
}

Status parse_shape(const std::string& file, const std::string& tensor, const Json& v, Shape* shape) {
  if (!v.is_array())
    return tensor_error(file, tensor, "shape: expected a list of non-negative integers, got " + describe_json(v));
  for (size_t i = 0; i < v.size(); ++i) {
    uint64_t d = 0;
    if (!json_u64(v[i], &d) || d > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return tensor_error(file, tensor, strformat("shape[%zu]: expected a non-negative integer, got %s", i,
                                                  describe_json(v[i]).c_str()));
    shape->push_back(static_cast<int64_t>(d));
  }
  return Status::ok();
}

Status parse_offsets(const std::string& file, const std::string& tensor, const Json& v, TensorInfo* t) {
  uint64_t b = 0, e = 0;
  if (!v.is_array() || v.size() != 2 || !json_u64(v[0], &b) || !json_u64(v[1], &e))
    return tensor_error(file, tensor,
                        "data_offsets: expected [begin, end] (two non-negative integers), got " + describe_json(v));
  if (e < b)
    return tensor_error(file, tensor, strformat("data_offsets: expected end >= begin, got [%llu, %llu]",
                                                static_cast<unsigned long long>(b), static_cast<unsigned long long>(e)));
  t->begin = b;
  t->end = e;
  return Status::ok();
}

// numel * bits must not overflow, must be a whole number of bytes and match the offsets.
Status check_tensor_size(const std::string& file, const TensorInfo& t) {
  uint64_t numel = 1;
  for (int64_t d : t.shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel))
      return tensor_error(file, t.name, "shape " + shape_to_string(t.shape) + ": element count overflows");
  }
  uint64_t bits = 0;
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_bits(t.dtype)), &bits))
    return tensor_error(file, t.name, "shape " + shape_to_string(t.shape) + ": byte size overflows");
  if (bits % 8 != 0)
    return tensor_error(file, t.name, strformat("expected numel * bits to be a multiple of 8, got %llu * %d (%s)",
                                                static_cast<unsigned long long>(numel), dtype_bits(t.dtype),
                                                dtype_name(t.dtype)));
  if (bits / 8 != t.end - t.begin)
    return tensor_error(file, t.name,
                        strformat("expected %llu bytes (%s %s), got data_offsets [%llu, %llu] (%llu bytes)",
                                  static_cast<unsigned long long>(bits / 8), dtype_name(t.dtype),
                                  shape_to_string(t.shape).c_str(), static_cast<unsigned long long>(t.begin),
                                  static_cast<unsigned long long>(t.end),
                                  static_cast<unsigned long long>(t.end - t.begin)));
  return Status::ok();
}

Result<TensorInfo> parse_tensor_entry(const std::string& file, const std::string& tensor, const Json& v) {
  if (!v.is_object())
    return tensor_error(file, tensor, "expected an object {dtype, shape, data_offsets}, got " + describe_json(v));
  TensorInfo t;
  t.name = tensor;
  t.file = file;
  auto dt = v.find("dtype");
  if (dt == v.end() || !dt->is_string())
    return tensor_error(file, tensor, "dtype: expected a dtype string, got " +
                                          (dt == v.end() ? std::string("nothing") : describe_json(*dt)));
  if (!parse_dtype(dt->get_ref<const std::string&>(), &t.dtype))
    return tensor_error(file, tensor, "dtype: expected a safetensors dtype (BF16, F16, F32, I32, ...), got " +
                                          describe_json(*dt));
  auto sh = v.find("shape");
  if (sh == v.end()) return tensor_error(file, tensor, "shape: missing");
  NB_RETURN_IF_ERROR(parse_shape(file, tensor, *sh, &t.shape));
  auto off = v.find("data_offsets");
  if (off == v.end()) return tensor_error(file, tensor, "data_offsets: missing");
  NB_RETURN_IF_ERROR(parse_offsets(file, tensor, *off, &t));
  NB_RETURN_IF_ERROR(check_tensor_size(file, t));
  return t;
}

Status parse_metadata(const std::string& file, const Json& v, std::map<std::string, std::string>* out) {
  if (v.is_null()) return Status::ok();
  if (!v.is_object())
    return format_error(strformat("%s: __metadata__: expected an object of strings, got %s", file.c_str(),
                                  describe_json(v).c_str()));
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (!it->is_string())
      return format_error(strformat("%s: __metadata__ key '%s': expected a string, got %s", file.c_str(),
                                    it.key().c_str(), describe_json(*it).c_str()));
    (*out)[it.key()] = it->get<std::string>();
  }
  return Status::ok();
}

// Sorted by offsets, the tensors must tile [0, buffer_size) with no hole and no overlap.
Status check_layout(const std::string& file, const std::vector<TensorInfo>& tensors, uint64_t buffer_size) {
  std::vector<const TensorInfo*> order;
  for (const TensorInfo& t : tensors) order.push_back(&t);
  std::sort(order.begin(), order.end(), [](const TensorInfo* a, const TensorInfo* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t expect = 0;
  const TensorInfo* prev = nullptr;
  for (const TensorInfo* t : order) {
    if (t->begin != expect) {
      std::string after = prev ? "end of tensor '" + prev->name + "'" : std::string("start of the buffer");
      return tensor_error(file, t->name,
                          strformat("expected data_offsets begin %llu (%s), got %llu (%s)",
                                    static_cast<unsigned long long>(expect), after.c_str(),
                                    static_cast<unsigned long long>(t->begin),
                                    t->begin > expect ? "a hole" : "an overlap"));
    }
    expect = t->end;
    prev = t;
  }
  if (expect != buffer_size)
    return format_error(strformat("%s: expected the tensors to cover the whole data buffer of %llu bytes, "
                                  "got %llu bytes indexed (%s)",
                                  file.c_str(), static_cast<unsigned long long>(buffer_size),
                                  static_cast<unsigned long long>(expect),
                                  expect < buffer_size ? "trailing unindexed bytes" : "file truncated"));
  return Status::ok();
}

}  // namespace

Result<SafetensorsFile> SafetensorsFile::parse(const std::string& name, const uint8_t* data, size_t size) {
  if (size < 8)
    return format_error(strformat("%s: expected at least 8 bytes (header length), got a %zu-byte file",
                                  name.c_str(), size));
  uint64_t n = read_u64_le(data);
  if (n > kMaxHeaderSize)
    return format_error(strformat("%s: header too large: expected at most %llu bytes, got %llu", name.c_str(),
                                  static_cast<unsigned long long>(kMaxHeaderSize), static_cast<unsigned long long>(n)));
  if (8 + n > size)
    return format_error(strformat("%s: header length %llu runs past the end of the %zu-byte file (truncated?)",
                                  name.c_str(), static_cast<unsigned long long>(n), size));
  const char* header = reinterpret_cast<const char*>(data + 8);
  if (n == 0 || header[0] != '{')
    return format_error(strformat("%s: header: expected a JSON object starting with '{', got %s", name.c_str(),
                                  n == 0 ? "an empty header" : strformat("byte 0x%02x", data[8]).c_str()));
  NB_ASSIGN_OR_RETURN(Json root, parse_header_json(name, header, n));

  SafetensorsFile f;
  f.path_ = name;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == "__metadata__") {
      NB_RETURN_IF_ERROR(parse_metadata(name, *it, &f.metadata_));
      continue;
    }
    NB_ASSIGN_OR_RETURN(TensorInfo t, parse_tensor_entry(name, it.key(), *it));
    f.tensors_.push_back(std::move(t));
  }
  const uint64_t buffer_size = size - 8 - n;
  NB_RETURN_IF_ERROR(check_layout(name, f.tensors_, buffer_size));
  const uint8_t* buffer = data + 8 + n;
  for (TensorInfo& t : f.tensors_) t.data = buffer + t.begin;
  std::sort(f.tensors_.begin(), f.tensors_.end(),
            [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return f;
}

Result<SafetensorsFile> SafetensorsFile::open(const std::string& path) {
  NB_ASSIGN_OR_RETURN(MappedFile mapped, MappedFile::open(path));
  auto file = std::make_shared<MappedFile>(std::move(mapped));
  // The mapping does not move with the MappedFile object, so the tensor pointers stay valid.
  NB_ASSIGN_OR_RETURN(SafetensorsFile f, parse(path, file->data(), file->size()));
  f.file_ = std::move(file);
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = std::lower_bound(tensors_.begin(), tensors_.end(), name,
                             [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) return nullptr;
  return &*it;
}

}  // namespace nb

// ---------------------------------------------------------------------------------------------
// Checkpoint: one file, or shards resolved through model.safetensors.index.json.

namespace nb {

namespace {

// Shard names come from a JSON file: they must name a file inside the checkpoint directory.
Status check_shard_name(const std::string& index_path, const std::string& tensor, const std::string& shard) {
  bool bad = shard.empty() || shard[0] == '/' || shard.find('\0') != std::string::npos;
  size_t start = 0;
  while (!bad && start <= shard.size()) {
    size_t slash = shard.find('/', start);
    if (slash == std::string::npos) slash = shard.size();
    std::string part = shard.substr(start, slash - start);
    bad = part.empty() || part == "." || part == "..";
    start = slash + 1;
  }
  if (bad)
    return format_error(strformat("%s: tensor '%s': expected a shard file name inside the checkpoint directory, "
                                  "got '%s'", index_path.c_str(), tensor.c_str(), shard.c_str()));
  return Status::ok();
}

std::vector<std::string> list_safetensors_files(const std::string& dir) {
  std::vector<std::string> out;
  DIR* d = ::opendir(dir.c_str());
  if (!d) return out;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    const std::string ext = ".safetensors";
    if (name.size() > ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0 &&
        !is_directory(path_join(dir, name)))
      out.push_back(name);
  }
  ::closedir(d);
  std::sort(out.begin(), out.end());
  return out;
}

// metadata.total_size: an integer (some writers emit it as a float with an integral value).
Result<std::optional<uint64_t>> read_total_size(const JsonObject& root) {
  if (!root.has("metadata")) return std::optional<uint64_t>();
  NB_ASSIGN_OR_RETURN(JsonObject meta, root.object_at("metadata"));
  const Json* v = meta.get("total_size");
  if (!v) return std::optional<uint64_t>();
  if (v->is_number_unsigned()) return std::optional<uint64_t>(v->get<uint64_t>());
  if (v->is_number_float()) {
    double d = v->get<double>();
    if (d >= 0 && d < 1.8e19 && d == static_cast<double>(static_cast<uint64_t>(d)))
      return std::optional<uint64_t>(static_cast<uint64_t>(d));
  }
  return meta.type_error("total_size", "a non-negative integer", *v);
}

}  // namespace

Status Checkpoint::add_file(std::shared_ptr<SafetensorsFile> file) {
  for (const TensorInfo& t : file->tensors()) {
    auto [it, inserted] = index_.emplace(t.name, &t);
    if (!inserted)
      return format_error(strformat("%s: tensor '%s': expected in one file, got it in both '%s' and '%s'",
                                    location_.c_str(), t.name.c_str(), it->second->file.c_str(), t.file.c_str()));
  }
  files_.push_back(std::move(file));
  return Status::ok();
}

Result<Checkpoint> Checkpoint::open_file(const std::string& path) {
  NB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(path));
  Checkpoint c;
  c.location_ = path;
  NB_RETURN_IF_ERROR(c.add_file(std::make_shared<SafetensorsFile>(std::move(f))));
  return c;
}

Result<Checkpoint> Checkpoint::open_index(const std::string& dir, const std::string& index_path) {
  NB_ASSIGN_OR_RETURN(std::string text, read_text_file(index_path));
  NB_ASSIGN_OR_RETURN(Json json, parse_json(text, index_path));
  NB_ASSIGN_OR_RETURN(JsonObject root, JsonObject::make(json, index_path));
  NB_ASSIGN_OR_RETURN(std::optional<uint64_t> total_size, read_total_size(root));
  NB_ASSIGN_OR_RETURN(JsonObject weight_map, root.object_at("weight_map"));

  std::map<std::string, std::string> tensor_to_shard;  // name -> shard file name
  for (auto it = weight_map.json().begin(); it != weight_map.json().end(); ++it) {
    if (!it->is_string()) return weight_map.type_error(it.key(), "a shard file name", *it);
    const std::string& shard = it->get_ref<const std::string&>();
    NB_RETURN_IF_ERROR(check_shard_name(index_path, it.key(), shard));
    tensor_to_shard[it.key()] = shard;
  }
  std::map<std::string, std::string> first_tensor;  // shard -> a tensor naming it, for messages
  for (const auto& [tensor, shard] : tensor_to_shard) first_tensor.emplace(shard, tensor);

  Checkpoint c;
  c.location_ = dir;
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [shard, tensor] : first_tensor) {
    std::string path = path_join(dir, shard);
    if (!file_exists(path))
      return not_found(strformat("%s: shard '%s' (named for tensor '%s' and others) does not exist", index_path.c_str(),
                                 shard.c_str(), tensor.c_str()));
    NB_ASSIGN_OR_RETURN(SafetensorsFile f, SafetensorsFile::open(path));
    auto file = std::make_shared<SafetensorsFile>(std::move(f));
    shards[shard] = file.get();
    NB_RETURN_IF_ERROR(c.add_file(std::move(file)));
  }
  uint64_t listed_bytes = 0;
  for (const auto& [tensor, shard] : tensor_to_shard) {
    const TensorInfo* t = shards[shard]->find(tensor);
    if (!t)
      return format_error(strformat("%s: tensor '%s': weight_map names shard '%s', which does not contain it",
                                    index_path.c_str(), tensor.c_str(), shard.c_str()));
    listed_bytes += t->nbytes();
  }
  if (c.index_.size() != tensor_to_shard.size())
    NB_LOG_WARN("%s: %zu tensors in the shards are not listed in weight_map (loaded anyway)", index_path.c_str(),
                c.index_.size() - tensor_to_shard.size());
  if (total_size && *total_size != listed_bytes)
    return format_error(strformat("%s: metadata.total_size: expected %llu (sum of the listed tensors' bytes), got %llu",
                                  index_path.c_str(), static_cast<unsigned long long>(listed_bytes),
                                  static_cast<unsigned long long>(*total_size)));
  return c;
}

Result<Checkpoint> Checkpoint::open_dir(const std::string& dir) {
  if (!is_directory(dir)) return not_found(strformat("%s: not a directory", dir.c_str()));
  const std::string single = path_join(dir, "model.safetensors");
  const std::string index = path_join(dir, "model.safetensors.index.json");
  Result<Checkpoint> c = internal_error("unset");
  if (file_exists(single)) {  // transformers prefers the single file when both exist
    c = open_file(single);
  } else if (file_exists(index)) {
    return open_index(dir, index);
  } else {
    std::vector<std::string> found = list_safetensors_files(dir);
    if (found.empty())
      return not_found(strformat("%s: no checkpoint: looked for model.safetensors, model.safetensors.index.json "
                                 "and any single *.safetensors file",
                                 dir.c_str()));
    if (found.size() > 1) {
      std::string names;
      for (const std::string& f : found) {
        if (!names.empty()) names += ", ";
        names += f;
      }
      return format_error(strformat("%s: expected model.safetensors, model.safetensors.index.json or exactly one "
                                    "*.safetensors file, got %zu without an index: %s",
                                    dir.c_str(), found.size(), names.c_str()));
    }
    c = open_file(path_join(dir, found[0]));
  }
  if (c.is_ok()) c->location_ = dir;
  return c;
}

const TensorInfo* Checkpoint::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

Result<const TensorInfo*> Checkpoint::get(std::string_view name) const {
  if (const TensorInfo* t = find(name)) return t;
  return not_found(strformat("%s: tensor '%.*s' not found (the checkpoint has %zu tensors)", location_.c_str(),
                             static_cast<int>(name.size()), name.data(), index_.size()));
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> out;
  out.reserve(index_.size());
  for (const auto& kv : index_) out.push_back(kv.first);
  return out;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t n = 0;
  for (const auto& kv : index_) n += kv.second->nbytes();
  return n;
}

}  // namespace nb

// ---------------------------------------------------------------------------------------------
// SafetensorsWriter: tensor bytes are appended to a temporary file next to the output as they
// arrive; finish() lays them out the way the reference writer does and copies them in chunks.

namespace nb {

namespace {

struct PendingTensor {
  std::string name;
  DType dtype;
  Shape shape;
  uint64_t tmp_offset;  // where its bytes sit in the temporary file
  uint64_t nbytes;
};

Status write_all(int fd, const void* data, size_t n, const std::string& path) {
  const uint8_t* p = static_cast<const uint8_t*>(data);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return io_error(strformat("%s: write failed: %s", path.c_str(), std::strerror(errno)));
    p += w;
    n -= static_cast<size_t>(w);
  }
  return Status::ok();
}

// JSON strings must be UTF-8 (nlohmann's dump would throw on anything else).
bool is_utf8(const std::string& s) {
  try {
    (void)Json(s).dump();
    return true;
  } catch (const Json::exception&) {
    return false;
  }
}

// The reference writer's order: descending dtype (its enum is in increasing alignment order, as is
// DType), then name, so each tensor's offset is a multiple of its element size.
void sort_like_reference(std::vector<const PendingTensor*>* tensors) {
  std::sort(tensors->begin(), tensors->end(), [](const PendingTensor* a, const PendingTensor* b) {
    if (a->dtype != b->dtype) return static_cast<int>(a->dtype) > static_cast<int>(b->dtype);
    return a->name < b->name;
  });
}

// Header JSON as serde_json writes it: compact, __metadata__ first, tensors in data order; padded
// with spaces to a multiple of 8.
std::string build_header(const std::vector<const PendingTensor*>& tensors,
                         const std::map<std::string, std::string>& metadata) {
  Json meta = Json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  std::string h = "{";
  if (!metadata.empty()) h += "\"__metadata__\":" + meta.dump();
  uint64_t offset = 0;
  for (const PendingTensor* t : tensors) {
    if (h.size() > 1) h += ",";
    h += Json(t->name).dump() + ":{\"dtype\":\"" + dtype_name(t->dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < t->shape.size(); ++i) {
      if (i) h += ',';
      h += std::to_string(t->shape[i]);
    }
    h += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + t->nbytes) + "]}";
    offset += t->nbytes;
  }
  h += "}";
  h.append((8 - h.size() % 8) % 8, ' ');
  return h;
}

// huggingface_hub's greedy split in insertion order: a tensor over the limit gets a shard of its
// own; otherwise a new shard starts when the next tensor would tip the current one over.
std::vector<std::vector<const PendingTensor*>> split_shards(const std::vector<PendingTensor>& all, uint64_t max_bytes) {
  std::vector<std::vector<const PendingTensor*>> shards;
  std::vector<const PendingTensor*> current;
  uint64_t current_bytes = 0;
  for (const PendingTensor& t : all) {
    if (max_bytes > 0 && t.nbytes > max_bytes) {
      shards.push_back({&t});
      continue;
    }
    if (max_bytes > 0 && current_bytes + t.nbytes > max_bytes) {
      shards.push_back(std::move(current));
      current.clear();
      current_bytes = 0;
    }
    current.push_back(&t);
    current_bytes += t.nbytes;
  }
  if (!current.empty() || shards.empty()) shards.push_back(std::move(current));
  return shards;
}

}  // namespace

struct SafetensorsWriter::Impl {
  std::string path;  // output file, or directory when sharding
  uint64_t max_shard_bytes = 0;
  std::string tmp_path;
  int tmp_fd = -1;
  uint64_t tmp_size = 0;
  std::vector<PendingTensor> tensors;
  std::set<std::string> names;
  Status error;  // sticky: the first failure is returned by every later call
  bool finished = false;

  Status open_tmp();
  Status write_file(const std::string& out, std::vector<const PendingTensor*> tensors,
                    const std::map<std::string, std::string>& metadata);
  void close_tmp() {
    if (tmp_fd >= 0) ::close(tmp_fd);
    tmp_fd = -1;
    if (!tmp_path.empty()) ::unlink(tmp_path.c_str());
    tmp_path.clear();
  }
};

Status SafetensorsWriter::Impl::open_tmp() {
  if (max_shard_bytes > 0 && !is_directory(path) && ::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST)
    return io_error(strformat("%s: cannot create directory: %s", path.c_str(), std::strerror(errno)));
  std::string tmpl = max_shard_bytes > 0 ? path_join(path, ".nibble-writer-XXXXXX") : path + ".nibble-tmp-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  tmp_fd = ::mkstemp(buf.data());
  if (tmp_fd < 0) return io_error(strformat("%s: cannot create temporary file: %s", tmpl.c_str(), std::strerror(errno)));
  tmp_path = buf.data();
  return Status::ok();
}

Status SafetensorsWriter::Impl::write_file(const std::string& out, std::vector<const PendingTensor*> order,
                                           const std::map<std::string, std::string>& metadata) {
  sort_like_reference(&order);
  std::string header = build_header(order, metadata);
  int fd = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return io_error(strformat("%s: cannot open for writing: %s", out.c_str(), std::strerror(errno)));
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(static_cast<uint64_t>(header.size()) >> (8 * i));
  Status st = write_all(fd, len, 8, out);
  if (st.is_ok()) st = write_all(fd, header.data(), header.size(), out);
  std::vector<uint8_t> chunk(size_t{8} << 20);
  for (const PendingTensor* t : order) {
    for (uint64_t done = 0; st.is_ok() && done < t->nbytes;) {
      size_t want = static_cast<size_t>(std::min<uint64_t>(chunk.size(), t->nbytes - done));
      ssize_t r = ::pread(tmp_fd, chunk.data(), want, static_cast<off_t>(t->tmp_offset + done));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        st = io_error(strformat("%s: read back failed: %s", tmp_path.c_str(), r < 0 ? std::strerror(errno) : "EOF"));
        break;
      }
      st = write_all(fd, chunk.data(), static_cast<size_t>(r), out);
      done += static_cast<uint64_t>(r);
    }
  }
  if (::close(fd) != 0 && st.is_ok()) st = io_error(strformat("%s: close failed: %s", out.c_str(), std::strerror(errno)));
  return st;
}

SafetensorsWriter::SafetensorsWriter(std::string path, uint64_t max_shard_bytes) : impl_(std::make_unique<Impl>()) {
  impl_->path = std::move(path);
  impl_->max_shard_bytes = max_shard_bytes;
  impl_->error = impl_->open_tmp();
}

SafetensorsWriter::~SafetensorsWriter() { impl_->close_tmp(); }

Status SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape, const void* data) {
  Impl& w = *impl_;
  if (!w.error.is_ok()) return w.error;
  if (w.finished) return invalid_argument(strformat("%s: add('%s') after finish()", w.path.c_str(), name.c_str()));
  if (name.empty() || name == "__metadata__")
    return invalid_argument(strformat("%s: tensor '%s': expected a tensor name, got a reserved or empty name",
                                      w.path.c_str(), name.c_str()));
  if (!w.names.insert(name).second)
    return invalid_argument(strformat("%s: tensor '%s': added twice", w.path.c_str(), name.c_str()));
  uint64_t numel = 1, bits = 0;
  for (int64_t d : shape) {
    if (d < 0 || __builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel))
      return invalid_argument(strformat("%s: tensor '%s': invalid shape %s", w.path.c_str(), name.c_str(),
                                        shape_to_string(shape).c_str()));
  }
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_bits(dtype)), &bits) || bits % 8 != 0)
    return invalid_argument(strformat("%s: tensor '%s': %s %s is not a whole number of bytes", w.path.c_str(),
                                      name.c_str(), dtype_name(dtype), shape_to_string(shape).c_str()));
  if (!is_utf8(name)) return invalid_argument(strformat("%s: tensor name is not valid UTF-8", w.path.c_str()));
  const uint64_t nbytes = bits / 8;
  NB_CHECK(nbytes == 0 || data != nullptr, "tensor '%s': null data for %llu bytes", name.c_str(),
           static_cast<unsigned long long>(nbytes));
  w.error = write_all(w.tmp_fd, data, static_cast<size_t>(nbytes), w.tmp_path);
  if (!w.error.is_ok()) return w.error;
  w.tensors.push_back({name, dtype, shape, w.tmp_size, nbytes});
  w.tmp_size += nbytes;
  return Status::ok();
}

Status SafetensorsWriter::finish(const std::map<std::string, std::string>& metadata) {
  Impl& w = *impl_;
  if (!w.error.is_ok()) return w.error;
  if (w.finished) return invalid_argument(strformat("%s: finish() called twice", w.path.c_str()));
  w.finished = true;
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");  // the caller's value wins
  for (const auto& [k, v] : meta) {
    if (!is_utf8(k) || !is_utf8(v)) {
      w.close_tmp();
      return w.error = invalid_argument(strformat("%s: metadata key '%s': not valid UTF-8", w.path.c_str(), k.c_str()));
    }
  }
  std::vector<std::vector<const PendingTensor*>> shards = split_shards(w.tensors, w.max_shard_bytes);
  if (w.max_shard_bytes == 0 || shards.size() == 1) {
    // Like huggingface_hub, a checkpoint that fits in one shard is a plain model.safetensors.
    std::string out = w.max_shard_bytes == 0 ? w.path : path_join(w.path, "model.safetensors");
    w.error = w.write_file(out, shards[0], meta);
    w.close_tmp();
    return w.error;
  }
  Json weight_map = Json::object();
  uint64_t total = 0;
  for (size_t i = 0; i < shards.size() && w.error.is_ok(); ++i) {
    std::string file = strformat("model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    for (const PendingTensor* t : shards[i]) {
      weight_map[t->name] = file;
      total += t->nbytes;
    }
    w.error = w.write_file(path_join(w.path, file), shards[i], meta);
  }
  w.close_tmp();
  if (!w.error.is_ok()) return w.error;
  Json index = {{"metadata", {{"total_size", total}}}, {"weight_map", weight_map}};
  w.error = write_text_file(path_join(w.path, "model.safetensors.index.json"), index.dump(2) + "\n");
  return w.error;
}

}  // namespace nb
