// The reducer's cross-rank protocol without MPI: the parts that read their peers' rows
// (StepCheck's section headers and the unused bitmap they carry for BucketSkip, StatusRow's used flags and statuses, JoinState's flags,
// UnusedReport) driven at world 2-8 with crafted rows, and StepCheck/StatusRow over a
// process group that hands back crafted peer rows. Expected values are written out by
// hand from the row format (docs/architecture.md), never computed by the code under test.
#include <catch2/catch.hpp>

#include <ATen/ATen.h>

#include <algorithm>
#include <cstring>
#include <deque>
#include <vector>

#include <ddp/error.h>
#include <ddp/process_group.h>

#include "reducer/bucket_skip.h"
#include "reducer/join_state.h"
#include "reducer/multi_fire.h"
#include "reducer/status_row.h"
#include "reducer/step_check.h"
#include "reducer/unused_report.h"

using Catch::Contains;
using ddp::detail::BucketSkip;
using ddp::detail::JoinState;
using ddp::detail::MultiFire;
using ddp::detail::StatusRow;
using ddp::detail::StepCheck;
using ddp::detail::UnusedReport;
using Section = StepCheck::Section;

namespace {

constexpr int64_t kReduction = static_cast<int64_t>(Section::kReduction);
constexpr int64_t kModuleState = static_cast<int64_t>(Section::kModuleState);
constexpr int64_t kFinished = static_cast<int64_t>(Section::kFinished);
constexpr int64_t kJoin = static_cast<int64_t>(Section::kJoin);

// world x 3 header records, every rank at {section, step, syncs}.
std::vector<int64_t> headers(int world, int64_t section, int64_t step, int64_t syncs) {
  std::vector<int64_t> out;
  for (int r = 0; r < world; ++r) out.insert(out.end(), {section, step, syncs});
  return out;
}

// world x (n + kStatusBytes) rows: used[r][i] flags, status[r], failed bucket 7 for hook errors.
std::vector<uint8_t> rows_of(const std::vector<std::vector<uint8_t>>& used, const std::vector<uint8_t>& status,
                             int32_t failed_bucket = 7) {
  const size_t n = used.front().size();
  std::vector<uint8_t> out;
  for (size_t r = 0; r < used.size(); ++r) {
    std::vector<uint8_t> row(n + StatusRow::kStatusBytes, 0);
    std::copy(used[r].begin(), used[r].end(), row.begin());
    StatusRow::encode(row.data(), n, status[r], failed_bucket);
    out.insert(out.end(), row.begin(), row.end());
  }
  return out;
}

// A process group of `world` ranks seen from `rank`, whose allgathers complete at once
// with this rank's input at its own row and the next crafted row (queued by the test) at
// every peer's, so the reducer's parts read exactly the peers' rows the test chose.
class CraftedPeers : public ddp::ProcessGroup {
 public:
  CraftedPeers(int rank, int world) : rank_(rank), world_(world) {}
  int rank() const override { return rank_; }
  int size() const override { return world_; }
  std::string backend() const override { return "crafted"; }
  std::shared_ptr<ddp::Work> allreduce(at::Tensor) override { return done(); }
  std::shared_ptr<ddp::Work> broadcast(at::Tensor, int) override { return done(); }
  std::shared_ptr<ddp::Work> allgather(std::vector<at::Tensor> outputs, at::Tensor input) override {
    REQUIRE(!peer_rows.empty());
    at::Tensor peers = peer_rows.front(); // world x numel: row r for rank r (its own row is ignored)
    peer_rows.pop_front();
    for (int r = 0; r < world_; ++r) outputs[r].copy_(r == rank_ ? input : peers[r].view(input.sizes()));
    gathers += 1;
    return done();
  }
  void barrier() override {}

  std::deque<at::Tensor> peer_rows;
  int gathers = 0;

