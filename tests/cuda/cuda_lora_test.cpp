// BGMV LoRA shrink/expand on the CUDA backend (the decode path: rows <= 64 with a device slot table,
// reading each row's slot and factors on the device) against the CPU reference: mixed slots per row
// including -1, out-of-range slots and rank-0 slots; ranks 3/8/16/64 in one batch; odd K and N (the
// scalar path) and multiples of 8 (the 16-byte path); row-strided x and a column-slice y (a fused
// Linear's slice); BF16 and F16 activations; BF16, F16 and F32 factors. host_row_slot is left null,
// so these calls cannot fall back to the host-planned (SGMV) path, which needs it. And one CUDA graph
// captured once (strict capture mode: a sync or an allocation fails it) replayed after the slot table
// and the rows' slots changed.
// Tolerances as in cuda_ops_test.cpp: shrink 1e-4 (F32 accumulation and output), expand 1e-2 on the
// LoRA delta (bf16/f16 output); untouched rows must be bit-identical.
#include "cuda_fixture.h"
#ifdef NIBBLE_HAVE_CUDA
#include "backends/cuda/cuda_internal.h"
#endif

namespace nb::cuda_test {
namespace {

std::vector<uint8_t> encode(const std::vector<float>& v, DType dt) {
  std::vector<uint8_t> b(dtype_bytes(dt, v.size()));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dt == DType::kF32) {
      reinterpret_cast<float*>(b.data())[i] = v[i];
    } else {
      reinterpret_cast<uint16_t*>(b.data())[i] = dt == DType::kBF16 ? float_to_bf16(v[i]) : float_to_fp16(v[i]);
    }
  }
  return b;
}

// Adapter slots with their factors on the host (the CPU reference reads these) and on the device,
// and the device slot table (ops::LoraArgs::device_slots) the BGMV kernels read.
struct Slots {
  std::vector<std::vector<uint8_t>> host;
  std::vector<DeviceTensor> dev;
  ops::LoraArgs cpu, gpu;
  DeviceTensor table;
};

class CudaLora : public CudaOps {
 protected:
  // Random factors of rank ranks[s] for slot s (rank 0 = empty slot); A: [rank, k], B: [n, rank].
  void fill(Slots& st, const std::vector<int>& ranks, int64_t k, int64_t n, DType dt) {
    st.cpu.slots.assign(ranks.size(), {});
    st.gpu.slots.assign(ranks.size(), {});
    st.cpu.dtype = st.gpu.dtype = dt;
    for (size_t s = 0; s < ranks.size(); ++s) set_slot(st, s, ranks[s], k, n, 0.5f + static_cast<float>(s % 3));
    st.cpu.max_rank = st.gpu.max_rank = *std::max_element(ranks.begin(), ranks.end());
    st.table = ops::make_device_tensor(*gpu_, DType::kU8,
                                       {static_cast<int64_t>(ranks.size() * sizeof(ops::LoraFactors))});
    upload_table(st);
  }
  void set_slot(Slots& st, size_t s, int rank, int64_t k, int64_t n, float scaling) {
    if (rank == 0) {
      st.cpu.slots[s] = st.gpu.slots[s] = {};
      return;
    }
    for (int64_t len : {rank * k, n * rank}) {
      st.host.push_back(encode(rnd(static_cast<size_t>(len), 0.3f), st.cpu.dtype));
      st.dev.push_back(ops::upload_tensor(*gpu_, TensorView{st.host.back().data(), DType::kU8,
                                                            {static_cast<int64_t>(st.host.back().size())}, {},
                                                            Device::kCpu}));
    }
    const size_t i = st.host.size() - 2;
    st.cpu.slots[s] = {st.host[i].data(), st.host[i + 1].data(), rank, scaling};
    st.gpu.slots[s] = {st.dev[i].buffer.data(), st.dev[i + 1].buffer.data(), rank, scaling};
  }
  void upload_table(Slots& st) {
    gpu_->upload(st.table.buffer.data(), st.gpu.slots.data(), st.gpu.slots.size() * sizeof(ops::LoraFactors));
    st.gpu.device_slots = st.table.buffer.as<ops::LoraFactors>();
  }
  // Per row: -1, a slot, or (GPU only) an index past the table, which must act as -1.
  void pick_rows(int64_t rows, size_t num_slots, std::vector<int32_t>& gslot, std::vector<int32_t>& cslot) {
    gslot.assign(static_cast<size_t>(rows), -1);
    cslot.assign(static_cast<size_t>(rows), -1);
    for (size_t m = 0; m < gslot.size(); ++m) {
      const int pick = static_cast<int>(rng_() % (num_slots + 2)) - 1;
      gslot[m] = pick == static_cast<int>(num_slots) ? static_cast<int>(num_slots) + 3 : pick;
      cslot[m] = pick == static_cast<int>(num_slots) ? -1 : pick;
    }
  }
  // The reference: tmp from shrink, y += expand(tmp), on the CPU.
  void reference(std::vector<float>& tmp, std::vector<float>& y, const std::vector<float>& x, int64_t rows, int64_t k,
                 int64_t n, const Slots& st, const std::vector<int32_t>& cslot) {
    ops::LoraArgs ca = st.cpu;
    ca.row_slot = ca.host_row_slot = cslot.data();
    const int64_t r = st.cpu.max_rank;
    cpu_->lora_shrink(host(tmp, {rows, r}), host(const_cast<std::vector<float>&>(x), {rows, k}), ca);
    cpu_->lora_expand(host(y, {rows, n}), host(tmp, {rows, r}), ca);
  }
};

