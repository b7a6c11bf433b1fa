// The non-template part of DistributedDataParallel: reading a module's parameters and
// buffers, broadcasting its state, and checking that its parameters are still the ones
// the reducer hooks.
#include <torch/nn/module.h>
#include <torch/nn/modules/embedding.h>

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ostream>

#include <ddp/collectives.h>
#include <ddp/distributed_data_parallel.h>
#include <ddp/error.h>

#include "reducer/reducer_impl.h"

namespace ddp::detail {

const char* const kInitSyncFix =
    "give every rank the same initial state (the same seed before building the module, or the same checkpoint "
    "loaded on every rank), or leave init_sync at true so that rank 0's state is broadcast.";

Reducer::NamedParameters named_parameters(const torch::nn::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

Options with_sparse_embeddings(const torch::nn::Module& module, Options options) {
  std::vector<std::string> sparse = options.expect_sparse_gradients();
  for (const auto& item : module.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    const torch::nn::Module& m = *item.value();
    at::Tensor weight;
    if (const auto* embedding = m.as<torch::nn::EmbeddingImpl>()) {
      if (embedding->options.sparse()) weight = embedding->weight;
    } else if (const auto* bag = m.as<torch::nn::EmbeddingBagImpl>()) {
      if (bag->options.sparse()) weight = bag->weight;
    }
    if (!weight.defined() || !weight.requires_grad()) continue;
    const std::string name = item.key().empty() ? "weight" : item.key() + ".weight";
    if (std::find(sparse.begin(), sparse.end(), name) == sparse.end()) sparse.push_back(name);
  }
  return options.expect_sparse_gradients(std::move(sparse));
}

Reducer::NamedParameters named_buffers(const torch::nn::Module& module) {
  Reducer::NamedParameters out;
  for (const auto& item : module.named_buffers(/*recurse=*/true)) out.emplace_back(item.key(), item.value());
  return out;
}

std::vector<at::Tensor> buffers_of(const torch::nn::Module& module) {
  std::vector<at::Tensor> out;
  for (const auto& b : module.buffers(/*recurse=*/true)) {
    if (b.defined()) out.push_back(b);
  }
  return out;
}

void broadcast_module_state(ProcessGroup& process_group, torch::nn::Module& module) {
  if (process_group.size() == 1) return;
  std::vector<at::Tensor> tensors;
  for (const auto& p : module.parameters(true)) tensors.push_back(p);
  for (const auto& b : module.buffers(true)) {
    if (b.defined()) tensors.push_back(b);
  }
  broadcast_coalesced(process_group, tensors, /*root=*/0);
}

void verify_module_state(ProcessGroup& process_group, const torch::nn::Module& module) {
  auto named = named_parameters(module);
  for (auto& item : named_buffers(module)) named.push_back(std::move(item));
  verify_same_values(process_group, named, "Options::init_sync(false), but the ranks did not start alike: tensor",
                     kInitSyncFix);
}

void mirror_module(torch::nn::Module& wrapper, const torch::nn::Module& module) {
  for (const auto& item : module.named_parameters(/*recurse=*/false)) {
    const at::Tensor& p = item.value();
    wrapper.register_parameter(item.key(), p, p.defined() && p.requires_grad());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/false)) wrapper.register_buffer(item.key(), item.value());
  for (const auto& item : module.named_children()) wrapper.register_module(item.key(), item.value());
}

void throw_to_after_wrapping(const Reducer& reducer) {
  throw InvalidArgumentError(fmt::format(
      "[ddp rank {}] DistributedDataParallel::to() after wrapping: the reducer's hooks and buckets are bound to each "
      "parameter's device and dtype. Move the module first (net->to(device)), then wrap it.",
      reducer.process_group()->rank()));
}

void throw_load_after_wrapping(const Reducer& reducer) {
  throw InvalidArgumentError(fmt::format(
      "[ddp rank {}] torch::load into a DistributedDataParallel: loading after wrapping would change this rank's "
      "parameters behind the other ranks' backs. Load into the module before wrapping it (torch::load(net, path); "
      "then ddp::DistributedDataParallel(net, group)), on every rank or on rank 0 only: wrapping hands rank 0's "
      "state to every rank (docs/checkpoints.md).",
      reducer.process_group()->rank()));
}

void throw_clone(const Reducer& reducer) {
  throw InvalidArgumentError(fmt::format(
      "[ddp rank {}] clone() of a DistributedDataParallel: a copy would share no reducer. Clone the wrapped module "
      "(model->module()->clone()) and wrap the copy, on every rank.",
      reducer.process_group()->rank()));
}

void print_wrapper(std::ostream& stream, const Reducer& reducer) {
  const Options& o = reducer.options();
  stream << fmt::format(
      "ddp::DistributedDataParallel(world_size={}, backend={}, bucket_cap_mb={}, find_unused_parameters={}, "
      "static_graph={})",
      reducer.process_group()->size(), reducer.process_group()->backend(), o.bucket_cap_mb(),
      o.find_unused_parameters(), o.static_graph());
}

namespace {

// Reads a module's own parameters without copying them: Module::parameters() and
// named_parameters() build a new OrderedDict, with every qualified name, on each call,
// which cost ~0.5 us per parameter per forward (measured on bench's `small`). The
// pointer to the protected member, taken through a derived class, is standard C++.
struct ParameterAccess : torch::nn::Module {
  static const torch::OrderedDict<std::string, at::Tensor>& of(const torch::nn::Module& module) {
    return module.*(&ParameterAccess::parameters_);
  }
};

// True when every parameter of `module` and its descendants that requires grad is
// reduced by `reducer`.
bool all_trainable_managed(const Reducer& reducer, const torch::nn::Module& module) {
  for (const auto& item : ParameterAccess::of(module)) {
    const at::Tensor& p = item.value();
    if (p.defined() && p.requires_grad() && !reducer.manages(p)) return false;
  }
  for (const auto& child : module.children()) {
    if (!all_trainable_managed(reducer, *child)) return false;
  }
  return true;
}

// Compares the module's parameter handles, in walk order, with `layout` (the walk at the
// last full check), looking at pointers only: dereferencing 800 tensors that the backward
// and the optimizer pushed out of the cache cost ~0.3 ms per forward on bench's `small`.
bool same_layout(const torch::nn::Module& module, const std::vector<const c10::TensorImpl*>& layout, size_t& k) {
  for (const auto& item : ParameterAccess::of(module)) {
    if (k >= layout.size() || layout[k] != item.value().unsafeGetTensorImpl()) return false;
    ++k;
  }
  for (const auto& child : module.children()) {
    if (!same_layout(*child, layout, k)) return false;
  }
  return true;
}

void record_layout(const torch::nn::Module& module, std::vector<const c10::TensorImpl*>& layout,
                   std::vector<at::Tensor>& frozen) {
  for (const auto& item : ParameterAccess::of(module)) {
    layout.push_back(item.value().unsafeGetTensorImpl());
    if (item.value().defined() && !item.value().requires_grad()) frozen.push_back(item.value());
  }
  for (const auto& child : module.children()) record_layout(*child, layout, frozen);
}

} // namespace

void check_module_parameters(Reducer& reducer, const torch::nn::Module& module) {
  // The common case: the same tensors in the same places, and the frozen ones still
  // frozen. Anything else takes the full check, which names what changed.
  const auto start = std::chrono::steady_clock::now();
  Reducer::Impl& impl = *reducer.impl_;
  bool unchanged = !impl.module_watch.layout.empty();
  for (size_t i = 0; unchanged && i < impl.module_watch.frozen.size(); ++i) {
    unchanged = !impl.module_watch.frozen[i].requires_grad(); // unfrozen after wrapping
  }
  if (unchanged && impl.module_watch.full_check_this_forward) {
    size_t seen = 0;
    unchanged = same_layout(module, impl.module_watch.layout, seen) && seen == impl.module_watch.layout.size();
  }
  if (!unchanged) {
    unchanged = all_trainable_managed(reducer, module);
    if (unchanged) {
      impl.module_watch.layout.clear();
      impl.module_watch.frozen.clear();
      record_layout(module, impl.module_watch.layout, impl.module_watch.frozen);
    }
  }
  reducer.impl_->stats.step_check_ns +=
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start).count();
  if (unchanged) return;
  std::string names;
  int count = 0;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (!item.value().requires_grad() || reducer.manages(item.value())) continue;
    if (count++ < 8) names += fmt::format("{}'{}'", names.empty() ? "" : ", ", item.key());
  }
  if (count > 8) names += fmt::format(" and {} more", count - 8);
  throw ReductionError(fmt::format(
      "[ddp rank {}] the module's parameters changed after it was wrapped: {} require(s) grad but {} not reduced by "
      "this DistributedDataParallel (a submodule replaced with replace_module, a parameter registered or unfrozen "
      "after wrapping). Their gradients would stay local to each rank and the ranks would diverge. Make such "
      "changes before wrapping the module, and wrap it again after any later change.",
      reducer.process_group()->rank(), names, count == 1 ? "is" : "are"));
}

void watch_module(Reducer& reducer, std::weak_ptr<torch::nn::Module> module) {
  Reducer* target = &reducer;
  reducer.impl_->module_watch.check = [target, module = std::move(module)] {
    if (auto m = module.lock()) check_module_parameters(*target, *m);
  };
}

} // namespace ddp::detail
