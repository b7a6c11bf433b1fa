#include "comm/store_rendezvous.h"

#include <fmt/format.h>

#include <ddp/error.h>

#include "comm/store_factory.h"

namespace ddp {
namespace {

std::vector<uint8_t> to_store(const std::string& text) { return std::vector<uint8_t>(text.begin(), text.end()); }
std::string from_store(const std::vector<uint8_t>& bytes) { return std::string(bytes.begin(), bytes.end()); }

constexpr const char* kAgreed = "ok";

} // namespace

StoreRendezvous::StoreRendezvous(c10::intrusive_ptr<c10d::Store> store, RendezvousConfig config)
    : store_(std::move(store)), config_(std::move(config)) {
  if (!store_) throw InvalidArgumentError("[ddp rank ?] StoreRendezvous: the store is null");
}

StoreRendezvous::~StoreRendezvous() {
  store_.reset();
  release_unused_stores();
}

bool StoreRendezvous::wait_for(const std::string& key) {
  try {
    store_->wait({key}, config_.timeout);
    return true;
  } catch (const std::exception& e) {
    // A wait that timed out and a store that broke both throw; only the second is
    // worth its own message.
    bool present = false;
    try {
      present = store_->check({key});
    } catch (const std::exception& broken) {
      throw CommError(fmt::format("[ddp rank {}] the rendezvous store {} failed: {}", rank(), config_.describe(),
                                  broken.what()));
    }
    return present;
  }
}

std::vector<char> StoreRendezvous::exchange(const std::string& key, const std::vector<char>& bytes) {
  // Each exchange has its own keys, numbered in call order: a rank that asks for another
  // key reads rank 0's and says so, instead of waiting on a key nobody publishes.
  const std::string base = fmt::format("exchange/{}/", ++exchanges_);
  if (world_size() == 1) return bytes;
  if (rank() == 0) {
    publish(base, key, bytes);
    return bytes;
  }
  return receive(base, key);
}

void StoreRendezvous::publish(const std::string& base, const std::string& key, const std::vector<char>& bytes) {
  store_->set(base + "value", std::vector<uint8_t>(bytes.begin(), bytes.end()));
  // Written last: a rank that sees it finds the value there.
  store_->set(base + "meta", to_store(fmt::format("{}\n{}", world_size(), key)));
  if (!wait_for(base + "done")) {
    std::string missing;
    for (int r = 1; r < world_size(); ++r) {
      if (!store_->check({fmt::format("{}answer/{}", base, r)})) missing += (missing.empty() ? "" : ", ") + std::to_string(r);
    }
    throw TimeoutError(fmt::format(
        "[ddp rank 0] rendezvous \"{}\" through {}: not every rank arrived within {} ms (WORLD_SIZE={}); missing "
        "ranks: {}. Start every rank with the same MASTER_ADDR, MASTER_PORT and WORLD_SIZE (torchrun does); raise "
        "DDP_TIMEOUT_S if they are merely slow to start.",
        key, config_.describe(), config_.timeout.count(), world_size(), missing));
  }
  for (int r = 1; r < world_size(); ++r) {
    const std::string answer = from_store(store_->get(fmt::format("{}answer/{}", base, r)));
    if (answer != kAgreed) {
      throw CommError(fmt::format("[ddp rank 0] rendezvous \"{}\" through {}: rank {} refused it: {}", key,
                                  config_.describe(), r, answer));
    }
  }
}

std::vector<char> StoreRendezvous::receive(const std::string& base, const std::string& key) {
  if (!wait_for(base + "meta")) {
    throw TimeoutError(fmt::format(
        "[ddp rank {}] rendezvous \"{}\" through {}: rank 0 did not publish within {} ms. Check that rank 0 is "
        "running with the same MASTER_ADDR and MASTER_PORT (or DDP_INIT_METHOD), and that every rank creates its "
        "process groups in the same order; raise DDP_TIMEOUT_S if rank 0 is merely slow.",
        rank(), key, config_.describe(), config_.timeout.count()));
  }
  const std::string meta = from_store(store_->get(base + "meta"));
  const auto newline = meta.find('\n');
  const int root_world = std::stoi(meta.substr(0, newline));
  const std::string root_key = meta.substr(newline + 1);
  std::string refusal;
  if (root_key != key) {
    refusal = fmt::format(
        "rank {} asked for \"{}\" but rank 0 published \"{}\". Every rank must create its process groups in the "
        "same order.",
        rank(), key, root_key);
  } else if (root_world != world_size()) {
    refusal = fmt::format("rank {} has WORLD_SIZE={} but rank 0 has WORLD_SIZE={}. Start every rank with the same "
                          "WORLD_SIZE.",
                          rank(), world_size(), root_world);
  }
  std::vector<uint8_t> value;
  if (refusal.empty()) value = store_->get(base + "value");
  store_->set(fmt::format("{}answer/{}", base, rank()), to_store(refusal.empty() ? kAgreed : refusal));
  // Counted against rank 0's world size, so that a rank with another WORLD_SIZE still
  // lets rank 0 finish (and report it) instead of time out.
  if (store_->add(base + "answers", 1) == root_world - 1) store_->set(base + "done", to_store(kAgreed));
  if (!refusal.empty()) {
    throw CommError(fmt::format("[ddp rank {}] rendezvous \"{}\" through {}: refused: {}", rank(), key,
                                config_.describe(), refusal));
  }
  return std::vector<char>(value.begin(), value.end());
}

} // namespace ddp
