#include "comm/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include <ddp/error.h>

#include "common/logging.h"

namespace ddp {
namespace {

using Clock = std::chrono::steady_clock;

constexpr uint32_t kMagic = 0x44445052;  // "DDPR"
constexpr uint32_t kVersion = 1;
constexpr uint32_t kMaxKey = 1024;
constexpr uint64_t kMaxPayload = 64u << 20;
// How long one connected peer may take to say who it is.
constexpr std::chrono::seconds kHandshakeLimit{10};

// A socket that closes itself.
class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = other.fd_;
      other.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  void reset() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

 private:
  int fd_;
};

// Why a socket operation failed: errno's text, or the peer having closed.
struct IoError {
  std::string what;
};

int remaining_ms(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  return static_cast<int>(std::clamp<int64_t>(left, 0, INT32_MAX));
}

// Waits for `events` on `fd` until the deadline; false on timeout.
bool wait_for(int fd, short events, Clock::time_point deadline) {
  for (;;) {
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, remaining_ms(deadline));
    if (rc > 0) return true;
    if (rc == 0) return false;
    if (errno != EINTR) throw IoError{std::strerror(errno)};
  }
}

void send_all(int fd, const void* data, size_t size, Clock::time_point deadline) {
  const auto* p = static_cast<const char*>(data);
  while (size > 0) {
    if (!wait_for(fd, POLLOUT, deadline)) throw IoError{"timed out sending"};
    const ssize_t n = ::send(fd, p, size, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      throw IoError{std::strerror(errno)};
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

void recv_all(int fd, void* data, size_t size, Clock::time_point deadline) {
  auto* p = static_cast<char*>(data);
  while (size > 0) {
    if (!wait_for(fd, POLLIN, deadline)) throw IoError{"timed out receiving"};
    const ssize_t n = ::recv(fd, p, size, 0);
    if (n == 0) throw IoError{"the peer closed the connection"};
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      throw IoError{std::strerror(errno)};
    }
    p += n;
    size -= static_cast<size_t>(n);
  }
}

// Fixed-width integers in network byte order.
void put_u32(std::string& out, uint32_t v) {
  v = htonl(v);
  out.append(reinterpret_cast<const char*>(&v), 4);
}
void put_u64(std::string& out, uint64_t v) {
  put_u32(out, static_cast<uint32_t>(v >> 32));
  put_u32(out, static_cast<uint32_t>(v));
}
uint32_t get_u32(int fd, Clock::time_point deadline) {
  uint32_t v = 0;
  recv_all(fd, &v, 4, deadline);
  return ntohl(v);
}
uint64_t get_u64(int fd, Clock::time_point deadline) {
  const uint64_t hi = get_u32(fd, deadline);
  return (hi << 32) | get_u32(fd, deadline);
}

void set_nonblocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL, 0);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) throw IoError{std::strerror(errno)};
}

struct AddrInfo {
  addrinfo* list = nullptr;
  ~AddrInfo() {
    if (list) ::freeaddrinfo(list);
  }
};

// Resolves host:port; the error text when it cannot.
std::string resolve(const std::string& host, int port, int flags, AddrInfo& out) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV | flags;
  const std::string service = std::to_string(port);
  const int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &out.list);
  if (rc != 0) return rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
  return {};
}

std::string missing_ranks(const std::vector<bool>& seen) {
  std::string out;
  int listed = 0;
  for (size_t r = 0; r < seen.size(); ++r) {
    if (seen[r]) continue;
    if (listed == 16) {
      out += ", ...";
      break;
    }
    out += (listed++ ? ", " : "") + std::to_string(r);
  }
  return out;
}

} // namespace

