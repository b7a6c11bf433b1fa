// DDP_CHECK_CALL: the one shape of the checking macros of the foreign libraries
// (DDP_CHECK_MPI, DDP_CHECK_NCCL, DDP_CHECK_CUDA): `call` is evaluated once, and a
// result other than `ok` goes to `fail(text, result, __FILE__, __LINE__)`, which throws
// with the library's own error string. `text` is the call as written (#call in the
// library's macro, so that macros inside it, MPI_COMM_WORLD for one, stay unexpanded).
#pragma once

#define DDP_CHECK_CALL(text, call, ok, fail)            \
  do {                                                  \
    const auto ddp_check_rc_ = (call);                  \
    if (ddp_check_rc_ != (ok)) {                        \
      fail(text, ddp_check_rc_, __FILE__, __LINE__);    \
    }                                                   \
  } while (0)
