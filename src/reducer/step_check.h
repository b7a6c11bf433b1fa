// StepCheck: keeps the ranks in step (docs/semantics.md, "Ranks in step"). Every group of
// collectives the reducer issues starts with a section header {section, step, module-state
// syncs} exchanged by one small allgather; when the ranks' headers differ, the reducer is
// broken on every rank (a sticky error every later call throws) instead of pairing
// collectives across iterations. With the deferred step check (the default on CUDA) the
// headers and the used-flag rows are gathered now and read on the host once they have
// arrived (PendingRead), so the backward never waits for them.
//
// A reduction header may carry more: a bitmap of the parameters this rank already knows it
// leaves without a gradient (bitmap_words int64 words after the three fields; every
// section's record has that length, so that a rank in another section still pairs up).
// section_records() hands the gathered records to the reducer, which skips the buckets no
// rank used (docs/semantics.md, "Unused parameters").
//
// Owned by Reducer::Impl and touched only under its mutex. Comparing rows and describing
// them are pure functions of the gathered data (compare_headers, describe_header), so the
// protocol is unit-tested with crafted rows (tests/unit/protocol_test.cpp).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/Event.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <ddp/process_group.h>
#include <ddp/reducer_stats.h>

namespace ddp::detail {

class StepCheck {
 public:
  // What a rank is doing when it exchanges a section header.
  enum class Section : int64_t {
    kModuleState = 1, // broadcasting buffers before a forward
    kReduction = 2,   // reducing the gradients of one backward
    kFinished = 3,    // this rank's reducer is being destroyed (it finished training)
    kJoin = 4,        // ddp::Join: agreeing on which ranks still have data (third field: flags)
    kCommHook = 5,    // registering a communication hook
  };
  // The fields compared across ranks: {section, step, module-state syncs}. A record on
  // the wire is record_length() long: these, then the unused-parameter bitmap.
  static constexpr int64_t kRecordLength = 3;

  // A result whose host read is deferred: the collective, and the host copy of what it
  // gathered, ordered after it on the stream by `copied` (CUDA) or complete with the work
  // (CPU). Read in issue order by drain().
  struct PendingRead {
    enum class Kind { kHeader, kFlags } kind;
    std::shared_ptr<Work> work;
    at::Tensor gathered;                // the allgather's output, on the group's device
    at::Tensor host;                    // its host copy
    std::shared_ptr<c10::Event> copied; // null on a CPU group
    int64_t step;
    int64_t iteration;
  };
  // Reads one arrived used-flags row set (the status row's part of the protocol).
  using FlagsReader = std::function<void(const PendingRead&)>;

  // `bitmap_words`: the int64 words of unused-parameter bitmap a reduction header carries
  // (0: none); the same on every rank (it follows from options checked at construction).
  StepCheck(std::shared_ptr<ProcessGroup> process_group, bool deferred, std::chrono::milliseconds timeout,
            ReducerStats& stats, size_t bitmap_words = 0);

  // --- pure: the protocol on crafted rows ---
  // What a rank with this header record is doing, in words.
  static std::string describe_header(const int64_t* record);
  // `records`: world rows of `stride` int64 (at least kRecordLength). nullopt when every
  // rank's first kRecordLength fields are the same, else the message every rank throws
  // (seen from `rank`). What follows them (the bitmap) may differ.
  static std::optional<std::string> compare_headers(const int64_t* records, int world, int rank,
                                                    size_t stride = kRecordLength);

  // --- the sticky error ---
  bool broken() const { return !broken_.empty(); }
  const std::string& broken_message() const { return broken_; }
  void throw_if_broken() const;
  // Marks the reducer broken with `message` without throwing.
  void mark_broken(std::string message) { broken_ = std::move(message); }
  // Marks the reducer broken, gives up on the group's collectives in flight (deferred
  // mode, when `paired_wrongly`: some may never complete) and throws ReductionError.
  [[noreturn]] void fail_out_of_step(std::string message, bool paired_wrongly = true);

  // --- counters carried by every header ---
  int64_t step() const { return step_; }
  int64_t state_syncs() const { return state_syncs_; }
  void count_step() { step_ += 1; }
  void count_state_sync() { state_syncs_ += 1; }

