#include "reducer/status_row.h"

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

namespace ddp::detail {

void StatusRow::encode(uint8_t* row, size_t n, uint8_t status, int32_t failed_bucket) {
  row[n] = status;
  const int32_t bucket = status == kHookError ? failed_bucket : -1;
  std::memcpy(row + n + 1, &bucket, sizeof(bucket));
}

int32_t StatusRow::failed_bucket_of(const uint8_t* status) {
  int32_t bucket = -1;
  std::memcpy(&bucket, status + 1, sizeof(bucket));
  return bucket;
}

void StatusRow::decode(const uint8_t* rows, size_t n, int world, std::vector<int64_t>& used_by,
                       std::vector<uint8_t>& statuses) {
  std::fill(used_by.begin(), used_by.end(), 0);
  for (int r = 0; r < world; ++r) {
    const uint8_t* row = rows + r * (n + kStatusBytes);
    for (size_t i = 0; i < n; ++i) used_by[i] += row[i] & 1; // the used bit (MultiFire::encode)
    statuses[static_cast<size_t>(r)] = row[n];
  }
}

bool StatusRow::all_ok(const std::vector<uint8_t>& statuses) {
  return std::all_of(statuses.begin(), statuses.end(), [](uint8_t s) { return s == kOk; });
}

std::string StatusRow::ranks_with(const std::vector<uint8_t>& statuses, uint8_t status) {
  std::string out;
  for (size_t r = 0; r < statuses.size(); ++r) {
    if (statuses[r] == status) out += fmt::format("{}{}", out.empty() ? "" : ",", r);
  }
  return out;
}

std::string StatusRow::ranks_without(const uint8_t* rows, size_t n, int world, size_t index) {
  std::string ranks;
  for (int r = 0; r < world; ++r) {
    if (!rows[r * (n + kStatusBytes) + index]) ranks += fmt::format("{}{}", ranks.empty() ? "" : ",", r);
  }
  return ranks;
}

std::string StatusRow::describe_failures(const std::vector<uint8_t>& statuses, const uint8_t* rows, size_t n,
                                         const std::string& hook_name,
                                         const std::function<std::string(int32_t)>& bucket_members) {
  const std::string abandoned = ranks_with(statuses, kAbandoned);
  const std::string failed = ranks_with(statuses, kLocalError);
  std::string who;
  auto add = [&who](const std::string& part) { who += (who.empty() ? "" : ", and ") + part; };
  if (!abandoned.empty()) {
    add(fmt::format("the backward of rank(s) {} was interrupted (an exception during backward, or a timeout)",
                    abandoned));
  }
  if (!failed.empty()) add(fmt::format("rank(s) {} found an error in their backward (their own message names it)", failed));
  for (size_t r = 0; r < statuses.size(); ++r) {
    if (statuses[r] != kHookError) continue;
    const int32_t bucket = failed_bucket_of(rows + r * (n + kStatusBytes) + n);
    const std::string members = bucket >= 0 ? bucket_members(bucket) : std::string();
    add(fmt::format("rank {}'s communication hook '{}' failed on bucket {}{} (that rank's message has the exception)",
                    r, hook_name, bucket, members.empty() ? std::string() : fmt::format(" ({})", members)));
  }
  return who;
}

StatusRow::StatusRow(std::shared_ptr<ProcessGroup> process_group, size_t n)
    : process_group_(std::move(process_group)), n_(n) {
  // The rows travel on the group's device; host mirrors are filled and read without
  // allocating per iteration.
  const int world = process_group_->size();
  const auto row = static_cast<int64_t>(n + kStatusBytes);
  local_ = at::zeros({row}, at::TensorOptions().dtype(at::kByte).device(process_group_->device()));
  all_ = at::zeros({world, row}, local_.options());
  for (int r = 0; r < world; ++r) all_rows_.push_back(all_[r]);
  local_host_ = local_.is_cpu() ? local_ : at::zeros_like(local_, at::kCPU);
  all_host_ = all_.is_cpu() ? all_ : at::zeros_like(all_, at::kCPU);
  statuses_.assign(static_cast<size_t>(world), kOk);
}

void StatusRow::send() {
  if (!local_.is_same(local_host_)) local_.copy_(local_host_);
  work_ = process_group_->allgather(all_rows_, local_);
}

void StatusRow::issue(const std::vector<char>& local_used, uint8_t status, int32_t failed_bucket) {
  uint8_t* flags = local_host_.data_ptr<uint8_t>();
  std::copy(local_used.begin(), local_used.end(), flags);
  encode(flags, n_, status, failed_bucket);
  send();
}

void StatusRow::issue_abandoned() {
  uint8_t* flags = local_host_.data_ptr<uint8_t>();
  std::fill_n(flags, n_, 0);
  encode(flags, n_, kAbandoned, -1);
  send();
}

at::Tensor StatusRow::make_row(uint8_t used, uint8_t status) const {
  at::Tensor flags = at::full({static_cast<int64_t>(n_ + kStatusBytes)}, used, at::kByte);
  encode(flags.data_ptr<uint8_t>(), n_, status, -1);
  return flags;
}

const uint8_t* StatusRow::gathered() {
  if (!all_.is_same(all_host_)) all_host_.copy_(all_);
  return all_host_.data_ptr<uint8_t>();
}

} // namespace ddp::detail
