#include "comm/hooks/powersgd_hook.h"

#include "comm/hooks/hook_stream.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <c10/core/StreamGuard.h>
#include <fmt/format.h>

#include <algorithm>
#include <array>
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
  uint64_t h = 1469598103934665603ull ^ seed;
  for (unsigned char c : name) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

// One gradient to compress: its matrix view and the views of P and Q for it.
struct Compressed {
  std::string name;
  at::Tensor gradient; // shaped like the parameter, a view of the bucket
  at::Tensor matrix; // n x m, a view of the bucket
  at::Tensor p;      // n x r, a view of the bucket's P buffer
  at::Tensor q;      // m x r, a view of the bucket's Q buffer
};

} // namespace

PowerSGDHook::PowerSGDHook(PowerSGDOptions options) : options_(options) {
  auto bad = [](const char* option, const std::string& value, const char* need) {
    return InvalidArgumentError(
        fmt::format("ddp::hooks::powersgd: PowerSGDOptions::{} = {}; it must be {}", option, value, need));
  };
  if (options_.matrix_approximation_rank < 1) {
    throw bad("matrix_approximation_rank", std::to_string(options_.matrix_approximation_rank), ">= 1");
  }
  if (options_.start_powerSGD_iter < 0) {
    throw bad("start_powerSGD_iter", std::to_string(options_.start_powerSGD_iter), ">= 0");
  }
  if (!(options_.min_compression_rate >= 0)) {
    throw bad("min_compression_rate", fmt::format("{}", options_.min_compression_rate), ">= 0");
  }
  if (!(options_.orthogonalization_epsilon >= 0)) {
    throw bad("orthogonalization_epsilon", fmt::format("{}", options_.orthogonalization_epsilon), ">= 0");
  }
}

std::string PowerSGDHook::name() const {
  // Every setting that changes what is sent: ranks registering different ones are named.
  return fmt::format(
      "powersgd(matrix_approximation_rank={}, start_powerSGD_iter={}, min_compression_rate={}, "
      "use_error_feedback={}, warm_start={}, orthogonalization_epsilon={}, random_seed={})",
      options_.matrix_approximation_rank, options_.start_powerSGD_iter, options_.min_compression_rate,
      options_.use_error_feedback, options_.warm_start, options_.orthogonalization_epsilon, options_.random_seed);
}

