# Builds every target of this project (libddp, the tests, the benchmark, the examples)
# with the sanitizers named in DDP_SANITIZE, a comma-separated list:
#   -DDDP_SANITIZE=address,undefined   ASan + UBSan (scripts/test.sh --sanitize)
#   -DDDP_SANITIZE=thread              TSan (scripts/test.sh --tsan; see docs/sanitizers.md)
# Empty (the default) changes nothing. Included from the top-level CMakeLists.txt before
# the first target; the flags are directory-scoped (add_compile_options/add_link_options),
# so they reach this directory and its subdirectories (bench/, examples/, tests/) and
# nothing outside the project: a parent project that add_subdirectory()s libddp, and
# consumers of the installed package, are not changed. An executable that links a
# sanitized libddp.so must itself be linked with the same -fsanitize= flags (the
# sanitizer runtime has to come first in the process's library list).
#
# Only C++ is instrumented (COMPILE_LANGUAGE:CXX): LibTorch, Open MPI, NCCL and the
# C++ standard library are prebuilt and stay uninstrumented. See docs/sanitizers.md.

# DDP_SANITIZE is the cache string the top-level CMakeLists.txt defines.
string(STRIP "${DDP_SANITIZE}" _ddp_sanitize)
if(_ddp_sanitize STREQUAL "")
  return()
endif()

if(NOT CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
  message(FATAL_ERROR "DDP_SANITIZE=${DDP_SANITIZE}: sanitizers need GCC or Clang, not ${CMAKE_CXX_COMPILER_ID}.")
endif()

string(REPLACE "," ";" _ddp_sanitizers "${_ddp_sanitize}")
set(_ddp_known_sanitizers address undefined thread leak)
set(_ddp_seen "")
foreach(_s IN LISTS _ddp_sanitizers)
  string(STRIP "${_s}" _s)
  if(_s STREQUAL "")
    continue()
  endif()
  if(NOT _s IN_LIST _ddp_known_sanitizers)
    message(FATAL_ERROR "DDP_SANITIZE=${DDP_SANITIZE}: unknown sanitizer '${_s}'. "
                        "Use a comma-separated list of: address, undefined, thread, leak "
                        "(e.g. -DDDP_SANITIZE=address,undefined or -DDDP_SANITIZE=thread).")
  endif()
  list(APPEND _ddp_seen ${_s})
endforeach()
list(REMOVE_DUPLICATES _ddp_seen)
if("thread" IN_LIST _ddp_seen AND ("address" IN_LIST _ddp_seen OR "leak" IN_LIST _ddp_seen))
  message(FATAL_ERROR "DDP_SANITIZE=${DDP_SANITIZE}: 'thread' cannot be combined with 'address' or 'leak' "
                      "(their runtimes both own the shadow memory); configure a separate build directory.")
endif()
string(REPLACE ";" "," _ddp_sanitize_list "${_ddp_seen}")

set(_ddp_sanitize_flags -fsanitize=${_ddp_sanitize_list} -fno-omit-frame-pointer)
if("undefined" IN_LIST _ddp_seen)
  # A UBSan finding must fail the test, not print and carry on.
  list(APPEND _ddp_sanitize_flags -fno-sanitize-recover=undefined)
  # The vptr check (is the dynamic type of this polymorphic object what the cast or
  # member call says?) looks the object's vtable up against the typeinfo of the static
  # type. LibTorch is built without -fsanitize=vptr, and most objects libddp touches
  # through a base class are created inside it (autograd Nodes and hooks, TensorImpl,
  # nn::Module subclasses); where a type's typeinfo is hidden in, or duplicated across,
  # libc10/libtorch_cpu and our binaries, the check reports "member call on address ...
  # which does not point to an object of type ..." for a correct program. Whether it
  # does depends on LibTorch's build and version, not on libddp (torch 2.15 with this
  # suite reported nothing when tried), so it is off rather than a CI result that a
  # LibTorch upgrade can flip. All other -fsanitize=undefined checks stay on.
  list(APPEND _ddp_sanitize_flags -fno-sanitize=vptr)
endif()

# Verify that the compiler and its runtime library can actually build and link a
# sanitized program, so a missing libasan/libtsan fails here and not at the first link.
include(CheckCXXSourceCompiles)
include(CMakePushCheckState)
cmake_push_check_state(RESET)
set(CMAKE_REQUIRED_FLAGS "${_ddp_sanitize_flags}")
string(REPLACE ";" " " CMAKE_REQUIRED_FLAGS "${CMAKE_REQUIRED_FLAGS}")
set(CMAKE_REQUIRED_LINK_OPTIONS ${_ddp_sanitize_flags})
string(MAKE_C_IDENTIFIER "DDP_SANITIZE_WORKS_${_ddp_sanitize_list}" _ddp_check_var)
check_cxx_source_compiles("int main() { return 0; }" ${_ddp_check_var})
cmake_pop_check_state()
if(NOT ${_ddp_check_var})
  message(FATAL_ERROR "DDP_SANITIZE=${DDP_SANITIZE}: ${CMAKE_CXX_COMPILER} cannot build and link with "
                      "'${_ddp_sanitize_flags}'. Install the sanitizer runtime (Debian: libasan8, "
                      "libubsan1, libtsan2 come with g++) or use another compiler.")
endif()

foreach(_f IN LISTS _ddp_sanitize_flags)
  add_compile_options("$<$<COMPILE_LANGUAGE:CXX>:${_f}>")
endforeach()
add_link_options(${_ddp_sanitize_flags})
string(REPLACE ";" " " _ddp_sanitize_message "${_ddp_sanitize_flags}")
message(STATUS "libddp: sanitizers on: ${_ddp_sanitize_message}")