 private:
  std::shared_ptr<ddp::Work> done() {
    auto work = std::make_shared<ddp::Work>("crafted", ++sequence_, rank_);
    work->mark_started();
    work->finish();
    return work;
  }
  const int rank_;
  const int world_;
  uint64_t sequence_ = 0;
};

at::Tensor long_rows(const std::vector<int64_t>& values, int world) {
  return at::tensor(values, at::kLong).view({world, -1}).clone();
}

} // namespace

TEST_CASE("section headers: equal records pass, any difference names every rank's section", "[protocol]") {
  for (int world = 2; world <= 8; ++world) {
    CAPTURE(world);
    auto same = headers(world, kReduction, 5, 2);
    CHECK_FALSE(StepCheck::compare_headers(same.data(), world, 0).has_value());

    // The last rank skipped a backward: one step behind, and its section names it.
    auto behind = same;
    behind[3 * (world - 1) + 1] = 4;
    auto message = StepCheck::compare_headers(behind.data(), world, 1);
    REQUIRE(message.has_value());
    CHECK_THAT(*message, Contains("[ddp rank 1] the ranks are out of step"));
    CHECK_THAT(*message, Contains("rank 0 is reducing the gradients of training step 5"));
    CHECK_THAT(*message, Contains("rank " + std::to_string(world - 1) + " is reducing the gradients of training step 4"));
    CHECK_THAT(*message, Contains("A rank skipped a gradient reduction"));

    // One rank broadcasts buffers (its forward #3) while the others reduce.
    auto state = same;
    state[0] = kModuleState;
    message = StepCheck::compare_headers(state.data(), world, 0);
    REQUIRE(message.has_value());
    CHECK_THAT(*message, Contains("rank 0 is broadcasting buffers for its forward #3 (training step 5)"));

    // Ranks that finished are named as such, with the uneven-inputs advice.
    auto finished = same;
    finished[0] = kFinished;
    if (world > 2) finished[3 * 2] = kFinished;
    message = StepCheck::compare_headers(finished.data(), world, 1);
    REQUIRE(message.has_value());
    CHECK_THAT(*message, Contains(world > 2 ? "Rank(s) 0,2 finished training" : "Rank(s) 0 finished training"));
    CHECK_THAT(*message, Contains("drop the last, uneven ones"));
  }
  // A section number no libddp rank sends: an application's collective in between.
  const int64_t foreign[3] = {42, 0, 0};
  CHECK_THAT(StepCheck::describe_header(foreign), Contains("unknown section 42"));
  const int64_t join[3] = {kJoin, 6, 0};
  CHECK_THAT(StepCheck::describe_header(join), Contains("ddp::Join) before training step 7"));
}

