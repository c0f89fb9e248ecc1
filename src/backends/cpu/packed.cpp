// Repacking the canonical plain weights into the fast kernel layouts (packed.h, README.md).
#include "backends/cpu/packed.h"

#include <cstring>
#include <unordered_map>

#include "backends/cpu/quant_kernels.h"
#include "backends/cpu/rows.h"
#include "core/thread_pool.h"
#include "ops/quant_weight.h"

namespace nb::cpu {

void int4_chunk_slot(QuantKernel kernel, int k, int* byte, int* nibble) {
  const int i = k / 8, e = k % 8;  // output vector i, lane e
  if (kernel == QuantKernel::kInt4Bf16) {
    // Vector i holds word (i % 2) of each dword of the unpacked words of byte positions
    // 8 * (i / 2) ..; dword e % 4 of 128-bit lane e / 4 (lane 0 = low nibbles).
    *byte = 8 * (i / 2) + 2 * (e % 4) + i % 2;
    *nibble = e / 4;
  } else {
    // vcvtph2ps of the low/high 128-bit lanes of the words of byte positions 0-7, then 8-15.
    *byte = 8 * (i / 2) + e;
    *nibble = i % 2;
  }
}

namespace {

// Column plan: the input columns of each group in ascending order, each group padded to 32.
void plan_columns(const ops::QuantWeightView& w, CpuQuantWeight& p) {
  const int64_t g_count = w.num_groups;
  std::vector<std::vector<int32_t>> members(static_cast<size_t>(g_count));
  bool identity = w.in % kChunk == 0 && w.group_size % kChunk == 0;
  for (int64_t k = 0; k < w.in; ++k) {
    const int64_t g = ops::quant_group(w, k);
    if (g != k / w.group_size) identity = false;
    members[static_cast<size_t>(g)].push_back(static_cast<int32_t>(k));
  }
  p.group_chunk.assign(static_cast<size_t>(g_count + 1), 0);
  for (int64_t g = 0; g < g_count; ++g) {
    const int64_t chunks = (static_cast<int64_t>(members[static_cast<size_t>(g)].size()) + kChunk - 1) / kChunk;
    p.group_chunk[static_cast<size_t>(g + 1)] = p.group_chunk[static_cast<size_t>(g)] + chunks;
    for (int64_t c = 0; c < chunks; ++c) p.chunk_group.push_back(static_cast<int32_t>(g));
  }
  p.kp = p.group_chunk.back() * kChunk;
  if (identity) return;
  p.src_col.assign(static_cast<size_t>(p.kp), -1);
  for (int64_t g = 0; g < g_count; ++g) {
    const auto& m = members[static_cast<size_t>(g)];
    std::copy(m.begin(), m.end(), p.src_col.begin() + p.group_chunk[static_cast<size_t>(g)] * kChunk);
  }
}

// Signed codes of row n in input-column order.
void unpack_row(const ops::QuantWeightView& w, int64_t n, int8_t* q) {
  if (w.bits == 8) {
    std::memcpy(q, w.codes + n * w.in, static_cast<size_t>(w.in));
    return;
  }
  const uint8_t* src = w.codes + n * ((w.in + 1) / 2);
  for (int64_t k = 0; k < w.in; ++k) {
    const int nibble = (k & 1) ? (src[k / 2] >> 4) : (src[k / 2] & 0xF);
    q[k] = static_cast<int8_t>(nibble >= 8 ? nibble - 16 : nibble);
  }
}

void pack_codes(const ops::QuantWeightView& w, CpuQuantWeight& p) {
  const bool int4 = p.kernel != QuantKernel::kInt8;
  p.row_bytes = int4 ? p.kp / 2 : p.kp;
  p.codes = HostTensor(DType::kU8, {w.out, p.row_bytes});
  int slot_byte[kChunk], slot_nibble[kChunk];
  if (int4)
    for (int k = 0; k < kChunk; ++k) int4_chunk_slot(p.kernel, k, &slot_byte[k], &slot_nibble[k]);
  ThreadPool::global().parallel_for(w.out, 16, [&](int64_t n0, int64_t n1) {
    std::vector<int8_t> q(static_cast<size_t>(w.in));
    for (int64_t n = n0; n < n1; ++n) {
      unpack_row(w, n, q.data());
      uint8_t* row = p.codes.as<uint8_t>() + n * p.row_bytes;
      for (int64_t j = 0; j < p.kp; ++j) {
        const int64_t src = p.identity() ? j : p.src_col[static_cast<size_t>(j)];
        const int v = src < 0 ? 0 : q[static_cast<size_t>(src)];  // padding: code 0, times x = 0
        if (!int4) {
          row[j] = static_cast<uint8_t>(static_cast<int8_t>(v));
          continue;
        }
        const int k = static_cast<int>(j % kChunk);
        const unsigned u = static_cast<unsigned>(v + 8);  // table index 0..15
        row[(j / kChunk) * 16 + slot_byte[k]] |= static_cast<uint8_t>(u << (4 * slot_nibble[k]));
      }
    }
  });
}

// The distinct INT4 tables (built by the kernel's own table function, so they are bit-identical to
// the run-time ones) and each group's index; left empty beyond kMaxTables distinct pairs.
template <class K>
void build_tables(CpuQuantWeight& p) {
  constexpr size_t kMaxTables = 16384;  // 1 MiB of tables: stays in L2 while the weight streams
  std::unordered_map<uint64_t, uint16_t> index;
  std::vector<uint16_t> table_index(p.scales.size());
  std::vector<std::pair<float, float>> pairs;
  for (size_t i = 0; i < p.scales.size(); ++i) {
    uint32_t sbits;
    std::memcpy(&sbits, &p.scales[i], 4);
    const uint64_t key = (static_cast<uint64_t>(sbits) << 32) | static_cast<uint32_t>(static_cast<int32_t>(p.zeros[i]));
    auto [it, inserted] = index.emplace(key, static_cast<uint16_t>(pairs.size()));
    if (inserted) {
      if (pairs.size() == kMaxTables) return;
      pairs.emplace_back(p.scales[i], p.zeros[i]);
    }
    table_index[i] = it->second;
  }
  p.tables = HostTensor(DType::kU8, {static_cast<int64_t>(pairs.size()), 64});
  for (size_t t = 0; t < pairs.size(); ++t) {
    const Int4Table tab = K::table(pairs[t].first, pairs[t].second);
    uint8_t* dst = p.tables.as<uint8_t>() + t * 64;
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst), tab.lo);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + 32), tab.hi);
  }
  p.table_index = std::move(table_index);
}

}  // namespace

