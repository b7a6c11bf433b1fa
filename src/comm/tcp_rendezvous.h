// TcpRendezvous: torchrun-style rendezvous over TCP. Rank 0 listens on
// MASTER_ADDR:MASTER_PORT for the length of one exchange and hands its blob to each
// rank that connects; the other ranks connect, retrying until rank 0 is up or the
// timeout passes. No thread and no socket outlive an exchange.
#pragma once

#include "comm/rendezvous.h"

namespace ddp {

class TcpRendezvous final : public Rendezvous {
 public:
  // Uses config.rank, world_size, host, port and timeout.
  explicit TcpRendezvous(RendezvousConfig config);

  int rank() const override { return config_.rank; }
  int world_size() const override { return config_.world_size; }
  std::vector<char> exchange(const std::string& key, const std::vector<char>& bytes) override;

 private:
  // Rank 0: accepts world_size - 1 ranks, each once, and sends them `bytes`.
  void serve(const std::string& key, const std::vector<char>& bytes);
  // The other ranks: connects to rank 0 and receives its blob.
  std::vector<char> fetch(const std::string& key);

  RendezvousConfig config_;
};

} // namespace ddp