TEST_CASE("status rows: encode, decode and every status combination at world 2-8", "[protocol]") {
  const size_t n = 3;
  const std::vector<uint8_t> statuses_all = {StatusRow::kOk, StatusRow::kLocalError, StatusRow::kAbandoned,
                                             StatusRow::kHookError};
  for (int world = 2; world <= 8; ++world) {
    CAPTURE(world);
    // Every rank's status taken from all four, in every combination for world <= 4 and
    // in a rotating pattern beyond (4^8 combinations would take long for no new case).
    const int combinations = world <= 4 ? 1 << (2 * world) : 16;
    for (int c = 0; c < combinations; ++c) {
      std::vector<uint8_t> status(static_cast<size_t>(world));
      std::vector<std::vector<uint8_t>> used(static_cast<size_t>(world), std::vector<uint8_t>(n, 0));
      std::vector<int64_t> expected_used(n, 0);
      for (int r = 0; r < world; ++r) {
        status[r] = statuses_all[world <= 4 ? (c >> (2 * r)) & 3 : (c + r) % 4];
        for (size_t i = 0; i < n; ++i) {
          used[r][i] = (r + i + c) % 2; // parameter i used on rank r or not
          expected_used[i] += used[r][i];
        }
      }
      const auto rows = rows_of(used, status, /*failed_bucket=*/1);
      std::vector<int64_t> used_by(n, -1);
      std::vector<uint8_t> decoded(static_cast<size_t>(world), 255);
      StatusRow::decode(rows.data(), n, world, used_by, decoded);
      CHECK(used_by == expected_used);
      CHECK(decoded == status);
      const bool ok = std::all_of(status.begin(), status.end(), [](uint8_t s) { return s == StatusRow::kOk; });
      CHECK(StatusRow::all_ok(decoded) == ok);
      const std::string who = StatusRow::describe_failures(decoded, rows.data(), n, "fp16",
                                                           [](int32_t b) { return b == 1 ? "fc.weight, fc.bias" : ""; });
      CHECK(who.empty() == ok);
      for (int r = 0; r < world; ++r) {
        const std::string rank = std::to_string(r);
        if (status[r] == StatusRow::kHookError) {
          CHECK_THAT(who, Contains("rank " + rank + "'s communication hook 'fp16' failed on bucket 1 (fc.weight, fc.bias)"));
        }
      }
      if (std::count(status.begin(), status.end(), StatusRow::kAbandoned) > 0) {
        CHECK_THAT(who, Contains("the backward of rank(s) " + StatusRow::ranks_with(status, StatusRow::kAbandoned) +
                                 " was interrupted"));
      }
      if (std::count(status.begin(), status.end(), StatusRow::kLocalError) > 0) {
        CHECK_THAT(who, Contains("rank(s) " + StatusRow::ranks_with(status, StatusRow::kLocalError) +
                                 " found an error in their backward"));
      }
    }
  }
  // The failed bucket travels only with kHookError.
  std::vector<uint8_t> row(n + StatusRow::kStatusBytes);
  StatusRow::encode(row.data(), n, StatusRow::kLocalError, 5);
  CHECK(StatusRow::failed_bucket_of(row.data() + n) == -1);
  StatusRow::encode(row.data(), n, StatusRow::kHookError, 5);
  CHECK(StatusRow::failed_bucket_of(row.data() + n) == 5);
  CHECK(StatusRow::ranks_with({0, 2, 2, 0, 2}, StatusRow::kAbandoned) == "1,2,4");
}

TEST_CASE("a hook failure on a bucket this rank does not have is named without its parameters", "[protocol]") {
  const std::vector<uint8_t> status = {StatusRow::kOk, StatusRow::kHookError};
  const auto rows = rows_of({{1, 1}, {1, 1}}, status, /*failed_bucket=*/9);
  const std::string who =
      StatusRow::describe_failures(status, rows.data(), 2, "powerSGD", [](int32_t) { return std::string(); });
  CHECK(who == "rank 1's communication hook 'powerSGD' failed on bucket 9 (that rank's message has the exception)");
}

TEST_CASE("Join flags: active ranks, the authoritative rank, the divisor and who joined", "[protocol]") {
  for (int world = 2; world <= 8; ++world) {
    CAPTURE(world);
    for (int mask = 0; mask < (1 << world); ++mask) {
      std::vector<std::pair<bool, bool>> flags;
      int active = 0;
      int highest = -1;
      std::string joined;
      for (int r = 0; r < world; ++r) {
        const bool is_active = (mask >> r) & 1;
        flags.emplace_back(is_active, is_active && r % 2 == 0); // even active ranks reduce
        if (is_active) {
          active += 1;
          highest = r;
        } else {
          joined += (joined.empty() ? "" : ",") + std::to_string(r);
        }
      }
      const auto t = JoinState::tally(flags);
      CHECK(t.active == active);
      CHECK(t.authoritative == highest);
      CHECK(t.joined == joined);
      bool reduces = false;
      for (int r = 0; r < world; r += 2) reduces = reduces || ((mask >> r) & 1);
      CHECK(t.reduces == reduces);
    }
  }
  JoinState join;
  join.arm(/*throw_on_early_termination=*/false, /*divide_by_initial_world_size=*/true);
  CHECK(join.divisor(2, 4) == 4);
  join.arm(false, /*divide_by_initial_world_size=*/false);
  CHECK(join.divisor(2, 4) == 2);
  CHECK(join.armed());
  join.terminate();
  CHECK_FALSE(join.armed());
  CHECK(join.terminated());
  CHECK_THAT(JoinState::early_termination_on_active("[ddp rank 0]", "1,3", 12),
             Contains("rank(s) 1,3 ran out of inputs before training step 12"));
  CHECK_THAT(JoinState::early_termination_on_joined("[ddp rank 3]", 2, 12),
             Contains("while 2 rank(s) still had data"));
}