struct BCase {
  int64_t rows, k, n;
  DType act, factors;
  bool strided;  // x rows with ld = k + 8, y a column slice of a wider buffer
};

TEST_F(CudaLora, BgmvMatchesReference) {
  const std::vector<int> ranks = {8, 0, 16, 64, 16, 3, 8};
  for (const BCase& c : {BCase{32, 4096, 1024, DType::kBF16, DType::kBF16, false},
                         BCase{1, 512, 384, DType::kF16, DType::kF16, false},
                         BCase{64, 203, 77, DType::kBF16, DType::kBF16, false},
                         BCase{7, 96, 131, DType::kF16, DType::kBF16, true},
                         BCase{33, 264, 72, DType::kBF16, DType::kF32, true},
                         BCase{17, 200, 48, DType::kF16, DType::kF16, false},
                         BCase{5, 1000, 9, DType::kBF16, DType::kF16, true}}) {
    Slots st;
    fill(st, ranks, c.k, c.n, c.factors);
    std::vector<int32_t> gslot, cslot;
    pick_rows(c.rows, ranks.size(), gslot, cslot);
    cslot[0] = 3, gslot[0] = 3;  // rank 64 present at least once
    DeviceTensor gs = up_i32(gslot);
    ops::LoraArgs ga = st.gpu;
    ga.row_slot = gs.buffer.as<int32_t>();
    ga.host_row_slot = nullptr;  // BGMV must not need it (the SGMV path aborts without it)
    const int64_t r = ga.max_rank;
    const std::string what = strformat("rows %lld K %lld N %lld act %s factors %s%s", static_cast<long long>(c.rows),
                                       static_cast<long long>(c.k), static_cast<long long>(c.n), dtype_name(c.act),
                                       dtype_name(c.factors), c.strided ? " strided" : "");

    // Shrink: rows without an adapter, and ranks past a row's own, keep tmp's previous values.
    const int64_t xld = c.strided ? c.k + 8 : c.k;
    std::vector<float> xw = rnd(static_cast<size_t>(c.rows * xld)), x(static_cast<size_t>(c.rows * c.k));
    for (int64_t m = 0; m < c.rows; ++m)
      for (int64_t j = 0; j < c.k; ++j) x[static_cast<size_t>(m * c.k + j)] = xw[static_cast<size_t>(m * xld + j)];
    DeviceTensor gxw = up(xw, {c.rows, xld}, c.act);
    TensorView gx = gxw.view();
    gx.shape = {c.rows, c.k};
    gx.strides = {xld, 1};
    std::vector<float> tmp0 = rnd(static_cast<size_t>(c.rows * r));
    DeviceTensor gtmp = up(tmp0, {c.rows, r}, DType::kF32);
    gpu_->lora_shrink(gtmp.view(), gx, ga);
    std::vector<float> tmp = tmp0;
    ops::LoraArgs ca = st.cpu;
    ca.row_slot = ca.host_row_slot = cslot.data();
    cpu_->lora_shrink(host(tmp, {c.rows, r}), host(x, {c.rows, c.k}), ca);
    EXPECT_LT(rel_err(down(gtmp.view()), tmp), 1e-4) << "shrink, " << what << SEED_INFO;

    // Expand from the reference's tmp (the two kernels are tested separately).
    const int64_t yoff = c.strided ? 5 : 0, yld = c.strided ? c.n + 9 : c.n;
    std::vector<float> yw0 = rnd(static_cast<size_t>(c.rows * yld)), y0(static_cast<size_t>(c.rows * c.n));
    DeviceTensor gyw = up(yw0, {c.rows, yld}, c.act);
    TensorView gy = gyw.view();
    gy.data = static_cast<uint8_t*>(gy.data) + dtype_bytes(c.act, static_cast<size_t>(yoff));
    gy.shape = {c.rows, c.n};
    gy.strides = {yld, 1};
    const std::vector<float> before = down(gy), wide_before = down(gyw.view());  // as stored (rounded to act)
    y0 = before;
    DeviceTensor gt2 = up(tmp, {c.rows, r}, DType::kF32);
    gpu_->lora_expand(gy, gt2.view(), ga);
    std::vector<float> y = y0;
    cpu_->lora_expand(host(y, {c.rows, c.n}), host(tmp, {c.rows, r}), ca);
    const std::vector<float> got = down(gy);
    std::vector<float> dy(y.size()), gdy(y.size());
    for (size_t i = 0; i < y.size(); ++i) {  // compare the LoRA delta, not the large unchanged base
      dy[i] = y[i] - y0[i];
      gdy[i] = got[i] - y0[i];
    }
    EXPECT_LT(rel_err(gdy, dy), kTol) << "expand, " << what << SEED_INFO;
    for (size_t m = 0; m < cslot.size(); ++m) {
      if (cslot[m] >= 0 && ranks[static_cast<size_t>(cslot[m])] > 0) continue;
      for (size_t j = 0; j < static_cast<size_t>(c.n); ++j) {
        const size_t i = m * static_cast<size_t>(c.n) + j;
        ASSERT_EQ(got[i], before[i]) << "row " << m << " (slot " << gslot[m] << ") changed, " << what;
      }
    }
    if (c.strided) {  // columns outside the slice are untouched
      const std::vector<float> wide = down(gyw.view());
      for (int64_t m = 0; m < c.rows; ++m)
        for (int64_t j = 0; j < yld; ++j) {
          if (j >= yoff && j < yoff + c.n) continue;
          const size_t i = static_cast<size_t>(m * yld + j);
          ASSERT_EQ(wide[i], wide_before[i]) << "column " << j << " outside the slice changed, " << what;
        }
    }
  }
}

