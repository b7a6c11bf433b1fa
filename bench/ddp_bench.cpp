// ddp_bench: step time of a trainer with libddp, against the same trainer without DDP
// and the naive per-parameter all-reduce loop, on one machine under mpirun.
//
//   mpirun -np 2 build/bench/ddp_bench                     # every model, CPU, table
//   torchrun --standalone --nproc-per-node 2 --no-python build/bench/ddp_bench --backend gloo
//   build/bench/ddp_bench --device cuda --backend c10d-nccl   # PyTorch's ProcessGroupNCCL
//   mpirun -np 2 build/bench/ddp_bench --model mlp --json out.json
//   mpirun -np 2 build/bench/ddp_bench --model mlp --sweep 0.25,1,4,16,64 --sweep-out sweep
//   mpirun -np 2 build/bench/ddp_bench --model resnet --mode ddp --bucket-cap-mb auto   # autotune
//   mpirun -np 2 build/bench/ddp_bench --model mlp --mode ddp --comm-hook allreduce,fp16,bf16,powersgd
//   scripts/cluster.sh mpirun -np 2 build/bench/ddp_bench --model mlp,resnet --link-dev eth0
//                                                          # across simulated hosts (docs/cluster.md)
//
// Modes run interleaved window by window (local, ddp, naive, local, ddp, ...) so that
// drift in the machine's speed hits them alike. Rank 0 prints; every rank computes.
#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "bench_models.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Config {
  std::vector<std::string> models{"mlp", "small", "convnet", "deepsup"};
  std::vector<std::string> modes{"local", "ddp", "naive"};
  int iterations = 30; // timed steps per mode
  int warmup = 5;
  int window = 5; // steps per timed window
  double bucket_cap_mb = 25.0;
  bool autotune = false;                  // --bucket-cap-mb auto: Options::bucket_cap_autotune
  std::vector<double> autotune_candidates; // empty: BucketCapAutotune's default
  int64_t autotune_warmup = -1, autotune_timed = -1; // -1: BucketCapAutotune's default
  double first_bucket_cap_mb = 1.0;
  double in_place_min_mb = -1.0;
  bool find_unused = false;
  bool grad_as_bucket_view = false;
  int threads = 1;
  std::string json_path;
  std::string device = "cpu";
  std::string backend = "auto";
  std::vector<double> sweep_caps;
  std::string sweep_out = "bench_sweep";
  int sweep_passes = 1;       // passes over the caps; each cap's figure is the median over them
  std::string sweep_label;    // appended to the sweep's title (e.g. the link)
  std::string timeline_path;
  std::string link_dev; // NIC whose byte counters are read around each timed window
  std::vector<std::string> comm_hooks; // each DDP mode also runs once per hook ("ddp+fp16")
  std::vector<std::string> reductions; // and once per reduction option ("ddp+reproducible")
  bool grad_checksum = false;          // print a checksum of every step's gradients
  std::string optimizer = "sgd";       // every mode's optimizer: sgd, adam
  int64_t powersgd_rank = 4;
  int64_t powersgd_start = 2; // within the warm-up: every timed step compresses
};

const char* const kHookNames = "allreduce, fp16, bf16, powersgd, noop";

[[noreturn]] void usage(int rc) {
  std::printf(
      "usage: mpirun -np N ddp_bench [options]   (or torchrun ... --no-python ddp_bench --backend gloo)\n"
      "  --model NAME[,NAME]     mlp, small, convnet, deepsup or all (default: all), resnet, multitask, sparse\n"
      "                          (not in all; sparse: a 1M x 64 embedding with sparse gradients and an MLP)\n"
      "  --mode MODE[,MODE]      local (no DDP), ddp, ddp_fu (ddp with find_unused_parameters),\n"
      "                          ddp_join (ddp inside an enabled ddp::Join that no rank leaves:\n"
      "                          the cost of Join's per-step agreement),\n"
      "                          naive (per-parameter all-reduce after backward) (default: local,ddp,naive)\n"
      "  --iterations N          timed steps per mode (default 30)\n"
      "  --warmup N              untimed steps per mode first (default 5)\n"
      "  --window N              steps per timed window; medians are over windows (default 5)\n"
      "  --bucket-cap-mb X       Options::bucket_cap_mb (default 25); auto: Options::bucket_cap_autotune, the\n"
      "                          warm-up going on until the cap is chosen (printed, and in the JSON)\n"
      "  --autotune-candidates C BucketCapAutotune::candidates_mb, comma-separated MiB (default 1,2,4,8,16,25)\n"
      "  --autotune-warmup N     BucketCapAutotune::warmup_iterations (default 2)\n"
      "  --autotune-iterations N BucketCapAutotune::iterations_per_candidate (default 6)\n"
      "  --first-bucket-cap-mb X Options::first_bucket_cap_mb (default 1)\n"
      "  --in-place-min-mb X     Options::in_place_min_mb (default -1: auto, 1 MiB on CPU; 0: off)\n"
      "  --find-unused           Options::find_unused_parameters = true\n"
      "  --grad-as-bucket-view   Options::gradient_as_bucket_view = true\n"
      "  --threads N             compute threads per rank (default 1)\n"
      "  --device cpu|cuda       where the model runs (cuda: libddp's nccl unless --backend c10d-nccl)\n"
      "  --backend NAME          mpi (under mpirun), gloo (under torchrun), nccl, c10d-nccl (PyTorch's NCCL group,\n"
      "                          in builds with DDP_WITH_C10D_NCCL) or auto (default)\n"
      "  --json PATH             also write the results as JSON\n"
      "  --sweep CAPS            step time against bucket cap (MiB, comma-separated): CSV + PNG\n"
      "  --sweep-out PREFIX      files of the sweep: PREFIX.csv, PREFIX.png (default bench_sweep)\n"
      "  --sweep-passes N        passes over the caps in turn; medians over passes (default 1)\n"
      "  --sweep-label TEXT      appended to the sweep's title (e.g. '2 hosts, 1 Gbit/s links')\n"
      "  --timeline PATH         write the DDP mode's Chrome-trace timeline (PATH.rank<R>.json)\n"
      "  --link-dev IFACE        bytes/s each mode moved through IFACE (/sys/class/net/IFACE), mean over ranks\n"
      "  --comm-hook NAME[,NAME] communication hooks: allreduce, fp16, bf16, powersgd, noop (default: none).\n"
      "                          Each DDP mode also runs once per hook, registered right after the wrapper is\n"
      "                          made, as its own mode (ddp+fp16, ...) next to the hookless one; the table adds\n"
      "                          the bytes each sends per step (ReducerStats::hook_bytes_per_iteration) and\n"
      "                          their ratio to plain all-reduce's. noop sends nothing: never for training\n"
      "  --reduction NAME[,NAME] Options for the sum: reproducible (Options::reproducible), wire-bf16, wire-fp16\n"
      "                          (Options::wire_dtype, float32 sums), no-skip (skip_all_reduce_unused_params\n"
      "                          off: buckets no rank used are all-reduced too). Like --comm-hook, each DDP mode\n"
      "                          also runs once per name, as its own mode (ddp+reproducible, ...), in the same run;\n"
      "                          overlap-opt steps the optimizer bucket by bucket during the backward\n"
      "                          (DistributedDataParallel::overlap_optimizer) instead of after it\n"
      "  --optimizer NAME        every mode's optimizer: sgd (default, lr 0.01) or adam (lr 1e-3)\n"
      "  --grad-checksum         rank 0 prints a checksum (FNV-1a of the bytes) of every step's gradients, per\n"
      "                          mode: with --reduction reproducible it stays the same across runs with other\n"
      "                          --bucket-cap-mb / --first-bucket-cap-mb / --in-place-min-mb / --grad-as-bucket-view\n"
      "  --powersgd-rank R       PowerSGDOptions::matrix_approximation_rank (default 4)\n"
      "  --powersgd-start N      PowerSGDOptions::start_powerSGD_iter (default 2: plain all-reduce for the\n"
      "                          first 2 steps, so with the default --warmup 5 every timed step compresses;\n"
      "                          a start past the warm-up times uncompressed steps too)\n");
  std::exit(rc);
}