TEST_CASE("unused report: names every-rank and some-rank parameters with the ranks, once per set", "[protocol]") {
  const std::vector<std::string> names = {"a", "b", "c"};
  ddp::Options options;
  for (int world = 2; world <= 8; ++world) {
    CAPTURE(world);
    UnusedReport report(names, 0, world);
    // "a" used everywhere, "b" nowhere, "c" on every rank but 1.
    std::vector<std::vector<uint8_t>> used(static_cast<size_t>(world), std::vector<uint8_t>{1, 0, 1});
    used[1][2] = 0;
    const auto rows = rows_of(used, std::vector<uint8_t>(static_cast<size_t>(world), StatusRow::kOk));
    const std::vector<int64_t> used_by = {world, 0, world - 1};
    auto message = report.message(used_by, rows.data(), {1, 0, 1}, 3, options);
    REQUIRE(message.has_value());
    CHECK_THAT(*message, Contains("on every rank (their .grad is left untouched): b"));
    CHECK_THAT(*message, Contains("on some ranks (they contributed zeros): c (ranks 1)"));
    CHECK_THAT(*message, Contains("find_unused_parameters = true"));
    // The same set again: not reported twice.
    CHECK_FALSE(report.message(used_by, rows.data(), {1, 0, 1}, 4, options).has_value());
    // Everything used: nothing to say.
    CHECK_FALSE(report.message({world, world, world}, rows.data(), {1, 1, 1}, 5, options).has_value());
  }
  // Later iterations' counts win; an earlier one arriving late does not overwrite them.
  UnusedReport report(names, 0, 2);
  report.record({2, 0, 1}, 5);
  report.record({2, 2, 2}, 4);
  CHECK(report.names(/*global=*/true) == std::vector<std::string>{"b"});
}

TEST_CASE("StepCheck over crafted peers: a skipped step is caught before any bucket launches, and sticks",
          "[protocol]") {
  for (int world : {2, 3, 8}) {
    CAPTURE(world);
    auto pg = std::make_shared<CraftedPeers>(0, world);
    ddp::ReducerStats stats;
    StepCheck check(pg, /*deferred=*/false, std::chrono::seconds(5), stats);
    check.count_step();
    pg->peer_rows.push_back(long_rows(headers(world, kReduction, 1, 0), world));
    check.exchange(Section::kReduction, /*wait=*/false);
    CHECK_FALSE(check.verified());
    check.verify();
    CHECK(check.verified());
    // Next step: the last peer is still at step 1 (it skipped a backward).
    check.reset_section();
    check.count_step();
    auto rows = headers(world, kReduction, 2, 0);
    rows[3 * (world - 1) + 1] = 1;
    pg->peer_rows.push_back(long_rows(rows, world));
    check.exchange(Section::kReduction, /*wait=*/false);
    CHECK_THROWS_WITH(check.verify(), Contains("training step 1") && Contains("out of step"));
    CHECK(check.broken());
    // Every later call throws the same error, without a collective.
    const int gathers = pg->gathers;
    CHECK_THROWS_AS(check.throw_if_broken(), ddp::ReductionError);
    CHECK(pg->gathers == gathers);
  }
}

