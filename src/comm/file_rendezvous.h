// FileRendezvous: rendezvous through a file every rank can see (DDP_INIT_METHOD=
// file:///path, e.g. on a shared file system). Rank 0 writes its blob to `path`
// atomically (write a temporary, rename); every other rank polls for it, reads it and
// answers with `path.ack.<rank>`; once every rank has answered, rank 0 removes them all,
// so a finished rendezvous leaves no file behind. Each publication carries a random
// nonce, and a rank leaves only when the file it acknowledged is gone: a file left by
// a crashed earlier run is replaced by rank 0 and re-read by the ranks that saw it.
#pragma once

#include "comm/rendezvous.h"

namespace ddp {

class FileRendezvous final : public Rendezvous {
 public:
  // Uses config.rank, world_size, path and timeout.
  explicit FileRendezvous(RendezvousConfig config);

  int rank() const override { return config_.rank; }
  int world_size() const override { return config_.world_size; }
  std::vector<char> exchange(const std::string& key, const std::vector<char>& bytes) override;

 private:
  void publish(const std::string& key, const std::vector<char>& bytes);
  std::vector<char> receive(const std::string& key);
  std::string ack_path(int rank) const;

  RendezvousConfig config_;
};

} // namespace ddp
