// Mapping of ATen dtypes to MPI datatypes and sum operations. float16 and bfloat16 have
// no MPI type: they travel as 2-byte opaque types summed by our own MPI_Op, which adds
// in float and rounds once per element, like NCCL does.
#pragma once

#include <mpi.h>

#include <c10/core/ScalarType.h>

namespace ddp::mpi {

// Creates the custom types and ops; call once, on the communication thread, after MPI_Init.
void create_custom_types();
// Frees them; call on the communication thread before MPI_Finalize.
void free_custom_types();

// The MPI datatype for `type`; throws InvalidArgumentError naming the dtype if none.
MPI_Datatype datatype_for(c10::ScalarType type);
// The sum operation for `type` (MPI_SUM, or our op for float16 and bfloat16).
MPI_Op sum_op_for(c10::ScalarType type);

} // namespace ddp::mpi
