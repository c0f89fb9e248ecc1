// What every layer of one forward pass needs to know about the batch. Built by the engine's model
// runner; pointers are in the backend's memory unless named host_.
#pragma once

#include <cstdint>

#include "ops/ops.h"

namespace nb::nn {

struct BatchContext {
  ops::Backend* backend = nullptr;
  int64_t num_tokens = 0;                 // T: rows of the flat batch
  const int32_t* token_ids = nullptr;     // [T]
  const int32_t* host_token_ids = nullptr;
  const int32_t* positions = nullptr;     // [T]
  const int32_t* slot_mapping = nullptr;  // [T] KV-cache slot of each row
  ops::AttentionArgs attention;           // sequences, block tables (head fields filled per layer)

  // LoRA: one adapter slot per row (-1 = base model). Null row_slot = no adapter in this batch,
  // and then no LoRA work is done at all.
  const int32_t* row_slot = nullptr;       // [T]
  const int32_t* host_row_slot = nullptr;  // [T]
  TensorView lora_scratch;                 // F32 [T, max_rank] for the shrink output

  // The rows whose logits are wanted (Model::forward_device): [R] batch row indices and, when
  // row_slot is set, their adapter slots; device memory, with the slots also on the host.
  int64_t num_logit_rows = 0;
  const int32_t* logit_rows = nullptr;
  const int32_t* logit_row_slot = nullptr;
  const int32_t* host_logit_row_slot = nullptr;
};

}  // namespace nb::nn