std::vector<std::string> split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

Config parse(int argc, char** argv) {
  Config c;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "ddp_bench: %s needs a value\n", a.c_str());
        usage(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") usage(0);
    else if (a == "--model") c.models = value() == "all" ? c.models : split(argv[i]);
    else if (a == "--mode") c.modes = split(value());
    else if (a == "--iterations") c.iterations = std::stoi(value());
    else if (a == "--warmup") c.warmup = std::stoi(value());
    else if (a == "--window") c.window = std::stoi(value());
    else if (a == "--bucket-cap-mb") {
      const std::string v = value();
      if (v == "auto") c.autotune = true;
      else c.bucket_cap_mb = std::stod(v);
    } else if (a == "--autotune-candidates") {
      for (const auto& s : split(value())) c.autotune_candidates.push_back(std::stod(s));
    } else if (a == "--autotune-warmup") c.autotune_warmup = std::stoll(value());
    else if (a == "--autotune-iterations") c.autotune_timed = std::stoll(value());
    else if (a == "--first-bucket-cap-mb") c.first_bucket_cap_mb = std::stod(value());
    else if (a == "--in-place-min-mb") c.in_place_min_mb = std::stod(value());
    else if (a == "--find-unused") c.find_unused = true;
    else if (a == "--grad-as-bucket-view") c.grad_as_bucket_view = true;
    else if (a == "--threads") c.threads = std::stoi(value());
    else if (a == "--device") c.device = value();
    else if (a == "--backend") c.backend = value();
    else if (a == "--json") c.json_path = value();
    else if (a == "--sweep") {
      for (const auto& s : split(value())) c.sweep_caps.push_back(std::stod(s));
    } else if (a == "--sweep-out") c.sweep_out = value();
    else if (a == "--sweep-passes") c.sweep_passes = std::stoi(value());
    else if (a == "--sweep-label") c.sweep_label = value();
    else if (a == "--timeline") c.timeline_path = value();
    else if (a == "--link-dev") c.link_dev = value();
    else if (a == "--comm-hook") c.comm_hooks = split(value());
    else if (a == "--reduction") c.reductions = split(value());
    else if (a == "--grad-checksum") c.grad_checksum = true;
    else if (a == "--optimizer") c.optimizer = value();
    else if (a == "--powersgd-rank") c.powersgd_rank = std::stoll(value());
    else if (a == "--powersgd-start") c.powersgd_start = std::stoll(value());
    else {
      std::fprintf(stderr, "ddp_bench: unknown option %s\n", a.c_str());
      usage(2);
    }
  }
  if (c.iterations < 1 || c.window < 1 || c.warmup < 0 || c.threads < 1 || c.sweep_passes < 1) {
    std::fprintf(stderr, "ddp_bench: --iterations, --window, --threads and --sweep-passes must be >= 1, --warmup >= 0\n");
    usage(2);
  }
  for (const auto& m : c.modes) {
    if (m != "local" && m != "ddp" && m != "ddp_fu" && m != "ddp_join" && m != "naive") {
      std::fprintf(stderr, "ddp_bench: unknown mode '%s' (local, ddp, ddp_fu, ddp_join, naive)\n", m.c_str());
      usage(2);
    }
  }
  for (const auto& h : c.comm_hooks) {
    if (h != "allreduce" && h != "fp16" && h != "bf16" && h != "powersgd" && h != "noop") {
      std::fprintf(stderr, "ddp_bench: unknown communication hook '%s' (%s)\n", h.c_str(), kHookNames);
      usage(2);
    }
  }
  for (const auto& r : c.reductions) {
    if (r != "reproducible" && r != "wire-bf16" && r != "wire-fp16" && r != "no-skip" && r != "overlap-opt") {
      std::fprintf(stderr,
                   "ddp_bench: unknown reduction '%s' (reproducible, wire-bf16, wire-fp16, no-skip, overlap-opt)\n",
                   r.c_str());
      usage(2);
    }
  }
  if (c.optimizer != "sgd" && c.optimizer != "adam") {
    std::fprintf(stderr, "ddp_bench: unknown optimizer '%s' (sgd, adam)\n", c.optimizer.c_str());
    usage(2);
  }
  if (c.powersgd_rank < 1 || c.powersgd_start < 0) {
    std::fprintf(stderr, "ddp_bench: --powersgd-rank must be >= 1, --powersgd-start >= 0\n");
    usage(2);
  }
  if (c.autotune && (!c.sweep_caps.empty() || !c.comm_hooks.empty())) {
    std::fprintf(stderr, "ddp_bench: --bucket-cap-mb auto goes with neither --sweep nor --comm-hook\n");
    usage(2);
  }
  if (!c.comm_hooks.empty() && !c.sweep_caps.empty()) {
    std::fprintf(stderr, "ddp_bench: --sweep times plain ddp only; run it without --comm-hook\n");
    usage(2);
  }
  return c;
}

// Whether a variant is a --reduction name (else a --comm-hook name); sets its options.
bool apply_reduction(const std::string& name, ddp::Options& options) {
  if (name == "reproducible") options.reproducible(true);
  else if (name == "wire-bf16") options.wire_dtype(at::kBFloat16);
  else if (name == "wire-fp16") options.wire_dtype(at::kHalf);
  else if (name == "no-skip") options.skip_all_reduce_unused_params(false);
  else if (name == "overlap-opt") {} // not an option: the trainer overlaps its optimizer
  else return false;
  return true;
}

