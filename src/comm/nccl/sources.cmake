# The NCCL backend: included by the top-level CMakeLists.txt when DdpBackends.cmake
# found NCCL, the CUDA toolkit and a CUDA LibTorch (DDP_HAVE_NCCL).
target_sources(ddp PRIVATE
  ${CMAKE_CURRENT_LIST_DIR}/factory.cpp
  ${CMAKE_CURRENT_LIST_DIR}/nccl_check.cpp
  ${CMAKE_CURRENT_LIST_DIR}/nccl_comm.cpp
  ${CMAKE_CURRENT_LIST_DIR}/nccl_types.cpp
  ${CMAKE_CURRENT_LIST_DIR}/process_group_nccl.cpp
  ${CMAKE_CURRENT_LIST_DIR}/work_nccl.cpp)
target_include_directories(ddp PRIVATE ${DDP_NCCL_INCLUDE_DIR})
target_link_libraries(ddp PRIVATE ${DDP_NCCL_LIBRARY} CUDA::cudart)
# LibTorch's CUDA half (CUDAStream, the caching allocator, CUDAEvent): TORCH_LIBRARIES
# lists c10_cuda and torch_cuda when the LibTorch found has CUDA.
foreach(_ddp_torch_cuda_lib IN ITEMS torch_cuda c10_cuda)
  if(TARGET ${_ddp_torch_cuda_lib})
    target_link_libraries(ddp PRIVATE ${_ddp_torch_cuda_lib})
  endif()
endforeach()
foreach(_ddp_torch_lib IN LISTS TORCH_LIBRARIES)
  if(_ddp_torch_lib MATCHES "c10_cuda|torch_cuda")
    target_link_libraries(ddp PRIVATE ${_ddp_torch_lib})
  endif()
endforeach()
