// The c10d store a rendezvous configuration names, under the configuration's own prefix:
//   kTcp    a c10d::TCPStore on host:port. Rank 0 serves it, unless torchrun's agent
//           already does (agent_store): then every rank is a client, as PyTorch's own
//           workers are, and nothing else may listen on MASTER_PORT.
//   kFile   a c10d::FileStore on the shared file.
//   kSingle a c10d::HashStore in this process (a world of one).
// Each call returns a c10d::PrefixStore "ddp/attempt_<restart>/<group>/<n>/" over the one
// underlying store this process holds for that address and rank (a second TCPStore server
// on MASTER_PORT would find the port taken), where n counts this process's calls for the
// group: every rank creates its groups in the same order, so the n-th groups of all ranks
// meet under one prefix, and a restarted attempt never reads an earlier attempt's keys.
//
// Failures are libddp's errors: a server that cannot listen (the port is taken) is a
// CommError naming MASTER_PORT and the fixes; a client that cannot reach the server within
// config.timeout is a TimeoutError naming the address, where it came from, and
// DDP_TIMEOUT_S.
#pragma once

#include <torch/csrc/distributed/c10d/Store.hpp>

#include "comm/rendezvous.h"

namespace ddp {

c10::intrusive_ptr<c10d::Store> make_store(const RendezvousConfig& config);

// Closes the underlying stores that no group or rendezvous uses any more (a TCPStore
// server stops listening, a FileStore whose users all closed it removes its file).
// make_store calls it, and so does a StoreRendezvous when it is destroyed.
void release_unused_stores();

} // namespace ddp
