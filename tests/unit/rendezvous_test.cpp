// The rendezvous that hands rank 0's NCCL id to the other ranks (and gathers the ranks of
// a gloo group), tested without a GPU or MPI: threads of this process play the ranks, over
// c10d's TCPStore on 127.0.0.1 (a free port) and its FileStore in a fresh temporary
// directory. Every wait is bounded by a short rendezvous timeout, so a broken rendezvous
// fails the test instead of hanging it.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <ddp/config.h>
#include <ddp/error.h>
#include <ddp/process_group.h>

#include "comm/process_group_rendezvous.h"
#include "comm/rendezvous.h"
#include "free_port.h"
#include "loopback_process_group.h"

using ddp::test::free_port;

namespace {

using namespace std::chrono_literals;
using ddp::RendezvousConfig;

// A directory of its own under the system temp dir, removed at the end of the test.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::random_device random;
    path = std::filesystem::temp_directory_path() / ("ddp_rendezvous_test_" + std::to_string(::getpid()) + "_" +
                                                     std::to_string(random()));
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

std::vector<char> random_bytes(size_t n, unsigned seed) {
  std::mt19937 gen(seed);
  std::vector<char> out(n);
  for (auto& b : out) b = static_cast<char>(gen() & 0xff);
  return out;
}

RendezvousConfig tcp_config(int rank, int world, int port, std::chrono::milliseconds timeout) {
  RendezvousConfig c;
  c.method = RendezvousConfig::Method::kTcp;
  c.rank = rank;
  c.world_size = world;
  c.host = "127.0.0.1";
  c.port = port;
  c.timeout = timeout;
  return c;
}

RendezvousConfig file_config(int rank, int world, const std::string& path, std::chrono::milliseconds timeout) {
  RendezvousConfig c;
  c.method = RendezvousConfig::Method::kFile;
  c.rank = rank;
  c.world_size = world;
  c.path = path;
  c.timeout = timeout;
  return c;
}

// What one rank's exchange produced: the bytes, or the message of what it threw.
struct Outcome {
  std::vector<char> bytes;
  std::string error;
  bool timed_out = false;
};

Outcome run_rank(ddp::Rendezvous& rendezvous, const std::string& key, const std::vector<char>& bytes) {
  Outcome out;
  try {
    out.bytes = rendezvous.exchange(key, bytes);
  } catch (const ddp::TimeoutError& e) {
    out.error = e.what();
    out.timed_out = true;
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  return out;
}

// Makes the rendezvous and runs one exchange: connecting to the store is where a rank that
// cannot reach rank 0 fails, so creation errors are outcomes too.
Outcome run_config(const RendezvousConfig& config, const std::string& key, const std::vector<char>& bytes) {
  try {
    auto rendezvous = ddp::make_rendezvous(config);
    return run_rank(*rendezvous, key, bytes);
  } catch (const ddp::TimeoutError& e) {
    return Outcome{{}, e.what(), true};
  } catch (const std::exception& e) {
    return Outcome{{}, e.what(), false};
  }
}

// Runs `ranks` concurrently, rank 0 after `root_delay` so the others must retry or poll.
std::vector<Outcome> run_ranks(const std::function<std::unique_ptr<ddp::Rendezvous>(int)>& make,
                               const std::vector<int>& ranks, const std::function<std::string(int)>& key,
                               const std::vector<char>& payload, std::chrono::milliseconds root_delay = 0ms) {
  std::vector<std::future<Outcome>> futures;
  for (int r : ranks) {
    futures.push_back(std::async(std::launch::async, [&, r] {
      if (r == 0) std::this_thread::sleep_for(root_delay);
      try {
        auto rendezvous = make(r);
        return run_rank(*rendezvous, key(r), r == 0 ? payload : std::vector<char>{});
      } catch (const ddp::TimeoutError& e) {
        return Outcome{{}, e.what(), true};
      } catch (const std::exception& e) {
        return Outcome{{}, e.what(), false};
      }
    }));
  }
  std::vector<Outcome> outcomes;
  for (auto& f : futures) outcomes.push_back(f.get());
  return outcomes;
}

auto same_key(const std::string& key) {
  return [key](int) { return key; };
}

RendezvousConfig::EnvLookup env(std::map<std::string, std::string> vars) {
  auto shared = std::make_shared<std::map<std::string, std::string>>(std::move(vars));
  return [shared](const char* name) -> const char* {
    auto it = shared->find(name);
    return it == shared->end() ? nullptr : it->second.c_str();
  };
}

std::string from_env_error(std::map<std::string, std::string> vars) {
  try {
    RendezvousConfig::from_env(env(std::move(vars)));
  } catch (const ddp::InvalidArgumentError& e) {
    return e.what();
  }
  return "no error";
}

} // namespace

TEST_CASE("TCP rendezvous hands rank 0's bytes to every rank, also when rank 0 starts last", "[rendezvous][tcp]") {
  const int world = 4;
  const int port = free_port();
  const auto payload = random_bytes(128, 1);
  auto make = [&](int r) { return ddp::make_rendezvous(tcp_config(r, world, port, 10s)); };

  // Two exchanges on the same port: the second must not trip over the first's socket.
  for (const std::string key : {"nccl/1", "nccl/2"}) {
    auto outcomes = run_ranks(make, {0, 1, 2, 3}, same_key(key), payload, 200ms);
    for (size_t r = 0; r < outcomes.size(); ++r) {
      INFO("rank " << r << ": " << outcomes[r].error);
      REQUIRE(outcomes[r].error.empty());
      REQUIRE(outcomes[r].bytes == payload);
    }
  }
}

TEST_CASE("TCP rendezvous: rank 0 names the ranks that never connected", "[rendezvous][tcp]") {
  const int port = free_port();
  auto make = [&](int r) { return ddp::make_rendezvous(tcp_config(r, 3, port, 1500ms)); };
  const auto start = std::chrono::steady_clock::now();
  auto outcomes = run_ranks(make, {0, 1}, same_key("nccl/1"), random_bytes(16, 2));
  REQUIRE(std::chrono::steady_clock::now() - start < 10s);

  REQUIRE(outcomes[0].timed_out);
  REQUIRE_THAT(outcomes[0].error, Catch::Contains("[ddp rank 0]") && Catch::Contains("missing ranks: 2") &&
                                      Catch::Contains("MASTER_PORT") && Catch::Contains("WORLD_SIZE=3"));
  INFO(outcomes[1].error);
  REQUIRE(outcomes[1].error.empty());
  REQUIRE(outcomes[1].bytes == random_bytes(16, 2));
}

TEST_CASE("TCP rendezvous: a rank that cannot reach rank 0 times out with the address", "[rendezvous][tcp]") {
  const int port = free_port();
  auto out = run_config(tcp_config(1, 2, port, 500ms), "nccl/1", {});
  REQUIRE(out.timed_out);
  REQUIRE_THAT(out.error, Catch::Contains("[ddp rank 1]") && Catch::Contains("127.0.0.1:" + std::to_string(port)) &&
                              Catch::Contains("MASTER_ADDR") && Catch::Contains("DDP_TIMEOUT_S"));
}

TEST_CASE("TCP rendezvous: a MASTER_PORT already taken (torchrun's own store) names the fixes", "[rendezvous][tcp]") {
  // What torchrun >= 2.4's agent does when its store is not shared with the workers
  // (TORCHELASTIC_USE_AGENT_STORE unset): it listens on MASTER_ADDR:MASTER_PORT.
  const int port = free_port();
  const int holder = ::socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(holder >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(static_cast<uint16_t>(port));
  REQUIRE(::bind(holder, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(::listen(holder, 4) == 0);
  auto out = run_config(tcp_config(0, 2, port, 2s), "nccl/1", {'x'});
  ::close(holder);
  REQUIRE_THAT(out.error, Catch::Contains("[ddp rank 0]") && Catch::Contains("MASTER_PORT=" + std::to_string(port)) &&
                              Catch::Contains("TORCHELASTIC_USE_AGENT_STORE") &&
                              Catch::Contains("DDP_INIT_METHOD=tcp://") && Catch::Contains("DDP_INIT_METHOD=file://"));
}

TEST_CASE("TCP rendezvous on torchrun's agent store: every rank, rank 0 too, is a client", "[rendezvous][tcp]") {
  const int port = free_port();
  // Serves the store on the port, as torchrun's agent does, and outlives the attempts.
  auto agent = ddp::make_rendezvous(tcp_config(0, 1, port, 10s));
  // Each attempt (TORCHELASTIC_RESTART_COUNT) rendezvouses under its own prefix.
  for (int attempt : {0, 1}) {
    auto make = [&](int r) {
      auto c = tcp_config(r, 3, port, 10s);
      c.agent_store = true;
      c.restart_count = attempt;
      return ddp::make_rendezvous(c);
    };
    const auto payload = random_bytes(64, 20 + attempt);
    auto outcomes = run_ranks(make, {0, 1, 2}, same_key("nccl/1"), payload, 100ms);
    for (size_t r = 0; r < outcomes.size(); ++r) {
      INFO("attempt " << attempt << " rank " << r << ": " << outcomes[r].error);
      REQUIRE(outcomes[r].error.empty());
      REQUIRE(outcomes[r].bytes == payload);
    }
  }
}

TEST_CASE("TCP rendezvous: an agent store that is not there is named, with the address", "[rendezvous][tcp]") {
  const int port = free_port();
  auto c = tcp_config(0, 2, port, 500ms);
  c.agent_store = true;
  auto out = run_config(c, "nccl/1", {'x'});
  REQUIRE(out.timed_out);
  REQUIRE_THAT(out.error, Catch::Contains("[ddp rank 0]") && Catch::Contains("torchrun's agent") &&
                              Catch::Contains("127.0.0.1:" + std::to_string(port)) && Catch::Contains("DDP_TIMEOUT_S"));
}

TEST_CASE("TCP rendezvous: ranks that disagree fail on both sides with the reason", "[rendezvous][tcp]") {
  SECTION("different keys (process groups created in different orders)") {
    const int port = free_port();
    auto make = [&](int r) { return ddp::make_rendezvous(tcp_config(r, 2, port, 5s)); };
    auto outcomes = run_ranks(make, {0, 1}, [](int r) { return r == 0 ? "nccl/1" : "nccl/2"; }, random_bytes(8, 3));
    REQUIRE_THAT(outcomes[0].error, Catch::Contains("[ddp rank 0]") && Catch::Contains("\"nccl/2\"") &&
                                        Catch::Contains("\"nccl/1\"") && Catch::Contains("same order"));
    REQUIRE_THAT(outcomes[1].error, Catch::Contains("[ddp rank 1]") && Catch::Contains("refused") &&
                                        Catch::Contains("same order"));
    REQUIRE_FALSE(outcomes[1].timed_out);
  }
  SECTION("different WORLD_SIZE") {
    const int port = free_port();
    auto f0 = std::async(std::launch::async, [&] { return run_config(tcp_config(0, 2, port, 5s), "nccl/1", random_bytes(8, 4)); });
    auto f1 = std::async(std::launch::async, [&] { return run_config(tcp_config(1, 3, port, 5s), "nccl/1", {}); });
    const auto o0 = f0.get();
    const auto o1 = f1.get();
    REQUIRE_THAT(o0.error, Catch::Contains("WORLD_SIZE=3") && Catch::Contains("WORLD_SIZE=2"));
    REQUIRE_THAT(o1.error, Catch::Contains("WORLD_SIZE=3") && Catch::Contains("[ddp rank 1]"));
  }
}

TEST_CASE("File rendezvous hands rank 0's bytes to every rank and leaves no file behind", "[rendezvous][file]") {
  TempDir dir;
  const std::string path = (dir.path / "rdzv").string();
  const int world = 3;
  const auto payload = random_bytes(128, 5);
  auto make = [&](int r) { return ddp::make_rendezvous(file_config(r, world, path, 10s)); };

  for (const std::string key : {"nccl/1", "nccl/2"}) {
    auto outcomes = run_ranks(make, {0, 1, 2}, same_key(key), payload, 150ms);
    for (size_t r = 0; r < outcomes.size(); ++r) {
      INFO("rank " << r << ": " << outcomes[r].error);
      REQUIRE(outcomes[r].error.empty());
      REQUIRE(outcomes[r].bytes == payload);
    }
    // c10d's FileStore removes its file when the last of its world_size users closes it.
    REQUIRE(std::distance(std::filesystem::directory_iterator(dir.path), std::filesystem::directory_iterator{}) == 0);
  }
}

TEST_CASE("File rendezvous times out with the path and the missing ranks", "[rendezvous][file]") {
  TempDir dir;
  const std::string path = (dir.path / "rdzv").string();
  SECTION("a rank waiting for rank 0") {
    auto out = run_config(file_config(2, 3, path, 400ms), "nccl/1", {});
    REQUIRE(out.timed_out);
    REQUIRE_THAT(out.error, Catch::Contains("[ddp rank 2]") && Catch::Contains(path) &&
                                Catch::Contains("DDP_INIT_METHOD"));
  }
  SECTION("rank 0 waiting for the others") {
    auto make = [&](int r) { return ddp::make_rendezvous(file_config(r, 3, path, 800ms)); };
    auto outcomes = run_ranks(make, {0, 2}, same_key("nccl/1"), random_bytes(8, 7));
    REQUIRE(outcomes[0].timed_out);
    REQUIRE_THAT(outcomes[0].error, Catch::Contains("[ddp rank 0]") && Catch::Contains("missing ranks: 1") &&
                                        Catch::Contains(path));
  }
  SECTION("a directory that does not exist") {
    auto out = run_config(file_config(0, 2, (dir.path / "no" / "such" / "dir").string(), 400ms), "nccl/1",
                          random_bytes(8, 8));
    REQUIRE_FALSE(out.timed_out);
    REQUIRE_THAT(out.error, Catch::Contains("[ddp rank 0]") && Catch::Contains("exists and is writable"));
  }
}

TEST_CASE("Rendezvous over a process group carries the bytes and checks the key", "[rendezvous]") {
  ddp::ProcessGroupRendezvous rendezvous(std::make_shared<ddp::test::LoopbackProcessGroup>());
  const auto payload = random_bytes(128, 9);
  REQUIRE(rendezvous.exchange("nccl/1", payload) == payload);
  REQUIRE(rendezvous.exchange("nccl/2", {}).empty());
}

TEST_CASE("A world of one needs no rendezvous", "[rendezvous]") {
  auto rendezvous = ddp::make_rendezvous(RendezvousConfig{});
  REQUIRE(rendezvous->rank() == 0);
  REQUIRE(rendezvous->world_size() == 1);
  REQUIRE(rendezvous->exchange("nccl/1", random_bytes(8, 10)) == random_bytes(8, 10));
}

TEST_CASE("RendezvousConfig::from_env reads torchrun's variables and DDP_INIT_METHOD", "[rendezvous][env]") {
  SECTION("nothing set: one process") {
    auto c = RendezvousConfig::from_env(env({}));
    REQUIRE(c.method == RendezvousConfig::Method::kSingle);
    REQUIRE(c.rank == 0);
    REQUIRE(c.world_size == 1);
    REQUIRE(c.local_rank == -1);
  }
  SECTION("torchrun") {
    auto c = RendezvousConfig::from_env(env({{"RANK", "3"}, {"WORLD_SIZE", "8"}, {"LOCAL_RANK", "1"},
                                             {"MASTER_ADDR", "10.1.2.3"}, {"MASTER_PORT", "29500"},
                                             {"DDP_TIMEOUT_S", "2.5"}}));
    REQUIRE(c.method == RendezvousConfig::Method::kTcp);
    REQUIRE(c.rank == 3);
    REQUIRE(c.world_size == 8);
    REQUIRE(c.local_rank == 1);
    REQUIRE(c.host == "10.1.2.3");
    REQUIRE(c.port == 29500);
    REQUIRE(c.timeout == 2500ms);
  }
  SECTION("torchrun's agent store and restart count") {
    auto c = RendezvousConfig::from_env(env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "localhost"},
                                             {"MASTER_PORT", "29500"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                             {"TORCHELASTIC_RESTART_COUNT", "2"}}));
    REQUIRE(c.agent_store);
    REQUIRE(c.restart_count == 2);
    REQUIRE(c.store_prefix() == "ddp/attempt_2/default/");
    REQUIRE_THAT(c.describe(), Catch::Contains("torchrun's agent"));
    auto off = RendezvousConfig::from_env(env({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "localhost"},
                                               {"MASTER_PORT", "29500"}, {"TORCHELASTIC_USE_AGENT_STORE", "False"}}));
    REQUIRE_FALSE(off.agent_store);
    REQUIRE(off.restart_count == 0);
    REQUIRE_THAT(from_env_error({{"TORCHELASTIC_USE_AGENT_STORE", "maybe"}}),
                 Catch::Contains("TORCHELASTIC_USE_AGENT_STORE=\"maybe\""));
  }
  SECTION("WORLD_SIZE=1 is one process even with MASTER_ADDR set") {
    auto c = RendezvousConfig::from_env(
        env({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "localhost"}, {"MASTER_PORT", "29500"}}));
    REQUIRE(c.method == RendezvousConfig::Method::kSingle);
  }
  SECTION("file://") {
    auto c = RendezvousConfig::from_env(
        env({{"DDP_INIT_METHOD", "file:///shared/job/rdzv"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}));
    REQUIRE(c.method == RendezvousConfig::Method::kFile);
    REQUIRE(c.path == "/shared/job/rdzv");
    REQUIRE(c.rank == 1);
  }
  SECTION("tcp://host:port") {
    auto c = RendezvousConfig::from_env(
        env({{"DDP_INIT_METHOD", "tcp://node7:1234"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}}));
    REQUIRE(c.method == RendezvousConfig::Method::kTcp);
    REQUIRE(c.host == "node7");
    REQUIRE(c.port == 1234);
  }
  SECTION("the MPI launcher's rank variables stand in for RANK and WORLD_SIZE") {
    auto c = RendezvousConfig::from_env(env({{"DDP_INIT_METHOD", "file:///tmp/x"}, {"OMPI_COMM_WORLD_RANK", "1"},
                                             {"OMPI_COMM_WORLD_SIZE", "4"}, {"OMPI_COMM_WORLD_LOCAL_RANK", "1"}}));
    REQUIRE(c.rank == 1);
    REQUIRE(c.world_size == 4);
    REQUIRE(c.local_rank == 1);
  }
}

TEST_CASE("RendezvousConfig::from_env names the variable that is missing or wrong", "[rendezvous][env]") {
  REQUIRE_THAT(from_env_error({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}}),
               Catch::Contains("MASTER_PORT is not set") && Catch::Contains("torchrun"));
  REQUIRE_THAT(from_env_error({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"MASTER_PORT", "29500"}}),
               Catch::Contains("MASTER_ADDR is not set"));
  REQUIRE_THAT(from_env_error({{"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}}), Catch::Contains("WORLD_SIZE is not set"));
  REQUIRE_THAT(from_env_error({{"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "29500"}}),
               Catch::Contains("RANK is not set"));
  REQUIRE_THAT(from_env_error({{"RANK", "one"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
               Catch::Contains("RANK=\"one\""));
  REQUIRE_THAT(from_env_error({{"RANK", "2"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
               Catch::Contains("RANK=\"2\"") && Catch::Contains("WORLD_SIZE=2"));
  REQUIRE_THAT(from_env_error({{"RANK", "0"}, {"WORLD_SIZE", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}),
               Catch::Contains("MASTER_PORT=\"70000\""));
  REQUIRE_THAT(from_env_error({{"DDP_INIT_METHOD", "file://relative/path"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}}),
               Catch::Contains("absolute path"));
  REQUIRE_THAT(from_env_error({{"DDP_INIT_METHOD", "tcp://nohostport"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}}),
               Catch::Contains("tcp://HOST:PORT"));
  REQUIRE_THAT(from_env_error({{"DDP_INIT_METHOD", "carrier-pigeon"}}), Catch::Contains("is not known"));
  REQUIRE_THAT(from_env_error({{"DDP_TIMEOUT_S", "-3"}}), Catch::Contains("DDP_TIMEOUT_S=\"-3\""));
  REQUIRE_THAT(from_env_error({{"LOCAL_RANK", "x"}}), Catch::Contains("LOCAL_RANK=\"x\""));
}

TEST_CASE("Slurm's variables without MASTER_ADDR, and WORLD_SIZE without mpirun for MPI, are errors", "[rendezvous][env]") {
  // srun without PMI: several tasks, none of them may silently become a world of 1.
  REQUIRE_THAT(from_env_error({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "1"}}),
               Catch::Contains("MASTER_ADDR is not set") && Catch::Contains("SLURM_NTASKS=4") &&
                   Catch::Contains("scontrol show hostnames"));
  // Without MASTER_ADDR, the store goes on the first host of the job's node list, on
  // MASTER_PORT or a port from the job id.
  {
    auto slurm = RendezvousConfig::from_env(env({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "3"}, {"SLURM_LOCALID", "1"},
                                                 {"SLURM_JOB_NODELIST", "gpu[007-009,012]"}, {"SLURM_JOB_ID", "123456"}}));
    CHECK(slurm.method == RendezvousConfig::Method::kTcp);
    CHECK(slurm.host == "gpu007");
    CHECK(slurm.port == 20000 + 123456 % 10000);
    CHECK(slurm.rank == 3);
    CHECK(slurm.world_size == 4);
    CHECK(slurm.local_rank == 1);
    CHECK_THAT(slurm.describe(), Catch::Contains("SLURM_JOB_NODELIST"));
    auto listed = RendezvousConfig::from_env(env({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"},
                                                  {"SLURM_NODELIST", "login1,node[1-2]"}, {"MASTER_PORT", "29555"}}));
    CHECK(listed.host == "login1");
    CHECK(listed.port == 29555);
    auto suffixed = RendezvousConfig::from_env(
        env({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NODELIST", "rack[3-4]-ib,other"}}));
    CHECK(suffixed.host == "rack3-ib");
    CHECK_THAT(from_env_error({{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NODELIST", "node[]"}}),
               Catch::Contains("SLURM_NODELIST=\"node[]\""));
  }
  // One Slurm task is one process.
  CHECK(RendezvousConfig::from_env(env({{"SLURM_NTASKS", "1"}, {"SLURM_PROCID", "0"}})).world_size == 1);
  // With MASTER_ADDR/MASTER_PORT, Slurm's rank and size are read.
  auto c = RendezvousConfig::from_env(env({{"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "2"}, {"MASTER_ADDR", "node1"},
                                           {"MASTER_PORT", "29500"}}));
  CHECK(c.method == RendezvousConfig::Method::kTcp);
  CHECK(c.rank == 2);
  CHECK(c.world_size == 4);
#if DDP_HAVE_MPI
  // The MPI backend started torchrun-style, or by srun without PMI.
  auto mpi_error = [](std::map<std::string, std::string> vars) {
    try {
      ddp::check_mpi_launch(env(std::move(vars)));
    } catch (const ddp::InvalidArgumentError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  CHECK_THAT(mpi_error({{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}),
             Catch::Contains("WORLD_SIZE=\"2\"") && Catch::Contains("mpirun -np N") && Catch::Contains("gloo"));
  CHECK_THAT(mpi_error({{"SLURM_NTASKS", "3"}}), Catch::Contains("SLURM_NTASKS=\"3\""));
  CHECK(mpi_error({}).empty());                                               // one process
  CHECK(mpi_error({{"WORLD_SIZE", "1"}}).empty());                            // one process, said so
  CHECK(mpi_error({{"WORLD_SIZE", "2"}, {"OMPI_COMM_WORLD_SIZE", "2"}}).empty()); // under mpirun
  CHECK(mpi_error({{"SLURM_NTASKS", "2"}, {"PMIX_RANK", "0"}}).empty());     // srun --mpi=pmix
#endif
}

TEST_CASE("DDP_INIT_METHOD: the scheme in any case, the port range-checked, the path as written", "[rendezvous][env]") {
  auto tcp = RendezvousConfig::from_env(env({{"DDP_INIT_METHOD", "TCP://node7:1234"}, {"RANK", "0"}, {"WORLD_SIZE", "2"}}));
  CHECK(tcp.method == RendezvousConfig::Method::kTcp);
  CHECK(tcp.host == "node7");
  CHECK(tcp.port == 1234);
  auto file = RendezvousConfig::from_env(env({{"DDP_INIT_METHOD", "File:///Shared/X"}, {"RANK", "1"}, {"WORLD_SIZE", "2"}}));
  CHECK(file.method == RendezvousConfig::Method::kFile);
  CHECK(file.path == "/Shared/X");
  CHECK(RendezvousConfig::from_env(env({{"DDP_INIT_METHOD", "MPI"}})).method == RendezvousConfig::Method::kMpi);
  for (const char* bad : {"tcp://node7:0", "tcp://node7:65536", "tcp://node7:http", "tcp://node7:12a"}) {
    CAPTURE(bad);
    CHECK_THAT(from_env_error({{"DDP_INIT_METHOD", bad}, {"RANK", "0"}, {"WORLD_SIZE", "2"}}),
               Catch::Contains("environment variable DDP_INIT_METHOD=\"" + std::string(bad) + "\"") &&
                   Catch::Contains("a port from 1 to 65535"));
  }
  CHECK_THAT(from_env_error({{"DDP_INIT_METHOD", "env://x"}}), Catch::Contains("is not known"));
  // Empty is unset: DDP_INIT_METHOD="" and an empty launcher variable change nothing.
  CHECK(RendezvousConfig::from_env(env({{"DDP_INIT_METHOD", ""}, {"OMPI_COMM_WORLD_SIZE", ""}})).method ==
        RendezvousConfig::Method::kSingle);
  CHECK_THAT(from_env_error({{"SLURM_NTASKS", "lots"}}), Catch::Contains("SLURM_NTASKS=\"lots\""));
}
