#include "comm/mpi/ring_allreduce.h"

#include <algorithm>
#include <climits>

#include "comm/mpi/mpi_check.h"

namespace ddp::mpi {
namespace {

// Below this, MPI_Allreduce's latency-optimised algorithms are faster and its
// busy-polling lasts no longer than a few message round trips.
constexpr int64_t kMinRingBytes = 256 << 10;
// Reduction of one chunk overlaps the transfer of the next; 1 MiB is ~8 ms at 1 Gbit/s
// and ~0.2 ms to add on one core.
constexpr int64_t kChunkBytes = 1 << 20;
// Point-to-point messages on the group's own communicator; collectives on it use a
// separate context, so no tag is shared with them.
constexpr int kTag = 0x7264; // "rd"

} // namespace

bool RingAllreduce::suits(int64_t count, int64_t element_size) const {
  return size_ > 1 && count >= size_ && count * element_size >= kMinRingBytes;
}

int64_t RingAllreduce::segment_begin(int64_t count, int index) const {
  const int64_t base = count / size_;
  const int64_t extra = count % size_;
  return index * base + std::min<int64_t>(index, extra);
}

void RingAllreduce::step(char* data, int64_t count, MPI_Datatype type, int64_t element_size, MPI_Op op, int send,
                         int receive, bool reduce, const WaitPolicy& wait) {
  const int right = (rank_ + 1) % size_;
  const int left = (rank_ + size_ - 1) % size_;
  const int64_t send_begin = segment_begin(count, send);
  const int64_t send_count = segment_begin(count, send + 1) - send_begin;
  const int64_t receive_begin = segment_begin(count, receive);
  const int64_t receive_count = segment_begin(count, receive + 1) - receive_begin;
  const int64_t chunk = std::max<int64_t>(1, std::min<int64_t>(kChunkBytes / element_size, INT_MAX));
  const auto chunks = [chunk](int64_t n) { return static_cast<int>((n + chunk - 1) / chunk); };
  const int receives = chunks(receive_count);
  const int sends = chunks(send_count);

  char* receive_base = data + receive_begin * element_size;
  char* landing = receive_base;
  if (reduce) {
    scratch_.resize(static_cast<size_t>(receive_count * element_size));
    landing = scratch_.data();
  }
  requests_.assign(static_cast<size_t>(receives + sends), MPI_REQUEST_NULL);
  for (int c = 0; c < receives; ++c) {
    const int64_t begin = c * chunk;
    const int n = static_cast<int>(std::min(chunk, receive_count - begin));
    DDP_CHECK_MPI(MPI_Irecv(landing + begin * element_size, n, type, left, kTag, comm_, &requests_[c]));
  }
  for (int c = 0; c < sends; ++c) {
    const int64_t begin = c * chunk;
    const int n = static_cast<int>(std::min(chunk, send_count - begin));
    DDP_CHECK_MPI(MPI_Isend(data + (send_begin + begin) * element_size, n, type, right, kTag, comm_,
                            &requests_[receives + c]));
  }
  if (reduce) {
    // Chunks arrive in order (same source, tag and communicator); each is added while
    // the next is on the wire.
    for (int c = 0; c < receives; ++c) {
      wait_request(requests_[c], wait);
      const int64_t begin = c * chunk;
      const int n = static_cast<int>(std::min(chunk, receive_count - begin));
      DDP_CHECK_MPI(MPI_Reduce_local(landing + begin * element_size, receive_base + begin * element_size, n, type, op));
    }
  }
  wait_all(requests_.data(), static_cast<int>(requests_.size()), wait);
}

void RingAllreduce::run(char* data, int64_t count, MPI_Datatype type, int64_t element_size, MPI_Op op,
                        const WaitPolicy& wait) {
  // Reduce-scatter: after p - 1 steps this rank holds the sum of segment rank + 1.
  for (int s = 0; s < size_ - 1; ++s) {
    step(data, count, type, element_size, op, (rank_ - s + size_) % size_, (rank_ - s - 1 + 2 * size_) % size_,
         /*reduce=*/true, wait);
  }
  // All-gather: the summed segments travel once more around the ring.
  for (int s = 0; s < size_ - 1; ++s) {
    step(data, count, type, element_size, op, (rank_ + 1 - s + size_) % size_, (rank_ - s + size_) % size_,
         /*reduce=*/false, wait);
  }
}

} // namespace ddp::mpi
