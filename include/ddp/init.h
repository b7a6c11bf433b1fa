// Creating a process group, and the default group of this process.
#pragma once

#include <c10/core/Device.h>
#include <torch/arg.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>

#include <ddp/defaults.h>
#include <ddp/process_group.h>

namespace ddp {

// What init_process_group(options) creates, with chained setters in LibTorch's style:
//   ddp::init_process_group(ddp::InitOptions().backend("gloo").init_method("tcp://node0:29500")
//                               .rank(r).world_size(n));
// What is left unset comes from the environment (docs/launch.md, docs/configuration.md):
// torchrun's RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT, Slurm's SLURM_*, DDP_INIT_METHOD.
// DDP_TIMEOUT_S, when set, overrides `timeout` (as it overrides Options::timeout's default).
struct InitOptions {
  // "mpi" (libddp's MPI backend, under mpirun), "nccl" (libddp's own NCCL backend),
  // "gloo" (PyTorch's c10d::ProcessGroupGloo, CPU, no mpirun needed), "c10d-nccl"
  // (PyTorch's c10d::ProcessGroupNCCL, only in builds with DDP_WITH_C10D_NCCL=ON), or
  // "auto": nccl for a CUDA `device`; mpi when mpirun started this process; gloo when a
  // torchrun- or Slurm-style environment names several ranks; else mpi, else gloo.
  TORCH_ARG(std::string, backend) = "auto";
  // "" reads the environment (DDP_INIT_METHOD, else env://); else env://, tcp://HOST:PORT
  // or file:///shared/path. Wins over DDP_INIT_METHOD.
  TORCH_ARG(std::string, init_method) = "";
  // -1: from the environment (RANK, OMPI_COMM_WORLD_RANK, SLURM_PROCID, ...).
  TORCH_ARG(int, rank) = -1;
  // -1: from the environment (WORLD_SIZE, OMPI_COMM_WORLD_SIZE, SLURM_NTASKS, ...).
  TORCH_ARG(int, world_size) = -1;
  // Bounds the rendezvous and is the group's timeout().
  TORCH_ARG(std::chrono::milliseconds, timeout) = kDefaultTimeout;
  // The group's keys in the store live under this name; "" is "default". Groups of one
  // job that share a store need distinct names only when ranks create them in different
  // orders.
  TORCH_ARG(std::string, group_name) = "";
  // The device of the group's tensors: a CUDA device for nccl/c10d-nccl (else LOCAL_RANK
  // picks it); CPU for mpi and gloo.
  TORCH_ARG(std::optional<c10::Device>, device) = std::nullopt;
};

// Creates a process group and makes it this process's default group (get_rank(), ...).
// Throws InvalidArgumentError for an unknown or unbuilt backend, naming the ones this
// build has, and for a bad option or environment variable, naming it; CommError or
// TimeoutError when the rendezvous fails (the message names the ranks that did not come).
std::shared_ptr<ProcessGroup> init_process_group(const InitOptions& options);

// The same with only the backend and device given; everything else from the environment.
std::shared_ptr<ProcessGroup> init_process_group(
    const std::string& backend = "auto",
    std::optional<c10::Device> device = std::nullopt);

// Of the default group (the last init_process_group's); InvalidArgumentError if there is none.
int get_rank();
int get_world_size();
// The rank within this node: LOCAL_RANK, OMPI_COMM_WORLD_LOCAL_RANK, MPI_LOCALRANKID or
// SLURM_LOCALID; 0 in a world of one. Needs no group (a trainer picks its GPU with it
// before creating one); InvalidArgumentError when the world has several ranks and no
// launcher said which is local.
int get_local_rank();
// Drops the default group (the group lives on while anything else holds it).
void destroy_process_group();

} // namespace ddp