  // --- the section header ---
  // Exchanges this rank's header for `section`. Strict: `wait` compares the records now
  // (else verify() does later). Deferred: queued for a later host read, never waits.
  // `bitmap`: bitmap_words words carried after the fields (null: zeros).
  void exchange(Section section, bool wait = true, const int64_t* bitmap = nullptr);
  // Waits for the header issued without waiting and compares the records.
  void verify();
  // The header is verified when every rank's matched (or world 1, or deferred).
  bool verified() const { return verified_; }
  bool issued() const { return header_work_ != nullptr; }
  // Forgets the section's header (a new iteration).
  void reset_section();
  // Compares gathered header records (world rows of `stride`, on the host); on a
  // difference marks the reducer broken and throws ReductionError (compare_headers).
  void check_records(const int64_t* records, size_t stride = kRecordLength);
  size_t record_length() const { return record_length_; }
  // This section's gathered header records (world x record_length(), on the host),
  // compared: strict, after verify(); deferred, read now, waiting for them if they have
  // not arrived (the read the drain does later finds the same). Throws the sticky error
  // when the ranks are out of step. World 1: null (no header is exchanged).
  const int64_t* section_records();

  // A header-shaped record with a third field of its own, gathered and waited for on the
  // host (ddp::Join's flags, a hook's registration); returns world x kRecordLength (the
  // fields only).
  std::vector<int64_t> gather_record(Section section, int64_t third);
  // The two halves of gather_record: the record on the group's device, and its gather.
  at::Tensor make_record(Section section, int64_t third) const;
  std::vector<int64_t> gather_now(const at::Tensor& local);
  // Gathers every rank's ddp::Join flags {active, reduces this step}; every rank must be
  // in a Join exchange of the same step, else every rank fails naming what each does.
  std::vector<std::pair<bool, bool>> exchange_join(bool active, bool reduces);
  // Tells the peers that this rank finished (not waited for: completes when they reach
  // their next header).
  void say_goodbye();

  // --- deferred reads ---
  bool deferred() const { return deferred_; }
  // Issues the gather of `local` (one row per rank) and queues its host read.
  std::shared_ptr<Work> gather_deferred(PendingRead::Kind kind, const at::Tensor& local, int64_t iteration);
  // Reads the pending results in order: those already arrived, or all of them when
  // `block` (or when more than kMaxPendingReads are queued). Throws the sticky error when
  // a header shows the ranks out of step; flags rows go to the FlagsReader.
  void drain(bool block);
  void set_flags_reader(FlagsReader reader) { flags_reader_ = std::move(reader); }

  // A small tensor on the group's device holding `values`, without a host wait.
  at::Tensor to_comm_device(const at::Tensor& values) const;

 private:
  static constexpr size_t kMaxPendingReads = 8;
  // Allgathers `local` into `all` (one row per rank, allocated here); returns the work.
  std::shared_ptr<Work> gather_rows(const at::Tensor& local, at::Tensor& all);

  const std::shared_ptr<ProcessGroup> process_group_;
  const int rank_;
  const int world_size_;
  const c10::Device comm_device_;
  const bool deferred_;
  const std::chrono::milliseconds timeout_;
  const size_t record_length_; // kRecordLength + the bitmap's words
  ReducerStats& stats_;

  int64_t step_ = 0;        // training forwards (prepare_for_forward calls)
  int64_t state_syncs_ = 0; // module-state broadcasts
  std::string broken_;      // set once the ranks are out of step: every call throws it
  bool verified_ = false;
  std::shared_ptr<Work> header_work_;
  at::Tensor header_local_; // int64 [3] on the group's device
  at::Tensor header_all_;   // int64 [world, 3]
  std::vector<at::Tensor> header_rows_;
  at::Tensor header_host_;                // strict: the verified records on the host
  std::optional<PendingRead> section_read_; // deferred: this section's header
  bool section_read_checked_ = false;
  std::deque<PendingRead> pending_reads_;
  FlagsReader flags_reader_;
};

} // namespace ddp::detail
