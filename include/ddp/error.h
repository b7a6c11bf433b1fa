// The exceptions libddp throws for anything a user can cause or recover from.
// Invariant violations inside the library use DDP_CHECK (src/common/check.h) and
// throw ddp::InternalError. See docs/errors.md for when each one is raised.
#pragma once

#include <stdexcept>
#include <string>

namespace ddp {

// Base of every libddp exception. Messages name the rank, the parameter (by name)
// where one is involved, and the fix.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A bad argument or option: an empty parameter list, a negative bucket cap, an
// unsupported dtype, a backend name that does not exist.
class InvalidArgumentError : public Error {
 public:
  using Error::Error;
};

// The ranks disagree about the model: parameter count, names, shapes or dtypes.
class ModelMismatchError : public Error {
 public:
  using Error::Error;
};

// The reduction protocol was broken: a parameter marked ready twice, a static graph
// that changed, a backward that did not reach the model, an unfinished iteration.
class ReductionError : public Error {
 public:
  using Error::Error;
};

// The communication library failed (MPI or NCCL), with its own error string.
class CommError : public Error {
 public:
  using Error::Error;
};

// A collective did not complete within the timeout: some rank stopped issuing the
// same collectives (crashed, skipped backward, ran a different model).
class TimeoutError : public CommError {
 public:
  using CommError::CommError;
};

// A broken invariant inside libddp: a bug to report, not a usage error.
class InternalError : public Error {
 public:
  using Error::Error;
};

} // namespace ddp
