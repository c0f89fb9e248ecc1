// libFuzzer harness: SafetensorsFile::parse over the input bytes as a whole file image.
// Any accepted file must describe tensors that lie inside the input; ASan checks every byte read.
#include <cstddef>
#include <cstdint>

#include "io/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  nb::Result<nb::SafetensorsFile> f = nb::SafetensorsFile::parse("fuzz.safetensors", data, size);
  if (!f.is_ok()) {
    NB_CHECK(!f.status().message().empty(), "an error without a message");
    return 0;
  }
  unsigned sum = 0;
  for (const nb::TensorInfo& t : f->tensors()) {
    NB_CHECK(t.data >= data && t.data + t.nbytes() <= data + size, "tensor '%s' outside the input", t.name.c_str());
    NB_CHECK(f->find(t.name) == &t, "find('%s') does not return the tensor", t.name.c_str());
    NB_CHECK(t.numel() >= 0, "tensor '%s': negative numel", t.name.c_str());
    if (t.nbytes() > 0) sum += t.data[0] + t.data[t.nbytes() - 1];  // touch both ends under ASan
  }
  return static_cast<int>(sum & 0);
}
