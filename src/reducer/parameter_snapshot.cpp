#include "reducer/parameter_snapshot.h"

#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <ddp/error.h>

namespace ddp::detail {

ParameterSnapshot::ParameterSnapshot(const std::vector<at::Tensor>& parameters) {
  for (const auto& p : parameters) {
    dtypes_.push_back(p.scalar_type());
    devices_.push_back(p.device());
    shapes_.push_back(p.sizes().vec());
    tensors_.insert(p.unsafeGetTensorImpl());
  }
}

void ParameterSnapshot::check_unchanged(const std::vector<at::Tensor>& parameters,
                                        const std::vector<std::string>& names, int rank) const {
  for (size_t i = 0; i < parameters.size(); ++i) {
    const at::Tensor& p = parameters[i];
    if (p.scalar_type() == dtypes_[i] && p.device() == devices_[i] && p.sizes() == shapes_[i]) continue;
    throw ReductionError(fmt::format(
        "[ddp rank {}] parameter '{}' changed after it was wrapped: it is now {} {} on {} (was {} {} on {}){}. Its gradient "
        "hook is gone, so its gradients would no longer be averaged and the ranks would diverge. Move, cast or "
        "replace the module's parameters (module->to(...), replace_module, set_data) before wrapping it, and wrap "
        "it again after any such change.",
        rank, names[i], c10::toString(p.scalar_type()), c10::str(p.sizes()), p.device().str(),
        c10::toString(dtypes_[i]), c10::str(at::IntArrayRef(shapes_[i])), devices_[i].str(), ""));
  }
}

} // namespace ddp::detail