Result<std::unique_ptr<ops::PackedWeight>> pack_quantized_fast(const ops::QuantWeightView& w) {
  NB_RETURN_IF_ERROR(ops::validate_quant_weight(w));
  auto p = std::make_unique<CpuQuantWeight>();
  p->out = w.out;
  p->in = w.in;
  p->quantized = true;
  p->bits = w.bits;
  p->group_size = w.group_size;
  p->scale_dtype = w.scale_dtype;
  p->groups = w.num_groups;
  if (w.bits == 4 && w.scale_dtype == DType::kBF16) {
    p->kernel = QuantKernel::kInt4Bf16;
  } else if (w.bits == 4 && w.scale_dtype == DType::kF16) {
    p->kernel = QuantKernel::kInt4F16;
  } else {
    p->kernel = QuantKernel::kInt8;  // INT8, or INT4 with F32 scales widened to one code per byte
  }
  plan_columns(w, *p);
  pack_codes(w, *p);
  const size_t gsz = static_cast<size_t>(w.out * w.num_groups);
  p->scales.resize(gsz);
  p->zeros.assign(gsz, 0.f);
  for (size_t i = 0; i < gsz; ++i) {
    p->scales[i] = load_as_float(w.scales, w.scale_dtype, i);
    if (w.zeros) p->zeros[i] = static_cast<float>(w.zeros[i]);
  }
  if (p->kernel == QuantKernel::kInt4Bf16) build_tables<Int4Bf16Kernel>(*p);
  if (p->kernel == QuantKernel::kInt4F16) build_tables<Int4F16Kernel>(*p);
  p->device_bytes = p->codes.nbytes() + gsz * 8 + p->src_col.size() * 4 + p->tables.nbytes() + p->table_index.size() * 2;
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

Result<std::unique_ptr<ops::PackedWeight>> pack_dense_fast(const TensorView& w) {
  if (w.rank() != 2 || !w.is_contiguous() || !is_float16_or_32(w.dtype))
    return invalid_argument(strformat("dense weight: expected a contiguous 2-D BF16/F16/F32 tensor, got %s %s",
                                      dtype_name(w.dtype), shape_to_string(w.shape).c_str()));
  if (w.dim(0) <= 0 || w.dim(1) <= 0)
    return invalid_argument(strformat("dense weight: shape must be positive, got %s", shape_to_string(w.shape).c_str()));
  auto p = std::make_unique<CpuDenseWeight>();
  p->dtype = w.dtype;
  p->data = HostTensor(w.dtype, w.shape);
  std::memcpy(p->data.data(), w.data, w.nbytes());
  p->out = w.dim(0);
  p->in = w.dim(1);
  p->quantized = false;
  p->bits = dtype_bits(w.dtype);
  p->device_bytes = w.nbytes();
  return std::unique_ptr<ops::PackedWeight>(std::move(p));
}

}  // namespace nb::cpu