TcpRendezvous::TcpRendezvous(RendezvousConfig config) : config_(std::move(config)) {
  if (config_.world_size < 1 || config_.rank < 0 || config_.rank >= config_.world_size) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] TCP rendezvous: rank {} is not in a world of {}",
                                           config_.rank, config_.rank, config_.world_size));
  }
  if (config_.port < 1 || config_.port > 65535) {
    throw InvalidArgumentError(
        fmt::format("[ddp rank {}] TCP rendezvous: MASTER_PORT={} is not a TCP port (1-65535)", config_.rank,
                    config_.port));
  }
}

std::vector<char> TcpRendezvous::exchange(const std::string& key, const std::vector<char>& bytes) {
  if (key.size() > kMaxKey) {
    throw InvalidArgumentError(fmt::format("[ddp rank {}] rendezvous key is longer than {} bytes", rank(), kMaxKey));
  }
  if (config_.world_size == 1) return bytes;
  if (config_.rank == 0) {
    if (bytes.size() > kMaxPayload) {
      throw InvalidArgumentError(
          fmt::format("[ddp rank 0] rendezvous payload of {} bytes is above {} bytes", bytes.size(), kMaxPayload));
    }
    serve(key, bytes);
    return bytes;
  }
  return fetch(key);
}

void TcpRendezvous::serve(const std::string& key, const std::vector<char>& bytes) {
  const auto deadline = Clock::now() + config_.timeout;
  const std::string where = fmt::format("{}:{} (MASTER_ADDR:MASTER_PORT)", config_.host, config_.port);

  // Listen on MASTER_ADDR itself; when that address is not one of this machine's (behind
  // NAT, or a name that resolves elsewhere), on every interface of its family.
  AddrInfo addrs;
  if (std::string err = resolve(config_.host, config_.port, 0, addrs); !err.empty()) {
    throw CommError(fmt::format("[ddp rank 0] TCP rendezvous: cannot resolve MASTER_ADDR=\"{}\": {}. Set MASTER_ADDR "
                                "to this machine's address or host name.",
                                config_.host, err));
  }
  Fd listener;
  std::string bind_error;
  bool in_use = false;
  for (addrinfo* a = addrs.list; a != nullptr && listener.get() < 0; a = a->ai_next) {
    Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol));
    if (fd.get() < 0) {
      bind_error = std::strerror(errno);
      continue;
    }
    const int one = 1;
    ::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = ::bind(fd.get(), a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EADDRNOTAVAIL) {
      sockaddr_storage any{};
      socklen_t len = 0;
      if (a->ai_family == AF_INET6) {
        auto* s6 = reinterpret_cast<sockaddr_in6*>(&any);
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = in6addr_any;
        s6->sin6_port = htons(static_cast<uint16_t>(config_.port));
        len = sizeof(sockaddr_in6);
      } else {
        auto* s4 = reinterpret_cast<sockaddr_in*>(&any);
        s4->sin_family = AF_INET;
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
        s4->sin_port = htons(static_cast<uint16_t>(config_.port));
        len = sizeof(sockaddr_in);
      }
      rc = ::bind(fd.get(), reinterpret_cast<sockaddr*>(&any), len);
    }
    if (rc != 0 || ::listen(fd.get(), std::min(config_.world_size, 4096)) != 0) {
      in_use = in_use || errno == EADDRINUSE;
      bind_error = std::strerror(errno);
      continue;
    }
    listener = std::move(fd);
  }
  if (listener.get() < 0 && in_use) {
    // torchrun >= 2.4 keeps its own TCPStore on MASTER_ADDR:MASTER_PORT (the agent's
    // store, shared with the workers), so that port is taken when torchrun launched us.
    throw CommError(fmt::format(
        "[ddp rank 0] TCP rendezvous: cannot listen on {}: {}. MASTER_PORT={} is taken. Under torchrun 2.4 or newer "
        "the launcher's own TCPStore listens there: start torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, or "
        "give libddp its own rendezvous on every rank with DDP_INIT_METHOD=tcp://HOST:OTHER_PORT or "
        "DDP_INIT_METHOD=file:///shared/path. Otherwise another process (or an earlier run) holds the port: "
        "choose a free MASTER_PORT and set it on every rank.",
        where, bind_error, config_.port));
  }
  if (listener.get() < 0) {
    throw CommError(fmt::format(
        "[ddp rank 0] TCP rendezvous: cannot listen on {}: {}. Another process (or an earlier run) may hold "
        "MASTER_PORT={}; choose a free MASTER_PORT and set it on every rank.",
        where, bind_error, config_.port));
  }
  set_nonblocking(listener.get());

  std::string reply;
  put_u32(reply, 0);
  put_u64(reply, bytes.size());
  reply.append(bytes.data(), bytes.size());

  std::vector<bool> seen(static_cast<size_t>(config_.world_size), false);
  seen[0] = true;
  int waiting = config_.world_size - 1;
  while (waiting > 0) {
    bool ready = false;
    try {
      ready = wait_for(listener.get(), POLLIN, deadline);
    } catch (const IoError& e) {
      throw CommError(fmt::format("[ddp rank 0] TCP rendezvous on {} failed: {}", where, e.what));
    }
    if (!ready) {
      throw TimeoutError(fmt::format(
          "[ddp rank 0] TCP rendezvous \"{}\" on {}: after {} ms, {} of {} ranks have not connected (missing ranks: "
          "{}). Check that they were started, with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE={}, and can "
          "reach this machine; raise DDP_TIMEOUT_S if they merely start late.",
          key, where, config_.timeout.count(), waiting, config_.world_size - 1, missing_ranks(seen),
          config_.world_size));
    }
    Fd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (conn.get() < 0) continue;  // EAGAIN, ECONNABORTED: the next poll decides
    const int one = 1;
    ::setsockopt(conn.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));

    const auto handshake_deadline = std::min(deadline, Clock::now() + kHandshakeLimit);
    int32_t peer_rank = -1;
    int32_t peer_world = 0;
    std::string peer_key;
    try {
      if (get_u32(conn.get(), handshake_deadline) != kMagic || get_u32(conn.get(), handshake_deadline) != kVersion) {
        detail::log(detail::LogLevel::kWarn, 0, "TCP rendezvous on {}: ignored a connection that is not a libddp rank",
            where);
        continue;
      }
      peer_rank = static_cast<int32_t>(get_u32(conn.get(), handshake_deadline));
      peer_world = static_cast<int32_t>(get_u32(conn.get(), handshake_deadline));
      const uint32_t key_len = get_u32(conn.get(), handshake_deadline);
      if (key_len > kMaxKey) continue;
      peer_key.resize(key_len);
      recv_all(conn.get(), peer_key.data(), key_len, handshake_deadline);
    } catch (const IoError& e) {
      detail::log(detail::LogLevel::kWarn, 0, "TCP rendezvous on {}: dropped a connection during its handshake: {}", where,
          e.what);
      continue;
    }

    std::string problem;
    if (peer_world != config_.world_size) {
      problem = fmt::format("rank {} has WORLD_SIZE={} but rank 0 has WORLD_SIZE={}; set the same WORLD_SIZE on "
                            "every rank",
                            peer_rank, peer_world, config_.world_size);
    } else if (peer_rank <= 0 || peer_rank >= config_.world_size) {
      problem = fmt::format("a process connected with RANK={}, which is not in 1..{}; every rank but 0 connects, "
                            "each with a distinct RANK",
                            peer_rank, config_.world_size - 1);
    } else if (seen[static_cast<size_t>(peer_rank)]) {
      problem = fmt::format("two processes connected with RANK={}; give every process a distinct RANK", peer_rank);
    } else if (peer_key != key) {
      problem = fmt::format("rank {} asked for rendezvous \"{}\" but rank 0 is at \"{}\"; every rank must create "
                            "its process groups in the same order",
                            peer_rank, peer_key, key);
    }
    if (!problem.empty()) {
      std::string error;
      put_u32(error, 1);
      put_u64(error, problem.size());
      error += problem;
      try {
        send_all(conn.get(), error.data(), error.size(), handshake_deadline);
      } catch (const IoError&) {
      }
      throw CommError(fmt::format("[ddp rank 0] TCP rendezvous on {}: {}", where, problem));
    }
    try {
      send_all(conn.get(), reply.data(), reply.size(), handshake_deadline);
    } catch (const IoError& e) {
      // The peer retries on its side; it will connect again.
      detail::log(detail::LogLevel::kWarn, 0, "TCP rendezvous on {}: sending to rank {} failed ({}); waiting for it to retry",
          where, peer_rank, e.what);
      continue;
    }
    seen[static_cast<size_t>(peer_rank)] = true;
    --waiting;
  }
}

