#include "comm/hooks/powersgd_hook.h"

#include "comm/hooks/hook_stream.h"
#include "common/fnv1a.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/StreamGuard.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <map>
#include <vector>

#include <ddp/error.h>
#include <ddp/process_group.h>

namespace ddp::hooks {
namespace {

constexpr const char* kIteration = "iteration";
constexpr const char* kQ = "q.";
constexpr const char* kError = "error.";

// FNV-1a, the same in every process: each parameter's initial Q has its own seed, so
// it does not depend on which bucket the parameter is in or when it was first seen.
uint64_t seed_for(uint64_t seed, const std::string& name) {
  return detail::fnv1a(name, detail::kFnv1aOffset ^ seed);
}

} // namespace

PowerSGDHook::PowerSGDHook(PowerSGDOptions options) : options_(options) {
  auto bad = [](const char* option, const std::string& value, const char* need) {
    return InvalidArgumentError(
        fmt::format("ddp::hooks::powersgd: PowerSGDOptions::{} = {}; it must be {}", option, value, need));
  };
  if (options_.matrix_approximation_rank() < 1) {
    throw bad("matrix_approximation_rank", std::to_string(options_.matrix_approximation_rank()), ">= 1");
  }
  if (options_.start_powerSGD_iter() < 0) {
    throw bad("start_powerSGD_iter", std::to_string(options_.start_powerSGD_iter()), ">= 0");
  }
  if (!(options_.min_compression_rate() >= 0)) {
    throw bad("min_compression_rate", fmt::format("{}", options_.min_compression_rate()), ">= 0");
  }
  if (!(options_.orthogonalization_epsilon() >= 0)) {
    throw bad("orthogonalization_epsilon", fmt::format("{}", options_.orthogonalization_epsilon()), ">= 0");
  }
}

std::string PowerSGDHook::name() const {
  // Every setting that changes what is sent: ranks registering different ones are named.
  return fmt::format(
      "powersgd(matrix_approximation_rank={}, start_powerSGD_iter={}, min_compression_rate={}, "
      "use_error_feedback={}, warm_start={}, orthogonalization_epsilon={}, random_seed={})",
      options_.matrix_approximation_rank(), options_.start_powerSGD_iter(), options_.min_compression_rate(),
      options_.use_error_feedback(), options_.warm_start(), options_.orthogonalization_epsilon(), options_.random_seed());
}

void PowerSGDHook::orthogonalize(at::Tensor& matrices, double epsilon) {
  // A batch of matrices (B x rows x r), or one (rows x r): Gram-Schmidt on each.
  at::Tensor batch = matrices.dim() == 2 ? matrices.unsqueeze(0) : matrices;
  const int64_t r = batch.size(2);
  for (int64_t i = 0; i < r; ++i) {
    at::Tensor column = batch.narrow(2, i, 1);
    at::Tensor norm = at::linalg_vector_norm(column, 2, {1}, /*keepdim=*/true);
    if (epsilon > 0) norm = norm + epsilon;
    // A zero column (an all-zero gradient) stays zero instead of 0 / 0 = NaN, which would
    // spread through P, Q and the error feedback; decided on the device, no host sync.
    column.div_(at::where(norm > 0, norm, at::ones_like(norm)));
    if (i + 1 < r) {
      at::Tensor rest = batch.narrow(2, i + 1, r - i - 1);
      rest.sub_(at::bmm(column, at::bmm(column.transpose(1, 2), rest)));
    }
  }
}

at::Tensor& PowerSGDHook::q_for(const std::string& name, int64_t cols, int64_t rank,
                                const at::TensorOptions& options, int64_t iteration) {
  at::Tensor& q = q_[name];
  const bool fits = q.defined() && q.dim() == 2 && q.size(0) == cols && q.size(1) == rank;
  if (fits && (q.device() != options.device() || q.scalar_type() != options.dtype().toScalarType())) {
    q = q.to(options); // loaded from a checkpoint on another device: moved once
  }
  if (!fits || !options_.warm_start()) {
    // Drawn on the CPU from a seeded generator: the same on every rank and device, and a
    // new one each iteration (without warm start, each step starts from a fresh Q).
    at::Generator generator = at::detail::createCPUGenerator(
        seed_for(options_.random_seed() + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(iteration), name));
    at::Tensor fresh = at::randn({cols, rank}, generator, options.device(at::kCPU));
    orthogonalize(fresh, options_.orthogonalization_epsilon());
    if (options.device().is_cpu()) {
      q = fresh;
    } else {
      // From pinned memory the copy is queued on the stream, not waited for on the host
      // (the caching host allocator keeps the block until the copy has run).
      q = at::empty({cols, rank}, options);
      q.copy_(fresh.pin_memory(), /*non_blocking=*/true);
    }
  }
  return q;
}

std::shared_ptr<CommFuture> PowerSGDHook::run(GradBucket& bucket) {
  auto future = run_step(bucket, iteration_);
  // Counted once run_step has succeeded: a run that threw, and the reducer's second run on
  // the zeroed bucket, count once together.
  if (bucket.is_last()) iteration_ += 1;
  return future;
}

std::shared_ptr<const PowerSGDHook::Layout> PowerSGDHook::layout_for(const GradBucket& bucket) {
  const auto& names = bucket.parameter_names();
  const auto& shapes = bucket.parameter_shapes();
  const at::Tensor& buffer = bucket.buffer();
  // Found by the address of the bucket's name list (the reducer keeps one per bucket
  // layout), confirmed by its contents: a list freed by the rebuild may be reused at the
  // same address. No allocation per step.
  const void* key = &names;
  auto found = layouts_.find(key);
  if (found != layouts_.end() && found->second->names == names && found->second->device == buffer.device()) {
    return found->second;
  }

  // Each parameter's place in the buffer; compressed matrices grouped by (n, m, r).
  auto made = std::make_shared<Layout>();
  Layout& layout = *made;
  layout.names = names;
  layout.device = buffer.device();
  std::vector<int64_t> plain_positions;
  std::map<std::array<int64_t, 3>, size_t> group_of;
  std::vector<std::vector<int64_t>> group_positions;
  int64_t offset = 0;
  for (size_t k = 0; k < shapes.size(); ++k) {
    const auto& shape = shapes[k];
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    bool compressed = false;
    if (shape.size() >= 2 && numel > 0) {
      const int64_t n = shape[0];
      const int64_t m = numel / n;
      const int64_t r = std::min({options_.matrix_approximation_rank(), n, m});
      if (static_cast<double>(n) * m > options_.min_compression_rate() * static_cast<double>(n + m) * r) {
        compressed = true;
        if (numel > kBatchMaxElements) {
          // Large: reduced where it lies in the bucket, alone (gathering it would cost
          // more memory traffic than the few calls it saves).
          layout.groups.push_back(Group{n, m, r, {names[k]}, {shape}, {}, offset});
          group_positions.emplace_back();
        } else {
          const std::array<int64_t, 3> nmr{n, m, r};
          auto [it, inserted] = group_of.emplace(nmr, layout.groups.size());
          if (inserted) {
            layout.groups.push_back(Group{n, m, r, {}, {}, {}, -1});
            group_positions.emplace_back();
          }
          Group& group = layout.groups[it->second];
          group.names.push_back(names[k]);
          group.shapes.push_back(shape);
          auto& positions = group_positions[it->second];
          for (int64_t i = 0; i < numel; ++i) positions.push_back(offset + i);
        }
      }
    }
    if (!compressed) {
      for (int64_t i = 0; i < numel; ++i) plain_positions.push_back(offset + i);
    }
    offset += numel;
  }
  auto to_index = [&buffer](const std::vector<int64_t>& positions) {
    at::Tensor index = at::from_blob(const_cast<int64_t*>(positions.data()), {static_cast<int64_t>(positions.size())},
                                     at::kLong)
                           .clone();
    return index.to(buffer.device());
  };
  if (!plain_positions.empty()) layout.plain_index = to_index(plain_positions);
  for (size_t g = 0; g < layout.groups.size(); ++g) {
    Group& group_g = layout.groups[g];
    if (group_g.offset < 0 && group_g.names.size() == 1) {
      group_g.offset = group_positions[g].front(); // a shape of its own: in place, no gather
    } else if (group_g.offset < 0) {
      group_g.index = to_index(group_positions[g]);
    }
    const auto& group = layout.groups[g];
    const auto count = static_cast<int64_t>(group.names.size());
    layout.p_size += count * group.n * group.r;
    layout.q_size += count * group.m * group.r;
  }
  // Layouts change only with the buckets (the rebuild after the first iteration): a
  // bound on the cache is a bound on a leak, not a working set. A step's futures hold
  // their layout, so dropping it here frees nothing they still use.
  if (layouts_.size() >= 64) layouts_.clear();
  layouts_[key] = made;
  return made;
}

std::shared_ptr<CommFuture> PowerSGDHook::run_step(GradBucket& bucket, int64_t iteration) {
  ProcessGroup& group = bucket.process_group();
  const at::Tensor& buffer = bucket.buffer();
  if (iteration < options_.start_powerSGD_iter()) {
    return CommFuture::of(group.allreduce(buffer), buffer);
  }
  const std::shared_ptr<const Layout> held = layout_for(bucket);
  const Layout& layout = *held;
  const auto options = buffer.options();

  // The uncompressed gradients travel together, as they are: gathered by one index.
  std::shared_ptr<Work> plain_work;
  at::Tensor plain_flat;
  if (layout.plain_index.defined()) {
    plain_flat = buffer.index_select(0, layout.plain_index);
    plain_work = group.allreduce(plain_flat);
  }
  const at::Tensor plain_index = layout.plain_index;
  const std::optional<c10::Stream> stream = current_stream(buffer.device());
  if (layout.groups.empty()) {
    return CommFuture::of(plain_work, plain_flat)->then_map([buffer, plain_index, stream](const at::Tensor& reduced) {
      const c10::OptionalStreamGuard on_stream(stream);
      at::Tensor(buffer).index_copy_(0, plain_index, reduced);
      return buffer;
    });
  }

  // Same-shape matrices go through batched products: a dozen ATen calls per group, not
  // per matrix (a model of many small layers paid ~90 us a matrix otherwise).
  at::Tensor p_all = at::empty({layout.p_size}, options);
  at::Tensor q_all = at::empty({layout.q_size}, options);
  std::vector<Batch> batches;
  int64_t p_offset = 0;
  int64_t q_offset = 0;
  for (const Group& g : layout.groups) {
    const auto count = static_cast<int64_t>(g.names.size());
    // A gathered copy of a group's matrices, or a lone large one's view of the bucket.
    at::Tensor matrices = g.offset >= 0 ? buffer.narrow(0, g.offset, g.n * g.m).view({1, g.n, g.m})
                                        : buffer.index_select(0, g.index).view({count, g.n, g.m});
    Batch batch{&g, matrices,
                p_all.narrow(0, p_offset, count * g.n * g.r).view({count, g.n, g.r}),
                q_all.narrow(0, q_offset, count * g.m * g.r).view({count, g.m, g.r}), {}};
    p_offset += count * g.n * g.r;
    q_offset += count * g.m * g.r;
    std::vector<at::Tensor> qs;
    std::vector<at::Tensor> errors;
    for (size_t i = 0; i < g.names.size(); ++i) {
      qs.push_back(q_for(g.names[i], g.m, g.r, options, iteration));
      if (!options_.use_error_feedback()) continue;
      // Error feedback: what the approximation left out last time joins this gradient.
      at::Tensor& error = error_[g.names[i]];
      if (error.defined() && error.numel() == g.n * g.m) {
        // A checkpoint may bring it from another device or dtype: moved once.
        if (error.device() != buffer.device() || error.scalar_type() != buffer.scalar_type()) {
          error = error.to(options);
        }
        errors.push_back(error.reshape({g.n, g.m}));
      } else {
        errors.push_back(at::zeros({g.n, g.m}, options));
      }
    }
    batch.q_started = at::stack(qs);
    batch.q.copy_(batch.q_started);
    if (options_.use_error_feedback()) {
      batch.matrices.add_(errors.size() == 1 ? errors.front().unsqueeze(0) : at::stack(errors));
    }
    at::bmm_out(batch.p, batch.matrices, batch.q);
    batches.push_back(std::move(batch));
  }
  std::shared_ptr<Work> p_work = group.allreduce(p_all);

  const double world = static_cast<double>(group.size());
  const bool error_feedback = options_.use_error_feedback();
  const double epsilon = options_.orthogonalization_epsilon();
  ProcessGroup* pg = &group;
  return CommFuture::of(std::move(p_work), p_all)
      ->then([pg, batches, q_all, epsilon, stream, held](const at::Tensor&) {
        const c10::OptionalStreamGuard on_stream(stream);
        for (const auto& batch : batches) {
          // Every rank holds the same summed P, so every rank finds the same basis.
          at::Tensor p = batch.p;
          orthogonalize(p, epsilon);
          // (P^T M)^T: the same products as M^T P, several times faster on the CPU (a
          // transposed left operand takes a slow path in MKL).
          const_cast<at::Tensor&>(batch.q).copy_(at::bmm(batch.p.transpose(1, 2), batch.matrices).transpose(1, 2));
        }
        return CommFuture::of(pg->allreduce(q_all), q_all);
      })
      ->then_map([this, buffer, plain_index, plain_work, plain_flat, batches, world, error_feedback, stream, held](
                     const at::Tensor&) {
        const c10::OptionalStreamGuard on_stream(stream);
        if (plain_work) {
          plain_work->wait(Work::kNoTimeout); // issued before P: complete already on the CPU
          at::Tensor(buffer).index_copy_(0, plain_index, plain_flat);
        }
        for (const auto& batch : batches) {
          const Group& g = *batch.group;
          const at::Tensor approximation = at::bmm(batch.p, batch.q.transpose(1, 2));
          at::Tensor errors;
          // This rank's share of what the sum's approximation left out (the bucket holds
          // gradients divided by the world size, the approximation their sum).
          if (error_feedback) errors = batch.matrices - approximation / world;
          // Warm start: the next iteration begins from this Q. A column that came out zero
          // (the gradient was all zeros: a parameter no rank used) would stay zero for
          // good (P = M 0), so such a column keeps the Q it started from.
          const at::Tensor kept = at::linalg_vector_norm(batch.q, 2, {1}, /*keepdim=*/true) > 0;
          const at::Tensor next_q = at::where(kept, batch.q, batch.q_started);
          for (size_t i = 0; i < g.names.size(); ++i) {
            const auto index = static_cast<int64_t>(i);
            if (error_feedback) error_[g.names[i]] = errors[index].view(g.shapes[i]);
            q_[g.names[i]] = next_q[index];
          }
          if (g.offset >= 0) {
            const_cast<at::Tensor&>(batch.matrices).copy_(approximation); // in the bucket
          } else {
            at::Tensor(buffer).index_copy_(0, g.index, approximation.reshape({-1}));
          }
        }
        return buffer;
      });
}

CommHook::State PowerSGDHook::state() const {
  State out;
  out.emplace_back(kIteration, at::scalar_tensor(iteration_, at::kLong));
  for (const auto& [name, q] : q_) out.emplace_back(kQ + name, q);
  for (const auto& [name, error] : error_) out.emplace_back(kError + name, error);
  return out;
}

void PowerSGDHook::load_state(const State& state) {
  q_.clear();
  error_.clear();
  for (const auto& [key, value] : state) {
    if (key == kIteration) {
      iteration_ = value.item<int64_t>();
    } else if (key.rfind(kQ, 0) == 0) {
      q_[key.substr(2)] = value.clone();
    } else if (key.rfind(kError, 0) == 0) {
      error_[key.substr(6)] = value.clone();
    } else {
      throw InvalidArgumentError(fmt::format(
          "ddp::hooks::powersgd: load_state got an entry '{}', which is not PowerSGD state (iteration, q.NAME, "
          "error.NAME): pass what state() returned",
          key));
    }
  }
}

std::shared_ptr<CommHook> powersgd(PowerSGDOptions options) {
  return std::make_shared<PowerSGDHook>(options);
}

} // namespace ddp::hooks
