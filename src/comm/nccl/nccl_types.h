// Mapping of ATen dtypes to NCCL datatypes. float16 and bfloat16 are native NCCL types
// (NCCL sums them in float and rounds once per element, as the MPI backend's own op does).
#pragma once

#include <nccl.h>

#include <c10/core/ScalarType.h>

namespace ddp::nccl {

// The NCCL datatype for `type`; throws InvalidArgumentError naming the dtype if none.
// `op` and `rank` only make the message precise.
ncclDataType_t datatype_for(c10::ScalarType type, const char* op, int rank);

} // namespace ddp::nccl