// The decode step is captured once; between replays adapters are swapped in slots (the table changes,
// ranks differ but stay <= the captured max_rank) and rows change adapters (row_slot changes). Each
// replay must give the reference result for the state at that time.
TEST_F(CudaLora, CapturedGraphFollowsSlotTableAndRowSlots) {
#ifdef NIBBLE_HAVE_CUDA
  const int64_t rows = 32, k = 512, n = 256;
  Slots st;
  fill(st, {16, 8, 16, 0}, k, n, DType::kBF16);
  const int64_t r = st.gpu.max_rank;
  std::vector<int32_t> gslot, cslot;
  pick_rows(rows, 4, gslot, cslot);
  DeviceTensor gs = up_i32(gslot);
  ops::LoraArgs ga = st.gpu;
  ga.row_slot = gs.buffer.as<int32_t>();
  ga.host_row_slot = nullptr;
  const std::vector<float> x = rnd(static_cast<size_t>(rows * k)), y0 = rnd(static_cast<size_t>(rows * n));
  DeviceTensor gx = up(x, {rows, k}), gy0 = up(y0, {rows, n}, DType::kF32), gy = up(y0, {rows, n});
  DeviceTensor gtmp = ops::make_device_tensor(*gpu_, DType::kF32, {rows, r});
  const std::vector<float> y0r = down(gy.view());  // y0 as stored in bf16

  cudaStream_t stream = static_cast<cuda::CudaBackend*>(gpu_.get())->stream();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), cudaSuccess);
  gpu_->lora_shrink(gtmp.view(), gx.view(), ga);
  gpu_->lora_expand(gy.view(), gtmp.view(), ga);
  ASSERT_EQ(cudaStreamEndCapture(stream, &graph), cudaSuccess) << "the BGMV calls are not capturable";
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0), cudaSuccess);

  for (int round = 0; round < 3; ++round) {
    if (round == 1) {  // swap adapters in slots 1 and 3 (3 was empty), keep max_rank
      set_slot(st, 1, 16, k, n, 2.f);
      set_slot(st, 3, 8, k, n, 0.25f);
      upload_table(st);
    }
    if (round == 2) {  // rows change adapters; slot 0 emptied
      set_slot(st, 0, 0, k, n, 0.f);
      upload_table(st);
      pick_rows(rows, 4, gslot, cslot);
      gpu_->upload(gs.buffer.data(), gslot.data(), gslot.size() * sizeof(int32_t));
    }
    gpu_->cast(gy.view(), gy0.view());  // y back to y0
    ASSERT_EQ(cudaGraphLaunch(exec, stream), cudaSuccess);
    gpu_->synchronize();
    std::vector<float> tmp(static_cast<size_t>(rows * r), 0.f), y = y0r;
    reference(tmp, y, x, rows, k, n, st, cslot);
    const std::vector<float> got = down(gy.view());
    std::vector<float> dy(y.size()), gdy(y.size());
    for (size_t i = 0; i < y.size(); ++i) {
      dy[i] = y[i] - y0r[i];
      gdy[i] = got[i] - y0r[i];
    }
    EXPECT_LT(rel_err(gdy, dy), kTol) << "graph replay " << round << SEED_INFO;
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
#endif
}

}  // namespace
}  // namespace nb::cuda_test
