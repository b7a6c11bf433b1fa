#include "comm/collective_description.h"

#include <fmt/format.h>

namespace ddp::detail {

std::string describe_collective(const char* op, const at::Tensor& tensor) {
  return fmt::format("{} of {} x {} ({:.2f} MiB)", op, tensor.numel(), c10::toString(tensor.scalar_type()),
                     static_cast<double>(tensor.nbytes()) / (1 << 20));
}

} // namespace ddp::detail
