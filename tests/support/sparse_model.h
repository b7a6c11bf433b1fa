// A recommendation-style model for the sparse-gradient tests: two embeddings with sparse
// gradients (an Embedding of users, an EmbeddingBag of each sample's items) feeding a
// dense MLP, and a third sparse embedding that nothing uses. Small vocabularies, so that
// a batch repeats rows (the sums of duplicates) and leaves most rows out.
#pragma once

#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <set>
#include <string>
#include <tuple>

#include "world.h"

namespace ddp::test {

struct RecommenderImpl : torch::nn::Module {
  static constexpr int64_t kUsers = 50, kItems = 40, kDim = 8, kBag = 3, kHidden = 16, kClasses = 4;
  // `sparse`: false builds the same model with dense embedding gradients.
  explicit RecommenderImpl(bool sparse = true) {
    user = register_module("user", torch::nn::Embedding(torch::nn::EmbeddingOptions(kUsers, kDim).sparse(sparse)));
    item = register_module(
        "item", torch::nn::EmbeddingBag(torch::nn::EmbeddingBagOptions(kItems, kDim).sparse(sparse).mode(torch::kMean)));
    spare = register_module("spare", torch::nn::Embedding(torch::nn::EmbeddingOptions(kUsers, kDim).sparse(true)));
    fc1 = register_module("fc1", torch::nn::Linear(2 * kDim, kHidden));
    fc2 = register_module("fc2", torch::nn::Linear(kHidden, kClasses));
  }
  // `use_items` false leaves the item embedding without a gradient (zeros in its place).
  torch::Tensor forward(torch::Tensor users, torch::Tensor items, bool use_items) {
    torch::Tensor u = user(users);
    torch::Tensor i = use_items ? item(items) : torch::zeros_like(u);
    return fc2(torch::relu(fc1(torch::cat({u, i}, 1))));
  }
  // Rounding errors along the longest chain feeding a gradient (an item row's), counted
  // by the rules in world.h, reduction_tolerance:
  //   forward  the bag's mean kBag + 1; fc1 2 kDim + 1; fc2 kHidden + 1          39
  //   loss     cross_entropy over C = 4 classes, forward and backward: 2C + 8   16
  //   backward fc2 dX (fan-out C), fc1 dX (fan-out kHidden), the bag's 1/kBag    21
  //   rows     a row's sum over its occurrences in the global batch: kBag B      3B
  //            (the ranks' coalesced sums, their sum over ranks, and the oracle's
  //            one sum all add the same terms)
  //   average  the division by the world size                                    1
  static constexpr int64_t reduction_terms(int64_t global_batch) { return 77 + kBag * global_batch; }
  torch::nn::Embedding user{nullptr}, spare{nullptr};
  torch::nn::EmbeddingBag item{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(Recommender);

struct RecBatch {
  torch::Tensor users, items, labels;
};

// Rank q's batch `b` of `rows` samples: the same wherever it is made (its own generator).
inline RecBatch rec_batch(int q, int b, int64_t rows) {
  auto gen = at::detail::createCPUGenerator(static_cast<uint64_t>(7000 + 100 * q + b));
  RecBatch batch;
  batch.users = torch::randint(RecommenderImpl::kUsers, {rows}, gen, torch::kLong);
  batch.items = torch::randint(RecommenderImpl::kItems, {rows, RecommenderImpl::kBag}, gen, torch::kLong);
  batch.labels = torch::randint(RecommenderImpl::kClasses, {rows}, gen, torch::kLong);
  return batch;
}

// A model with `initial`'s parameters (read-only there), built sparse or dense.
inline Recommender copy_of(const Recommender& initial, bool sparse = true) {
  Recommender m(sparse);
  torch::NoGradGuard no_grad;
  auto mine = m->named_parameters();
  for (const auto& p : initial->named_parameters()) mine[p.key()].copy_(p.value());
  return m;
}

// What one rank saw comparing its gradients with the oracle's.
struct SparseSeen {
  double worst = 0;           // max error / tolerance over every compared gradient (<= 1 passes)
  bool sparse_layout = true;  // every embedding gradient written was sparse and coalesced
  bool undefined_alike = true; // a gradient the oracle lacks is undefined here too, and only then
  bool identical = true;      // bit-identical across ranks
  int compared = 0;
};

// Collective (identical_across_ranks): every rank must call it at the same points.
inline void compare_with_oracle(const torch::nn::Module& got, const torch::nn::Module& want, double tolerance,
                                SparseSeen& seen) {
  const auto oracle = want.named_parameters();
  for (const auto& p : got.named_parameters()) {
    const torch::Tensor g = p.value().grad();
    const torch::Tensor w = oracle[p.key()].grad();
    const bool embedding = p.key().rfind("fc", 0) != 0;
    torch::Tensor dense = g.defined() ? (g.is_sparse() ? g.to_dense() : g) : torch::zeros_like(p.value());
    seen.identical = seen.identical && identical_across_ranks(dense);
    if (!w.defined()) {
      seen.undefined_alike = seen.undefined_alike && !g.defined();
      continue;
    }
    if (!g.defined()) {
      seen.undefined_alike = false;
      continue;
    }
    if (embedding) seen.sparse_layout = seen.sparse_layout && g.is_sparse() && g.is_coalesced();
    seen.worst = std::max(seen.worst, max_relative_error(dense, w.is_sparse() ? w.to_dense() : w) / tolerance);
    seen.compared += 1;
  }
}

} // namespace ddp::test
