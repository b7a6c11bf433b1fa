#include "comm/nccl/nccl_types.h"

#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::nccl {

ncclDataType_t datatype_for(c10::ScalarType type, const char* op, int rank) {
  switch (type) {
    case c10::ScalarType::Float:
      return ncclFloat32;
    case c10::ScalarType::Double:
      return ncclFloat64;
    case c10::ScalarType::Half:
      return ncclFloat16;
    case c10::ScalarType::BFloat16:
      return ncclBfloat16;
    case c10::ScalarType::Int:
      return ncclInt32;
    case c10::ScalarType::Long:
      return ncclInt64;
    case c10::ScalarType::Char:
      return ncclInt8;
    case c10::ScalarType::Byte:
    case c10::ScalarType::Bool:  // broadcast/allgather only make sense for bool; a sum would wrap
      return ncclUint8;
    default:
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] {}: the NCCL backend has no datatype for {}; use float32, float64, float16, bfloat16, int8, "
          "uint8, int32 or int64",
          rank, op, c10::toString(type)));
  }
}

} // namespace ddp::nccl
