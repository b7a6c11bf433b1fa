#include "comm/store_factory.h"

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/HashStore.hpp>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <map>
#include <mutex>

#include <ddp/error.h>

namespace ddp {
namespace {

bool mentions(std::string text, const std::string& word) {
  std::transform(text.begin(), text.end(), text.begin(), [](unsigned char c) { return std::tolower(c); });
  return text.find(word) != std::string::npos;
}

c10::intrusive_ptr<c10d::Store> connect_tcp(const RendezvousConfig& config) {
  c10d::TCPStoreOptions options;
  options.port = static_cast<std::uint16_t>(config.port);
  options.isServer = config.rank == 0 && !config.agent_store;
  // libddp's own rendezvous waits for the ranks and names the missing ones.
  options.waitWorkers = false;
  options.timeout = config.timeout;
  try {
    return c10::make_intrusive<c10d::TCPStore>(config.host, options);
  } catch (const std::exception& e) {
    if (options.isServer) {
      const bool taken = mentions(e.what(), "eaddrinuse") || mentions(e.what(), "already in use");
      throw CommError(fmt::format(
          "[ddp rank 0] could not serve the rendezvous store on {}:{} ({}){}: {}. Under torchrun its agent already "
          "serves a store on MASTER_PORT={}: leave TORCHELASTIC_USE_AGENT_STORE as torchrun sets it (True), and "
          "libddp's ranks use that store. Otherwise choose a free MASTER_PORT, or DDP_INIT_METHOD=tcp://HOST:PORT "
          "with another port, or DDP_INIT_METHOD=file:///shared/path (docs/errors.md).",
          config.host, config.port, config.address_from, taken ? ", because another process listens there" : "",
          e.what(), config.port));
    }
    const std::string served_by = config.agent_store ? "torchrun's agent" : "rank 0";
    const std::string message = fmt::format(
        "[ddp rank {}] could not reach the rendezvous store at {}:{} ({}) served by {} within {} ms: {}. Check that "
        "{} is running and that every rank has the same MASTER_ADDR and MASTER_PORT (a host name every node "
        "resolves); raise DDP_TIMEOUT_S if it is merely slow to start.",
        config.rank, config.host, config.port, config.address_from, served_by, config.timeout.count(), e.what(),
        served_by);
    if (mentions(e.what(), "time")) throw TimeoutError(message);
    throw CommError(message);
  }
}

c10::intrusive_ptr<c10d::Store> open_file(const RendezvousConfig& config) {
  // c10d's FileStore retries opening its file without a deadline: a directory that is not
  // there (or not writable) would hang the rank, so it is checked first.
  const std::filesystem::path directory = std::filesystem::path(config.path).parent_path();
  std::error_code error;
  if (!std::filesystem::is_directory(directory, error) || ::access(directory.c_str(), W_OK | X_OK) != 0) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] the rendezvous file {} (DDP_INIT_METHOD=file://{}) cannot be created: its directory {} is "
        "missing or not writable. Check that it exists and is writable by every rank, on a file system they all "
        "see.",
        config.rank, config.path, config.path, directory.string()));
  }
  try {
    auto store = c10::make_intrusive<c10d::FileStore>(config.path, config.world_size);
    store->setTimeout(config.timeout);
    return store;
  } catch (const std::exception& e) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] could not open the rendezvous file {} (DDP_INIT_METHOD=file://{}): {}. Check that its "
        "directory exists and is writable by every rank, on a file system they all see.",
        config.rank, config.path, config.path, e.what()));
  }
}

// The underlying store of each address and rank in this process. Held strongly: c10d runs a
// store's destructor (which closes a TCPStore server, removes a FileStore's file) only
// once no weak reference is left either, so release_unused_stores() drops the ones only
// this cache still holds.
struct StoreCache {
  std::mutex mutex;
  std::map<std::string, c10::intrusive_ptr<c10d::Store>> stores;
  std::map<std::string, int> groups;
};

StoreCache& cache() {
  // Never destroyed: stores still held at exit are released by their holders.
  static auto* instance = new StoreCache;
  return *instance;
}

} // namespace

void release_unused_stores() {
  std::vector<c10::intrusive_ptr<c10d::Store>> unused;
  {
    StoreCache& c = cache();
    std::lock_guard<std::mutex> lock(c.mutex);
    for (auto it = c.stores.begin(); it != c.stores.end();) {
      if (it->second.use_count() == 1) {
        unused.push_back(std::move(it->second));
        it = c.stores.erase(it);
      } else {
        ++it;
      }
    }
  }
  // Destroyed here, outside the lock: closing a server or a file may wait.
}

c10::intrusive_ptr<c10d::Store> make_store(const RendezvousConfig& config) {
  std::string address;
  switch (config.method) {
    case RendezvousConfig::Method::kTcp:
      address = fmt::format("tcp://{}:{}/rank{}{}", config.host, config.port, config.rank,
                            config.agent_store ? "/agent" : "");
      break;
    case RendezvousConfig::Method::kFile:
      address = fmt::format("file://{}/rank{}", config.path, config.rank);
      break;
    case RendezvousConfig::Method::kSingle:
      address = "single";
      break;
    case RendezvousConfig::Method::kMpi:
      throw InvalidArgumentError(fmt::format(
          "[ddp rank {}] a c10d store needs an address, but the rendezvous is over MPI (launched by mpirun without "
          "MASTER_ADDR). Set MASTER_ADDR and MASTER_PORT (or DDP_INIT_METHOD=tcp://HOST:PORT) for this group.",
          config.rank));
  }
  release_unused_stores();
  StoreCache& c = cache();
  c10::intrusive_ptr<c10d::Store> store;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    if (auto held = c.stores.find(address); held != c.stores.end()) store = held->second;
  }
  if (!store) {
    // Connected without the lock: a client waits here for its server, which may be
    // another thread of this process (ranks as threads in tests).
    if (config.method == RendezvousConfig::Method::kTcp) {
      store = connect_tcp(config);
    } else if (config.method == RendezvousConfig::Method::kFile) {
      store = open_file(config);
    } else {
      store = c10::make_intrusive<c10d::HashStore>();
    }
    std::lock_guard<std::mutex> lock(c.mutex);
    c.stores.insert_or_assign(address, store);
  }
  store->setTimeout(config.timeout);
  int n = 0;
  {
    std::lock_guard<std::mutex> lock(c.mutex);
    n = ++c.groups[address + "|" + config.store_prefix()];
  }
  auto prefixed = c10::make_intrusive<c10d::PrefixStore>(fmt::format("{}{}", config.store_prefix(), n), store);
  prefixed->setTimeout(config.timeout);
  return prefixed;
}

} // namespace ddp
