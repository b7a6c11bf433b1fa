# Decides which communication backends to build. AUTO builds a backend when its
# library is found; ON fails configuration with the reason when it is not.

# --- MPI ---
set(DDP_HAVE_MPI 0)
if(NOT DDP_WITH_MPI STREQUAL "OFF")
  find_package(MPI COMPONENTS CXX QUIET)
  if(MPI_CXX_FOUND)
    set(DDP_HAVE_MPI 1)
  elseif(DDP_WITH_MPI STREQUAL "ON")
    message(FATAL_ERROR "DDP_WITH_MPI=ON but no MPI C++ library was found: install libopenmpi-dev "
                        "(scripts/setup.sh) or point MPI_HOME at an MPI installation.")
  endif()
endif()

# --- NCCL ---
set(DDP_HAVE_NCCL 0)
set(_ddp_nccl_reason "")
if(NOT DDP_WITH_NCCL STREQUAL "OFF")
  if(NOT TARGET torch_cuda AND NOT "${TORCH_LIBRARIES}" MATCHES "torch_cuda")
    set(_ddp_nccl_reason "the LibTorch found (${TORCH_INSTALL_PREFIX}) has no CUDA support")
  else()
    # NCCL_ROOT overrides; else the nvidia-nccl wheel beside torch (the NCCL libtorch_cuda
    # itself loads: one process cannot hold two libnccl.so.2), else the CUDA toolkit's.
    set(_ddp_nccl_hints $ENV{NCCL_ROOT} ${NCCL_ROOT})
    if(EXISTS "${TORCH_INSTALL_PREFIX}/../nvidia/nccl/include/nccl.h")
      get_filename_component(_ddp_nccl_wheel "${TORCH_INSTALL_PREFIX}/../nvidia/nccl" ABSOLUTE)
      list(APPEND _ddp_nccl_hints ${_ddp_nccl_wheel})
    endif()
    list(APPEND _ddp_nccl_hints /usr/local/cuda /usr)
    find_path(DDP_NCCL_INCLUDE_DIR nccl.h HINTS ${_ddp_nccl_hints} PATH_SUFFIXES include NO_DEFAULT_PATH)
    find_library(DDP_NCCL_LIBRARY NAMES nccl libnccl.so.2 NAMES_PER_DIR HINTS ${_ddp_nccl_hints} PATH_SUFFIXES lib lib64
                 NO_DEFAULT_PATH)
    find_package(CUDAToolkit QUIET)
    if(NOT DDP_NCCL_INCLUDE_DIR OR NOT DDP_NCCL_LIBRARY)
      set(_ddp_nccl_reason "nccl.h or libnccl was not found (searched NCCL_ROOT, /usr/local/cuda, the nvidia-nccl wheel)")
    elseif(NOT CUDAToolkit_FOUND)
      set(_ddp_nccl_reason "the CUDA toolkit (cuda_runtime.h, libcudart) was not found")
    else()
      set(DDP_HAVE_NCCL 1)
    endif()
  endif()
  if(NOT DDP_HAVE_NCCL)
    ddp_backend_off(DDP_WITH_NCCL "NCCL backend" "${_ddp_nccl_reason}")
  endif()
endif()

if(NOT DDP_HAVE_MPI AND NOT DDP_HAVE_NCCL AND NOT DDP_HAVE_GLOO)
  message(FATAL_ERROR "libddp needs at least one backend: install MPI (libopenmpi-dev), gloo (libgloo-dev) or a CUDA LibTorch with NCCL.")
endif()
