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
  // Checks `tensor` and `how` (InvalidArgumentError naming `rank` and the fix).
  OrderedSum(const at::Tensor& tensor, int world_size, int rank, OrderedReduce how);

  int64_t chunk() const { return chunk_; }
  int world_size() const { return world_size_; }
  const OrderedReduce& how() const { return how_; }

  // [world_size, chunk] in the wire dtype; a view of the tensor where no cast or padding
  // is needed (the transport only reads it).
  at::Tensor pack() const;
  // An uninitialised [world_size, chunk] wire-dtype tensor on the tensor's device: where
  // the pieces are received, or the sums gathered.
  at::Tensor rows() const;
  // The sums of `pieces` ([world_size, width], row r from rank r): [width] in the wire dtype.
  at::Tensor add(const at::Tensor& pieces) const;
  // Writes the gathered sums ([world_size, chunk]) into the tensor.
  void unpack(const at::Tensor& sums) const;

 private:
  at::Tensor flat_; // the tensor, flattened (a view)
  const int world_size_;
  const OrderedReduce how_;
  int64_t chunk_ = 0;
};

} // namespace ddp::detail
