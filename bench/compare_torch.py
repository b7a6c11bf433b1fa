#!/usr/bin/env python3
"""Side-by-side: PyTorch's own DDP against libddp's ddp_bench, on identical models.

Runs torch.nn.parallel.DistributedDataParallel (gloo on CPU, NCCL with --device cuda)
from the installed torch wheel on the models of bench/bench_models.h (same layers,
registration order, batch per rank, loss, SGD lr 0.01, deep-supervision head schedule,
threads per rank), measured the way ddp_bench measures (warm-up, then windows of
--window steps, DDP and no-DDP trainers interleaved window by window, median and p90 of
the per-window mean step time), and libddp's build/bench/ddp_bench under mpirun with
the matching options, alternating A B A B (--rounds). It prints, per model, the step
time of each, the ratio libddp/torch, each one's overhead over its own no-DDP trainer,
the ratio of the overheads, and one raw all-reduce of the model's parameter bytes with
gloo (torch.distributed.all_reduce) next to ddp_bench's raw MPI all-reduce, so the
communication library's share can be told from the reducer's.

    python3 bench/compare_torch.py                       # mlp,small; 2 ranks; 2 rounds
    python3 bench/compare_torch.py --models mlp,small,convnet,deepsup --markdown
    python3 bench/compare_torch.py --quick               # the smoke test (seconds)
    python3 bench/compare_torch.py --cluster ddp --models mlp,resnet   # across simulated hosts
    python3 bench/compare_torch.py --models mlp --comm-hook allreduce,fp16,bf16,powersgd

With --comm-hook each side also trains once per communication hook (PyTorch's built-ins from
torch.distributed.algorithms.ddp_comm_hooks, libddp's ddp::hooks), interleaved with the
hookless trainers, and a table per model gives each hook's step time on both sides, their
ratio, and the bytes each sends per step: libddp's measured
(ReducerStats::hook_bytes_per_iteration), PyTorch's computed from the parameters' shapes by
the same rule (PyTorch does not count them).

Both sides run on this machine only: torch ranks rendezvous on 127.0.0.1 at a free port.
With --cluster NAME (a cluster that scripts/cluster.sh brought up) every rank runs on a
host of its own instead: PyTorch DDP launched torchrun-style (`cluster.sh run --launch
env`, gloo on the hosts' eth0), libddp through `cluster.sh mpirun` (Open MPI over TCP),
plus libddp's naive loop; each mode's bytes/s through eth0 is read from the NIC's
counters and compared with the link's rate, and each DDP's share of communication
hidden behind backward is taken from a timeline (libddp's own; PyTorch's from a comm
hook that times each bucket's all-reduce) over a few extra steps after the timed ones.

This file is the command line and the machine header; compare_runner.py runs the rounds
(PyTorch DDP's ranks, which are this script re-run with --_worker, and ddp_bench),
compare_models.py holds the PyTorch models, compare_report.py the summary and the tables.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
import traceback

from compare_models import EXTRA_MODELS, MODELS
from compare_report import print_tables, summarize
from compare_runner import CLUSTER_SH, die, log, run_libddp_round, run_torch_round, worker_main

COMM_HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "noop")  # ddp_bench --comm-hook's names
CLUSTER_STATE = "/run/ddp-cluster"


def machine_info(args):
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        affinity = os.cpu_count()
    try:
        import warnings

        warnings.filterwarnings("ignore")
        import torch

        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name(0) if args.device == "cuda" and torch.cuda.is_available() else None
    except ImportError:
        die("torch is not importable (pip install torch)", 2)
    try:
        v = subprocess.run(args.mpirun_cmd + ["--version"], capture_output=True, text=True, timeout=30)
        mpi = (v.stdout or v.stderr).strip().splitlines()[0] if (v.stdout or v.stderr).strip() else "?"
    except (OSError, subprocess.TimeoutExpired) as e:
        mpi = f"? ({e})"
    mca = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("OMPI_MCA_"))
    return {"cpu": cpu, "cores": os.cpu_count(), "usable_cores": affinity, "gpu": gpu,
            "python": platform.python_version(), "torch": torch_version, "mpi": mpi,
            "mpi_settings": mca or "(OpenMPI defaults)", "os": platform.platform(),
            "command": shlex.join([sys.executable] + sys.argv)}


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help="comma-separated: mlp, small, convnet, deepsup or all "
                   "(default mlp,small)")
    p.add_argument("--np", type=int, default=2, help="ranks (default 2; with --device cuda, ranks share the GPUs)")
    p.add_argument("--threads", type=int, default=1, help="compute threads per rank (default 1)")
    p.add_argument("--iterations", type=int, default=30, help="timed steps per mode (default 30)")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per mode first (default 5)")
    p.add_argument("--window", type=int, default=5, help="steps per timed window (default 5)")
    p.add_argument("--rounds", type=int, default=2, help="A B rounds (PyTorch, libddp), default 2")
    p.add_argument("--bucket-cap-mb", type=float, default=25.0, help="both sides' bucket cap (default 25)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="cpu (gloo) or cuda (nccl)")
    p.add_argument("--libddp-backend", choices=("mpi", "gloo"), default=None,
                   help="libddp's CPU backend: mpi (ddp_bench under mpirun, the default) or gloo (ddp_bench "
                        "--backend gloo under torchrun, PyTorch's ProcessGroupGloo under libddp's reducer)")
    p.add_argument("--bench", default=None, help="ddp_bench binary (default build/bench/ddp_bench)")
    p.add_argument("--mpirun", default="mpirun", help="mpirun command, may carry options (default mpirun)")
    p.add_argument("--json-out", default=None, help="write the comparison as JSON to PATH")
    p.add_argument("--markdown", action="store_true", help="print the tables as markdown (docs/performance.md)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: iterations 4, warm-up 1, window 2, 1 round (models mlp,small unless given)")
    p.add_argument("--timeout", type=int, default=None,
                   help="seconds allowed to each child run (default 600, 180 with --quick)")
    p.add_argument("--verbose", action="store_true", help="also print the children's output")
    p.add_argument("--cluster", default=None, metavar="NAME",
                   help="run every rank on a host of the simulated cluster NAME (scripts/cluster.sh up): "
                        "implies --np <its hosts>, --naive, --link-dev eth0")
    p.add_argument("--naive", action="store_true", help="also time ddp_bench's naive per-parameter loop")
    p.add_argument("--link-dev", default=None, metavar="IFACE",
                   help="report each mode's bytes/s through IFACE (its /sys/class/net counters)")
    p.add_argument("--timeline-steps", type=int, default=5,
                   help="extra steps timed by a comm hook for PyTorch's hidden share (CPU; 0: off; default 5)")
    p.add_argument("--comm-hook", default=None, metavar="NAME[,NAME]",
                   help="also train with each communication hook, on both sides: " + ", ".join(COMM_HOOKS)
                        + " (PyTorch's ddp_comm_hooks built-ins; libddp's ddp::hooks); default none")
    p.add_argument("--powersgd-rank", type=int, default=4,
                   help="PowerSGD matrix_approximation_rank, both sides (default 4)")
    p.add_argument("--powersgd-start", type=int, default=2,
                   help="PowerSGD start_powerSGD_iter (default 2: every timed step compresses after the "
                        "warm-up); PyTorch's is max(N, 2), as it refuses less with error feedback")
    p.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.iterations, args.warmup, args.window, args.rounds = 4, 1, 2, 1
        args.timeline_steps = min(args.timeline_steps, 2)
    if args.models is None:
        args.models = "mlp,small"
    if args.timeout is None:
        args.timeout = 180 if args.quick else 600
    if args.models == "all":
        args.models = ",".join(MODELS)
    args.model_list = [m for m in args.models.split(",") if m]
    bad = [m for m in args.model_list if m not in MODELS + EXTRA_MODELS]
    if bad or not args.model_list:
        p.error(f"unknown model(s) {', '.join(bad) or '(none)'}: choose from {', '.join(MODELS + EXTRA_MODELS)}")
    args.link_rate, args.link_gbit = None, None
    if args.cluster and not args._worker:
        config = os.path.join(CLUSTER_STATE, args.cluster, "config")
        try:
            with open(config) as f:
                conf = dict(line.strip().split("=", 1) for line in f if "=" in line)
        except OSError:
            p.error(f"--cluster {args.cluster}: no cluster of that name is up ({config}); "
                    f"scripts/cluster.sh --name {args.cluster} up")
        args.np = int(conf["hosts"])
        args.naive = True
        args.link_dev = args.link_dev or "eth0"
        args.link_rate = conf.get("rate", "?")
        args.link_gbit = rate_gbit(args.link_rate)
    args.hook_list = [h for h in (args.comm_hook or "").split(",") if h]
    bad = [h for h in args.hook_list if h not in COMM_HOOKS]
    if bad or (args.comm_hook is not None and not args.hook_list):
        p.error(f"unknown comm hook(s) {', '.join(bad) or '(none)'}: choose from {', '.join(COMM_HOOKS)}")
    if args.powersgd_rank < 1 or args.powersgd_start < 0:
        p.error("--powersgd-rank must be >= 1, --powersgd-start >= 0")
    if min(args.np, args.threads, args.iterations, args.window, args.rounds) < 1 or args.warmup < 0:
        p.error("--np, --threads, --iterations, --window and --rounds must be >= 1, --warmup >= 0")
    return args


def rate_gbit(rate):
    """tc's rate ("1gbit", "500mbit", "none") in Gbit/s; None when unshaped or unknown."""
    import re

    m = re.fullmatch(r"([0-9.]+)([kmgt]?)(bit|bps)", (rate or "").lower())
    if not m:
        return None
    scale = {"": 1e-9, "k": 1e-6, "m": 1e-3, "g": 1.0, "t": 1e3}[m.group(2)]
    return float(m.group(1)) * scale * (8 if m.group(3) == "bps" else 1)


