#include "reducer/sparse_gradients.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include "comm/sparse_sum.h"

namespace ddp::detail {

SparseGradients::SparseGradients(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
                                 const std::vector<std::string>& expected, int rank)
    : parameters_(parameters), names_(names), rank_(rank), mask_(parameters.size(), 0),
      position_(parameters.size(), 0) {
  for (size_t i = 0; i < names.size(); ++i) {
    for (const std::string& name : expected) {
      if (name == names[i]) mask_[i] = 1;
    }
    if (mask_[i]) {
      position_[i] = members_.size();
      members_.push_back(i);
    }
  }
  contributions_.resize(members_.size());
  sums_.resize(members_.size());
}

std::optional<std::string> SparseGradients::take(size_t index) {
  const at::Tensor& grad = parameters_[index].grad();
  const size_t k = position_[index];
  contributions_[k] = at::Tensor();
  if (!grad.defined()) return std::nullopt;
  const at::Tensor& p = parameters_[index];
  if (!grad.is_sparse() || grad.scalar_type() != p.scalar_type() || grad.device() != p.device() ||
      grad.sizes() != p.sizes()) {
    return fmt::format(
        "[ddp rank {}] parameter '{}' is declared sparse (an Embedding or EmbeddingBag with sparse(true), or "
        "Options::expect_sparse_gradients) but got a {} gradient of {} {} on {}, where libddp expects a sparse "
        "gradient of the parameter's {} {} on {}: build the module alike on every rank (sparse(true) everywhere, or "
        "nowhere)",
        rank_, names_[index], grad.is_sparse() ? "sparse" : "dense", c10::toString(grad.scalar_type()),
        c10::str(grad.sizes()), grad.device().str(), c10::toString(p.scalar_type()), c10::str(p.sizes()),
        p.device().str());
  }
  contributions_[k] = grad;
  return std::nullopt;
}

std::optional<std::string> SparseGradients::take_without_hook(size_t index, bool used_locally) {
  if (used_locally) return take(index); // accumulated under no_sync() in an earlier micro-step
  contributions_[position_[index]] = at::Tensor();
  return std::nullopt;
}

void SparseGradients::drop_contributions() {
  for (auto& c : contributions_) c = at::Tensor();
}

at::Tensor SparseGradients::empty_of(size_t k) const {
  const at::Tensor& p = parameters_[members_[k]];
  // One sparse dimension (rows), as Embedding and EmbeddingBag give; SparseSum pads an
  // empty contribution to the other ranks' layout anyway.
  std::vector<int64_t> value_shape = {0};
  for (int64_t d = 1; d < p.dim(); ++d) value_shape.push_back(p.size(d));
  return at::_sparse_coo_tensor_unsafe(at::empty({1, 0}, p.options().dtype(at::kLong)), at::empty(value_shape, p.options()),
                                       p.sizes(), p.options().layout(at::kSparse))
      ._coalesced_(true);
}

std::string SparseGradients::exchange(ProcessGroup& group, int divisor, std::chrono::milliseconds timeout,
                                      ReducerStats& stats) {
  std::vector<at::Tensor> locals;
  for (size_t k = 0; k < members_.size(); ++k) {
    locals.push_back(contributions_[k].defined() ? contributions_[k] : empty_of(k));
  }
  SparseSum::Result result = SparseSum::run(group, locals, divisor, timeout);
  stats.collectives += result.collectives;
  stats.sparse_bytes_per_iteration = result.bytes_sent;
  if (!result.error.empty()) {
    for (auto& s : sums_) s = at::Tensor();
    return fmt::format("[ddp rank {}] {}", rank_, result.error);
  }
  sums_ = std::move(result.sums);
  return "";
}

void SparseGradients::write_back(const std::vector<int64_t>& used_by, bool all_used) {
  for (size_t k = 0; k < members_.size(); ++k) {
    const size_t i = members_[k];
    if (!sums_[k].defined() || (!all_used && used_by[i] == 0)) continue;
    // Replaced, not added into: the sum already holds this rank's contribution, which was
    // the whole .grad (PyTorch's DDP also sets .grad to the reduced sparse tensor).
    const_cast<at::Tensor&>(parameters_[i]).mutable_grad() = sums_[k];
  }
}

void SparseGradients::reset() {
  drop_contributions();
  for (auto& s : sums_) s = at::Tensor();
}

} // namespace ddp::detail