void PowerSGDHook::orthogonalize(at::Tensor& matrix, double epsilon) {
  const int64_t r = matrix.size(1);
  for (int64_t i = 0; i < r; ++i) {
    at::Tensor column = matrix.narrow(1, i, 1);
    at::Tensor norm = at::linalg_vector_norm(column, 2);
    if (epsilon > 0) norm = norm + epsilon;
    // A zero column (an all-zero gradient) stays zero instead of 0 / 0 = NaN, which would
    // spread through P, Q and the error feedback; decided on the device, no host sync.
    column.div_(at::where(norm > 0, norm, at::ones_like(norm)));
    if (i + 1 < r) {
      at::Tensor rest = matrix.narrow(1, i + 1, r - i - 1);
      rest.sub_(at::mm(column, at::mm(column.t(), rest)));
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
  if (!fits || !options_.warm_start) {
    // Drawn on the CPU from a seeded generator: the same on every rank and device, and a
    // new one each iteration (without warm start, each step starts from a fresh Q).
    at::Generator generator = at::detail::createCPUGenerator(
        seed_for(options_.random_seed + 0x9E3779B97F4A7C15ull * static_cast<uint64_t>(iteration), name));
    at::Tensor fresh = at::randn({cols, rank}, generator, options.device(at::kCPU));
    orthogonalize(fresh, options_.orthogonalization_epsilon);
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

std::shared_ptr<CommFuture> PowerSGDHook::run_step(GradBucket& bucket, int64_t iteration) {
  ProcessGroup& group = bucket.process_group();
  const at::Tensor& buffer = bucket.buffer();
  if (iteration < options_.start_powerSGD_iter) {
    return CommFuture::of(group.allreduce(buffer), buffer);
  }
  const auto& gradients = bucket.gradients();
  const auto& names = bucket.parameter_names();
  const auto options = buffer.options();

  // Which gradients are compressed, with their rank.
  std::vector<size_t> plain;
  std::vector<std::array<int64_t, 3>> shape; // n, m, r of each compressed gradient
  std::vector<size_t> compressed_index;
  int64_t p_size = 0;
  int64_t q_size = 0;
  for (size_t k = 0; k < gradients.size(); ++k) {
    const at::Tensor& g = gradients[k];
    if (g.dim() >= 2 && g.numel() > 0) {
      const int64_t n = g.size(0);
      const int64_t m = g.numel() / n;
      const int64_t r = std::min({options_.matrix_approximation_rank, n, m});
      if (static_cast<double>(n) * m > options_.min_compression_rate * static_cast<double>(n + m) * r) {
        compressed_index.push_back(k);
        shape.push_back({n, m, r});
        p_size += n * r;
        q_size += m * r;
        continue;
      }
    }
    plain.push_back(k);
  }

  // Error feedback: what the approximation left out last time joins this gradient.
  if (options_.use_error_feedback) {
    for (size_t c = 0; c < compressed_index.size(); ++c) {
      const size_t k = compressed_index[c];
      at::Tensor& error = error_[names[k]];
      if (error.defined() && error.sizes() == gradients[k].sizes()) {
        // A checkpoint may bring it from another device or dtype: moved once.
        if (error.device() != buffer.device() || error.scalar_type() != buffer.scalar_type()) {
          error = error.to(buffer.options());
        }
        gradients[k].add_(error);
      }
    }
  }

  // The uncompressed gradients travel together, as they are.
  std::shared_ptr<Work> plain_work;
  at::Tensor plain_flat;
  if (!plain.empty()) {
    std::vector<at::Tensor> parts;
    for (size_t k : plain) parts.push_back(gradients[k].reshape({-1}));
    plain_flat = at::cat(parts);
    plain_work = group.allreduce(plain_flat);
  }
  if (compressed_index.empty()) {
    const std::optional<c10::Stream> stream = current_stream(buffer.device());
    return CommFuture::of(plain_work, plain_flat)->then_map([buffer, gradients, plain, stream](const at::Tensor& reduced) {
      const c10::OptionalStreamGuard on_stream(stream);
      int64_t offset = 0;
      for (size_t k : plain) {
        const int64_t numel = gradients[k].numel();
        gradients[k].view({-1}).copy_(reduced.narrow(0, offset, numel));
        offset += numel;
      }
      return buffer;
    });
  }

  at::Tensor p_all = at::empty({p_size}, options);
  at::Tensor q_all = at::empty({q_size}, options);
  std::vector<Compressed> work;
  int64_t p_offset = 0;
  int64_t q_offset = 0;
  for (size_t c = 0; c < compressed_index.size(); ++c) {
    const size_t k = compressed_index[c];
    const auto [n, m, r] = shape[c];
    Compressed item{names[k], gradients[k], gradients[k].view({n, m}), p_all.narrow(0, p_offset, n * r).view({n, r}),
                    q_all.narrow(0, q_offset, m * r).view({m, r})};
    item.q.copy_(q_for(names[k], m, r, options, iteration));
    at::mm_out(item.p, item.matrix, item.q);
    p_offset += n * r;
    q_offset += m * r;
    work.push_back(std::move(item));
  }
  std::shared_ptr<Work> p_work = group.allreduce(p_all);

  const double world = static_cast<double>(group.size());
  // The continuations queue their kernels where run() queued its own (CUDA: the
  // backward's stream), whichever stream the reducer's caller has.
  const std::optional<c10::Stream> stream = current_stream(buffer.device());
  const bool error_feedback = options_.use_error_feedback;
  const double epsilon = options_.orthogonalization_epsilon;
  ProcessGroup* pg = &group;
  return CommFuture::of(std::move(p_work), p_all)
      ->then([this, pg, work, q_all, epsilon, stream](const at::Tensor&) {
        const c10::OptionalStreamGuard on_stream(stream);
        // Every rank holds the same summed P, so every rank finds the same basis.
        for (const auto& item : work) {
          at::Tensor p = item.p;
          orthogonalize(p, epsilon);
          // (P^T M)^T: the same products as M^T P, several times faster on the CPU (a
          // transposed left operand of mm_out takes a slow path in MKL).
          const_cast<at::Tensor&>(item.q).copy_(at::mm(item.p.t(), item.matrix).t());
        }
        return CommFuture::of(pg->allreduce(q_all), q_all);
      })
      ->then_map([this, buffer, gradients, plain, plain_work, plain_flat, work, world, error_feedback, stream](
                     const at::Tensor&) {
        const c10::OptionalStreamGuard on_stream(stream);
        if (plain_work) {
          plain_work->wait(Work::kNoTimeout); // issued before P: complete already on the CPU
          int64_t offset = 0;
          for (size_t k : plain) {
            const int64_t numel = gradients[k].numel();
            gradients[k].view({-1}).copy_(plain_flat.narrow(0, offset, numel));
            offset += numel;
          }
        }
        for (const auto& item : work) {
          at::Tensor approximation = at::mm(item.p, item.q.t());
          if (error_feedback) {
            // This rank's share of what the sum's approximation left out (the bucket
            // holds gradients divided by the world size, the approximation their sum).
            error_[item.name] = (item.matrix - approximation / world).view(item.gradient.sizes());
          }
          const_cast<at::Tensor&>(item.matrix).copy_(approximation);
          // Warm start: the next iteration begins from this Q. A column that came out zero
          // (the gradient was all zeros: a parameter no rank used) would stay zero for
          // good (P = M 0), so such a column keeps the Q it started from.
          const at::Tensor started = q_.count(item.name) ? q_[item.name] : at::Tensor();
          if (started.defined() && started.sizes() == item.q.sizes()) {
            const at::Tensor kept = at::linalg_vector_norm(item.q, 2, {0}, /*keepdim=*/true) > 0;
            q_[item.name] = at::where(kept, item.q, started);
          } else {
            q_[item.name] = item.q.clone();
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