// FNV-1a over the bytes of every defined gradient, in parameter order.
uint64_t gradient_checksum(torch::nn::Module& module) {
  uint64_t hash = 1469598103934665603ULL;
  for (const auto& p : module.parameters()) {
    if (!p.grad().defined()) continue;
    const at::Tensor g = p.grad().contiguous().cpu();
    const auto* bytes = static_cast<const unsigned char*>(g.data_ptr());
    for (size_t k = 0; k < g.nbytes(); ++k) hash = (hash ^ bytes[k]) * 1099511628211ULL;
  }
  return hash;
}

// A new hook of the bench's name for it (each DDP wrapper its own: PowerSGD keeps state).
std::shared_ptr<ddp::CommHook> make_comm_hook(const Config& cfg, const std::string& name) {
  if (name == "allreduce") return ddp::hooks::allreduce();
  if (name == "fp16") return ddp::hooks::fp16_compress();
  if (name == "bf16") return ddp::hooks::bf16_compress();
  if (name == "noop") return ddp::hooks::noop();
  ddp::hooks::PowerSGDOptions options;
  options.matrix_approximation_rank(cfg.powersgd_rank);
  options.start_powerSGD_iter(cfg.powersgd_start);
  return ddp::hooks::powersgd(options);
}

double percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const double pos = q * (v.size() - 1);
  const size_t lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - lo);
}

// The mode of a label: "ddp+fp16" is mode ddp with the fp16 hook.
std::string base_mode(const std::string& label) { return label.substr(0, label.find('+')); }

// The modes that train through DistributedDataParallel (with or without a hook).
bool is_ddp_mode(const std::string& label) {
  const std::string mode = base_mode(label);
  return mode == "ddp" || mode == "ddp_fu" || mode == "ddp_join";
}

