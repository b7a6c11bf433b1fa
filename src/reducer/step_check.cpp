#include "reducer/step_check.h"

#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <fmt/format.h>

#include <algorithm>

#include <ddp/error.h>

#include "common/check.h"
#include "common/logging.h"
#include "reducer/scoped_timer.h"

namespace ddp::detail {

StepCheck::StepCheck(std::shared_ptr<ProcessGroup> process_group, bool deferred, std::chrono::milliseconds timeout,
                     ReducerStats& stats, size_t bitmap_words)
    : process_group_(std::move(process_group)),
      rank_(process_group_->rank()),
      world_size_(process_group_->size()),
      comm_device_(process_group_->device()),
      deferred_(deferred),
      timeout_(timeout),
      record_length_(static_cast<size_t>(kRecordLength) + bitmap_words),
      stats_(stats) {
  const auto length = static_cast<int64_t>(record_length_);
  header_local_ = at::zeros({length}, at::TensorOptions().dtype(at::kLong).device(comm_device_));
  header_all_ = at::zeros({world_size_, length}, header_local_.options());
  for (int r = 0; r < world_size_; ++r) header_rows_.push_back(header_all_[r]);
}

std::string StepCheck::describe_header(const int64_t* record) {
  switch (static_cast<Section>(record[0])) {
    case Section::kModuleState:
      return fmt::format("broadcasting buffers for its forward #{} (training step {})", record[2] + 1, record[1]);
    case Section::kReduction:
      return fmt::format("reducing the gradients of training step {}", record[1]);
    case Section::kFinished:
      return fmt::format("finished: its DistributedDataParallel (Reducer) was destroyed after training step {}",
                         record[1]);
    case Section::kJoin:
      return fmt::format("agreeing on the ranks that still have data (ddp::Join) before training step {}",
                         record[1] + 1);
    case Section::kCommHook:
      return "registering a communication hook (register_comm_hook)";
  }
  return fmt::format("in an unknown section {} (not a libddp collective: a collective of the application's own?)",
                     record[0]);
}

std::optional<std::string> StepCheck::compare_headers(const int64_t* a, int world, int rank, size_t stride) {
  bool same = true;
  for (int r = 1; r < world; ++r) same = same && std::equal(a, a + kRecordLength, a + stride * r);
  if (same) return std::nullopt;
  std::string states;
  std::string finished;
  for (int r = 0; r < world; ++r) {
    states += fmt::format("{}rank {} is {}", r ? "; " : "", r, describe_header(a + stride * r));
    if (static_cast<Section>(a[stride * r]) == Section::kFinished) {
      finished += fmt::format("{}{}", finished.empty() ? "" : ",", r);
    }
  }
  std::string cause;
  if (!finished.empty()) {
    cause = fmt::format(
        "Rank(s) {} finished training while the others go on: its training loop ended (uneven inputs) or an "
        "exception took it out of the loop (see that rank's output). Every rank must run the same number of "
        "iterations: give every rank the same number of batches (drop the last, uneven ones).",
        finished);
  } else {
    cause =
        "A rank skipped a gradient reduction or ran an extra forward: no_sync() on some ranks only, an exception "
        "caught in forward or backward on some ranks only, a loss that does not depend on the forward's outputs on "
        "some ranks, or a training forward through the wrapper that was not backpropagated on some ranks. Every rank "
        "must run the same sequence of forward and backward passes.";
  }
  return fmt::format(
      "[ddp rank {}] the ranks are out of step: {}. {} Their collectives no longer pair up, so the reducer stops here "
      "on every rank (its gradients are not averaged); restart from the last checkpoint.",
      rank, states, cause);
}

void StepCheck::throw_if_broken() const {
  if (!broken_.empty()) throw ReductionError(broken_);
}

void StepCheck::fail_out_of_step(std::string message, bool paired_wrongly) {
  broken_ = std::move(message);
  // Deferred: collectives issued after a header mismatch may be paired with the wrong
  // ones and never complete; end them, so that no stream or exit waits on them. Not after
  // a rank's bad status: its collectives paired correctly, and aborting at once could cut
  // a peer's part of the same exchange short.
  if (deferred_ && paired_wrongly) {
    try {
      process_group_->abort(broken_);
    } catch (const std::exception& e) {
      log(LogLevel::kWarn, rank_, "could not abort the process group: {}", e.what());
    }
  }
  throw ReductionError(broken_);
}

void StepCheck::check_records(const int64_t* records, size_t stride) {
  if (auto message = compare_headers(records, world_size_, rank_, stride)) fail_out_of_step(std::move(*message));
}

void StepCheck::exchange(Section section, bool wait, const int64_t* bitmap) {
  if (world_size_ == 1) {
    verified_ = true;
    return;
  }
  const auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> record(record_length_, 0);
  record[0] = static_cast<int64_t>(section);
  record[1] = step_;
  record[2] = state_syncs_;
  if (bitmap) std::copy(bitmap, bitmap + (record_length_ - kRecordLength), record.begin() + kRecordLength);
  const auto length = static_cast<int64_t>(record_length_);
  if (deferred_) {
    // Launches are not held back for it: drain() compares the records once they have
    // arrived, and a group out of step is stopped then.
    gather_deferred(PendingRead::Kind::kHeader, to_comm_device(at::from_blob(record.data(), {length}, at::kLong)), -1);
    section_read_ = pending_reads_.back();
    section_read_checked_ = false;
    verified_ = true;
    stats_.collectives += 1;
    stats_.step_check_ns += nanoseconds_since(start);
    return;
  }
  if (header_local_.is_cpu()) {
    std::copy(record.begin(), record.end(), header_local_.data_ptr<int64_t>());
  } else {
    header_local_.copy_(at::from_blob(record.data(), {length}, at::kLong));
  }
  verified_ = false;
  header_work_ = process_group_->allgather(header_rows_, header_local_);
  stats_.collectives += 1;
  stats_.step_check_ns += nanoseconds_since(start);
  if (wait) verify();
}

void StepCheck::verify() {
  // Timed as the cost of the check: the wait includes any skew between the ranks, which
  // the first collective of the section would otherwise absorb, so this is an upper bound.
  const ScopedTimer timer(stats_.step_check_ns);
  header_work_->wait(timeout_);
  header_work_.reset();
  header_host_ = header_all_.is_cpu() ? header_all_ : header_all_.cpu();
  check_records(header_host_.data_ptr<int64_t>(), record_length_);
  verified_ = true;
}

const int64_t* StepCheck::section_records() {
  if (world_size_ == 1) return nullptr;
  if (!deferred_) {
    if (!verified_) verify();
    return header_host_.data_ptr<int64_t>();
  }
  // Deferred: this section's header, read ahead of the drain (which reads it again).
  DDP_CHECK(section_read_.has_value(), "section_records() before the section's header was issued (step {})", step_);
  PendingRead& read = *section_read_;
  if (!section_read_checked_) {
    const ScopedTimer timer(stats_.step_check_ns);
    if (read.copied) {
      read.copied->synchronize(); // bounded: the group's watchdog aborts a collective that hangs
    }
    read.work->wait(timeout_);
    check_records(read.host.data_ptr<int64_t>(), record_length_);
    section_read_checked_ = true;
  }
  return read.host.data_ptr<int64_t>();
}

void StepCheck::reset_section() {
  verified_ = false;
  header_work_.reset();
  header_host_ = at::Tensor();
  section_read_.reset();
  section_read_checked_ = false;
}

at::Tensor StepCheck::make_record(Section section, int64_t third) const {
  std::vector<int64_t> record(record_length_, 0);
  record[0] = static_cast<int64_t>(section);
  record[1] = step_;
  record[2] = third;
  return to_comm_device(at::from_blob(record.data(), {static_cast<int64_t>(record_length_)}, at::kLong));
}

std::vector<int64_t> StepCheck::gather_record(Section section, int64_t third) {
  return gather_now(make_record(section, third));
}

std::vector<int64_t> StepCheck::gather_now(const at::Tensor& local) {
  at::Tensor all;
  gather_rows(local, all)->wait(timeout_);
  stats_.collectives += 1;
  at::Tensor host = all.cpu();
  const int64_t* a = host.data_ptr<int64_t>();
  std::vector<int64_t> fields; // the compared fields of each rank's record, without the bitmap
  for (int r = 0; r < world_size_; ++r) {
    const int64_t* row = a + record_length_ * static_cast<size_t>(r);
    fields.insert(fields.end(), row, row + kRecordLength);
  }
  return fields;
}

std::vector<std::pair<bool, bool>> StepCheck::exchange_join(bool active, bool reduces) {
  const at::Tensor local = make_record(Section::kJoin, (active ? 1 : 0) | (active && reduces ? 2 : 0));
  const auto start = std::chrono::steady_clock::now();
  const std::vector<int64_t> a = gather_now(local);
  stats_.step_check_ns += nanoseconds_since(start);
  bool aligned = true;
  for (int r = 0; r < world_size_; ++r) {
    aligned = aligned && a[kRecordLength * r] == static_cast<int64_t>(Section::kJoin) && a[kRecordLength * r + 1] == step_;
  }
  if (!aligned) {
    std::string states;
    for (int r = 0; r < world_size_; ++r) {
      states += fmt::format("{}rank {} is {}", r ? "; " : "", r, describe_header(a.data() + kRecordLength * r));
    }
    fail_out_of_step(fmt::format(
        "[ddp rank {}] the ranks are out of step: {}. ddp::Join must be used on every rank, around the same training "
        "loop, and every rank must run the same forwards until it joins; restart from the last checkpoint.",
        rank_, states));
  }
  std::vector<std::pair<bool, bool>> flags;
  for (int r = 0; r < world_size_; ++r) {
    const int64_t f = a[kRecordLength * r + 2];
    flags.emplace_back((f & 1) != 0, (f & 2) != 0);
  }
  return flags;
}

void StepCheck::say_goodbye() {
  std::vector<int64_t> record(record_length_, 0);
  record[0] = static_cast<int64_t>(Section::kFinished);
  record[1] = step_;
  record[2] = state_syncs_;
  const auto length = static_cast<int64_t>(record_length_);
  at::Tensor local = at::from_blob(record.data(), {length}, at::kLong).clone().to(comm_device_);
  std::vector<at::Tensor> rows;
  for (int r = 0; r < world_size_; ++r) rows.push_back(at::empty({length}, local.options()));
  process_group_->allgather(rows, local);
}

at::Tensor StepCheck::to_comm_device(const at::Tensor& values) const {
  if (comm_device_.is_cpu()) return values.clone();
  // From pinned memory a host-to-device copy is queued, not waited for (a pageable one
  // would wait for the stream to drain first).
  at::Tensor pinned = at::empty(values.sizes(), values.options().pinned_memory(true));
  pinned.copy_(values);
  at::Tensor on_device = at::empty(values.sizes(), values.options().device(comm_device_));
  on_device.copy_(pinned, /*non_blocking=*/true);
  return on_device;
}

std::shared_ptr<Work> StepCheck::gather_rows(const at::Tensor& local, at::Tensor& all) {
  all = at::empty({world_size_, local.numel()}, local.options());
  std::vector<at::Tensor> rows;
  rows.reserve(static_cast<size_t>(world_size_));
  for (int r = 0; r < world_size_; ++r) rows.push_back(all[r]);
  return process_group_->allgather(rows, local);
}

std::shared_ptr<Work> StepCheck::gather_deferred(PendingRead::Kind kind, const at::Tensor& local, int64_t iteration) {
  at::Tensor all;
  auto work = gather_rows(local, all);
  PendingRead read{kind, work, all, all, nullptr, step_, iteration};
  if (comm_device_.is_cuda()) {
    // The host copy follows the gather on a side stream, and the event says when it is
    // there: nothing waits, neither the host nor the backward's stream (a stream wait
    // there would hold the backward's kernels until every rank's header arrived). `all`
    // stays alive in the read until the event has fired.
    const c10::impl::VirtualGuardImpl cuda(c10::DeviceType::CUDA);
    const c10::Stream side = cuda.getStreamFromGlobalPool(comm_device_, /*isHighPriority=*/false);
    c10::StreamGuard on_side(side);
    work->wait();
    read.host = at::empty(all.sizes(), all.options().device(at::kCPU).pinned_memory(true));
    read.host.copy_(all, /*non_blocking=*/true);
    read.copied = std::make_shared<c10::Event>(c10::DeviceType::CUDA);
    read.copied->record(side);
  }
  pending_reads_.push_back(std::move(read));
  return work;
}

void StepCheck::drain(bool block) {
  const ScopedTimer timer(stats_.step_check_ns);
  while (!pending_reads_.empty()) {
    PendingRead& front = pending_reads_.front();
    const bool arrived = front.copied ? front.copied->query() : front.work->is_completed();
    if (!arrived) {
      // Bounded lag: a GPU more than a few collectives behind makes the host wait here.
      if (!block && pending_reads_.size() <= kMaxPendingReads) return;
      if (front.copied) {
        front.copied->synchronize(); // bounded: the group's watchdog aborts a collective that hangs
      } else {
        front.work->wait(timeout_);
      }
    }
    PendingRead read = std::move(front);
    pending_reads_.pop_front();
    read.work->wait(timeout_); // complete: rethrows its failure, if it failed
    if (read.kind == PendingRead::Kind::kHeader) {
      check_records(read.host.data_ptr<int64_t>(), record_length_);
    } else if (flags_reader_) {
      flags_reader_(read);
    }
  }
}

} // namespace ddp::detail
