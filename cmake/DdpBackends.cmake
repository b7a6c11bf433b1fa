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
# Searched for libddp's own NCCL backend, and for c10d-nccl too: ProcessGroupNCCL.hpp
# includes nccl.h.
set(DDP_HAVE_NCCL 0)
set(_ddp_nccl_reason "")
set(_ddp_nccl_found 0)
if(NOT DDP_WITH_NCCL STREQUAL "OFF" OR DDP_HAVE_C10D_NCCL)
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
      set(_ddp_nccl_found 1)
    endif()
  endif()
endif()
if(NOT DDP_WITH_NCCL STREQUAL "OFF")
  if(_ddp_nccl_found)
    set(DDP_HAVE_NCCL 1)
  else()
    ddp_backend_off(DDP_WITH_NCCL "NCCL backend" "${_ddp_nccl_reason}")
  endif()
endif()

# --- one NCCL in the process: libddp's nccl beside c10d-nccl ---
# c10d-nccl runs on the NCCL that libtorch_cuda loads; libddp's own backend links
# libnccl.so.2 (DDP_NCCL_LIBRARY). Both fit in one build only when that is the same NCCL:
# the torch wheel's libtorch_cuda loads the nvidia-nccl wheel's libnccl.so.2, which the
# search above prefers. A libtorch_cuda with NCCL linked in statically (no libnccl.so.2 among
# its NEEDED libraries), or one that loads another libnccl.so.2 than DDP_NCCL_LIBRARY, would
# put a second NCCL in the process: then only one of the two NCCL paths can be built.
if(DDP_HAVE_C10D_NCCL AND NOT _ddp_nccl_found)
  message(FATAL_ERROR "DDP_WITH_C10D_NCCL=ON needs nccl.h (ProcessGroupNCCL.hpp includes it): ${_ddp_nccl_reason}.")
endif()
if(DDP_HAVE_C10D_NCCL AND DDP_HAVE_NCCL)
  find_library(DDP_TORCH_CUDA_LIBRARY torch_cuda HINTS "${TORCH_INSTALL_PREFIX}/lib" NO_DEFAULT_PATH)
  set(_ddp_two_nccls "")
  if(DDP_TORCH_CUDA_LIBRARY AND CMAKE_OBJDUMP)
    execute_process(COMMAND ${CMAKE_OBJDUMP} -p "${DDP_TORCH_CUDA_LIBRARY}" OUTPUT_VARIABLE _ddp_torch_cuda_headers
                    ERROR_QUIET RESULT_VARIABLE _ddp_objdump_rc)
    get_filename_component(_ddp_nccl_lib_real "${DDP_NCCL_LIBRARY}" REALPATH)
    set(_ddp_torch_nccl "${TORCH_INSTALL_PREFIX}/../nvidia/nccl/lib/libnccl.so.2")
    if(NOT _ddp_objdump_rc EQUAL 0)
      message(STATUS "libddp: could not read ${DDP_TORCH_CUDA_LIBRARY}'s libraries (objdump -p); "
                     "not checked that libddp's NCCL is libtorch_cuda's")
    elseif(NOT _ddp_torch_cuda_headers MATCHES "NEEDED +libnccl\\.so")
      string(CONCAT _ddp_two_nccls "${DDP_TORCH_CUDA_LIBRARY} has NCCL linked in statically, and libddp's own NCCL backend "
                         "would load ${DDP_NCCL_LIBRARY} beside it")
    elseif(EXISTS "${_ddp_torch_nccl}")
      get_filename_component(_ddp_torch_nccl "${_ddp_torch_nccl}" REALPATH)
      if(NOT _ddp_torch_nccl STREQUAL _ddp_nccl_lib_real)
        string(CONCAT _ddp_two_nccls "libtorch_cuda loads ${_ddp_torch_nccl} (the nvidia-nccl wheel), but libddp's own NCCL "
                           "backend would link ${DDP_NCCL_LIBRARY} (NCCL_ROOT or DDP_NCCL_LIBRARY points elsewhere)")
      endif()
    endif()
  endif()
  if(_ddp_two_nccls)
    # DDP_WITH_NCCL=AUTO: libddp's own NCCL backend is left out (with this message); ON: an error.
    string(CONCAT _ddp_two_nccls_reason "one process can hold one NCCL, and ${_ddp_two_nccls}. Build one of the "
                  "two NCCL paths (-DDDP_WITH_NCCL=OFF keeps c10d-nccl; -DDDP_WITH_C10D_NCCL=OFF keeps libddp's "
                  "nccl), or point NCCL_ROOT at the NCCL that libtorch_cuda loads (docs/launch.md)")
    ddp_backend_off(DDP_WITH_NCCL "NCCL backend (with DDP_WITH_C10D_NCCL=ON)" "${_ddp_two_nccls_reason}")
    set(DDP_HAVE_NCCL 0)
  endif()
endif()

if(NOT DDP_HAVE_MPI AND NOT DDP_HAVE_NCCL AND NOT DDP_HAVE_GLOO)
  message(FATAL_ERROR "libddp needs at least one backend: install MPI (libopenmpi-dev), gloo (libgloo-dev) or a CUDA LibTorch with NCCL.")
endif()
