#include "reducer/bucket_set.h"

#include <ATen/ATen.h>
#include <c10/util/StringUtil.h>
#include <fmt/format.h>

#include <utility>

#include "bucket/bucket_assignment.h"
#include "bucket/slot_copy.h"
#include "common/logging.h"

namespace ddp::detail {
namespace {

size_t mib_to_bytes(double mib) {
  return static_cast<size_t>(mib * 1024.0 * 1024.0);
}

} // namespace

BucketSet::BucketSet(const std::vector<at::Tensor>& parameters, const std::vector<std::string>& names,
                     const std::vector<std::vector<int64_t>>& shapes, const std::vector<char>& sparse,
                     const Options& options, int rank, int world_size, ReducerStats& stats)
    : parameters_(parameters),
      names_(names),
      shapes_(shapes),
      sparse_(sparse),
      options_(options),
      rank_(rank),
      world_size_(world_size),
      stats_(stats),
      precision_(options, names, parameters, rank),
      divide_after_(precision_.ordered()),
      divisor_(world_size),
      scale_(at::scalar_tensor(divide_after_ ? 1.0 : 1.0 / world_size, at::TensorOptions().dtype(at::kDouble))),
      scale_value_(divide_after_ ? 1.0 : 1.0 / world_size),
      bucket_cap_mb_(options.bucket_cap_mb()) {
  if (precision_.ordered() && debug_level() >= DebugLevel::kDetail && rank_ == 0) {
    log(LogLevel::kInfo, rank_, "ordered sums (Options::reproducible / wire_dtype):{}", precision_.describe(names_));
  }
}

OrderedReduce BucketSet::ordered_reduce(size_t b) const {
  OrderedReduce how = precision_.of(buckets_[b]->members().front());
  how.divisor = divide_after_ ? divisor_ : 1;
  return how;
}

size_t BucketSet::in_place_min_bytes() const {
  if (options_.gradient_as_bucket_view()) return 0; // .grad is the bucket already
  if (options_.in_place_min_mb() < 0) {
    return parameters_.front().device().is_cpu() ? mib_to_bytes(1.0) : 0;
  }
  return mib_to_bytes(options_.in_place_min_mb());
}

BucketCaps BucketSet::caps() const {
  // Until the rebuild, first_iteration_one_bucket lays out one bucket per kind.
  if (options_.first_iteration_one_bucket() && !rebuilt_) return BucketCaps::one_bucket();
  BucketCaps caps{mib_to_bytes(options_.first_bucket_cap_mb()), mib_to_bytes(bucket_cap_mb_),
                  in_place_min_bytes()};
  for (double mib : options_.bucket_cap_mb_list()) caps.list.push_back(mib_to_bytes(mib));
  return caps;
}

void BucketSet::build(const std::vector<size_t>& full_order) {
  // Sparse gradients are reduced apart (SparseGradients): no bucket, no slot.
  std::vector<size_t> order;
  order.reserve(full_order.size());
  for (size_t i : full_order) {
    if (!sparse_[i]) order.push_back(i);
  }
  built_order_ = full_order;
  auto assignment = assign_buckets(parameters_, order, caps(),
                                   precision_.ordered() ? precision_.bucket_groups() : std::vector<int>{});
  std::vector<std::unique_ptr<Bucket>> buckets;
  std::vector<Slot> slots(parameters_.size());
  int64_t bytes = 0;
  for (size_t b = 0; b < assignment.size(); ++b) {
    for (size_t k = 0; k < assignment[b].size(); ++k) slots[assignment[b][k]] = Slot{b, k};
    buckets.push_back(std::make_unique<Bucket>(std::move(assignment[b]), parameters_));
    bytes += static_cast<int64_t>(buckets.back()->bytes());
  }
  if (options_.gradient_as_bucket_view() && !buckets_.empty()) {
    for (size_t i = 0; i < parameters_.size(); ++i) {
      if (sparse_[i]) continue;
      at::Tensor& grad = const_cast<at::Tensor&>(parameters_[i]).mutable_grad();
      const Slot& old_slot = slots_[i];
      if (grad.defined() && grad.is_alias_of(buckets_[old_slot.bucket]->flat())) {
        const at::Tensor& view = buckets[slots[i].bucket]->view(slots[i].position);
        view.copy_(grad);
        grad = view;
      }
    }
  }
  buckets_ = std::move(buckets);
  slots_ = std::move(slots);
  bucket_names_.clear();
  bucket_shapes_.clear();
  for (const auto& bucket : buckets_) {
    auto bucket_names = std::make_shared<std::vector<std::string>>();
    auto shapes = std::make_shared<std::vector<std::vector<int64_t>>>();
    for (size_t index : bucket->members()) {
      bucket_names->push_back(names_[index]);
      shapes->push_back(shapes_[index]);
    }
    bucket_names_.push_back(std::move(bucket_names));
    bucket_shapes_.push_back(std::move(shapes));
  }
  next_ = 0;
  written_.assign(buckets_.size(), 0);
  stats_.buckets = static_cast<int64_t>(buckets_.size());
  stats_.bytes_per_iteration = bytes;
  if (debug_level() >= DebugLevel::kInfo && rank_ == 0) {
    std::string layout;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      layout += fmt::format("\n  bucket {} ({:.2f} MiB): {}", b, buckets_[b]->bytes() / 1048576.0, members_text(b));
    }
    log(LogLevel::kInfo, rank_, "bucket layout{}:{}", rebuilt_ ? " after rebuild" : "", layout);
  }
}

