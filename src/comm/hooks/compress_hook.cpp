#include "comm/hooks/compress_hook.h"

#include <c10/core/StreamGuard.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <ddp/error.h>
#include <ddp/hooks.h>

#include "comm/hooks/hook_stream.h"

namespace ddp::hooks {
namespace {

constexpr const char* kInnerPrefix = "inner.";

} // namespace

CompressHook::CompressHook(std::shared_ptr<CommHook> inner, c10::ScalarType dtype)
    : inner_(std::move(inner)), dtype_(dtype) {
  if (!inner_) throw InvalidArgumentError("ddp::hooks::compress: the inner hook is null; pass ddp::hooks::allreduce()");
  if (dtype_ != at::kHalf && dtype_ != at::kBFloat16) {
    throw InvalidArgumentError(fmt::format(
        "ddp::hooks::compress: dtype {} is not a compression format; use at::kHalf (float16) or at::kBFloat16",
        c10::toString(dtype_)));
  }
}

std::string CompressHook::name() const {
  const char* format = dtype_ == at::kHalf ? "fp16" : "bf16";
  const std::string inner = inner_->name();
  if (inner == "allreduce") return fmt::format("{}_compress", format);
  return fmt::format("{}_compress_wrapper({})", format, inner);
}


std::shared_ptr<CommFuture> CompressHook::run(GradBucket& bucket) {
  const at::Tensor& buffer = bucket.buffer();
  if (buffer.scalar_type() == dtype_) return inner_->run(bucket);
  GradBucket compressed = bucket.with_buffer(buffer.to(dtype_));
  const std::optional<c10::Stream> stream = current_stream(buffer.device());
  return inner_->run(compressed)->then_map([buffer, stream](const at::Tensor& reduced) {
    const c10::OptionalStreamGuard on_stream(stream); // where the cast in was queued
    at::Tensor out = buffer;
    out.copy_(reduced); // the cast back, into the bucket
    return out;
  });
}

CommHook::State CompressHook::state() const {
  State out;
  for (auto& [key, value] : inner_->state()) out.emplace_back(kInnerPrefix + key, value);
  return out;
}

void CompressHook::load_state(const State& state) {
  State inner;
  const std::string prefix = kInnerPrefix;
  for (const auto& [key, value] : state) {
    if (key.rfind(prefix, 0) == 0) inner.emplace_back(key.substr(prefix.size()), value);
  }
  inner_->load_state(inner);
}

std::shared_ptr<CommHook> compress(std::shared_ptr<CommHook> inner, c10::ScalarType dtype) {
  return std::make_shared<CompressHook>(std::move(inner), dtype);
}

std::shared_ptr<CommHook> fp16_compress() {
  return compress(allreduce(), at::kHalf);
}

std::shared_ptr<CommHook> bf16_compress() {
  return compress(allreduce(), at::kBFloat16);
}

} // namespace ddp::hooks
