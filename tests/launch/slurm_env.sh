#!/bin/sh
# A Slurm job step started without PMI (srun --mpi=none): N copies of a trainer with only
# Slurm's variables — SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST,
# SLURM_JOB_ID — and no MASTER_ADDR/MASTER_PORT/RANK/WORLD_SIZE. libddp must put the store on
# the first host of the node list (here localhost) and train on gloo.
#   slurm_env.sh N TRAINER [args]
set -u
n=$1 exe=$2
shift 2
job=$(( ($$ * 7919) % 100000 ))  # a job id: its port is 20000 + job % 10000
i=0 pids=""
while [ $i -lt "$n" ]; do
  env -u MASTER_ADDR -u MASTER_PORT -u RANK -u WORLD_SIZE -u LOCAL_RANK -u DDP_INIT_METHOD \
    SLURM_PROCID=$i SLURM_NTASKS="$n" SLURM_LOCALID=$i SLURM_JOB_NODELIST="localhost,node[2-3]" SLURM_JOB_ID=$job \
    DDP_LOG_LEVEL=INFO "$exe" "$@" > "slurm_env.$i.out" 2>&1 &
  pids="$pids $!"
  i=$((i + 1))
done
rc=0
for p in $pids; do wait "$p" || rc=1; done
cat slurm_env.*.out
[ $rc -eq 0 ] || { echo "slurm_env: a task failed"; exit 1; }
grep -q "on the gloo backend" slurm_env.0.out || { echo "slurm_env: rank 0 did not train on gloo"; exit 1; }
grep -q "tcp://localhost:.*the first host of SLURM_JOB_NODELIST" slurm_env.0.out ||
  { echo "slurm_env: the store was not on the node list's first host"; exit 1; }
echo "slurm_env: $n tasks trained on gloo with the store on the node list's first host"