std::vector<char> TcpRendezvous::fetch(const std::string& key) {
  const auto deadline = Clock::now() + config_.timeout;
  const std::string where = fmt::format("{}:{} (MASTER_ADDR:MASTER_PORT)", config_.host, config_.port);

  std::string hello;
  put_u32(hello, kMagic);
  put_u32(hello, kVersion);
  put_u32(hello, static_cast<uint32_t>(config_.rank));
  put_u32(hello, static_cast<uint32_t>(config_.world_size));
  put_u32(hello, static_cast<uint32_t>(key.size()));
  hello += key;

  std::string last_error = "none";
  auto backoff = std::chrono::milliseconds(10);
  while (Clock::now() < deadline) {
    AddrInfo addrs;
    if (std::string err = resolve(config_.host, config_.port, 0, addrs); !err.empty()) {
      last_error = fmt::format("cannot resolve MASTER_ADDR=\"{}\": {}", config_.host, err);
    }
    for (addrinfo* a = addrs.list; a != nullptr; a = a->ai_next) {
      Fd fd(::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, a->ai_protocol));
      if (fd.get() < 0) {
        last_error = std::strerror(errno);
        continue;
      }
      try {
        if (::connect(fd.get(), a->ai_addr, a->ai_addrlen) != 0) {
          if (errno != EINPROGRESS) throw IoError{std::strerror(errno)};
          const auto connect_deadline = std::min(deadline, Clock::now() + std::chrono::seconds(5));
          if (!wait_for(fd.get(), POLLOUT, connect_deadline)) throw IoError{"connect timed out"};
          int so_error = 0;
          socklen_t len = sizeof(so_error);
          ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &len);
          if (so_error != 0) throw IoError{std::strerror(so_error)};
        }
        const int one = 1;
        ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        send_all(fd.get(), hello.data(), hello.size(), deadline);
        const uint32_t status = get_u32(fd.get(), deadline);
        const uint64_t size = get_u64(fd.get(), deadline);
        if (size > kMaxPayload) throw IoError{"rank 0 sent an oversized reply"};
        std::vector<char> data(size);
        recv_all(fd.get(), data.data(), size, deadline);
        if (status != 0) {
          throw CommError(fmt::format("[ddp rank {}] TCP rendezvous \"{}\" with rank 0 at {} was refused: {}", rank(),
                                      key, where, std::string(data.begin(), data.end())));
        }
        return data;
      } catch (const IoError& e) {
        last_error = e.what;
      }
    }
    const int left = remaining_ms(deadline);
    if (left <= 0) break;
    std::this_thread::sleep_for(std::min(backoff, std::chrono::milliseconds(left)));
    backoff = std::min(backoff * 2, std::chrono::milliseconds(1000));
  }
  throw TimeoutError(fmt::format(
      "[ddp rank {}] TCP rendezvous \"{}\": could not get rank 0's reply from {} within {} ms (last error: {}). "
      "Check that rank 0 is running, that every rank has the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE, and "
      "that the port is reachable from this machine; raise DDP_TIMEOUT_S if rank 0 merely starts late.",
      rank(), key, where, config_.timeout.count(), last_error));
}

} // namespace ddp
