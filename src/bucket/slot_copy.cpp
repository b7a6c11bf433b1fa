#include "bucket/slot_copy.h"

#include <ATen/ATen.h>
#include <torch/csrc/autograd/variable.h>

#include <cstring>

namespace ddp::detail {
namespace {

bool plain_host_tensor(const at::Tensor& t) {
  return t.device().is_cpu() && t.layout() == c10::kStrided && t.is_contiguous() && !t.requires_grad() &&
         (t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble);
}

template <typename T>
void scale_loop(T* __restrict dst, const T* __restrict src, int64_t n, T scale) {
  for (int64_t i = 0; i < n; ++i) dst[i] = src[i] * scale; // vectorised by the compiler
}

} // namespace

void copy_scaled(const at::Tensor& dst, const at::Tensor& src, double scale, const at::Tensor& scale_tensor) {
  if (plain_host_tensor(dst) && plain_host_tensor(src) && dst.scalar_type() == src.scalar_type() &&
      dst.numel() == src.numel() && !dst.is_same(src)) {
    const int64_t n = dst.numel();
    if (scale == 1.0) {
      std::memcpy(dst.data_ptr(), src.data_ptr(), static_cast<size_t>(n) * dst.element_size());
    } else if (dst.scalar_type() == at::kFloat) {
      scale_loop(dst.data_ptr<float>(), src.data_ptr<float>(), n, static_cast<float>(scale));
    } else {
      scale_loop(dst.data_ptr<double>(), src.data_ptr<double>(), n, scale);
    }
    // What copy_() would do: a later in-place check must see that dst changed.
    torch::autograd::impl::bump_version(dst);
    return;
  }
  at::Tensor out = dst;
  if (scale == 1.0) {
    out.copy_(src);
  } else {
    at::mul_out(out, src,
                scale_tensor.defined() ? scale_tensor : at::scalar_tensor(scale, at::TensorOptions().dtype(at::kDouble)));
  }
}

} // namespace ddp::detail
