// StoreRendezvous: the rendezvous over a c10d store (TCPStore, FileStore, or the one
// torchrun's agent serves), under one group's prefix. Rank 0 publishes its blob with the
// key it was asked for and the world size; every other rank reads them, checks both
// against its own, and answers; rank 0 returns once every rank has answered, so the store
// it serves stays up until nobody needs it, and it names the ranks that never answered.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include <cstdint>

#include "comm/rendezvous.h"

namespace ddp {

class StoreRendezvous final : public Rendezvous {
 public:
  // Uses config.rank, world_size and timeout; config.describe() names the store in errors.
  StoreRendezvous(c10::intrusive_ptr<c10d::Store> store, RendezvousConfig config);
  // Releases the underlying store when nothing else uses it (release_unused_stores).
  ~StoreRendezvous() override;

  int rank() const override { return config_.rank; }
  int world_size() const override { return config_.world_size; }
  std::vector<char> exchange(const std::string& key, const std::vector<char>& bytes) override;

  // The (prefixed) store, for a c10d process group created on it.
  const c10::intrusive_ptr<c10d::Store>& store() const { return store_; }

 private:
  // Blocks until `key` exists in the store; false after config_.timeout.
  bool wait_for(const std::string& key);
  void publish(const std::string& base, const std::string& key, const std::vector<char>& bytes);
  std::vector<char> receive(const std::string& base, const std::string& key);

  c10::intrusive_ptr<c10d::Store> store_;
  RendezvousConfig config_;
  int64_t exchanges_ = 0;
};

} // namespace ddp