void BucketSet::rebuild_if_due() {
  // Local: rank 0's order arrived in the first iteration's section (finalize), and
  // autotune's caps follow the iteration count (or rank 0's choice), so every rank builds
  // the same buckets here without a collective of its own.
  if (!rebuild_due_) return;
  rebuild_due_ = false;
  rebuilt_ = true;
  stats_.bucket_rebuilds += 1;
  // A copy: build() replaces built_order_.
  build(rebuild_order_.empty() ? std::vector<size_t>(built_order_) : rebuild_order_);
}

const std::vector<size_t>& BucketSet::complete_order() {
  const size_t n = parameters_.size();
  std::vector<char> seen(n, 0);
  for (size_t i : ready_order_) seen[i] = 1;
  for (size_t i = n; i-- > 0;) {
    if (!seen[i]) ready_order_.push_back(i);
  }
  return ready_order_;
}

std::string BucketSet::members_text(size_t b) const {
  std::string out;
  const auto& members = buckets_[b]->members();
  for (size_t k = 0; k < members.size(); ++k) {
    if (k) out += ", ";
    out += names_[members[k]];
  }
  return out;
}

std::optional<std::string> BucketSet::copy_gradient(size_t index) {
  const at::Tensor& grad = parameters_[index].grad();
  const at::Tensor& slot_view = view(index);
  if (!grad.defined()) {
    slot_view.zero_();
    return std::nullopt;
  }
  if (grad.is_sparse() || grad.scalar_type() != slot_view.scalar_type() || grad.device() != slot_view.device() ||
      grad.sizes() != slot_view.sizes()) {
    slot_view.zero_();
    return fmt::format(
        "{} parameter '{}' got a gradient of {} {} on {} but the parameter is {} {} on {}; libddp reduces dense "
        "gradients of the parameter's own shape, dtype and device, and sparse ones of the parameters declared sparse "
        "(an Embedding or EmbeddingBag with sparse(true) under DistributedDataParallel, or "
        "Options::expect_sparse_gradients), on every rank alike",
        fmt::format("[ddp rank {}]", rank_), names_[index], grad.is_sparse() ? "sparse" : "dense", c10::toString(grad.scalar_type()),
        grad.device().str(), c10::toString(slot_view.scalar_type()), c10::str(slot_view.sizes()),
        slot_view.device().str());
  }
  Bucket& bucket = *buckets_[slots_[index].bucket];
  const size_t in_place_min = in_place_min_bytes();
  if (bucket.members().size() == 1 && bucket.bytes() >= in_place_min && in_place_min > 0 && grad.is_contiguous() &&
      !grad.requires_grad() && !grad.is_alias_of(slot_view)) {
    // Reduce the gradient where it is: no copy in now, no copy back in finalize.
    at::Tensor& owned = const_cast<at::Tensor&>(grad);
    if (world_size_ > 1) owned.mul_(scale_);
    bucket.set_in_place(owned);
    return std::nullopt;
  }
  if (options_.gradient_as_bucket_view() && grad.is_alias_of(slot_view)) {
    if (world_size_ > 1) slot_view.mul_(scale_);
  } else {
    // Copy and pre-divide in one pass.
    copy_scaled(slot_view, grad, scale_value_, scale_);
  }
  return std::nullopt;
}

std::optional<std::string> BucketSet::add_again(size_t index, const at::Tensor& incoming) {
  if (!incoming.defined()) return std::nullopt;
  Bucket& bucket = *buckets_[slots_[index].bucket];
  const at::Tensor& storage = bucket.in_place() ? bucket.comm_tensor() : view(index);
  if (incoming.is_sparse() || incoming.scalar_type() != storage.scalar_type() ||
      incoming.device() != storage.device() || incoming.sizes() != storage.sizes()) {
    return fmt::format("[ddp rank {}] parameter '{}' got a gradient of {} {} on {} but the parameter is {} {} on {}; "
                       "libddp reduces dense gradients of the parameter's own shape, dtype and device",
                       rank_, names_[index], incoming.is_sparse() ? "sparse" : "dense",
                       c10::toString(incoming.scalar_type()), incoming.device().str(),
                       c10::toString(storage.scalar_type()), c10::str(storage.sizes()), storage.device().str());
  }
  const at::Tensor& grad = parameters_[index].grad();
  // The accumulator added `incoming` into .grad in place when .grad is the storage.
  const bool added = grad.defined() && grad.is_alias_of(storage);
  const double alpha = scale_value_ - (added ? 1.0 : 0.0);
  if (alpha != 0.0) const_cast<at::Tensor&>(storage).add_(incoming, alpha);
  return std::nullopt;
}