TEST_CASE("StepCheck deferred: headers and flags are read once arrived, a peer's bad status stops the reducer",
          "[protocol]") {
  const int world = 3;
  const size_t n = 2;
  auto pg = std::make_shared<CraftedPeers>(1, world);
  ddp::ReducerStats stats;
  StepCheck check(pg, /*deferred=*/true, std::chrono::seconds(5), stats);
  StatusRow status(pg, n);
  std::vector<std::string> seen;
  check.set_flags_reader([&](const StepCheck::PendingRead& read) {
    std::vector<int64_t> used_by(n);
    std::vector<uint8_t> statuses(world);
    StatusRow::decode(read.host.data_ptr<uint8_t>(), n, world, used_by, statuses);
    if (!StatusRow::all_ok(statuses)) {
      check.fail_out_of_step(StatusRow::describe_failures(statuses, read.host.data_ptr<uint8_t>(), n, "?",
                                                          [](int32_t) { return std::string(); }),
                             /*paired_wrongly=*/false);
    }
    seen.push_back("flags of iteration " + std::to_string(read.iteration));
  });
  check.count_step();
  pg->peer_rows.push_back(long_rows(headers(world, kReduction, 1, 0), world));
  check.exchange(Section::kReduction);
  CHECK(check.verified()); // deferred: never waits
  auto ok_rows = rows_of({{1, 1}, {1, 1}, {1, 1}}, {0, 0, 0});
  pg->peer_rows.push_back(at::tensor(std::vector<int64_t>(ok_rows.begin(), ok_rows.end())).to(at::kByte).view({world, -1}));
  check.gather_deferred(StepCheck::PendingRead::Kind::kFlags, status.make_row(1, StatusRow::kOk), 0);
  check.drain(/*block=*/true);
  CHECK(seen == std::vector<std::string>{"flags of iteration 0"});
  // Rank 2 abandoned its backward in iteration 1: read later, it stops this rank too.
  check.count_step();
  pg->peer_rows.push_back(long_rows(headers(world, kReduction, 2, 0), world));
  check.exchange(Section::kReduction);
  auto bad_rows = rows_of({{1, 1}, {1, 1}, {0, 0}}, {0, 0, StatusRow::kAbandoned});
  pg->peer_rows.push_back(
      at::tensor(std::vector<int64_t>(bad_rows.begin(), bad_rows.end())).to(at::kByte).view({world, -1}));
  check.gather_deferred(StepCheck::PendingRead::Kind::kFlags, status.make_row(1, StatusRow::kOk), 1);
  CHECK_THROWS_WITH(check.drain(/*block=*/true), Contains("the backward of rank(s) 2 was interrupted"));
  CHECK(check.broken());
}

TEST_CASE("StatusRow over crafted peers: this rank's flags travel with its status", "[protocol]") {
  const int world = 4;
  const size_t n = 3;
  auto pg = std::make_shared<CraftedPeers>(2, world);
  StatusRow status(pg, n);
  auto peers = rows_of({{1, 0, 1}, {1, 0, 0}, {9, 9, 9}, {1, 0, 1}}, {0, 0, 0, 0});
  pg->peer_rows.push_back(at::tensor(std::vector<int64_t>(peers.begin(), peers.end())).to(at::kByte).view({world, -1}));
  status.issue({1, 1, 0}, StatusRow::kHookError, 4);
  REQUIRE(status.work());
  status.work()->wait();
  const uint8_t* rows = status.gathered();
  std::vector<int64_t> used_by(n);
  StatusRow::decode(rows, n, world, used_by, status.statuses());
  CHECK(used_by == std::vector<int64_t>{4, 1, 2});
  CHECK(status.statuses() == std::vector<uint8_t>{0, 0, StatusRow::kHookError, 0});
  CHECK(StatusRow::failed_bucket_of(rows + 2 * (n + StatusRow::kStatusBytes) + n) == 4);
  CHECK(StatusRow::ranks_without(rows, n, world, 2) == "1,2");
  // An interrupted backward: no parameter used here, status kAbandoned.
  pg->peer_rows.push_back(at::tensor(std::vector<int64_t>(peers.begin(), peers.end())).to(at::kByte).view({world, -1}));
  status.issue_abandoned();
  rows = status.gathered();
  StatusRow::decode(rows, n, world, used_by, status.statuses());
  CHECK(used_by == std::vector<int64_t>{3, 0, 2});
  CHECK(status.statuses() == std::vector<uint8_t>{0, 0, StatusRow::kAbandoned, 0});
}

