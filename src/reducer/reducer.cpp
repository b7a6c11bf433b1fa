#include <ddp/reducer.h>

#include <ddp/error.h>
#include <ddp/join.h>

#include <exception>

#include "common/logging.h"
#include "reducer/reducer_impl.h"

namespace ddp {

Reducer::Reducer(NamedParameters parameters, std::shared_ptr<ProcessGroup> process_group, Options options,
                 NamedParameters buffers) {
  if (!process_group) {
    throw InvalidArgumentError("ddp::Reducer: the process group is null; create one with ddp::init_process_group()");
  }
  impl_ = std::make_shared<Impl>(std::move(parameters), std::move(buffers), std::move(process_group),
                                 std::move(options));
  impl_->register_hooks();
}

Reducer::~Reducer() = default;

void Reducer::prepare_for_forward() { impl_->prepare_for_forward(); }
void Reducer::prepare_for_backward(const std::vector<at::Tensor>& outputs) { impl_->prepare_for_backward(outputs); }
void Reducer::sync_module_state(const std::vector<at::Tensor>& tensors) { impl_->sync_module_state(tensors); }
void Reducer::register_comm_hook(std::shared_ptr<CommHook> hook) { impl_->register_comm_hook(std::move(hook)); }
const std::shared_ptr<CommHook>& Reducer::comm_hook() const { return impl_->comm_hook(); }
bool Reducer::manages(const at::Tensor& tensor) const { return impl_->manages(tensor); }
bool Reducer::require_sync() const { return impl_->require_sync; }
void Reducer::set_require_sync(bool require_sync) { impl_->require_sync = require_sync; }
void Reducer::synchronize() { impl_->settle_reads(); }

namespace detail {
void log_join_failure(const Reducer& reducer, const std::exception& error) {
  detail::log(detail::LogLevel::kError, reducer.process_group()->rank(),
              "ddp::Join could not complete when it went out of scope (call join() to get this as an exception): {}",
              error.what());
}
} // namespace detail
void Reducer::arm_join(bool throw_on_early_termination, bool divide_by_initial_world_size) {
  impl_->arm_join(throw_on_early_termination, divide_by_initial_world_size);
}
void Reducer::disarm_join() { impl_->disarm_join(); }
void Reducer::join(const std::function<std::vector<at::Tensor>()>& buffers, const std::vector<at::Tensor>& final_state) {
  impl_->join(buffers, final_state);
}
std::vector<std::string> Reducer::unused_parameters() const {
  impl_->settle_reads(); // a deferred step check reads the last backward's flags now
  return impl_->unused_names(/*global=*/true);
}
std::vector<std::string> Reducer::locally_unused_parameters() const { return impl_->unused_names(/*global=*/false); }
std::vector<std::vector<std::string>> Reducer::bucket_layout() const { return impl_->bucket_layout(); }
std::vector<int64_t> Reducer::bucket_bytes() const { return impl_->bucket_bytes(); }
const std::vector<std::string>& Reducer::parameter_names() const { return impl_->names; }
const std::vector<at::Tensor>& Reducer::parameters() const { return impl_->parameters; }
void Reducer::set_reduced_callback(std::weak_ptr<void> owner, ReducedCallback callback) {
  impl_->set_reduced_callback(std::move(owner), std::move(callback));
}
const ReducerStats& Reducer::stats() const { return impl_->stats; }
const Timeline& Reducer::timeline() const { return impl_->timeline; }
void Reducer::set_timeline_enabled(bool enabled) { impl_->timeline.set_enabled(enabled); }
void Reducer::write_timeline(const std::string& path) const { impl_->write_timeline(path); }
const Options& Reducer::options() const { return impl_->options; }
const std::shared_ptr<ProcessGroup>& Reducer::process_group() const { return impl_->process_group; }

} // namespace ddp
