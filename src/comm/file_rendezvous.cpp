#include "comm/file_rendezvous.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include <ddp/error.h>

#include "common/logging.h"

namespace ddp {
namespace {

using Clock = std::chrono::steady_clock;

constexpr char kIdMagic[8] = {'D', 'D', 'P', 'R', 'D', 'Z', 'V', '1'};
constexpr char kAckMagic[8] = {'D', 'D', 'P', 'R', 'A', 'C', 'K', '1'};

// What rank 0 published.
struct Publication {
  std::string key;
  int32_t world_size = 0;
  uint64_t nonce = 0;
  std::vector<char> payload;
};

template <typename T>
void put(std::string& out, T value) {
  out.append(reinterpret_cast<const char*>(&value), sizeof(value));
}

template <typename T>
bool get(const std::string& in, size_t& pos, T& value) {
  if (in.size() - pos < sizeof(T)) return false;
  std::memcpy(&value, in.data() + pos, sizeof(T));
  pos += sizeof(T);
  return true;
}

// The whole file, or nothing when it does not exist (yet).
std::optional<std::string> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

// Writes `data` to `path` so that readers see the old file or the whole new one.
void write_atomically(const std::string& path, const std::string& data, int rank) {
  std::random_device random;
  const std::string tmp = fmt::format("{}.tmp.{}.{:x}", path, static_cast<long>(::getpid()), random());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  auto fail = [&](const char* what) {
    const std::string reason = std::strerror(errno);
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw CommError(fmt::format(
        "[ddp rank {}] file rendezvous: cannot {} {}: {}. DDP_INIT_METHOD=file://{} must name a file in a "
        "directory that exists and is writable by every rank (on a file system they all share).",
        rank, what, tmp, reason, path));
  };
  if (fd < 0) fail("create");
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail("write");
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 && errno != EINVAL) fail("sync");
  if (::close(fd) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw CommError(fmt::format("[ddp rank {}] file rendezvous: cannot close {}: {}", rank, tmp, reason));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw CommError(fmt::format("[ddp rank {}] file rendezvous: cannot rename {} to {}: {}", rank, tmp, path, reason));
  }
}

std::optional<Publication> parse_publication(const std::string& data) {
  if (data.size() < sizeof(kIdMagic) || std::memcmp(data.data(), kIdMagic, sizeof(kIdMagic)) != 0) {
    return std::nullopt;
  }
  size_t pos = sizeof(kIdMagic);
  Publication p;
  uint32_t key_len = 0;
  uint64_t payload_len = 0;
  if (!get(data, pos, key_len) || data.size() - pos < key_len) return std::nullopt;
  p.key.assign(data, pos, key_len);
  pos += key_len;
  if (!get(data, pos, p.world_size) || !get(data, pos, p.nonce) || !get(data, pos, payload_len)) return std::nullopt;
  if (data.size() - pos != payload_len) return std::nullopt;
  p.payload.assign(data.begin() + static_cast<std::ptrdiff_t>(pos), data.end());
  return p;
}

std::optional<uint64_t> parse_ack(const std::string& data) {
  if (data.size() != sizeof(kAckMagic) + sizeof(uint64_t) ||
      std::memcmp(data.data(), kAckMagic, sizeof(kAckMagic)) != 0) {
    return std::nullopt;
  }
  uint64_t nonce = 0;
  size_t pos = sizeof(kAckMagic);
  get(data, pos, nonce);
  return nonce;
}

// Polls quickly at first, then settles at 200 ms so a long wait costs little.
class Backoff {
 public:
  void sleep(Clock::time_point deadline) {
    const auto left = deadline - Clock::now();
    if (left <= Clock::duration::zero()) return;
    std::this_thread::sleep_for(std::min<Clock::duration>(delay_, left));
    delay_ = std::min(delay_ * 2, std::chrono::milliseconds(200));
  }

 private:
  std::chrono::milliseconds delay_{5};
};

} // namespace

FileRendezvous::FileRendezvous(RendezvousConfig config) : config_(std::move(config)) {
  if (config_.world_size < 1 || config_.rank < 0 || config_.rank >= config_.world_size) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] file rendezvous: rank {} is not in a world of {}",
                                           config_.rank, config_.rank, config_.world_size));
  }
  if (config_.path.empty()) {
    throw InvalidArgumentError(fmt::format(
        "[ddp rank {}] file rendezvous: no path given; set DDP_INIT_METHOD=file:///path/on/shared/storage",
        config_.rank));
  }
}

std::string FileRendezvous::ack_path(int rank) const {
  return fmt::format("{}.ack.{}", config_.path, rank);
}

std::vector<char> FileRendezvous::exchange(const std::string& key, const std::vector<char>& bytes) {
  if (config_.world_size == 1) return bytes;
  if (config_.rank == 0) {
    publish(key, bytes);
    return bytes;
  }
  return receive(key);
}

