// A ring all-reduce over MPI point-to-point messages, waited for with a WaitPolicy.
//
// Why not MPI_Iallreduce: Open MPI's nonblocking all-reduce (libnbc) picks reduce-then-
// broadcast for fewer than 4 ranks or an in-place buffer, which sends every byte twice in
// turn instead of both ways at once: a 32 MiB all-reduce of 2 ranks took 576 ms on a
// 1 Gbit/s link against 287 ms for MPI_Allreduce (docs/performance.md). The ring sends
// 2 (p - 1) / p of the buffer each way, the bandwidth optimum, and the communication
// thread can sleep between progress calls while the kernel moves the bytes.
//
// Each of the p segments travels in chunks, so that the reduction of one chunk
// (MPI_Reduce_local, with the same MPI_Op as MPI_Allreduce would use) overlaps the
// transfer of the next. Runs on the MPI communication thread only.
#pragma once

#include <mpi.h>

#include <cstdint>
#include <vector>

#include "comm/mpi/request_wait.h"

namespace ddp::mpi {

class RingAllreduce {
 public:
  RingAllreduce(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}

  // Whether the ring is worth it: several ranks and a buffer large enough that its
  // transfer, not the 2 (p - 1) message latencies, decides the time.
  bool suits(int64_t count, int64_t element_size) const;

  // In place: `data` holds `count` elements of `type` (`element_size` bytes each) and
  // ends with their sum over the ranks under `op`.
  void run(char* data, int64_t count, MPI_Datatype type, int64_t element_size, MPI_Op op,
           const WaitPolicy& wait);

 private:
  // The element range of segment `index` (0 <= index < size_).
  int64_t segment_begin(int64_t count, int index) const;

  // Sends segment `send` of `data` to the right neighbour while receiving segment
  // `receive` from the left one: into scratch_ then reduced into `data` (reduce = true),
  // or straight into `data`.
  void step(char* data, int64_t count, MPI_Datatype type, int64_t element_size, MPI_Op op, int send,
            int receive, bool reduce, const WaitPolicy& wait);

  MPI_Comm comm_;
  int rank_;
  int size_;
  std::vector<char> scratch_;
  std::vector<MPI_Request> requests_;
};

} // namespace ddp::mpi
