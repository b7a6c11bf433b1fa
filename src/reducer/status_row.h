// StatusRow: what each rank says at the end of a backward section, in one allgather: one
// "used" byte per parameter (bit 0: did it get a gradient on this rank? the other bits:
// MultiFire's late bit and hook runs) and kStatusBytes of
// status (did this rank's backward go right, and if a communication hook failed, on which
// bucket). Summed over ranks the flags decide which .grad is written (a parameter no rank
// used keeps its .grad); any status other than kOk makes the step an error on every rank,
// so that an error on one rank is never a silent difference.
//
// Owned by Reducer::Impl and touched only under its mutex. Encoding, decoding and the
// description of failures are pure functions of the rows, unit-tested with crafted rows.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <ddp/process_group.h>

namespace ddp::detail {

class StatusRow {
 public:
  enum Status : uint8_t { kOk = 0, kLocalError = 1, kAbandoned = 2, kHookError = 3 };
  // The status byte, then the failed bucket's index (int32, -1 unless kHookError).
  static constexpr size_t kStatusBytes = 5;

  // --- pure: the row format ---
  // Writes `status` (and `failed_bucket` for kHookError) after the n used flags of `row`.
  static void encode(uint8_t* row, size_t n, uint8_t status, int32_t failed_bucket);
  static int32_t failed_bucket_of(const uint8_t* status);
  // Sums the used flags of `rows` (world x (n + kStatusBytes)) into used_by and reads each
  // rank's status byte into statuses (both sized by the caller: no allocation).
  static void decode(const uint8_t* rows, size_t n, int world, std::vector<int64_t>& used_by,
                     std::vector<uint8_t>& statuses);
  static bool all_ok(const std::vector<uint8_t>& statuses);
  // "0,2": the ranks whose status is `status`.
  static std::string ranks_with(const std::vector<uint8_t>& statuses, uint8_t status);
  // "1,2": the ranks whose used flag for parameter `index` is 0.
  static std::string ranks_without(const uint8_t* rows, size_t n, int world, size_t index);
  // What the ranks with a status other than kOk did, for the error message. `hook_name`
  // names the registered hook; `bucket_members(b)` names bucket b's parameters ("" when b
  // is not a bucket of this rank's).
  static std::string describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows, size_t n,
                                       const std::string& hook_name,
                                       const std::function<std::string(int32_t)>& bucket_members);

  // --- the exchange (strict step check) ---
  StatusRow(std::shared_ptr<ProcessGroup> process_group, size_t n);
  // Allgathers this rank's flags and status; complete when work() is.
  void issue(const std::vector<char>& local_used, uint8_t status, int32_t failed_bucket);
  // This rank's backward was interrupted: no parameter used, status kAbandoned.
  void issue_abandoned();
  // For the deferred check, whose gathers the StepCheck queues: this rank's row, with
  // every flag `used` (0 or 1) and `status`.
  at::Tensor make_row(uint8_t used, uint8_t status) const;
  std::shared_ptr<Work>& work() { return work_; }
  // The gathered rows on the host (copied from the group's device when needed); valid
  // once work() completed.
  const uint8_t* gathered();
  // The gathered rows without copying (what the last gathered() returned).
  const uint8_t* host_rows() const { return all_host_.data_ptr<uint8_t>(); }
  // Each rank's status in the last decoded exchange (sized world: no allocation per step).
  std::vector<uint8_t>& statuses() { return statuses_; }

 private:
  void send(); // allgathers local_host_'s contents
  const std::shared_ptr<ProcessGroup> process_group_;
  const size_t n_;
  at::Tensor local_;      // n + kStatusBytes bytes on the group's device
  at::Tensor all_;        // world x (n + kStatusBytes)
  at::Tensor local_host_; // host mirrors (the same tensors on a CPU group)
  at::Tensor all_host_;
  std::vector<at::Tensor> all_rows_;
  std::vector<uint8_t> statuses_;
  std::shared_ptr<Work> work_;
};

} // namespace ddp::detail
