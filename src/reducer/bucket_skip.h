// BucketSkip: the buckets a backward leaves out because no rank used any of their
// parameters (docs/semantics.md, "Unused parameters"). Before its backward each rank knows
// the parameters it leaves without a gradient (find_unused_parameters' graph walk,
// static_graph's learned set, every parameter for a ddp::Join shadow), less those with a
// gradient accumulated under no_sync(), which still contribute. It carries them as a
// bitmap in the section header it sends anyway (StepCheck), so this costs no collective.
// A bucket is skipped when every rank's bitmap holds every one of its parameters: a
// function of the gathered headers and of the bucket layout, both the same on every rank,
// so every rank skips the same buckets and the collectives still pair up. A rank whose own
// bitmap does not cover a bucket knows without reading the headers that no rank skips it.
//
// Unlike PyTorch's skip_all_reduce_unused_params, nothing is assumed of the other ranks:
// a parameter unused here and used on another rank keeps its bucket's all-reduce.
//
// Owned by Reducer::Impl and touched only under its mutex. encode and unused_everywhere are
// pure, unit-tested with crafted bitmaps (tests/unit/protocol_test.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ddp::detail {

class BucketSkip {
 public:
  // --- pure: the bitmap ---
  static size_t words_for(size_t n) { return (n + 63) / 64; }
  // `words` (words_for(unused.size()) of them) gets bit i set where unused[i] != 0.
  static void encode(const std::vector<char>& unused, std::vector<int64_t>& words);
  static bool bit(const int64_t* words, size_t i) {
    return ((static_cast<uint64_t>(words[i / 64]) >> (i % 64)) & 1U) != 0;
  }
  // `records`: world rows of `stride` int64 with a bitmap at `offset` in each. True when
  // every rank's bitmap holds every one of `members`.
  static bool unused_everywhere(const int64_t* records, int world, size_t stride, size_t offset,
                                const std::vector<size_t>& members);

  // `enabled`: Options::skip_all_reduce_unused_params with a way to know unused parameters
  // before the backward (find_unused_parameters or static_graph); `n` parameters.
  BucketSkip(bool enabled, size_t n);
  bool enabled() const { return enabled_; }
  // The bitmap's words in a header (0 when disabled).
  size_t words() const { return enabled_ ? local_.size() : 0; }

  // This section's bitmap from `unused` (n flags); returns the words to carry.
  const int64_t* set_local(const std::vector<char>& unused);
  // Every one of `members` is unused on this rank in this section.
  bool locally_unused(const std::vector<size_t>& members) const;
  // A new section: nothing known unused.
  void reset();

 private:
  const bool enabled_;
  std::vector<int64_t> local_;
  bool any_ = false;
};

} // namespace ddp::detail