double ms_since(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

// One trainer: a model, its optimizer, the step, and the mode's communication.
struct Trainer {
  std::string mode;      // the label: the mode, and "+HOOK" with a communication hook
  std::string comm_hook; // the registered hook's name() ("" without one)
  std::function<void(int)> step; // one full training step of iteration i
  std::function<const ddp::Reducer*()> reducer = [] { return nullptr; };
  int64_t parameter_bytes = 0; // trainable parameters: what one step must all-reduce
  double wire_fraction = 1.0;  // of the bucket bytes, what goes on the wire (wire-bf16: 1/2)
  std::vector<double> window_ms;
  int64_t link_tx = 0, link_rx = 0; // bytes through --link-dev during the timed windows
  double link_s = 0;
};

// A NIC's byte counters (what crossed the link, headers included).
struct LinkCounters {
  int64_t tx = -1, rx = -1;
};

LinkCounters read_link(const std::string& dev) {
  LinkCounters c;
  std::ifstream("/sys/class/net/" + dev + "/statistics/tx_bytes") >> c.tx;
  std::ifstream("/sys/class/net/" + dev + "/statistics/rx_bytes") >> c.rx;
  return c;
}

struct Result {
  std::string model, mode;
  std::string comm_hook;          // CommHook::name(), "" without a hook
  int64_t bytes_sent_per_step = 0; // the hook's (hook_bytes_per_iteration), else bytes_per_step
  double median_ms = 0, p90_ms = 0, samples_per_s = 0;
  int64_t bytes_per_step = 0, buckets = 0;
  std::vector<int64_t> bucket_bytes;
  double hook_ms = 0, finalize_ms = 0, finalize_wait_ms = 0, walk_ms = 0, hidden_fraction = -1;
  double step_check_ms = 0; // headers + parameter checks: the cost of keeping the ranks in step
  int64_t walk_nodes = 0;
  double collectives_per_step = 0, skipped_per_step = 0; // issued by the reducer; buckets left out
  double comm_ms = -1;       // the collectives' time per step, from the timeline
  double autotuned_cap_mb = 0; // --bucket-cap-mb auto: the cap chosen (ReducerStats)
  int64_t autotune_steps = 0;  // and the synchronised steps it took
  double link_tx_bytes_per_s = 0, link_rx_bytes_per_s = 0; // --link-dev, mean over ranks
};

// Bytes a mode sends per step against what plain all-reduce sends for the same buckets.
double sent_ratio(const Result& r) {
  return r.bytes_per_step > 0 ? static_cast<double>(r.bytes_sent_per_step) / r.bytes_per_step : 0.0;
}

struct ModelSpec {
  std::function<std::shared_ptr<torch::nn::Module>()> make;
  int64_t batch;
};

// Naive loop (what C++ users write without libddp): after backward, one all-reduce per
// parameter, waited at once, then divide. No buckets, no overlap.
void naive_allreduce(ddp::ProcessGroup& pg, torch::nn::Module& m) {
  for (auto& p : m.parameters()) {
    if (!p.requires_grad()) continue;
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    // A sparse gradient (the `sparse` model) all-reduced as the dense table it stands for.
    if (p.grad().is_sparse()) p.mutable_grad() = p.grad().to_dense();
    pg.allreduce(p.grad())->wait();
    p.mutable_grad().div_(pg.size());
  }
}

template <typename Holder, typename Input, typename LossFn>
std::vector<Trainer> make_trainers(const Config& cfg, const std::shared_ptr<ddp::ProcessGroup>& pg,
                                   const ddp::Options& options, torch::Device device, Input input, LossFn loss_fn,
                                   std::vector<std::shared_ptr<void>>& keep) {
  std::vector<Trainer> trainers;
  // Each DDP mode once without a hook and once per hook, one after the other.
  std::vector<std::pair<std::string, std::string>> variants; // mode, hook
  for (const auto& mode : cfg.modes) {
    variants.emplace_back(mode, "");
    if (is_ddp_mode(mode)) {
      for (const auto& hook : cfg.comm_hooks) variants.emplace_back(mode, hook);
      for (const auto& reduction : cfg.reductions) variants.emplace_back(mode, reduction);
    }
  }
  for (const auto& [mode, hook] : variants) {
    torch::manual_seed(1);
    auto net = std::make_shared<Holder>();
    (*net)->to(device);
    std::shared_ptr<torch::optim::Optimizer> opt;
    if (cfg.optimizer == "adam") {
      opt = std::make_shared<torch::optim::Adam>((*net)->parameters(), torch::optim::AdamOptions(1e-3));
    } else {
      opt = std::make_shared<torch::optim::SGD>((*net)->parameters(), torch::optim::SGDOptions(0.01));
    }
    keep.push_back(net);
    keep.push_back(opt);
    Trainer t;
    t.mode = hook.empty() ? mode : mode + "+" + hook;
    for (const auto& p : (*net)->parameters()) {
      if (p.requires_grad()) t.parameter_bytes += p.numel() * p.element_size();
    }
    if (is_ddp_mode(mode)) {
      ddp::Options mode_options = options;
      if (mode == "ddp_fu") mode_options.find_unused_parameters(true);
      const bool reduction = apply_reduction(hook, mode_options);
      if (mode_options.wire_dtype()) {
        t.wire_fraction = static_cast<double>(c10::elementSize(*mode_options.wire_dtype())) / sizeof(float);
      }
      ddp::DistributedDataParallel<typename Holder::Impl> model(net->ptr(), pg, mode_options);
      keep.push_back(model.ptr());
      if (!hook.empty() && !reduction) {
        auto comm_hook = make_comm_hook(cfg, hook);
        t.comm_hook = comm_hook->name();
        model->register_comm_hook(std::move(comm_hook));
      }
      if (mode == "ddp_join") {
        // Armed for the whole run and joined when `keep` is released (every rank at once):
        // each step pays Join's agreement on the active ranks. Destroyed before the model.
        struct Joined {
          std::shared_ptr<void> model;
          std::unique_ptr<ddp::Join<typename Holder::Impl>> join;
        };
        auto joined = std::make_shared<Joined>();
        joined->join = std::make_unique<ddp::Join<typename Holder::Impl>>(model);
        joined->model = model.ptr();
        keep.push_back(joined);
      }
      const bool checksum = cfg.grad_checksum && pg->rank() == 0;
      if (hook == "overlap-opt") {
        // The updates run in the backward, bucket by bucket; step() finishes the rest.
        auto overlapped = model->overlap_optimizer(opt);
        t.step = [model, overlapped, input, loss_fn](int i) mutable {
          overlapped->zero_grad();
          loss_fn(model(input), i).backward();
          overlapped->step();
        };
        t.reducer = [model] { return &model->reducer(); };
        trainers.push_back(std::move(t));
        continue;
      }
      t.step = [model, opt, input, loss_fn, checksum, label = t.mode](int i) mutable {
        opt->zero_grad();
        loss_fn(model(input), i).backward();
        if (checksum) {
          std::printf("[grad-checksum] %s step %d: %016llx\n", label.c_str(), i,
                      static_cast<unsigned long long>(gradient_checksum(*model)));
        }
        opt->step();
      };
      t.reducer = [model] { return &model->reducer(); };
    } else {
      const bool naive = mode == "naive";
      t.step = [net, opt, input, loss_fn, naive, pg](int i) {
        opt->zero_grad();
        loss_fn((*net)->forward(input), i).backward();
        if (naive) naive_allreduce(*pg, **net);
        opt->step();
      };
    }
    trainers.push_back(std::move(t));
  }
  return trainers;
}

// Fraction of the collectives' time that ran before backward's compute ended (finalize
// start): communication hidden behind computation. `comm_ms` gets the collectives' time
// per step (they run one after another on the communication thread). The collectives are
// the reducer's bucket all-reduces or, with a communication hook, the hook's (PowerSGD's
// Q all-reduces run in finalize, so they count as not hidden).
double hidden_fraction(const ddp::Timeline& timeline, double* comm_ms = nullptr) {
  std::map<int64_t, Clock::time_point> finalize_start;
  for (const auto& e : timeline.events()) {
    if (e.kind == ddp::Timeline::Kind::kFinalize) finalize_start[e.iteration] = e.start;
  }
  double total = 0, hidden = 0;
  for (const auto& e : timeline.events()) {
    const bool collective =
        e.kind == ddp::Timeline::Kind::kCollective || e.kind == ddp::Timeline::Kind::kHookCollective;
    if (!collective || !finalize_start.count(e.iteration)) continue;
    const double d = std::chrono::duration<double>(e.end - e.start).count();
    const auto cut = std::min(e.end, finalize_start[e.iteration]);
    total += d;
    if (cut > e.start) hidden += std::chrono::duration<double>(cut - e.start).count();
  }
  // No collective at all (the timeline off, or a CUDA step whose ends are not known on the host): unknown.
  if (comm_ms != nullptr) {
    *comm_ms = finalize_start.empty() || total == 0 ? -1 : 1000.0 * total / finalize_start.size();
  }
  return total > 0 ? hidden / total : -1;
}

struct Bench {
  Config cfg;
  std::shared_ptr<ddp::ProcessGroup> pg;
  torch::Device device;
  bool root;

  // A progress line on a terminal; nothing when stderr is a file or a pipe (CI logs).
  void progress(const std::string& what) const {
    if (root && isatty(STDERR_FILENO)) {
      std::fprintf(stderr, "\r[ddp_bench] %-70s", what.c_str());
      std::fflush(stderr);
    }
  }

  std::vector<Trainer> trainers_for(const std::string& model, const ddp::Options& options,
                                    std::vector<std::shared_ptr<void>>& keep, int64_t& batch) {
    using namespace ddp::bench;
    const auto f = torch::TensorOptions().device(device);
    torch::manual_seed(100 + pg->rank()); // every rank its own data
    if (model == "mlp") {
      batch = 32;
      auto x = torch::randn({batch, 1024}, f);
      auto y = torch::randint(1024, {batch}, f.dtype(torch::kLong));
      return make_trainers<Mlp>(cfg, pg, options, device, x,
                                [y](torch::Tensor out, int) { return torch::nn::functional::cross_entropy(out, y); },
                                keep);
    }
    if (model == "small") {
      batch = 64;
      auto x = torch::randn({batch, 32}, f);
      return make_trainers<Small>(cfg, pg, options, device, x, [](torch::Tensor out, int) { return out.pow(2).mean(); },
                                  keep);
    }
    if (model == "convnet") {
      batch = 16;
      auto x = torch::randn({batch, 3, 32, 32}, f);
      auto y = torch::randint(10, {batch}, f.dtype(torch::kLong));
      return make_trainers<ConvNet>(
          cfg, pg, options, device, x,
          [y](torch::Tensor out, int) { return torch::nn::functional::cross_entropy(out, y); }, keep);
    }
    if (model == "resnet") {
      batch = kResNetBatch;
      auto x = torch::randn({batch, 3, 32, 32}, f);
      auto y = torch::randint(10, {batch}, f.dtype(torch::kLong));
      return make_trainers<ResNet>(
          cfg, pg, options, device, x,
          [y](torch::Tensor out, int) { return torch::nn::functional::cross_entropy(out, y); }, keep);
    }
    if (model == "multitask") {
      batch = 32;
      auto x = torch::randn({batch, 256}, f);
      auto y = torch::randint(10, {batch}, f.dtype(torch::kLong));
      // Task B is off for the whole run on every rank (an epoch of task A only).
      return make_trainers<MultiTask>(
          cfg, pg, options, device, x,
          [y](torch::Tensor out, int) { return torch::nn::functional::cross_entropy(out, y); }, keep);
    }
    if (model == "sparse") {
      batch = 32;
      // Each rank looks up its own rows (seeded by rank above), with repeats across ranks.
      auto ids = torch::randint(kSparseRows, {batch, kSparseBag}, f.dtype(torch::kLong));
      auto y = torch::randint(10, {batch}, f.dtype(torch::kLong));
      return make_trainers<SparseRec>(
          cfg, pg, options, device, ids,
          [y](torch::Tensor out, int) { return torch::nn::functional::cross_entropy(out, y); }, keep);
    }
    if (model == "deepsup") {
      batch = 32;
      auto x = torch::randn({batch, 256}, f);
      auto y = torch::randint(10, {batch}, f.dtype(torch::kLong));
      // Heads 0..4 rotate in and out of the loss; head 5 is returned but never used.
      return make_trainers<DeepSup>(cfg, pg, options, device, x,
                                    [y](std::vector<torch::Tensor> outs, int i) {
                                      torch::Tensor loss = torch::nn::functional::cross_entropy(outs[4], y);
                                      for (int k = 0; k < 4; ++k) {
                                        if ((i + k) % 3 != 0) loss = loss + 0.3 * torch::nn::functional::cross_entropy(outs[k], y);
                                      }
                                      return loss;
                                    },
                                    keep);
    }
    if (root) std::fprintf(stderr, "ddp_bench: unknown model '%s' (mlp, small, convnet, deepsup, multitask, resnet, sparse)\n", model.c_str());
    std::exit(2);
  }

  ddp::Options options(double cap_mb) const {
    ddp::Options o;
    o.bucket_cap_mb(cap_mb);
    o.first_bucket_cap_mb(cfg.first_bucket_cap_mb);
    o.in_place_min_mb(cfg.in_place_min_mb);
    o.find_unused_parameters(cfg.find_unused);
    o.gradient_as_bucket_view(cfg.grad_as_bucket_view);
    if (cfg.autotune) {
      ddp::BucketCapAutotune tune;
      if (!cfg.autotune_candidates.empty()) tune.candidates_mb(cfg.autotune_candidates);
      if (cfg.autotune_warmup >= 0) tune.warmup_iterations(cfg.autotune_warmup);
      if (cfg.autotune_timed >= 0) tune.iterations_per_candidate(cfg.autotune_timed);
      o.bucket_cap_autotune(tune);
    }
    return o;
  }

  void sync_device() const {
    if (device.is_cuda()) pg->barrier(); // the barrier's wait orders after queued GPU work
  }

  std::vector<Result> run_model(const std::string& model, double cap_mb) {
    std::vector<std::shared_ptr<void>> keep;
    int64_t batch = 0;
    auto trainers = trainers_for(model, options(cap_mb), keep, batch);
    int step = 0;
    for (auto& t : trainers) {
      for (int i = 0; i < cfg.warmup; ++i) {
        progress(model + ": warm-up " + t.mode);
        t.step(step++);
      }
      // --bucket-cap-mb auto: the warm-up goes on until the cap is chosen, so that every
      // timed step runs with it (the same number of steps on every rank: the choice is
      // made in the same step everywhere).
      const ddp::Reducer* r = t.reducer();
      while (cfg.autotune && r != nullptr && r->stats().autotuned_bucket_cap_mb == 0) {
        progress(model + ": autotune " + t.mode);
        t.step(step++);
      }
    }
    std::map<std::string, ddp::ReducerStats> before;
    for (auto& t : trainers) {
      if (auto* r = t.reducer()) before[t.mode] = r->stats();
    }
    const int windows = std::max(1, cfg.iterations / cfg.window);
    for (int w = 0; w < windows; ++w) {
      for (auto& t : trainers) {
        progress(model + ": window " + std::to_string(w + 1) + "/" + std::to_string(windows) + " " + t.mode);
        pg->barrier();
        const LinkCounters link_before = cfg.link_dev.empty() ? LinkCounters{} : read_link(cfg.link_dev);
        const auto start = Clock::now();
        for (int i = 0; i < cfg.window; ++i) t.step(step++);
        sync_device();
        const double window_ms = ms_since(start);
        t.window_ms.push_back(window_ms / cfg.window);
        if (!cfg.link_dev.empty()) {
          const LinkCounters link_after = read_link(cfg.link_dev);
          t.link_tx += link_after.tx - link_before.tx;
          t.link_rx += link_after.rx - link_before.rx;
          t.link_s += window_ms / 1000.0;
        }
      }
    }
    std::vector<Result> results;
    for (auto& t : trainers) {
      Result r;
      r.model = model;
      r.mode = t.mode;
      r.comm_hook = t.comm_hook;
      r.median_ms = percentile(t.window_ms, 0.5);
      r.p90_ms = percentile(t.window_ms, 0.9);
      r.samples_per_s = r.median_ms > 0 ? batch * pg->size() * 1000.0 / r.median_ms : 0;
      if (!cfg.link_dev.empty()) {
        auto rates = torch::tensor({t.link_tx / t.link_s, t.link_rx / t.link_s}, torch::kDouble).to(device);
        pg->allreduce(rates)->wait();
        rates = rates.cpu() / pg->size();
        r.link_tx_bytes_per_s = rates[0].item<double>();
        r.link_rx_bytes_per_s = rates[1].item<double>();
      }
      if (const ddp::Reducer* red = t.reducer()) {
        const auto& s = red->stats();
        const double steps = std::max<int64_t>(1, s.iterations - before[t.mode].iterations);
        r.bytes_per_step = s.bytes_per_iteration;
        // Less the buckets no rank used (skip_all_reduce_unused_params), per timed step.
        const double skipped_bytes = (s.bytes_skipped - before[t.mode].bytes_skipped) / steps;
        r.bytes_sent_per_step =
            t.comm_hook.empty()
                ? static_cast<int64_t>((static_cast<double>(s.bytes_per_iteration) - skipped_bytes) * t.wire_fraction)
                : s.hook_bytes_per_iteration;
        // Sparse gradients (the `sparse` model): the padded rows this rank sent, last step.
        r.bytes_sent_per_step += s.sparse_bytes_per_iteration;
        r.buckets = s.buckets;
        r.bucket_bytes = red->bucket_bytes();
        r.hook_ms = (s.hook_ns - before[t.mode].hook_ns) / 1e6 / steps;
        r.finalize_ms = (s.finalize_ns - before[t.mode].finalize_ns) / 1e6 / steps;
        r.finalize_wait_ms = (s.finalize_wait_ns - before[t.mode].finalize_wait_ns) / 1e6 / steps;
        r.walk_ms = (s.graph_walk_ns - before[t.mode].graph_walk_ns) / 1e6 / steps;
        r.step_check_ms = (s.step_check_ns - before[t.mode].step_check_ns) / 1e6 / steps;
        r.walk_nodes = s.graph_walk_nodes;
        r.autotuned_cap_mb = s.autotuned_bucket_cap_mb;
        r.autotune_steps = s.autotune_iterations;
        r.collectives_per_step = (s.collectives - before[t.mode].collectives) / steps;
        r.skipped_per_step = (s.buckets_skipped - before[t.mode].buckets_skipped) / steps;
        // Overlap from a few extra steps with the timeline on (off while timing).
        auto* mutable_reducer = const_cast<ddp::Reducer*>(red);
        mutable_reducer->set_timeline_enabled(true);
        for (int i = 0; i < 5; ++i) t.step(step++);
        r.hidden_fraction = hidden_fraction(red->timeline(), &r.comm_ms);
        if (!cfg.timeline_path.empty()) mutable_reducer->write_timeline(cfg.timeline_path);
        mutable_reducer->set_timeline_enabled(false);
      } else {
        r.bytes_per_step = t.mode == "naive" ? t.parameter_bytes : 0;
        r.bytes_sent_per_step = r.bytes_per_step;
      }
      results.push_back(r);
    }
    return results;
  }

  // One all-reduce of `bytes` against the same bytes in `bucket_bytes` pieces issued
  // back to back: what bucketing costs or buys in the communication library alone.
  std::pair<double, double> allreduce_costs(int64_t bytes, const std::vector<int64_t>& bucket_bytes) {
    const auto f = torch::TensorOptions().device(device);
    auto whole = torch::ones({std::max<int64_t>(1, bytes / 4)}, f);
    std::vector<torch::Tensor> pieces;
    for (auto b : bucket_bytes) pieces.push_back(torch::ones({std::max<int64_t>(1, b / 4)}, f));
    std::vector<double> raw, bucketed;
    for (int rep = 0; rep < 12; ++rep) {
      pg->barrier();
      auto t0 = Clock::now();
      pg->allreduce(whole)->wait();
      sync_device();
      if (rep >= 2) raw.push_back(ms_since(t0));
      pg->barrier();
      t0 = Clock::now();
      std::vector<std::shared_ptr<ddp::Work>> works;
      for (auto& p : pieces) works.push_back(pg->allreduce(p));
      for (auto& w : works) w->wait();
      sync_device();
      if (rep >= 2) bucketed.push_back(ms_since(t0));
    }
    return {percentile(raw, 0.5), percentile(bucketed, 0.5)};
  }
};

// The OMPI_MCA_* settings of this rank (sorted), OMP_NUM_THREADS and libddp's thread priority.
std::string mpi_settings() {
  std::vector<std::string> set;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string kv = *e;
    // mpirun's own bookkeeping for its processes (OMPI_MCA_orte_*, ess, pmix, ...) is left out.
    bool internal = false;
    for (const char* p : {"OMPI_MCA_orte_", "OMPI_MCA_ess", "OMPI_MCA_pmix", "OMPI_MCA_shmem_", "OMPI_MCA_initial_wdir",
                          "OMPI_MCA_mpi_oversubscribe="}) {
      internal = internal || kv.rfind(p, 0) == 0;
    }
    if ((kv.rfind("OMPI_MCA_", 0) == 0 && !internal) || kv.rfind("OMP_NUM_THREADS=", 0) == 0 ||
        kv.rfind("DDP_COMM_THREAD_PRIORITY=", 0) == 0) {
      set.push_back(kv);
    }
  }
  std::sort(set.begin(), set.end());
  std::string out;
  for (const auto& kv : set) out += (out.empty() ? "" : " ") + kv;
  return out.empty() ? "(OpenMPI defaults)" : out;
}

} // namespace

