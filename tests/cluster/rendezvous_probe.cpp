// rendezvous_probe: one rank of a torchrun- or Slurm-style launch across the hosts of
// scripts/cluster.sh. It makes the rendezvous its environment asks for (the same
// RendezvousConfig::from_env() the NCCL backend uses), rank 0 publishes its hostname,
// and every rank prints one line saying what it read and what it received, e.g.
//   probe: rank 1/3 local 0 on node1 via tcp://10.213.0.1:29500 (...): rank 0 is node0
// scripts/cluster/rendezvous_check.sh checks those lines. Exit status 0, or 1 with the
// error (the rendezvous names what is missing and how to fix it).
#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "comm/rendezvous.h"

int main() {
  try {
    char host[256] = {};
    gethostname(host, sizeof(host) - 1);
    const auto config = ddp::RendezvousConfig::from_env();
    auto rendezvous = ddp::make_rendezvous(config);
    const std::string mine = host;
    const auto got = rendezvous->exchange("cluster/probe", std::vector<char>(mine.begin(), mine.end()));
    std::printf("probe: rank %d/%d local %d on %s via %s: rank 0 is %s\n", rendezvous->rank(),
                rendezvous->world_size(), config.local_rank, host, config.describe().c_str(),
                std::string(got.begin(), got.end()).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "probe: %s\n", e.what());
    return 1;
  }
}
