// Fast LoRA shrink/expand, SGMV-style: rows are grouped by adapter slot so that each adapter's A and
// B are streamed once per call, whatever the mix of adapters in the batch.
#include <vector>

#include "backends/cpu/fast_ops.h"
#include "backends/cpu/rows.h"
#include "backends/cpu/simd.h"

namespace nb::cpu::fast {

namespace {

// Rows of each slot with a non-zero rank, in row order.
std::vector<std::vector<int64_t>> rows_by_slot(const ops::LoraArgs& args, int64_t rows) {
  const int32_t* slots = args.host_row_slot ? args.host_row_slot : args.row_slot;
  std::vector<std::vector<int64_t>> by_slot(args.slots.size());
  for (int64_t m = 0; m < rows; ++m) {
    const int32_t s = slots[m];
    if (s < 0) continue;
    NB_CHECK(static_cast<size_t>(s) < args.slots.size(), "LoRA: row %lld names slot %d, only %zu slots",
             static_cast<long long>(m), s, args.slots.size());
    const ops::LoraFactors& f = args.slots[static_cast<size_t>(s)];
    if (f.rank <= 0) continue;
    NB_CHECK(f.rank <= args.max_rank && f.a && f.b, "LoRA: slot %d rank %d exceeds max_rank %d or has no factors", s,
             f.rank, args.max_rank);
    by_slot[static_cast<size_t>(s)].push_back(m);
  }
  return by_slot;
}

bool consecutive(const std::vector<int64_t>& rows) { return rows.back() - rows.front() + 1 == static_cast<int64_t>(rows.size()); }

// Copies the given rows (cols wide) of r into a contiguous [rows, cols] buffer.
void gather(const Rows& r, const std::vector<int64_t>& rows, int64_t cols, std::vector<float>& buf) {
  buf.resize(rows.size() * static_cast<size_t>(cols));
  for (size_t i = 0; i < rows.size(); ++i) {
    const float* src = r.row<float>(rows[i]);
    std::copy(src, src + cols, buf.begin() + static_cast<std::ptrdiff_t>(i * static_cast<size_t>(cols)));
  }
}

}  // namespace

void lora_shrink(TensorView tmp, TensorView x, const ops::LoraArgs& args) {
  const Rows t = as_rows(tmp), xr = as_rows(x);
  NB_CHECK(t.rows == xr.rows && t.cols >= args.max_rank && t.dtype == DType::kF32 && xr.dtype == DType::kF32,
           "lora_shrink: tmp %s, x %s", shape_to_string(tmp.shape).c_str(), shape_to_string(x.shape).c_str());
  const auto by_slot = rows_by_slot(args, xr.rows);
  std::vector<float> xg, og;
  for (size_t s = 0; s < by_slot.size(); ++s) {
    const auto& rows = by_slot[s];
    if (rows.empty()) continue;
    const ops::LoraFactors& f = args.slots[s];
    const int64_t mg = static_cast<int64_t>(rows.size()), k = xr.cols;
    if (consecutive(rows)) {  // a sequence's rows: no copies
      dense_matmul(t.row<float>(rows[0]), t.ld, xr.row<float>(rows[0]), xr.ld, mg, f.a, args.dtype, k, f.rank, k, nullptr);
      continue;
    }
    gather(xr, rows, k, xg);
    og.resize(static_cast<size_t>(mg * f.rank));
    dense_matmul(og.data(), f.rank, xg.data(), k, mg, f.a, args.dtype, k, f.rank, k, nullptr);
    for (int64_t i = 0; i < mg; ++i)
      std::copy(og.begin() + i * f.rank, og.begin() + (i + 1) * f.rank, t.row<float>(rows[static_cast<size_t>(i)]));
  }
}

void lora_expand(TensorView y, TensorView tmp, const ops::LoraArgs& args) {
  const Rows yr = as_rows(y), t = as_rows(tmp);
  NB_CHECK(t.rows == yr.rows && t.cols >= args.max_rank && t.dtype == DType::kF32 && yr.dtype == DType::kF32,
           "lora_expand: y %s, tmp %s", shape_to_string(y.shape).c_str(), shape_to_string(tmp.shape).c_str());
  const auto by_slot = rows_by_slot(args, yr.rows);
  const int64_t n = yr.cols;
  std::vector<float> tg, og;
  for (size_t s = 0; s < by_slot.size(); ++s) {
    const auto& rows = by_slot[s];
    if (rows.empty()) continue;
    const ops::LoraFactors& f = args.slots[s];
    const int64_t mg = static_cast<int64_t>(rows.size());
    gather(t, rows, f.rank, tg);
    og.resize(static_cast<size_t>(mg * n));
    // d = tmp @ B^T (B: [N, rank]), then y += d * scaling as PEFT rounds it.
    dense_matmul(og.data(), n, tg.data(), f.rank, mg, f.b, args.dtype, f.rank, n, f.rank, nullptr);
    const __m256 sc = _mm256_set1_ps(f.scaling);
    for (int64_t i = 0; i < mg; ++i) {
      float* yrow = yr.row<float>(rows[static_cast<size_t>(i)]);
      const float* d = og.data() + i * n;
      int64_t c = 0;
      for (; c + 8 <= n; c += 8)
        _mm256_storeu_ps(yrow + c, _mm256_add_ps(_mm256_loadu_ps(yrow + c), _mm256_mul_ps(_mm256_loadu_ps(d + c), sc)));
      for (; c < n; ++c) yrow[c] = yrow[c] + d[c] * f.scaling;
    }
  }
}

}  // namespace nb::cpu::fast
