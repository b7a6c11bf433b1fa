// ConstructionCheck: everything a Reducer checks before its first collective, and the one
// construction collective that carries the result. Locally: the parameter list (defined,
// leaf, dense, one device, unique names; frozen ones are skipped but still compared), the
// options (Options fields in range, then the environment's overrides: DDP_TIMEOUT_S,
// DDP_TIMELINE, DDP_STEP_CHECK), and that no parameter is already managed by another
// Reducer. Across ranks, in one exchange: those results and what shapes the collective
// sequence (options, every parameter, every buffer). A rank whose local check failed
// does not throw on its own, leaving its peers to wait in the exchange for the timeout:
// its error travels in the exchange, and every rank throws at once, naming it.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <utility>
#include <vector>

#include <ddp/options.h>
#include <ddp/process_group.h>
#include <ddp/reducer.h>

namespace ddp::detail {

class ConstructionCheck {
 public:
  // What the reducer is built from once every rank agreed.
  struct Result {
    Reducer::NamedParameters trainable; // the parameters to reduce, in registration order
    Options options;                    // resolved: environment overrides applied
  };

  // Collective: runs the local checks, then the exchange. Throws InvalidArgumentError on
  // every rank when any rank's local check failed (naming that rank and its error), and
  // ModelMismatchError when the ranks' options, parameters or buffers differ.
  static Result run(const Reducer::NamedParameters& parameters, const Reducer::NamedParameters& buffers,
                    ProcessGroup& process_group, Options options);

  // --- the local checks, each throwing InvalidArgumentError naming the rank ---
  // The parameters that require grad (shared ones once), checked.
  static Reducer::NamedParameters trainable(const Reducer::NamedParameters& parameters, int rank);
  // `options` checked, with the environment's overrides applied.
  static Options resolve(Options options, int rank);
};

} // namespace ddp::detail