std::optional<std::string> BucketSet::fill_without_hook(size_t index, bool used_locally) {
  std::optional<std::string> error;
  if (used_locally && parameters_[index].grad().defined()) {
    error = copy_gradient(index); // accumulated under no_sync() in an earlier micro-step
  } else {
    const_cast<at::Tensor&>(view(index)).zero_();
  }
  mark_ready(index);
  return error;
}

void BucketSet::detach_grads(size_t b) {
  Bucket& bucket = *buckets_[b];
  const at::Tensor& storage = bucket.comm_tensor();
  for (size_t i : bucket.members()) {
    if (settled_ != nullptr && (*settled_)[i]) continue; // its runs are known: none comes after the launch
    at::Tensor& grad = const_cast<at::Tensor&>(parameters_[i]).mutable_grad();
    if (grad.defined() && grad.is_alias_of(storage)) detached_.emplace_back(i, std::exchange(grad, at::Tensor()));
  }
}

void BucketSet::reattach_grads() {
  for (auto& [i, tensor] : detached_) const_cast<at::Tensor&>(parameters_[i]).mutable_grad() = std::move(tensor);
  detached_.clear();
}

void BucketSet::launch_ready(const std::function<bool(size_t)>& launch) {
  while (next_ready()) {
    detach_grads(next_);
    if (launch(next_)) stats_.collectives += 1;
    ++next_;
  }
}

void BucketSet::launch_rest(const std::function<bool(size_t)>& launch) {
  for (; next_ < buckets_.size(); ++next_) {
    buckets_[next_]->set_in_place(at::Tensor()); // never reduce garbage into a user's .grad
    if (launch(next_)) stats_.collectives += 1;
  }
}

void BucketSet::write_back(const std::vector<int64_t>& used_by, bool all_used) {
  reattach_grads();
  for (size_t b = 0; b < buckets_.size(); ++b) write_back_bucket(b, used_by, all_used);
}

void BucketSet::write_back_bucket(size_t b, const std::vector<int64_t>& used_by, bool all_used) {
  if (written_.size() != buckets_.size()) written_.assign(buckets_.size(), 0);
  if (written_[b]) return;
  written_[b] = 1;
  const Bucket& bucket = *buckets_[b];
  if (bucket.in_place()) return; // .grad holds the average already
  const auto& members = bucket.members();
  for (size_t position = 0; position < members.size(); ++position) {
    const size_t i = members[position];
    if (sparse_[i] || (!all_used && used_by[i] == 0)) continue;
    const at::Tensor& slot_view = bucket.view(position);
    at::Tensor& grad = const_cast<at::Tensor&>(parameters_[i]).mutable_grad();
    if (options_.gradient_as_bucket_view()) {
      if (!grad.defined() || !grad.is_alias_of(slot_view)) grad = slot_view;
    } else if (grad.defined()) {
      copy_scaled(grad, slot_view, 1.0);
    } else {
      grad = slot_view.clone();
    }
  }
}

void BucketSet::set_divisor(int divisor) {
  divisor_ = divisor;
  const double value = divide_after_ ? 1.0 : 1.0 / divisor;
  if (value == scale_value_) return;
  scale_value_ = value;
  scale_.fill_(value);
}

void BucketSet::divide_before_reduction() {
  divide_after_ = false;
  set_divisor(divisor_); // the scale was 1 while the sums divided
}

void BucketSet::reset() {
  reattach_grads();
  for (auto& b : buckets_) b->reset();
  written_.assign(buckets_.size(), 0);
  next_ = 0;
}

std::vector<std::vector<std::string>> BucketSet::layout() const {
  std::vector<std::vector<std::string>> out;
  for (const auto& b : buckets_) {
    std::vector<std::string> members;
    for (size_t i : b->members()) members.push_back(names_[i]);
    out.push_back(std::move(members));
  }
  return out;
}

std::vector<int64_t> BucketSet::bytes() const {
  std::vector<int64_t> out;
  for (const auto& b : buckets_) out.push_back(static_cast<int64_t>(b->bytes()));
  return out;
}

} // namespace ddp::detail
