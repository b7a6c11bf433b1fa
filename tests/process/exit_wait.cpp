// A rank that finishes first must wait for its peers at exit, not abort them: rank 0
// trains, then "saves a checkpoint" for longer than any grace period (argv[2] seconds)
// before it writes argv[1]; the other ranks exit at once. ctest's mpi_np2_exit_wait
// checks that mpirun exits 0 and that the file exists.
#include <torch/nn/modules/linear.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <thread>

#include <ddp/ddp.h>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_FILE SECONDS\n", argv[0]);
    return 2;
  }
  auto pg = ddp::init_process_group("mpi");
  {
    torch::nn::Linear net(8, 4);
    ddp::DistributedDataParallel model(net, pg);
    for (int step = 0; step < 3; ++step) model(torch::ones({2, 8})).sum().backward();
  }
  if (pg->rank() == 0) {
    std::this_thread::sleep_for(std::chrono::seconds(std::atoi(argv[2])));
    std::ofstream(argv[1]) << "checkpoint written after " << argv[2] << " s\n";
    std::printf("rank 0 wrote %s\n", argv[1]);
  } else {
    std::printf("rank %d finished; exiting while rank 0 still saves its checkpoint\n", pg->rank());
  }
  return 0;
}
