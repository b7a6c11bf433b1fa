#include "reducer/bucket_skip.h"

#include <algorithm>

namespace ddp::detail {

void BucketSkip::encode(const std::vector<char>& unused, std::vector<int64_t>& words) {
  std::fill(words.begin(), words.end(), 0);
  for (size_t i = 0; i < unused.size(); ++i) {
    if (unused[i]) words[i / 64] = static_cast<int64_t>(static_cast<uint64_t>(words[i / 64]) | (uint64_t{1} << (i % 64)));
  }
}

bool BucketSkip::unused_everywhere(const int64_t* records, int world, size_t stride, size_t offset,
                                   const std::vector<size_t>& members) {
  for (int r = 0; r < world; ++r) {
    const int64_t* words = records + stride * static_cast<size_t>(r) + offset;
    for (size_t i : members) {
      if (!bit(words, i)) return false;
    }
  }
  return true;
}

BucketSkip::BucketSkip(bool enabled, size_t n) : enabled_(enabled), local_(words_for(n), 0) {}

const int64_t* BucketSkip::set_local(const std::vector<char>& unused) {
  encode(unused, local_);
  any_ = std::any_of(unused.begin(), unused.end(), [](char u) { return u != 0; });
  return local_.data();
}

bool BucketSkip::locally_unused(const std::vector<size_t>& members) const {
  if (!enabled_ || !any_) return false;
  return std::all_of(members.begin(), members.end(), [this](size_t i) { return bit(local_.data(), i); });
}

void BucketSkip::reset() {
  if (!any_) return;
  std::fill(local_.begin(), local_.end(), 0);
  any_ = false;
}

} // namespace ddp::detail
