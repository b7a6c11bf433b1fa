#include "reducer/parameter_registry.h"

#include <fmt/format.h>

#include <mutex>
#include <unordered_map>

namespace ddp::detail {
namespace {

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::unordered_map<const c10::TensorImpl*, const void*>& registry() {
  static std::unordered_map<const c10::TensorImpl*, const void*> r;
  return r;
}

} // namespace

std::optional<std::string> ParameterRegistry::find_taken(const std::vector<at::Tensor>& parameters,
                                                         const std::vector<std::string>& names,
                                                         const std::string& rank_prefix) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (size_t i = 0; i < parameters.size(); ++i) {
    if (registry().count(parameters[i].unsafeGetTensorImpl())) {
      return fmt::format(
          "{} parameter '{}' is already managed by another ddp::Reducer: the module is wrapped by two "
          "DistributedDataParallel objects (or two Reducers share parameters). Wrap each module once; destroy "
          "the first wrapper before wrapping the module again.",
          rank_prefix, names[i]);
    }
  }
  return std::nullopt;
}

void ParameterRegistry::claim(const std::vector<at::Tensor>& parameters, const void* owner) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto& p : parameters) registry()[p.unsafeGetTensorImpl()] = owner;
}

void ParameterRegistry::release(const std::vector<at::Tensor>& parameters, const void* owner) {
  std::lock_guard<std::mutex> lock(registry_mutex());
  for (const auto& p : parameters) {
    auto it = registry().find(p.unsafeGetTensorImpl());
    if (it != registry().end() && it->second == owner) registry().erase(it);
  }
}

} // namespace ddp::detail
