// OrderedSum: the arithmetic of ProcessGroup::allreduce_ordered, written once for every
// backend, which only moves the bytes between its steps:
//   pack()     the tensor as n rows of `chunk` elements in the wire dtype (by position;
//              the last row zero-padded): row j is sent to rank j;
//   add()      rank j adds the n rows it received (row r from rank r) in rank order, in
//              the accumulation dtype, divides, and casts the sums to the wire dtype;
//   unpack()   the allgathered sums (row j from rank j) are written into the tensor.
// Each element's result is then the same sequence of IEEE operations whatever the
// tensor's length, the chunking or the transport, so the same bits: elementwise adds and
// divisions round each element on its own, on any ISA. (A reduction kernel, or a library's
// all-reduce, picks its order from the sizes.)
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

#include <ddp/process_group.h>

namespace ddp::detail {

class OrderedSum {
 public:
  // Buffers one caller reuses across calls (each reallocated when too small), so that a
  // backend running one exchange at a time does not fault in fresh pages every bucket
  // (three buffers of a 32 MiB bucket cost more than the adds). Null: fresh memory.
  struct Scratch {
    at::Tensor packed, pieces, sum, gathered;
  };

  // Checks `tensor` and `how` (InvalidArgumentError naming `rank` and the fix).
  OrderedSum(const at::Tensor& tensor, int world_size, int rank, OrderedReduce how);

  int64_t chunk() const { return chunk_; }
  int world_size() const { return world_size_; }
  const OrderedReduce& how() const { return how_; }

  // [world_size, chunk] in the wire dtype: row j goes to rank j. The tensor itself where
  // no cast or padding is needed (the transport only reads it).
  at::Tensor pack(Scratch* scratch) const;
  // [world_size, chunk] wire-dtype rows where the pieces are received (row r from rank r).
  at::Tensor pieces(Scratch* scratch) const;
  // The sums of `pieces` ([world_size, width], row r from rank r), divided: [width] in the
  // wire dtype. May overwrite `pieces`.
  at::Tensor add(const at::Tensor& pieces, Scratch* scratch) const;
  // [world_size, chunk] wire-dtype rows where the sums are gathered (row j from rank j):
  // the tensor itself where no cast or padding is needed, so unpack has nothing to do.
  at::Tensor gathered(Scratch* scratch) const;
  // Writes the gathered sums into the tensor (nothing when they are already there).
  void unpack(const at::Tensor& gathered) const;

 private:
  // The tensor as [world_size, chunk] rows, when it can travel as it is.
  bool direct() const;
  // A [world_size, chunk] wire-dtype tensor from `slot` (kept there) or fresh memory.
  at::Tensor rows(at::Tensor* slot) const;

  at::Tensor flat_; // the tensor, flattened (a view)
  int world_size_;
  OrderedReduce how_;
  int64_t chunk_ = 0;
};

} // namespace ddp::detail