TEST_CASE("BucketSkip: the bitmap, and a bucket skipped only when every rank has every member unused",
          "[protocol][skip]") {
  CHECK(BucketSkip::words_for(0) == 0);
  CHECK(BucketSkip::words_for(1) == 1);
  CHECK(BucketSkip::words_for(64) == 1);
  CHECK(BucketSkip::words_for(65) == 2);
  // Parameters 0, 63, 64 and 69 of 70: bits 0 and 63 of word 0, bits 0 and 5 of word 1.
  std::vector<char> unused(70, 0);
  unused[0] = unused[63] = unused[64] = unused[69] = 1;
  std::vector<int64_t> words(2, -1);
  BucketSkip::encode(unused, words);
  CHECK(static_cast<uint64_t>(words[0]) == 0x8000000000000001ULL);
  CHECK(words[1] == 0x21);
  for (size_t i = 0; i < unused.size(); ++i) CHECK(BucketSkip::bit(words.data(), i) == (unused[i] != 0));

  // Three ranks' records: 3 fields, then one word. Parameters 0-3: rank 0 leaves {1, 2, 3}
  // unused, rank 1 {2, 3}, rank 2 {0, 2, 3}.
  const size_t stride = 4;
  const std::vector<int64_t> records = {kReduction, 5, 0, 0b1110, kReduction, 5, 0, 0b1100,
                                        kReduction, 5, 0, 0b1101};
  CHECK(BucketSkip::unused_everywhere(records.data(), 3, stride, 3, {2}));
  CHECK(BucketSkip::unused_everywhere(records.data(), 3, stride, 3, {2, 3}));
  CHECK_FALSE(BucketSkip::unused_everywhere(records.data(), 3, stride, 3, {1})); // used on rank 1
  CHECK_FALSE(BucketSkip::unused_everywhere(records.data(), 3, stride, 3, {0})); // used on ranks 0 and 1
  CHECK_FALSE(BucketSkip::unused_everywhere(records.data(), 3, stride, 3, {1, 2, 3}));
  CHECK_FALSE(BucketSkip::unused_everywhere(records.data(), 2, stride, 3, {1})); // rank 1 still uses it

  // This rank's view: a bucket it does not leave entirely unused needs no header read.
  BucketSkip skip(/*enabled=*/true, 4);
  CHECK(skip.words() == 1);
  CHECK_FALSE(skip.locally_unused({2}));
  const int64_t* local = skip.set_local({0, 1, 1, 0});
  CHECK(local[0] == 0b0110);
  CHECK(skip.locally_unused({1, 2}));
  CHECK_FALSE(skip.locally_unused({2, 3}));
  skip.reset();
  CHECK_FALSE(skip.locally_unused({1}));
  BucketSkip off(/*enabled=*/false, 4);
  CHECK(off.words() == 0);
  off.set_local({1, 1, 1, 1});
  CHECK_FALSE(off.locally_unused({0}));
}

