// ddp::from_c10d in a build of libddp without c10d (its LibTorch had no
// torch/csrc/distributed/c10d headers): the public header stays usable, and a call says why
// it cannot work instead of failing to link.
#include <ddp/c10d.h>
#include <ddp/error.h>

namespace ddp::detail {
namespace {
[[noreturn]] void unavailable() {
  throw InvalidArgumentError(
      "[ddp rank ?] ddp::from_c10d: this build of libddp has no c10d support (its LibTorch had no "
      "torch/csrc/distributed/c10d headers when it was configured). Rebuild libddp against the torch wheel's LibTorch.");
}
} // namespace

std::shared_ptr<ProcessGroup> from_c10d_process_group(const c10::intrusive_ptr<c10d::ProcessGroup>&, c10::Device) {
  unavailable();
}
std::shared_ptr<ProcessGroup> from_c10d_backend(const c10::intrusive_ptr<c10d::Backend>&, c10::Device) { unavailable(); }

} // namespace ddp::detail
