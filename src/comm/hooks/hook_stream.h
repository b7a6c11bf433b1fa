// The stream a hook's run() queues its kernels on, so that its continuations (run later,
// from the reducer's end-of-backward, whose caller may have another current stream) queue
// theirs on the same one: the tensors they share need no cross-stream synchronisation.
#pragma once

#include <c10/core/Device.h>
#include <c10/core/Stream.h>

#include <optional>

namespace ddp::hooks {

// The current stream of `device`; null for the CPU.
std::optional<c10::Stream> current_stream(const c10::Device& device);

} // namespace ddp::hooks
