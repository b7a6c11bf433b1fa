// The copies between gradients and bucket slots, the reducer's per-parameter hot path.
// For a tiny tensor an ATen op costs microseconds of dispatch for nanoseconds of work
// (400-layer models spend most of their hook time there), so contiguous CPU float32 /
// float64 tensors take a plain loop instead; anything else goes through ATen.
#pragma once

#include <ATen/core/Tensor.h>

namespace ddp::detail {

// dst = src * scale (scale 1: a plain copy). dst and src have the same shape and dtype.
// `scale_tensor`, a 0-dim CPU tensor holding `scale`, saves the ATen path an allocation.
void copy_scaled(const at::Tensor& dst, const at::Tensor& src, double scale,
                 const at::Tensor& scale_tensor = at::Tensor());

} // namespace ddp::detail
