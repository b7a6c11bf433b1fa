// ddp::ScriptDistributedDataParallel: DistributedDataParallel for a TorchScript module
// (torch::jit::Module, e.g. scripted in Python and loaded with torch::jit::load), so that
// a model defined in Python trains under libddp from C++:
//
//   auto script = torch::jit::load("model.pt");
//   ddp::ScriptDistributedDataParallel model(script, pg);
//   torch::optim::SGD opt(model.parameters(), 0.1);
//   auto loss = model({x}).toTensor().pow(2).mean(); loss.backward();   // averaged
//
// It behaves as DistributedDataParallel does: construction is collective (the same
// parameters on every rank, rank 0's values broadcast unless Options::init_sync(false)),
// a training forward (grad mode on, train mode) arms the reducer and takes rank 0's
// buffers, any other forward is evaluation and runs no collective. Not part of
// <ddp/ddp.h>: it brings in TorchScript's headers.
#pragma once

#include <ATen/core/ivalue.h>
#include <torch/csrc/jit/api/module.h>

#include <memory>
#include <vector>

#include <ddp/no_sync_guard.h>
#include <ddp/options.h>
#include <ddp/process_group.h>
#include <ddp/reducer.h>

namespace ddp {

class ScriptDistributedDataParallel {
 public:
  // Collective. `module` shares its parameters with the caller's copy (a jit::Module is
  // a handle): clone() it first to keep an untouched one.
  ScriptDistributedDataParallel(torch::jit::Module module, std::shared_ptr<ProcessGroup> process_group,
                                Options options = {});

  // The module's forward with these inputs; its result's tensors are the graph's roots.
  c10::IValue forward(std::vector<c10::IValue> inputs);
  c10::IValue operator()(std::vector<c10::IValue> inputs) { return forward(std::move(inputs)); }

  // Every parameter, frozen ones included, in the module's order (for the optimizer).
  std::vector<at::Tensor> parameters() const;
  void train(bool on = true) { module_.train(on); }
  void eval() { module_.eval(); }
  bool is_training() const { return module_.is_training(); }

  [[nodiscard]] NoSyncGuard no_sync() { return NoSyncGuard(*reducer_); }
  void register_comm_hook(std::shared_ptr<CommHook> hook) { reducer_->register_comm_hook(std::move(hook)); }

  // The wrapped module: module().save(path) writes a TorchScript file.
  torch::jit::Module& module() { return module_; }
  Reducer& reducer() { return *reducer_; }
  const Reducer& reducer() const { return *reducer_; }

 private:
  torch::jit::Module module_;
  std::unique_ptr<Reducer> reducer_;
};

} // namespace ddp
