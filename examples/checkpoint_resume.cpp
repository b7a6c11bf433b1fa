// Checkpoint and resume (docs/checkpoints.md). Trains a small model with Adam and
// PowerSGD, saving every K steps; started again with the same arguments it resumes from
// the last complete checkpoint, and its parameters after the last step equal, bit for bit,
// those of a run that was never interrupted (the data of step s on rank r depends only on
// s and r).
//
//   mpirun -np 2 build/examples/checkpoint_resume --dir /tmp/ckpt --steps 12 --every 4 --stop-after 6
//   mpirun -np 2 build/examples/checkpoint_resume --dir /tmp/ckpt --steps 12 --every 4 --dump resumed.bin
//
// What is saved, and by whom:
//   step-K/model.pt        rank 0: torch::save(model) (the module's own names: it loads
//                          into an unwrapped Net as well)
//   step-K/optimizer.pt    rank 0: torch::save(optimizer); every rank's optimizer state is
//                          the same, since every rank steps on the same averaged gradients
//   step-K/hook.rank<R>.pt every rank: the comm hook's state (PowerSGD's error feedback is
//                          each rank's own)
//   latest                 rank 0, once every rank has written: the step to resume from
// On resume every rank loads the model *before* wrapping it (loading into a wrapped model
// is an error), then the optimizer and the hook's state.
#include <ddp/ddp.h>
#include <ddp/hooks.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>

#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

namespace fs = std::filesystem;

struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(32, 64));
    fc2 = register_module("fc2", torch::nn::Linear(64, 64));
    fc3 = register_module("fc3", torch::nn::Linear(64, 1));
  }
  torch::Tensor forward(torch::Tensor x) { return fc3(torch::tanh(fc2(torch::relu(fc1(x))))); }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, fc3{nullptr};
};
TORCH_MODULE(Net);

namespace {

struct Args {
  std::string dir;
  int steps = 12;
  int every = 4;
  int stop_after = -1; // stop (as if the job died) before this step
  std::string dump;    // rank 0 writes the final parameters' bytes here
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string key = argv[i];
    const std::string value = argv[i + 1];
    if (key == "--dir") a.dir = value;
    else if (key == "--steps") a.steps = std::stoi(value);
    else if (key == "--every") a.every = std::stoi(value);
    else if (key == "--stop-after") a.stop_after = std::stoi(value);
    else if (key == "--dump") a.dump = value;
    else throw std::invalid_argument("unknown argument " + key);
  }
  if (a.dir.empty()) throw std::invalid_argument("--dir DIR is required (a directory every rank can read)");
  return a;
}

// Rank r's batch of step s: the same in an interrupted and an uninterrupted run.
std::pair<torch::Tensor, torch::Tensor> batch(int step, int rank) {
  auto gen = at::detail::createCPUGenerator(1000 * static_cast<uint64_t>(step) + static_cast<uint64_t>(rank));
  auto x = torch::randn({16, 32}, gen);
  auto y = torch::sin(x.sum(1, /*keepdim=*/true));
  return {x, y};
}

// Writes through a temporary name and a rename, so a reader never sees half a file.
void write_file(const fs::path& path, const std::vector<char>& bytes) {
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    if (!out) throw std::runtime_error("cannot write " + tmp.string());
  }
  fs::rename(tmp, path);
}

std::vector<char> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A comm hook's state as a pickled {name: tensor} dict (torch.load reads it too).
void save_hook_state(const ddp::CommHook& hook, const fs::path& path) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& [name, tensor] : hook.state()) dict.insert(name, tensor);
  write_file(path, torch::pickle_save(dict));
}

void load_hook_state(ddp::CommHook& hook, const fs::path& path) {
  ddp::CommHook::State state;
  for (const auto& item : torch::pickle_load(read_file(path)).toGenericDict()) {
    state.emplace_back(item.key().toStringRef(), item.value().toTensor());
  }
  hook.load_state(state);
}

template <class T>
void save_to(const T& value, const fs::path& path) {
  const fs::path tmp = path.string() + ".tmp";
  torch::save(value, tmp.string());
  fs::rename(tmp, path);
}

} // namespace

int main(int argc, char** argv) {
  torch::set_num_threads(1); // ranks share the machine's cores: one compute thread each
  const Args args = parse(argc, argv);
  auto pg = ddp::init_process_group();
  const int rank = pg->rank();

  // Where to start: the last checkpoint that every rank finished writing.
  int start = 0;
  const fs::path latest = fs::path(args.dir) / "latest";
  if (fs::exists(latest)) {
    const auto text = read_file(latest);
    start = std::stoi(std::string(text.begin(), text.end()));
  }
  const fs::path from = fs::path(args.dir) / ("step-" + std::to_string(start));

  torch::manual_seed(0);
  Net net;
  if (start > 0) torch::load(net, (from / "model.pt").string()); // before wrapping
  ddp::DistributedDataParallel model(net, pg);
  auto hook = ddp::hooks::powersgd(
      ddp::hooks::PowerSGDOptions().matrix_approximation_rank(2).start_powerSGD_iter(2));
  model->register_comm_hook(hook);
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-3));
  if (start > 0) {
    torch::load(optimizer, (from / "optimizer.pt").string());
    load_hook_state(*hook, from / ("hook.rank" + std::to_string(rank) + ".pt"));
    if (rank == 0) std::printf("resumed from step %d (%s)\n", start, from.c_str());
  }

  for (int step = start; step < args.steps; ++step) {
    if (step == args.stop_after) {
      if (rank == 0) std::printf("stopping before step %d, as if the job had died\n", step);
      return 0;
    }
    auto [x, y] = batch(step, rank);
    optimizer.zero_grad();
    auto loss = torch::mse_loss(model(x), y);
    loss.backward();
    optimizer.step();
    if (rank == 0) std::printf("step %d loss %.6f\n", step, loss.item<double>());

    if ((step + 1) % args.every == 0) {
      // A deferred step check (the default on CUDA) reports a failed step late: read it
      // before the state is declared good.
      model->reducer().synchronize();
      const fs::path to = fs::path(args.dir) / ("step-" + std::to_string(step + 1));
      fs::create_directories(to);
      if (rank == 0) {
        save_to(model, to / "model.pt");
        save_to(optimizer, to / "optimizer.pt");
      }
      save_hook_state(*hook, to / ("hook.rank" + std::to_string(rank) + ".pt"));
      pg->barrier(); // every rank's files are complete before `latest` names them
      if (rank == 0) {
        const std::string text = std::to_string(step + 1);
        write_file(latest, std::vector<char>(text.begin(), text.end()));
      }
    }
  }

  // The final parameters' bytes, for comparing runs; and every rank must hold rank 0's.
  std::vector<char> bytes;
  for (const auto& p : model->parameters()) {
    const auto t = p.detach().contiguous();
    const auto* data = static_cast<const char*>(t.data_ptr());
    bytes.insert(bytes.end(), data, data + t.nbytes());
  }
  auto mine = torch::from_blob(bytes.data(), {static_cast<int64_t>(bytes.size())}, torch::kUInt8).clone();
  auto root = mine.clone();
  pg->broadcast(root, 0)->wait(pg->timeout());
  if (!torch::equal(mine, root)) {
    std::fprintf(stderr, "rank %d: parameters differ from rank 0's\n", rank);
    return 1;
  }
  if (rank == 0 && !args.dump.empty()) write_file(args.dump, bytes);
  if (rank == 0) std::printf("done: %d steps, parameters identical on every rank\n", args.steps);
  return 0;
}
