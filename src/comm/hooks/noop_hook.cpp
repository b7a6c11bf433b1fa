#include "comm/hooks/noop_hook.h"

#include <ddp/hooks.h>

namespace ddp::hooks {

std::shared_ptr<CommHook> noop() {
  return std::make_shared<NoopHook>();
}

} // namespace ddp::hooks
