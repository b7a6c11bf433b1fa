# PyTorch's distributed parts that libddp builds on, when the LibTorch found ships them:
#   DDP_HAVE_C10D      the c10d stores (TCPStore, FileStore, PrefixStore) and the adapter
#                      from c10d process groups: needs torch/csrc/distributed/c10d headers.
#   DDP_HAVE_GLOO      init_process_group("gloo"): c10d::ProcessGroupGloo, whose header needs
#                      gloo's headers too (Debian's libgloo-dev; scripts/setup.sh installs it).
#   DDP_HAVE_C10D_NCCL init_process_group("c10d-nccl"): c10d::ProcessGroupNCCL. Opt-in
#                      (DDP_WITH_C10D_NCCL=ON, off by default): it links libtorch_cuda, whose
#                      NCCL must be the only one in the process.
# Their symbols live in libtorch_cpu (libtorch_cuda for ProcessGroupNCCL), which the torch
# target already links. A part whose headers are missing is left out with a message;
# DDP_WITH_GLOO=ON turns that into a configuration error.
set(DDP_HAVE_C10D 0)
set(DDP_HAVE_GLOO 0)
set(DDP_HAVE_C10D_NCCL 0)

find_path(DDP_C10D_INCLUDE_DIR torch/csrc/distributed/c10d/TCPStore.hpp HINTS ${TORCH_INCLUDE_DIRS} NO_DEFAULT_PATH)
if(DDP_C10D_INCLUDE_DIR)
  set(DDP_HAVE_C10D 1)
else()
  message(STATUS "libddp: c10d stores and process groups off: the LibTorch found (${TORCH_INSTALL_PREFIX}) has no "
                 "torch/csrc/distributed/c10d headers; tcp:// and file:// rendezvous and the gloo backend are left out")
endif()

if(NOT DDP_WITH_GLOO STREQUAL "OFF")
  set(_ddp_gloo_reason "")
  find_path(DDP_GLOO_INCLUDE_DIR gloo/config.h)
  if(NOT DDP_HAVE_C10D)
    set(_ddp_gloo_reason "the LibTorch found has no c10d headers")
  elseif(NOT EXISTS "${DDP_C10D_INCLUDE_DIR}/torch/csrc/distributed/c10d/ProcessGroupGloo.hpp")
    set(_ddp_gloo_reason "the LibTorch found has no ProcessGroupGloo.hpp")
  elseif(NOT DDP_GLOO_INCLUDE_DIR)
    set(_ddp_gloo_reason "gloo's headers (gloo/config.h) were not found: install Debian's libgloo-dev (scripts/setup.sh)")
  else()
    set(DDP_HAVE_GLOO 1)
  endif()
  if(NOT DDP_HAVE_GLOO)
    ddp_backend_off(DDP_WITH_GLOO "gloo backend" "${_ddp_gloo_reason}")
  endif()
endif()

if(DDP_WITH_C10D_NCCL)
  if(NOT DDP_HAVE_C10D OR NOT TARGET torch_cuda)
    message(FATAL_ERROR "DDP_WITH_C10D_NCCL=ON needs a CUDA LibTorch with c10d headers (the one found: "
                        "${TORCH_INSTALL_PREFIX}).")
  endif()
  set(DDP_HAVE_C10D_NCCL 1)
endif()

# The definitions PyTorch's own build compiles c10d with: its headers declare
# ProcessGroupGloo/ProcessGroupNCCL only under them. Set on libddp's c10d sources only.
set(DDP_C10D_DEFINITIONS USE_DISTRIBUTED=1)
if(DDP_HAVE_GLOO)
  list(APPEND DDP_C10D_DEFINITIONS USE_C10D_GLOO=1)
endif()
if(DDP_HAVE_C10D_NCCL)
  list(APPEND DDP_C10D_DEFINITIONS USE_C10D_NCCL=1)
endif()