int main(int argc, char** argv) {
  Config cfg = parse(argc, argv);
  torch::set_num_threads(cfg.threads);
  const torch::Device device(cfg.device == "cuda" ? torch::kCUDA : torch::kCPU);
  std::shared_ptr<ddp::ProcessGroup> pg;
  try {
    pg = ddp::init_process_group(cfg.backend, device);
  } catch (const ddp::Error& e) {
    std::fprintf(stderr, "ddp_bench: %s\n", e.what());
    return 1;
  }
  if (!cfg.link_dev.empty() && read_link(cfg.link_dev).tx < 0) {
    std::fprintf(stderr, "ddp_bench: --link-dev %s: cannot read /sys/class/net/%s/statistics/tx_bytes\n",
                 cfg.link_dev.c_str(), cfg.link_dev.c_str());
    return 2;
  }
  Bench bench{cfg, pg, device, pg->rank() == 0};
  const bool root = pg->rank() == 0;
  if (root) {
    std::printf("ddp_bench: %d ranks, backend %s, device %s, %d compute thread(s) per rank%s, torch threads pinned "
                "with torch::set_num_threads\n",
                pg->size(), pg->backend().c_str(), cfg.device.c_str(), cfg.threads,
                cfg.threads == 1 ? " (one per rank: set OMP_NUM_THREADS=1 too)" : "");
    std::printf("MPI settings: %s\n", mpi_settings().c_str());
    std::printf("optimizer: %s\n", cfg.optimizer == "adam" ? "torch::optim::Adam(lr 1e-3)" : "torch::optim::SGD(lr 0.01)");
    std::printf("options: bucket_cap_mb=%s first_bucket_cap_mb=%g in_place_min_mb=%g find_unused_parameters=%d "
                "gradient_as_bucket_view=%d; %d timed steps per mode in windows of %d, %d warm-up\n",
                cfg.autotune ? "auto (Options::bucket_cap_autotune)" : fmt::format("{:g}", cfg.bucket_cap_mb).c_str(),
                cfg.first_bucket_cap_mb, cfg.in_place_min_mb, cfg.find_unused,
                cfg.grad_as_bucket_view, cfg.iterations, cfg.window, cfg.warmup);
    if (!cfg.comm_hooks.empty()) {
      std::string names;
      for (const auto& h : cfg.comm_hooks) names += (names.empty() ? "" : ",") + h;
      const bool powersgd = std::count(cfg.comm_hooks.begin(), cfg.comm_hooks.end(), "powersgd") > 0;
      std::printf("communication hooks: %s (each DDP mode once per hook, and once without)%s\n", names.c_str(),
                  !powersgd ? ""
                            : fmt::format("; powersgd matrix_approximation_rank={} start_powerSGD_iter={}{}",
                                          cfg.powersgd_rank, cfg.powersgd_start,
                                          cfg.powersgd_start > cfg.warmup
                                              ? " (past the warm-up: some timed steps do not compress)"
                                              : "")
                                  .c_str());
    }
  }

  if (!cfg.sweep_caps.empty()) {
    cfg.modes = {"ddp"};
    bench.cfg = cfg;
    // Passes over the caps in turn (0.25, 1, 4, ..., 0.25, 1, 4, ...), each cap's figures the
    // median over its passes, so that drift and the first point's warm-up hit every cap.
    struct Row {
      double cap;
      std::vector<double> median, p90, hidden, comm, link;
      int64_t buckets = 0;
    };
    auto mid = [](const std::vector<double>& v) { return percentile(v, 0.5); };
    for (const auto& model : cfg.models) {
      std::vector<Row> rows;
      for (double cap : cfg.sweep_caps) rows.push_back(Row{cap, {}, {}, {}, {}, {}});
      for (int pass = 0; pass < cfg.sweep_passes; ++pass) {
        for (auto& row : rows) {
          bench.progress(model + ": sweep pass " + std::to_string(pass + 1) + " cap " + fmt::format("{:g}", row.cap));
          auto r = bench.run_model(model, row.cap).front();
          row.median.push_back(r.median_ms);
          row.p90.push_back(r.p90_ms);
          row.hidden.push_back(r.hidden_fraction);
          row.comm.push_back(r.comm_ms);
          row.link.push_back(r.link_tx_bytes_per_s);
          row.buckets = r.buckets;
        }
      }
      if (root) {
        if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%90s\r", "");
        const std::string csv = cfg.sweep_out + ".csv";
        std::ofstream out(csv);
        out << "bucket_cap_mb,median_ms,p90_ms,buckets,hidden_fraction,comm_ms,link_tx_bytes_per_s\n";
        std::printf("\nbucket-cap sweep, model %s, %d pass(es), medians over passes%s\n%14s %12s %10s %8s %9s %9s %12s\n",
                    model.c_str(), cfg.sweep_passes, cfg.sweep_label.empty() ? "" : (", " + cfg.sweep_label).c_str(),
                    "bucket_cap_mb", "median ms", "p90 ms", "buckets", "hidden %", "comm ms",
                    cfg.link_dev.empty() ? "" : "link Gbit/s");
        for (const auto& row : rows) {
          out << row.cap << "," << mid(row.median) << "," << mid(row.p90) << "," << row.buckets << ","
              << mid(row.hidden) << "," << mid(row.comm) << "," << mid(row.link) << "\n";
          std::printf("%14g %12.2f %10.2f %8lld %9.0f %9.2f %12s\n", row.cap, mid(row.median), mid(row.p90),
                      static_cast<long long>(row.buckets), 100 * mid(row.hidden), mid(row.comm),
                      cfg.link_dev.empty() ? "" : fmt::format("{:.3f}", mid(row.link) * 8 / 1e9).c_str());
        }
        out.close();
        const std::string png = cfg.sweep_out + ".png";
        const std::string title = "libddp step time vs bucket cap, " + model + ", " + std::to_string(pg->size()) +
                                  " ranks" + (cfg.sweep_label.empty() ? "" : ", " + cfg.sweep_label);
        const std::string plot =
            "gnuplot -e \"set terminal pngcairo size 800,480 noenhanced; set output '" + png +
            "'; set datafile separator ','; set logscale x 2; set xlabel 'bucket cap (MiB)'; "
            "set ylabel 'step time (ms)'; set y2label 'communication hidden behind backward (%)'; "
            "set yrange [0:*]; set y2range [0:100]; set ytics nomirror; set y2tics; set title '" + title +
            "'; set key right center; plot '" + csv +
            "' skip 1 using 1:2 with linespoints lw 2 title 'median', '' skip 1 using 1:3 with linespoints "
            "title 'p90', '' skip 1 using 1:(100*\\$5) axes x1y2 with linespoints dt 2 title 'hidden % (right)'\" "
            "2>/dev/null";
        const bool plotted = std::system("command -v gnuplot >/dev/null 2>&1") == 0 && std::system(plot.c_str()) == 0;
        std::printf("wrote %s%s\n", csv.c_str(), plotted ? (" and " + png).c_str() : " (no gnuplot: no PNG)");
      }
    }
    return 0;
  }

  std::vector<Result> all;
  std::vector<std::string> extra_json;
  for (const auto& model : cfg.models) {
    auto results = bench.run_model(model, cfg.bucket_cap_mb);
    const Result* local = nullptr;
    const Result* ddp_r = nullptr;
    for (const auto& r : results) {
      if (r.mode == "local") local = &r;
      if (r.mode == "ddp" || (is_ddp_mode(r.mode) && ddp_r == nullptr)) ddp_r = &r;
    }
    double raw_ms = -1, bucketed_ms = -1;
    if (ddp_r != nullptr) {
      std::tie(raw_ms, bucketed_ms) = bench.allreduce_costs(ddp_r->bytes_per_step, ddp_r->bucket_bytes);
    }
    if (root) {
      if (isatty(STDERR_FILENO)) std::fprintf(stderr, "\r%90s\r", "");
      std::printf("\nmodel %s (batch per rank as in bench_models.h)\n", model.c_str());
      // With --comm-hook: wider mode labels ("ddp+powersgd"), and the bytes each mode sends.
      const bool hooks = !cfg.comm_hooks.empty() || !cfg.reductions.empty();
      int mode_width = 6;
      for (const auto& r : results) mode_width = std::max(mode_width, static_cast<int>(r.mode.size()));
      std::printf("%-*s %10s %9s %11s %10s %10s %8s %9s %11s %8s %9s%s\n", mode_width, "mode", "median ms", "p90 ms",
                  "samples/s", "overhead", "MiB/step", "buckets", "hooks ms", "finalize ms", "walk ms", "hidden %",
                  hooks ? fmt::format(" {:>10} {:>12}", "sent MiB", "vs allreduce").c_str() : "");
      for (const auto& r : results) {
        const double overhead = local ? (r.median_ms / local->median_ms - 1.0) * 100.0 : 0.0;
        const bool reducer = is_ddp_mode(r.mode);
        auto cell = [reducer](double v, const char* f) { return reducer ? fmt::format(fmt::runtime(f), v) : "-"; };
        const std::string sent_mib =
            r.mode == "local" ? "-" : fmt::format("{:.3f}", r.bytes_sent_per_step / 1048576.0);
        const std::string sent =
            !hooks ? ""
                   : fmt::format(" {:>10} {:>12}", sent_mib,
                                 r.bytes_per_step > 0 ? fmt::format("{:.4f}", sent_ratio(r)) : "-");
        std::printf("%-*s %10.2f %9.2f %11.0f %9.0f%% %10.2f %8s %9s %11s %8s %9s%s\n", mode_width, r.mode.c_str(),
                    r.median_ms, r.p90_ms, r.samples_per_s, overhead, r.bytes_per_step / 1048576.0,
                    cell(static_cast<double>(r.buckets), "{:.0f}").c_str(), cell(r.hook_ms, "{:.2f}").c_str(),
                    cell(r.finalize_ms, "{:.2f}").c_str(), cell(r.walk_ms, "{:.3f}").c_str(),
                    reducer && r.hidden_fraction >= 0 ? fmt::format("{:.0f}", r.hidden_fraction * 100).c_str() : "-",
                    sent.c_str());
      }
      for (const auto& r : results) {
        if (!is_ddp_mode(r.mode) || (r.skipped_per_step == 0 && cfg.reductions.empty())) continue;
        std::printf("collectives (%s): %.2f per step issued by the reducer, %.2f bucket all-reduces skipped per step\n",
                    r.mode.c_str(), r.collectives_per_step, r.skipped_per_step);
      }
      for (const auto& r : results) {
        if (r.comm_hook.empty()) continue;
        // The same mode without a hook, run in the same windows: the baseline.
        const Result* plain = nullptr;
        for (const auto& p : results) {
          if (p.mode == base_mode(r.mode)) plain = &p;
        }
        const double ratio = sent_ratio(r);
        std::printf("comm hook (%s): %s: %.3f MiB sent per step = %.4f x all-reduce's %.3f MiB (%s)%s\n",
                    r.mode.c_str(), r.comm_hook.c_str(), r.bytes_sent_per_step / 1048576.0, ratio,
                    r.bytes_per_step / 1048576.0,
                    ratio <= 0      ? "nothing sent"
                    : ratio > 0.999 ? "the same bytes"
                                    : fmt::format("{:.1f}x fewer bytes", 1.0 / ratio).c_str(),
                    plain != nullptr && plain->median_ms > 0
                        ? fmt::format("; step {:.2f} x {}'s", r.median_ms / plain->median_ms, plain->mode).c_str()
                        : "");
      }
      for (const auto& r : results) {
        if (is_ddp_mode(r.mode) && r.median_ms > 0) {
          std::printf("step check (%s): %.3f ms per step keeping the ranks in step (section headers, parameter "
                      "checks) = %.2f%% of the step\n",
                      r.mode.c_str(), r.step_check_ms, 100.0 * r.step_check_ms / r.median_ms);
        }
      }
      for (const auto& r : results) {
        if (!cfg.link_dev.empty()) {
          std::printf("link %s (%s): tx %.1f MB/s, rx %.1f MB/s per rank (%.3f / %.3f Gbit/s)%s\n",
                      cfg.link_dev.c_str(), r.mode.c_str(), r.link_tx_bytes_per_s / 1e6, r.link_rx_bytes_per_s / 1e6,
                      r.link_tx_bytes_per_s * 8 / 1e9, r.link_rx_bytes_per_s * 8 / 1e9,
                      r.comm_ms >= 0 ? fmt::format("; collectives {:.2f} ms/step (timeline)", r.comm_ms).c_str() : "");
        }
      }
      for (const auto& r : results) {
        if (r.autotuned_cap_mb > 0) {
          std::printf("bucket_cap_autotune (%s): chose bucket_cap_mb=%g after %lld synchronised steps (%lld buckets)\n",
                      r.mode.c_str(), r.autotuned_cap_mb, static_cast<long long>(r.autotune_steps),
                      static_cast<long long>(r.buckets));
        }
      }
      for (const auto& r : results) {
        if (r.walk_nodes > 0) {
          std::printf("graph walk (%s): %lld autograd nodes in %.3f ms (%.2f us per node)\n", r.mode.c_str(),
                      static_cast<long long>(r.walk_nodes), r.walk_ms, 1000.0 * r.walk_ms / r.walk_nodes);
        }
      }
      if (local && ddp_r) {
        const double floor = local->median_ms + raw_ms;
        std::printf("floor (no-DDP step + one raw all-reduce of %.2f MiB = %.2f ms): %.2f ms; ddp / floor = %.2f\n",
                    ddp_r->bytes_per_step / 1048576.0, raw_ms, floor, ddp_r->median_ms / floor);
        std::printf("all-reduce alone: one of %.2f MiB %.2f ms, the same bytes in the %lld buckets %.2f ms "
                    "(bucketed throughput %.0f%% of one all-reduce)\n",
                    ddp_r->bytes_per_step / 1048576.0, raw_ms, static_cast<long long>(ddp_r->buckets), bucketed_ms,
                    bucketed_ms > 0 ? 100.0 * raw_ms / bucketed_ms : 0.0);
      }
    }
    extra_json.push_back(fmt::format(
        "{{\"model\":\"{}\",\"raw_allreduce_ms\":{:.4f},\"bucketed_allreduce_ms\":{:.4f},\"floor_ms\":{:.4f}}}",
        model, raw_ms, bucketed_ms, local && ddp_r ? local->median_ms + raw_ms : -1.0));
    all.insert(all.end(), results.begin(), results.end());
  }
  if (root && !cfg.json_path.empty()) {
    std::ofstream out(cfg.json_path);
    out << "{\"world_size\":" << pg->size() << ",\"backend\":\"" << pg->backend() << "\",\"device\":\"" << cfg.device
        << "\",\"threads_per_rank\":" << cfg.threads << ",\"iterations\":" << cfg.iterations
        << ",\"bucket_cap_mb\":" << cfg.bucket_cap_mb << ",\"bucket_cap_autotune\":" << (cfg.autotune ? "true" : "false")
        << ",\"powersgd_rank\":" << cfg.powersgd_rank
        << ",\"powersgd_start\":" << cfg.powersgd_start << ",\"results\":[";
    for (size_t i = 0; i < all.size(); ++i) {
      const auto& r = all[i];
      out << (i ? "," : "")
          << fmt::format("{{\"model\":\"{}\",\"mode\":\"{}\",\"median_ms\":{:.4f},\"p90_ms\":{:.4f},"
                         "\"samples_per_s\":{:.2f},\"bytes_per_step\":{},\"buckets\":{},\"hook_ms\":{:.4f},"
                         "\"finalize_ms\":{:.4f},\"finalize_wait_ms\":{:.4f},\"graph_walk_ms\":{:.4f},"
                         "\"graph_walk_nodes\":{},\"hidden_fraction\":{:.4f},\"step_check_ms\":{:.4f},"
                         "\"comm_ms\":{:.4f},\"link_tx_bytes_per_s\":{:.1f},\"link_rx_bytes_per_s\":{:.1f},"
                         "\"comm_hook\":\"{}\",\"bytes_sent_per_step\":{},\"bytes_sent_vs_allreduce\":{:.6f},"
                         "\"autotuned_bucket_cap_mb\":{:g},\"autotune_steps\":{}}}",
                         r.model, r.mode, r.median_ms, r.p90_ms, r.samples_per_s, r.bytes_per_step, r.buckets,
                         r.hook_ms, r.finalize_ms, r.finalize_wait_ms, r.walk_ms, r.walk_nodes, r.hidden_fraction,
                         r.step_check_ms, r.comm_ms, r.link_tx_bytes_per_s, r.link_rx_bytes_per_s, r.comm_hook,
                         r.bytes_sent_per_step, r.bytes_per_step > 0 ? sent_ratio(r) : 0.0, r.autotuned_cap_mb,
                         r.autotune_steps);
    }
    out << "],\"models\":[";
    for (size_t i = 0; i < extra_json.size(); ++i) out << (i ? "," : "") << extra_json[i];
    out << "]}\n";
    std::printf("wrote %s\n", cfg.json_path.c_str());
  }
  return 0;
}
