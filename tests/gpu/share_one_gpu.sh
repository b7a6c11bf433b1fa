#!/bin/sh
# Runs one rank of an NCCL job whose ranks share one GPU:
#   mpirun -np 2 tests/gpu/share_one_gpu.sh build/tests/gpu/ddp_gpu_tests
# NCCL refuses two ranks on one GPU ("Duplicate GPU detected"): it compares each rank's
# host hash and the GPU's bus id. A host id of its own (NCCL_HOSTID) makes each rank a
# host of its own, talking to the others over sockets on the loopback interface
# (NCCL_SOCKET_IFNAME=lo; no InfiniBand, peer-to-peer, shared-memory or NVLink SHARP
# transports, which assume ranks on one host). LOCAL_RANK=0 follows from the same
# fiction, and makes every rank bind cuda:0 instead of cuda:<local rank>, which a
# one-GPU machine lacks. Each variable can be overridden by the caller's environment.
rank=${OMPI_COMM_WORLD_RANK:-${PMIX_RANK:-${RANK:-}}}
if [ -z "$rank" ]; then
  echo "share_one_gpu.sh: no rank in the environment (OMPI_COMM_WORLD_RANK, PMIX_RANK or RANK): start it under mpirun" >&2
  exit 2
fi
export NCCL_HOSTID="${NCCL_HOSTID_PREFIX:-ddp-one-gpu-rank}$rank"
export LOCAL_RANK=0
export NCCL_SOCKET_IFNAME="${NCCL_SOCKET_IFNAME:-lo}"
export NCCL_IB_DISABLE="${NCCL_IB_DISABLE:-1}"
export NCCL_P2P_DISABLE="${NCCL_P2P_DISABLE:-1}"
export NCCL_SHM_DISABLE="${NCCL_SHM_DISABLE:-1}"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
exec "$@"