TEST_CASE("StepCheck with a bitmap: headers compare their fields only, and hand every rank's bitmap back",
          "[protocol][skip]") {
  const int world = 3;
  // Rank 1 of 3 with one bitmap word: records of 4 int64.
  for (bool deferred : {false, true}) {
    CAPTURE(deferred);
    auto pg = std::make_shared<CraftedPeers>(1, world);
    ddp::ReducerStats stats;
    StepCheck check(pg, deferred, std::chrono::seconds(5), stats, /*bitmap_words=*/1);
    CHECK(check.record_length() == 4);
    check.count_step();
    // Different bitmaps, same fields: in step.
    pg->peer_rows.push_back(long_rows({kReduction, 1, 0, 0b101, 0, 0, 0, 0, kReduction, 1, 0, 0b100}, world));
    const int64_t mine = 0b110;
    check.exchange(Section::kReduction, /*wait=*/false, &mine);
    const int64_t* records = check.section_records();
    REQUIRE(records != nullptr);
    CHECK(std::vector<int64_t>(records, records + 12) ==
          std::vector<int64_t>{kReduction, 1, 0, 0b101, kReduction, 1, 0, 0b110, kReduction, 1, 0, 0b100});
    CHECK(check.verified());
    if (deferred) check.drain(/*block=*/true); // reads the same header again: still in step
    CHECK_FALSE(check.broken());
    // A record shaped like a header without a bitmap (a Join exchange) gives the fields only.
    check.reset_section();
    pg->peer_rows.push_back(long_rows({kJoin, 1, 3, 0, kJoin, 1, 3, 0, kJoin, 1, 1, 0}, world));
    CHECK(check.gather_record(Section::kJoin, 3) ==
          std::vector<int64_t>{kJoin, 1, 3, kJoin, 1, 3, kJoin, 1, 1});
    // Next step: rank 2 is a step behind: section_records throws, in either mode.
    check.count_step();
    pg->peer_rows.push_back(long_rows({kReduction, 2, 0, 0, 0, 0, 0, 0, kReduction, 1, 0, 0}, world));
    check.exchange(Section::kReduction, /*wait=*/false, &mine);
    CHECK_THROWS_WITH(check.section_records(), Contains("out of step") && Contains("training step 1"));
    CHECK(check.broken());
  }
}

TEST_CASE("multi-fire bytes: used, late and runs in the used-flags row; used_by counts the used bit only",
          "[protocol]") {
  for (int64_t runs : {0, 1, 2, 3, 62, 63, 64, 1000}) {
    for (bool used : {false, true}) {
      for (bool late : {false, true}) {
        CAPTURE(runs, used, late);
        const uint8_t byte = MultiFire::encode(used, late, runs);
        CHECK(MultiFire::used(byte) == used);
        CHECK(MultiFire::late(byte) == late);
        CHECK(MultiFire::runs(byte) == std::min<int64_t>(runs, MultiFire::kMaxRuns));
      }
    }
  }
  // Crafted rows at world 2-8: rank r uses parameter i when (i + r) % 3 != 0, runs it
  // 1 + r times, and is late on parameter i == r only.
  const size_t n = 10;
  const size_t stride = n + StatusRow::kStatusBytes;
  for (int world = 2; world <= 8; ++world) {
    CAPTURE(world);
    std::vector<uint8_t> rows(stride * static_cast<size_t>(world), 0);
    std::vector<int64_t> expected_used(n, 0);
    for (int r = 0; r < world; ++r) {
      uint8_t* row = rows.data() + stride * static_cast<size_t>(r);
      for (size_t i = 0; i < n; ++i) {
        const bool used = (i + static_cast<size_t>(r)) % 3 != 0;
        row[i] = MultiFire::encode(used, used && i == static_cast<size_t>(r), used ? 1 + r : 0);
        expected_used[i] += used ? 1 : 0;
      }
      StatusRow::encode(row, n, StatusRow::kOk, -1);
    }
    std::vector<int64_t> used_by(n, -1);
    std::vector<uint8_t> statuses(static_cast<size_t>(world), 255);
    StatusRow::decode(rows.data(), n, world, used_by, statuses);
    CHECK(used_by == expected_used);
    CHECK(StatusRow::all_ok(statuses));
    std::vector<char> late(n, 7);
    const bool any = MultiFire::decode_late(rows.data(), n, world, stride, late);
    CHECK(any);
    for (size_t i = 0; i < n; ++i) {
      CAPTURE(i);
      // Late where some rank r == i used it: r = i < world and (2i) % 3 != 0.
      const bool expected = i < static_cast<size_t>(world) && (2 * i) % 3 != 0;
      CHECK((late[i] != 0) == expected);
    }
  }
}
