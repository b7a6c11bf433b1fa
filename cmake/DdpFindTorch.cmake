# Finds LibTorch. With Torch_DIR unset, asks python3 where the PyPI torch wheel keeps
# its CMake files (torch.utils.cmake_prefix_path), so that `pip install torch` is all
# a machine needs.
if(NOT Torch_DIR AND NOT DEFINED ENV{Torch_DIR})
  find_package(Python3 COMPONENTS Interpreter QUIET)
  set(_ddp_python ${Python3_EXECUTABLE})
  if(NOT _ddp_python)
    set(_ddp_python python3)
  endif()
  execute_process(
    COMMAND ${_ddp_python} -c "import torch.utils; print(torch.utils.cmake_prefix_path)"
    OUTPUT_VARIABLE _ddp_torch_prefix OUTPUT_STRIP_TRAILING_WHITESPACE
    ERROR_QUIET RESULT_VARIABLE _ddp_torch_rc)
  if(_ddp_torch_rc EQUAL 0 AND _ddp_torch_prefix)
    list(APPEND CMAKE_PREFIX_PATH ${_ddp_torch_prefix})
  endif()
endif()
# A CUDA build of LibTorch (the PyPI wheel's default on Linux) enables the CUDA language in
# find_package(Torch), which needs nvcc even though nothing here compiles CUDA code: on a
# machine without the CUDA toolkit (a stock Debian 12, whose nvidia-cuda-toolkit 11.8 is too
# old for torch anyway) find_package(Torch) fails with "Your installed Caffe2 version uses
# CUDA but I cannot find the CUDA libraries". Torch's public/cuda.cmake returns at once when
# the target torch::cudart exists, so where no nvcc is found (where torch's FindCUDA looks
# for it) we define it (empty: libtorch_cuda and libc10_cuda load the wheel's libcudart
# through their own RPATH). The CPU side of LibTorch then builds and links; the NCCL
# backend, which needs the toolkit, stays off. With an nvcc nothing changes.
if(NOT TARGET torch::cudart AND NOT CMAKE_CUDA_COMPILER AND NOT DEFINED ENV{CUDACXX})
  find_program(DDP_NVCC nvcc HINTS ${CUDA_TOOLKIT_ROOT_DIR} ${CUDAToolkit_ROOT} ENV CUDAToolkit_ROOT
               ENV CUDA_HOME ENV CUDA_PATH ENV CUDA_BIN_PATH /usr/local/cuda PATH_SUFFIXES bin)
  if(NOT DDP_NVCC)
    add_library(torch::cudart INTERFACE IMPORTED)
    set(DDP_TORCH_WITHOUT_CUDA_TOOLKIT ON)
  endif()
endif()
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(FATAL_ERROR "LibTorch not found. Install the PyPI wheel (python3 -m pip install torch, or "
                      "scripts/setup.sh) or pass -DTorch_DIR=<libtorch>/share/cmake/Torch.")
endif()
if(DDP_TORCH_WITHOUT_CUDA_TOOLKIT AND TARGET torch_cuda)
  message(STATUS "libddp: LibTorch is a CUDA build but no CUDA toolkit was found: using it without one (CPU code only)")
endif()

# The PyPI wheel's CUDA libraries (NCCL, cuBLAS, ...) live in site-packages/nvidia/*/lib
# and libtorch_cuda finds them at run time through its RPATH. The linker needs them
# too when it checks an executable's indirect dependencies; without this it picks an
# older system libnccl (e.g. /usr/local/cuda's) and fails on missing symbols.
file(GLOB _ddp_nvidia_lib_dirs LIST_DIRECTORIES true "${TORCH_INSTALL_PREFIX}/../nvidia/*/lib")
if(_ddp_nvidia_lib_dirs AND TARGET torch)
  foreach(_dir IN LISTS _ddp_nvidia_lib_dirs)
    set_property(TARGET torch APPEND PROPERTY INTERFACE_LINK_OPTIONS "LINKER:-rpath-link,${_dir}")
  endforeach()
endif()