def main(argv):
    args = parse_args(argv)
    if args._worker:
        try:
            return worker_main(args)
        except Exception:  # noqa: BLE001 -- the driver shows this output on failure
            traceback.print_exc()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)  # do not wait in the process group's destructor for the other ranks

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if args.bench is None:
        args.bench = os.path.join(repo, "build", "bench", "ddp_bench")
    if not (os.path.isfile(args.bench) and os.access(args.bench, os.X_OK)):
        die(f"ddp_bench not found at {args.bench}: build it first (cmake --build build --target ddp_bench) "
            "or pass --bench PATH", 2)
    args.mpirun_cmd = shlex.split(args.mpirun)
    if args.cluster:
        args.mpirun_cmd = [CLUSTER_SH, "--name", args.cluster, "mpirun"]
    try:
        subprocess.run(args.mpirun_cmd + ["--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        die(f"cannot run {args.mpirun!r} ({e}): install OpenMPI (scripts/setup.sh) or pass --mpirun", 2)
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            die("--device cuda but torch sees no GPU", 2)
    if args.device == "cuda":
        if args.libddp_backend:
            die("--libddp-backend is for --device cpu; on CUDA libddp runs its NCCL backend", 2)
        args.libddp_backend = "nccl"
    elif args.libddp_backend == "gloo" and args.cluster:
        die("--libddp-backend gloo runs on this machine only (torchrun --standalone); drop --cluster", 2)
    else:
        args.libddp_backend = args.libddp_backend or "mpi"

    info = machine_info(args)
    print("compare_torch.py: PyTorch DDP vs libddp ddp_bench, alternating A B per round")
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['usable_cores']} usable)"
          + (f", GPU {info['gpu']}" if info["gpu"] else "") + f"; {info['os']}")
    print(f"torch {info['torch']} (python {info['python']}); {info['mpi']}; MPI settings: {info['mpi_settings']}")
    print(f"command: {info['command']}")
    if args.cluster:
        print(f"cluster: {args.cluster}, {args.np} hosts, links {args.link_rate} each way (scripts/cluster.sh); "
              f"PyTorch ranks launched torchrun-style (env://, gloo on eth0), libddp by mpirun over TCP")
    print(f"settings: models {','.join(args.model_list)}; {args.np} ranks, {args.threads} thread(s) per rank, "
          f"device {args.device}; {args.iterations} timed steps per mode in windows of {args.window}, "
          f"{args.warmup} warm-up; {args.rounds} round(s); bucket_cap_mb {args.bucket_cap_mb:g}; "
          f"ddp_bench {os.path.relpath(args.bench)}"
          + (f"; comm hooks {','.join(args.hook_list)} (powersgd rank {args.powersgd_rank}, start_powerSGD_iter "
             f"{args.powersgd_start} libddp, {max(args.powersgd_start, 2)} PyTorch)" if args.hook_list else ""))
    sys.stdout.flush()

    torch_runs, libddp_runs = [], []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="compare_torch_") as workdir:
        for r in range(args.rounds):
            log(f"round {r + 1}/{args.rounds}: PyTorch DDP ({time.monotonic() - started:.0f} s)")
            torch_runs.append(run_torch_round(args, workdir, f"r{r}"))
            log(f"round {r + 1}/{args.rounds}: libddp ddp_bench ({time.monotonic() - started:.0f} s)")
            libddp_runs.append(run_libddp_round(args, workdir, f"r{r}"))
    log(f"done in {time.monotonic() - started:.0f} s")

    summary = summarize(args, torch_runs, libddp_runs)
    print_tables(summary, args, info, args.markdown)
    if args.json_out:
        doc = {"machine": info,
               "settings": {k: getattr(args, k) for k in ("np", "threads", "iterations", "warmup", "window",
                                                          "rounds", "bucket_cap_mb", "device", "hook_list",
                                                          "powersgd_rank", "powersgd_start")}
               | {"models": args.model_list, "bench": args.bench},
               "summary": summary, "torch_runs": torch_runs, "libddp_runs": libddp_runs}
        with open(args.json_out, "w") as f:
            json.dump(doc, f, indent=1)
        print(f"\nwrote {args.json_out}")
    return 0



if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
