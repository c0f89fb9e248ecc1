// Host memory the process may still take, for planning allocations before making them (a KV cache
// or a model that does not fit gets a named error, not std::bad_alloc).
#pragma once

#include <cstdint>
#include <optional>

namespace nb {

// MemAvailable of /proc/meminfo in bytes (what the kernel estimates can be allocated without
// swapping), or nullopt where it cannot be read.
std::optional<uint64_t> available_host_memory();

}  // namespace nb