void FileRendezvous::publish(const std::string& key, const std::vector<char>& bytes) {
  const auto deadline = Clock::now() + config_.timeout;
  const int world = config_.world_size;
  for (int r = 1; r < world; ++r) ::unlink(ack_path(r).c_str());
  if (::access(config_.path.c_str(), F_OK) == 0) {
    detail::log(detail::LogLevel::kWarn, 0,
                "file rendezvous: {} exists, left by an earlier run that did not finish; replacing it (ranks that "
                "read it will read the new one)",
                config_.path);
  }

  std::random_device random;
  const uint64_t nonce = (static_cast<uint64_t>(random()) << 32) ^ random() ^
                         static_cast<uint64_t>(Clock::now().time_since_epoch().count());
  std::string data(kIdMagic, sizeof(kIdMagic));
  put(data, static_cast<uint32_t>(key.size()));
  data += key;
  put(data, static_cast<int32_t>(world));
  put(data, nonce);
  put(data, static_cast<uint64_t>(bytes.size()));
  data.append(bytes.data(), bytes.size());
  write_atomically(config_.path, data, 0);

  std::vector<bool> acked(static_cast<size_t>(world), false);
  acked[0] = true;
  int waiting = world - 1;
  Backoff backoff;
  for (;;) {
    for (int r = 1; r < world; ++r) {
      if (acked[static_cast<size_t>(r)]) continue;
      if (auto ack = read_file(ack_path(r)); ack && parse_ack(*ack) == nonce) {
        acked[static_cast<size_t>(r)] = true;
        --waiting;
      }
    }
    if (waiting == 0) break;
    if (Clock::now() >= deadline) {
      std::string missing;
      for (int r = 1; r < world; ++r) {
        if (!acked[static_cast<size_t>(r)]) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
      }
      ::unlink(config_.path.c_str());
      for (int r = 1; r < world; ++r) ::unlink(ack_path(r).c_str());
      throw TimeoutError(fmt::format(
          "[ddp rank 0] file rendezvous \"{}\" through {}: after {} ms, {} of {} ranks have not read it (missing "
          "ranks: {}). Check that they were started with the same DDP_INIT_METHOD and WORLD_SIZE={}, and that {} is "
          "on a file system they can see; raise DDP_TIMEOUT_S if they merely start late.",
          key, config_.path, config_.timeout.count(), waiting, world - 1, missing, world, config_.path));
    }
    backoff.sleep(deadline);
  }
  // Every rank has the blob: leave nothing behind for the next run.
  ::unlink(config_.path.c_str());
  for (int r = 1; r < world; ++r) ::unlink(ack_path(r).c_str());
}

std::vector<char> FileRendezvous::receive(const std::string& key) {
  const auto deadline = Clock::now() + config_.timeout;
  std::optional<uint64_t> acked_nonce;
  std::vector<char> payload;
  std::string seen = "no file";
  Backoff backoff;
  for (;;) {
    auto data = read_file(config_.path);
    std::optional<Publication> pub = data ? parse_publication(*data) : std::nullopt;
    const bool ours = pub && pub->key == key && pub->world_size == config_.world_size;
    if (acked_nonce && (!data || (pub && !ours))) {
      // Rank 0 collected every answer and removed the file (or has moved on to the next
      // exchange): what we acknowledged is final.
      return payload;
    }
    if (ours && (!acked_nonce || pub->nonce != *acked_nonce)) {
      // A new publication (the first, or one replacing a stale file we had read).
      payload = std::move(pub->payload);
      std::string ack(kAckMagic, sizeof(kAckMagic));
      put(ack, pub->nonce);
      write_atomically(ack_path(config_.rank), ack, config_.rank);
      acked_nonce = pub->nonce;
      seen = "the file, acknowledged; waiting for rank 0 to collect every rank's answer";
    } else if (pub && !ours && !acked_nonce) {
      seen = fmt::format("a file for rendezvous \"{}\" with WORLD_SIZE={} (this rank wants \"{}\" with WORLD_SIZE={})",
                         pub->key, pub->world_size, key, config_.world_size);
    }
    if (Clock::now() >= deadline) {
      throw TimeoutError(fmt::format(
          "[ddp rank {}] file rendezvous \"{}\" through {}: rank 0 did not finish within {} ms (found: {}). Check "
          "that rank 0 is running with the same DDP_INIT_METHOD and WORLD_SIZE, and that this path is on a file "
          "system shared with rank 0; raise DDP_TIMEOUT_S if rank 0 merely starts late.",
          config_.rank, key, config_.path, config_.timeout.count(), seen));
    }
    backoff.sleep(deadline);
  }
}

} // namespace ddp
