#include "comm/hooks/hook_stream.h"

#include <c10/core/impl/DeviceGuardImplInterface.h>

namespace ddp::hooks {

std::optional<c10::Stream> current_stream(const c10::Device& device) {
  if (device.is_cpu()) return std::nullopt;
  return c10::impl::getDeviceGuardImpl(device.type())->getStream(device);
}

} // namespace ddp::hooks
