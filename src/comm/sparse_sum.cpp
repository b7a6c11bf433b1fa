#include "comm/sparse_sum.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <memory>

#include <ddp/work.h>

namespace ddp::detail {
namespace {

// A coalesced sparse tensor from one rank's trimmed indices and values, on `device`.
at::Tensor part_of(const at::Tensor& indices, const at::Tensor& values, at::IntArrayRef sizes,
                   const c10::Device& device) {
  at::Tensor part = at::_sparse_coo_tensor_unsafe(indices.contiguous().to(device), values.contiguous().to(device),
                                                  sizes, values.options().device(device));
  // Each rank sent its tensor coalesced (sorted, unique indices): say so, so that the add
  // merges instead of sorting the concatenation again.
  return part._coalesced_(true);
}

} // namespace

at::Tensor SparseSum::add_in_rank_order(const std::vector<at::Tensor>& parts, int64_t divisor) {
  at::Tensor sum = parts.front().coalesce();
  for (size_t r = 1; r < parts.size(); ++r) sum = at::add(sum, parts[r].coalesce());
  sum = sum.coalesce(); // a no-op where the adds kept it coalesced
  if (divisor == 1) return sum;
  at::Tensor values = sum._values().div(static_cast<double>(divisor));
  return at::_sparse_coo_tensor_unsafe(sum._indices(), values, sum.sizes(), values.options())._coalesced_(true);
}

SparseSum::Result SparseSum::run(ProcessGroup& group, const std::vector<at::Tensor>& locals, int64_t divisor,
                                 std::chrono::milliseconds timeout) {
  Result result;
  const int n = group.size();
  const size_t k = locals.size();
  if (k == 0) return result;
  std::vector<at::Tensor> mine(k);
  for (size_t j = 0; j < k; ++j) mine[j] = locals[j].coalesce(); // fewer entries to send; sorted
  if (n == 1) {
    for (size_t j = 0; j < k; ++j) result.sums.push_back(add_in_rank_order({mine[j]}, divisor));
    return result;
  }
  const c10::Device comm = group.device();
  const auto on_comm = [&comm](const at::TensorOptions& o) { return o.device(comm); };

  // Round 1: every tensor's (nnz, sparse_dim) on every rank.
  at::Tensor counts = at::empty({static_cast<int64_t>(2 * k)}, at::kLong);
  auto* c = counts.data_ptr<int64_t>();
  for (size_t j = 0; j < k; ++j) {
    c[2 * j] = mine[j]._nnz();
    c[2 * j + 1] = mine[j]._nnz() > 0 ? mine[j].sparse_dim() : 0; // an empty tensor takes the others'
  }
  std::vector<at::Tensor> all_counts;
  for (int r = 0; r < n; ++r) all_counts.push_back(at::empty_like(counts, on_comm(counts.options())));
  group.allgather(all_counts, counts.to(comm))->wait(timeout);
  result.collectives += 1;
  std::vector<std::vector<int64_t>> nnz(static_cast<size_t>(n), std::vector<int64_t>(k));
  std::vector<int64_t> sparse_dim(k, 0);
  for (int r = 0; r < n; ++r) {
    const at::Tensor host = all_counts[static_cast<size_t>(r)].cpu();
    const auto* h = host.data_ptr<int64_t>();
    for (size_t j = 0; j < k; ++j) {
      nnz[static_cast<size_t>(r)][j] = h[2 * j];
      if (h[2 * j] == 0) continue;
      if (sparse_dim[j] != 0 && sparse_dim[j] != h[2 * j + 1] && result.error.empty()) {
        result.error = fmt::format(
            "sparse gradient {} has {} sparse dimensions on one rank and {} on rank {}: libddp sums sparse "
            "gradients whose ranks agree on their layout (Embedding and EmbeddingBag give 1)",
            j, sparse_dim[j], h[2 * j + 1], r);
      }
      sparse_dim[j] = std::max(sparse_dim[j], h[2 * j + 1]);
    }
  }
  if (!result.error.empty()) return result; // every rank read the same counts: none goes on

  // Round 2: each tensor some rank holds entries of, padded to the largest count.
  struct Gathered {
    int64_t width = 0;
    std::vector<at::Tensor> indices, values;
  };
  std::vector<Gathered> gathered(k);
  std::vector<std::shared_ptr<Work>> works;
  std::vector<at::Tensor> inputs; // alive until the waits below
  for (size_t j = 0; j < k; ++j) {
    int64_t width = 0;
    for (int r = 0; r < n; ++r) width = std::max(width, nnz[static_cast<size_t>(r)][j]);
    gathered[j].width = width;
    if (width == 0) continue; // nobody has an entry: the sum is empty, nothing to send
    const int64_t dims = sparse_dim[j];
    const int64_t own = mine[j]._nnz();
    const at::Tensor& local = mine[j];
    std::vector<int64_t> value_shape = {width};
    for (int64_t d = dims; d < local.dim(); ++d) value_shape.push_back(local.size(d));
    at::Tensor indices = at::zeros({dims, width}, at::TensorOptions().dtype(at::kLong).device(comm));
    at::Tensor values = at::zeros(value_shape, on_comm(local.options().layout(at::kStrided)));
    if (own > 0) {
      indices.narrow(1, 0, own).copy_(local._indices());
      values.narrow(0, 0, own).copy_(local._values());
    }
    for (int r = 0; r < n; ++r) {
      gathered[j].indices.push_back(at::empty_like(indices));
      gathered[j].values.push_back(at::empty_like(values));
    }
    works.push_back(group.allgather(gathered[j].indices, indices));
    works.push_back(group.allgather(gathered[j].values, values));
    inputs.push_back(indices);
    inputs.push_back(values);
    result.collectives += 2;
    result.bytes_sent += static_cast<int64_t>(indices.nbytes() + values.nbytes());
  }
  for (auto& work : works) work->wait(timeout);

  for (size_t j = 0; j < k; ++j) {
    const at::Tensor& local = locals[j];
    if (gathered[j].width == 0) {
      result.sums.push_back(mine[j]); // empty on every rank
      continue;
    }
    std::vector<at::Tensor> parts;
    for (int r = 0; r < n; ++r) {
      const int64_t count = nnz[static_cast<size_t>(r)][j];
      parts.push_back(part_of(gathered[j].indices[static_cast<size_t>(r)].narrow(1, 0, count),
                              gathered[j].values[static_cast<size_t>(r)].narrow(0, 0, count), local.sizes(),
                              local.device()));
    }
    result.sums.push_back(add_in_rank_order(parts, divisor));
  }
  return result;
}

} // namespace ddp::detail
