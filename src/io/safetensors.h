// safetensors reading (single file and sharded) and writing. formats.md §1.
//
// Readers validate the whole header before anything is used: header length, JSON, dtype names,
// shapes, offsets in range, no holes or overlap, byte size == numel * dtype size, and that the
// buffer is fully indexed. Every error names the file, the tensor, expected versus actual.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/mmap.h"
#include "core/status.h"
#include "core/tensor.h"

namespace nb {

struct TensorInfo {
  std::string name;
  DType dtype = DType::kF32;
  Shape shape;
  uint64_t begin = 0;  // data_offsets, relative to the byte buffer
  uint64_t end = 0;
  const uint8_t* data = nullptr;  // points into the mapped file (may be unaligned)
  std::string file;               // path of the file holding it

  uint64_t nbytes() const { return end - begin; }
  int64_t numel() const { return shape_numel(shape); }
  // A CPU view of the data. The data may be unaligned: copy before typed SIMD access.
  TensorView view() const { return TensorView{const_cast<uint8_t*>(data), dtype, shape, {}, Device::kCpu}; }
};

// One safetensors file, memory-mapped.
class SafetensorsFile {
 public:
  static Result<SafetensorsFile> open(const std::string& path);
  // Parses a file image held by the caller (used by the fuzzer and tests). `name` is used in errors.
  // The returned object points into `data`, which must outlive it.
  static Result<SafetensorsFile> parse(const std::string& name, const uint8_t* data, size_t size);

  const std::vector<TensorInfo>& tensors() const { return tensors_; }  // sorted by name
  const TensorInfo* find(std::string_view name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::shared_ptr<MappedFile> file_;  // null when parsed from caller memory
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// A model or adapter directory: `model.safetensors`, or shards listed by
// `model.safetensors.index.json` (every tensor resolved through weight_map, every shard
// validated, every weight_map entry present in its shard), or another given file name.
class Checkpoint {
 public:
  // dir: folder with model.safetensors or model.safetensors.index.json.
  static Result<Checkpoint> open_dir(const std::string& dir);
  // A single file (e.g. adapter_model.safetensors).
  static Result<Checkpoint> open_file(const std::string& path);

  const TensorInfo* find(std::string_view name) const;
  // Like find, but a missing tensor is an error naming the checkpoint and the tensor.
  Result<const TensorInfo*> get(std::string_view name) const;
  std::vector<std::string> names() const;  // sorted
  uint64_t total_bytes() const;            // sum of tensor byte sizes
  size_t num_files() const { return files_.size(); }
  const std::string& location() const { return location_; }

 private:
  static Result<Checkpoint> open_index(const std::string& dir, const std::string& index_path);
  // Adds every tensor of `file` to the index; a name already indexed is an error.
  Status add_file(std::shared_ptr<SafetensorsFile> file);

  std::string location_;
  std::vector<std::shared_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*, std::less<>> index_;
};

// Streaming writer: tensors are appended one at a time (data goes to disk immediately, memory
// stays flat), finish() writes the final file(s). The output is what the reference writer makes:
// header padded with spaces to a multiple of 8, tensors laid out back to back.
// With max_shard_bytes > 0 the output is sharded as model-0000i-of-0000N.safetensors plus
// model.safetensors.index.json (then `path` names the directory).
class SafetensorsWriter {
 public:
  explicit SafetensorsWriter(std::string path, uint64_t max_shard_bytes = 0);
  ~SafetensorsWriter();
  Status add(const std::string& name, DType dtype, const Shape& shape, const void* data);
  Status finish(const std::map<std::string, std::string>& metadata = {});

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace nb
