#!/bin/sh
# Resume equals uninterrupted, bit for bit: examples/checkpoint_resume trained for 12 steps
# in one go, and the same 12 steps stopped before step 6 and started again (it resumes from
# the checkpoint of step 4). Run by ctest: $1 is the example, the rest the mpirun command.
set -eu
example=$1
shift
rm -rf full interrupted
"$@" -np 2 "$example" --dir full --steps 12 --every 4 --dump full.bin
"$@" -np 2 "$example" --dir interrupted --steps 12 --every 4 --stop-after 6 | tee interrupted.out
grep -q "stopping before step 6" interrupted.out
test ! -e interrupted.bin
"$@" -np 2 "$example" --dir interrupted --steps 12 --every 4 --dump resumed.bin | tee resumed.out
grep -q "resumed from step 4" resumed.out
cmp full.bin resumed.bin
echo "resume equals uninterrupted: $(wc -c < full.bin) bytes of parameters identical"
