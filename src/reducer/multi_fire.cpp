#include "reducer/multi_fire.h"

#include <ATen/ATen.h>

#include <algorithm>

namespace ddp::detail {

uint8_t MultiFire::encode(bool used, bool late, int64_t runs) {
  const int64_t capped = std::min(runs, kMaxRuns);
  return static_cast<uint8_t>((used ? kUsedBit : 0) | (late ? kLateBit : 0) | (capped << kRunsShift));
}

bool MultiFire::decode_late(const uint8_t* rows, size_t n, int world, size_t stride,
                            std::vector<char>& late_anywhere) {
  std::fill(late_anywhere.begin(), late_anywhere.end(), 0);
  bool any = false;
  for (int r = 0; r < world; ++r) {
    const uint8_t* row = rows + stride * static_cast<size_t>(r);
    for (size_t i = 0; i < n; ++i) {
      if (late(row[i])) {
        late_anywhere[i] = 1;
        any = true;
      }
    }
  }
  return any;
}

MultiFire::MultiFire(size_t n) : runs_(n, 0), expected_(n, 1), settled_(n, 0), late_flag_(n, 0), late_(n) {}

at::Tensor& MultiFire::late_tensor(size_t i, const at::Tensor& like) {
  at::Tensor& t = late_[i];
  if (!t.defined()) {
    t = at::zeros_like(like, at::MemoryFormat::Contiguous);
  } else if (!late_flag_[i]) {
    t.zero_(); // kept from an earlier backward
  }
  late_flag_[i] = 1; // holds this backward's contribution (zeros if none came)
  return t;
}

void MultiFire::add_late(size_t i, const at::Tensor& incoming, double scale, const at::Tensor& like) {
  at::Tensor& t = late_tensor(i, like);
  any_late_ = true;
  late_runs_ += 1;
  if (incoming.defined()) t.add_(incoming, scale);
}

void MultiFire::encode_row(const std::vector<char>& local_used, std::vector<char>& out) const {
  out.resize(local_used.size());
  for (size_t i = 0; i < local_used.size(); ++i) {
    out[i] = static_cast<char>(encode(local_used[i] != 0, late_flag_[i] != 0, runs_[i]));
  }
}

void MultiFire::learn() {
  for (size_t i = 0; i < runs_.size(); ++i) {
    if (runs_[i] > 0) {
      expected_[i] = runs_[i];
      settled_[i] = 1;
    }
  }
}

void MultiFire::reset() {
  std::fill(runs_.begin(), runs_.end(), 0);
  std::fill(late_flag_.begin(), late_flag_.end(), 0);
  any_late_ = false;
  late_runs_ = 0;
}

} // namespace ddp::detail
