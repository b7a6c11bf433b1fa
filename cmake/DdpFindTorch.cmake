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
find_package(Torch QUIET)
if(NOT Torch_FOUND)
  message(FATAL_ERROR "LibTorch not found. Install the PyPI wheel (python3 -m pip install torch, or "
                      "scripts/setup.sh) or pass -DTorch_DIR=<libtorch>/share/cmake/Torch.")
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
