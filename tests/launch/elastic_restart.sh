#!/bin/sh
# Elastic restart under torchrun: examples/elastic_train runs once uninterrupted, then
# again with rank 1 killed (SIGKILL) in step 13 of its first attempt. torchrun
# (--max-restarts 2) restarts both workers, libddp rendezvouses again on the agent's store
# under the new attempt's prefix, the workers resume from the checkpoint of step 10, and
# the job must end with status 0 and the same final parameters, bit for bit.
#   elastic_restart.sh PYTHON ELASTIC_TRAIN WORKDIR
set -u
python=$1 exe=$2 work=$3
rm -rf "$work" && mkdir -p "$work" && cd "$work" || exit 1
torchrun() { "$python" -m torch.distributed.run --standalone --nproc-per-node 2 "$@"; }

torchrun --max-restarts 0 --no-python "$exe" --steps 30 --checkpoint-every 5 --dir ref_ckpt --out ref.bin \
  > ref.out 2>&1 || { cat ref.out; echo "elastic_restart: the uninterrupted run failed"; exit 1; }
torchrun --max-restarts 2 --no-python "$exe" --steps 30 --checkpoint-every 5 --dir ckpt --out resumed.bin \
  --die-at-step 13 --die-rank 1 > resumed.out 2>&1
rc=$?
cat resumed.out
[ $rc -eq 0 ] || { echo "elastic_restart: the interrupted job ended with status $rc"; exit 1; }
grep -q "rank 1 dies in step 13 (attempt 0)" resumed.out || { echo "elastic_restart: no rank died"; exit 1; }
grep -q "attempt 1 resumed from the checkpoint of step 10" resumed.out ||
  { echo "elastic_restart: the restarted workers did not resume from step 10"; exit 1; }
cmp ref.bin resumed.bin || { echo "elastic_restart: final parameters differ from the uninterrupted run"; exit 1; }
echo "elastic_restart: restarted after a rank died, resumed at step 10, final parameters identical"
