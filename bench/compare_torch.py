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
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

MODELS = ("mlp", "small", "convnet", "deepsup")  # "all"
COMM_HOOKS = ("allreduce", "fp16", "bf16", "powersgd", "noop")  # ddp_bench --comm-hook's names
EXTRA_MODELS = ("resnet",)                     # on request only, as in ddp_bench
BATCH = {"mlp": 32, "small": 64, "convnet": 16, "deepsup": 32, "resnet": 8}
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_SH = os.path.join(REPO, "scripts", "cluster.sh")
CLUSTER_STATE = "/run/ddp-cluster"


def log(msg):
    print(f"[compare_torch] {msg}", file=sys.stderr, flush=True)


def die(msg, rc=1):
    print(f"compare_torch.py: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(rc)


def percentile(values, q):
    """Linear interpolation between closest ranks: the same as ddp_bench's percentile()."""
    if not values:
        return 0.0
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def hook_bytes(hook, shapes, element_size, rank):
    """Bytes a hook hands its collectives per step for parameters of these shapes (all of
    `element_size`, float32 here), by the rule libddp's hooks follow and PyTorch's built-ins
    send: allreduce (and no hook) the gradients; fp16/bf16 two bytes an element; noop none;
    powersgd, per parameter of two or more dimensions seen as n x m (n = shape[0],
    m = numel / n) with r = min(rank, n, m), (n + m) r elements when n m >= 2 (n + m) r
    (min_compression_rate 2), else n m; parameters of one dimension whole. (PyTorch's
    _should_compress tests 2 (n + m) r < n m: the two differ only at equality, which none
    of the bench's models has.)"""
    numels = [_numel(s) for s in shapes]
    if hook in (None, "", "allreduce"):
        return sum(numels) * element_size
    if hook in ("fp16", "bf16"):
        return sum(numels) * 2
    if hook == "noop":
        return 0
    if hook != "powersgd":
        raise ValueError(f"unknown hook {hook!r}")
    total = 0
    for shape, numel in zip(shapes, numels):
        if len(shape) >= 2 and numel > 0:
            n = shape[0]
            m = numel // n
            r = min(rank, n, m)
            if n * m >= 2 * (n + m) * r:
                total += (n + m) * r
                continue
        total += numel
    return total * element_size


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


# ----------------------------------------------------------------------------------------
# The torch side: one worker process per rank (this script, re-run with --_worker).
# ----------------------------------------------------------------------------------------


def build_model(name, torch):
    """The models of bench/bench_models.h, registered in the same order (DDP's bucket
    order follows registration order), and each model's loss."""
    nn = torch.nn
    F = torch.nn.functional

    class Mlp(nn.Module):  # 8 x Linear(1024, 1024), ReLU between
        def __init__(self):
            super().__init__()
            self.layers = []
            for i in range(8):
                layer = nn.Linear(1024, 1024)
                self.add_module(f"fc{i}", layer)
                self.layers.append(layer)

        def forward(self, x):
            for i, layer in enumerate(self.layers):
                x = layer(x)
                if i + 1 < len(self.layers):
                    x = torch.relu(x)
            return x

    class Small(nn.Module):  # 400 x Linear(32, 32) with Tanh
        def __init__(self):
            super().__init__()
            self.layers = []
            for i in range(400):
                layer = nn.Linear(32, 32)
                self.add_module(f"l{i}", layer)
                self.layers.append(layer)

        def forward(self, x):
            for layer in self.layers:
                x = torch.tanh(layer(x))
            return x

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()

            def conv(i, o, s):
                return nn.Conv2d(i, o, 3, stride=s, padding=1, bias=False)

            self.c1 = conv(3, 32, 1)
            self.b1 = nn.BatchNorm2d(32)
            self.c2 = conv(32, 64, 2)
            self.b2 = nn.BatchNorm2d(64)
            self.c3 = conv(64, 64, 2)
            self.b3 = nn.BatchNorm2d(64)
            self.fc = nn.Linear(64, 10)

        def forward(self, x):
            x = torch.relu(self.b1(self.c1(x)))
            x = torch.relu(self.b2(self.c2(x)))
            x = torch.relu(self.b3(self.c3(x)))
            return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))

    def conv(i, o, k, s):
        return nn.Conv2d(i, o, k, stride=s, padding=k // 2, bias=False)

    class BasicBlock(nn.Module):  # bench_models.h's BasicBlockImpl, same registration order
        def __init__(self, i, o, s):
            super().__init__()
            self.c1 = conv(i, o, 3, s)
            self.b1 = nn.BatchNorm2d(o)
            self.c2 = conv(o, o, 3, 1)
            self.b2 = nn.BatchNorm2d(o)
            self.down = self.bd = None
            if s != 1 or i != o:
                self.down = conv(i, o, 1, s)
                self.bd = nn.BatchNorm2d(o)

        def forward(self, x):
            y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(y + (self.bd(self.down(x)) if self.down is not None else x))

    class ResNet(nn.Module):  # ResNet-18's shape at half width (bench_models.h)
        def __init__(self):
            super().__init__()
            self.stem = conv(3, 32, 3, 1)
            self.bn = nn.BatchNorm2d(32)
            self.blocks = []
            i = 32
            for stage in range(4):
                o = 32 << stage
                for b in range(2):
                    block = BasicBlock(i, o, 2 if b == 0 and stage > 0 else 1)
                    self.add_module(f"layer{stage + 1}_{b}", block)
                    self.blocks.append(block)
                    i = o
            self.fc = nn.Linear(i, 10)

        def forward(self, x):
            x = torch.relu(self.bn(self.stem(x)))
            for b in self.blocks:
                x = b(x)
            return self.fc(F.adaptive_avg_pool2d(x, (1, 1)).flatten(1))

    class DeepSup(nn.Module):  # trunk + a head per depth; `debug` is never called
        def __init__(self):
            super().__init__()
            self.trunk, self.heads = [], []
            for i in range(6):
                t, h = nn.Linear(256, 256), nn.Linear(256, 10)
                self.add_module(f"trunk{i}", t)
                self.add_module(f"head{i}", h)
                self.trunk.append(t)
                self.heads.append(h)
            self.debug = nn.Linear(256, 256)

        def forward(self, x):
            outs = []
            for t, h in zip(self.trunk, self.heads):
                x = torch.relu(t(x))
                outs.append(h(x))
            return outs

    def deepsup_loss(outs, y, i):
        # Heads 0..4 rotate in and out of the loss; head 5 is computed but never used.
        loss = F.cross_entropy(outs[4], y)
        for k in range(4):
            if (i + k) % 3 != 0:
                loss = loss + 0.3 * F.cross_entropy(outs[k], y)
        return loss

    class DeepSupWithLoss(nn.Module):
        """PyTorch DDP (even with find_unused_parameters=True) requires every output of
        forward to take part in the loss: it marks parameters used by walking the graph
        from the outputs, so a returned-but-unused head would be waited for forever
        ("Expected to have finished reduction in the prior iteration"). The loss is
        therefore computed inside forward; the computation is the same as the C++
        trainer's (all six heads run, the loss uses the scheduled ones)."""

        def __init__(self):
            super().__init__()
            self.net = DeepSup()

        def forward(self, x, y, i):
            return deepsup_loss(self.net(x), y, i)

    if name == "mlp":
        return Mlp, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "small":
        return Small, lambda model, x, y, i: model(x).pow(2).mean()
    if name == "convnet":
        return ConvNet, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "resnet":
        return ResNet, lambda model, x, y, i: F.cross_entropy(model(x), y)
    if name == "deepsup":
        return DeepSupWithLoss, lambda model, x, y, i: model(x, y, i)
    raise ValueError(f"unknown model {name!r}")


def worker_main(args):
    import warnings

    warnings.filterwarnings("ignore")
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    torch.set_num_threads(args.threads)
    cuda = args.device == "cuda"
    if cuda:
        local = rank % torch.cuda.device_count()
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    backend = "nccl" if cuda else "gloo"
    init_kwargs = dict(backend=backend, rank=rank, world_size=world,
                       timeout=datetime.timedelta(seconds=max(60, args.timeout)))
    if cuda:
        init_kwargs["device_id"] = device
    dist.init_process_group(**init_kwargs)

    def sync():
        if cuda:
            torch.cuda.synchronize()

    def link_counters():
        if not args.link_dev:
            return 0, 0
        base = f"/sys/class/net/{args.link_dev}/statistics/"
        with open(base + "tx_bytes") as tx, open(base + "rx_bytes") as rx:
            return int(tx.read()), int(rx.read())

    def mean_over_ranks(values):
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return (t / world).tolist()

    def register_hook(model, hook):
        """PyTorch's built-in hook of ddp_bench's name for it."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if hook == "allreduce":
            model.register_comm_hook(None, default_hooks.allreduce_hook)
        elif hook == "fp16":
            model.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif hook == "bf16":
            model.register_comm_hook(None, default_hooks.bf16_compress_hook)
        elif hook == "noop":
            def noop_hook(state, bucket):
                fut = torch.futures.Future()
                fut.set_result(bucket.buffer())
                return fut

            model.register_comm_hook(None, noop_hook)
        elif hook == "powersgd":
            # PyTorch refuses start_powerSGD_iter <= 1 with error feedback or warm start
            # (DDP rebuilds its buckets after the first iteration): at least 2.
            state = powerSGD_hook.PowerSGDState(process_group=None, matrix_approximation_rank=args.powersgd_rank,
                                                start_powerSGD_iter=max(args.powersgd_start, 2),
                                                min_compression_rate=2, use_error_feedback=True, warm_start=True)
            if cuda:
                model.register_comm_hook(state, powerSGD_hook.powerSGD_hook)
            else:
                # On gloo the stock hook breaks with two or more buckets: it issues each
                # bucket's P and Q all-reduces from completion callbacks (gloo's threads) while
                # the autograd thread issues the next bucket's, so the ranks issue them in
                # different orders ("Received data size doesn't match expected size ... collective
                # mismatch", or a hang). Waiting for each bucket's chain inside its hook keeps the
                # order, at the cost of that bucket's overlap with the rest of backward.
                def serialized_powersgd_hook(state, bucket):
                    fut = powerSGD_hook.powerSGD_hook(state, bucket)
                    fut.wait()
                    return fut

                model.register_comm_hook(state, serialized_powersgd_hook)
        else:
            raise ValueError(f"unknown hook {hook!r}")

    hooks = args.hook_list

    def timed_allreduce_hook(log, state, bucket):
        """The default all-reduce (divide, then sum), timed: when DDP handed the bucket
        over, and when its future completed."""
        handed = time.perf_counter()
        fut = dist.all_reduce(bucket.buffer().div_(world), async_op=True).get_future()

        def done(f):
            log.append((handed, time.perf_counter()))
            return f.value()[0]

        return fut.then(done)

    out = {"world_size": world, "backend": backend, "device": args.device,
           "threads_per_rank": args.threads, "torch": torch.__version__, "models": {}}
    for name in args.models.split(","):
        ctor, loss_fn = build_model(name, torch)
        batch = BATCH[name]
        torch.manual_seed(100 + rank)  # every rank its own data, as in ddp_bench
        if name == "mlp":
            x = torch.randn(batch, 1024, device=device)
            y = torch.randint(1024, (batch,), device=device)
        elif name == "small":
            x = torch.randn(batch, 32, device=device)
            y = None
        elif name in ("convnet", "resnet"):
            x = torch.randn(batch, 3, 32, 32, device=device)
            y = torch.randint(10, (batch,), device=device)
        else:
            x = torch.randn(batch, 256, device=device)
            y = torch.randint(10, (batch,), device=device)

        trainers = []
        param_bytes = 0
        shapes, element_size = [], 4
        # The hookless DDP, then one DDP per hook ("ddp+fp16"), as ddp_bench orders them.
        for mode in ["local", "ddp"] + [f"ddp+{h}" for h in hooks]:
            torch.manual_seed(1)
            net = ctor().to(device)
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            trainable = [p for p in net.parameters() if p.requires_grad]
            param_bytes = sum(p.numel() * p.element_size() for p in trainable)
            shapes = [list(p.shape) for p in trainable]
            element_size = trainable[0].element_size() if trainable else 4
            model = net
            if mode.startswith("ddp"):
                model = DDP(net, device_ids=[device.index] if cuda else None,
                            bucket_cap_mb=args.bucket_cap_mb,
                            find_unused_parameters=(name == "deepsup"))
                if "+" in mode:
                    register_hook(model, mode.split("+", 1)[1])

            def step(i, model=model, opt=opt):
                opt.zero_grad()
                loss_fn(model, x, y, i).backward()
                opt.step()

            trainers.append({"mode": mode, "step": step, "windows": [], "model": model, "tx": 0, "rx": 0, "s": 0.0})

        it = 0
        for t in trainers:
            for _ in range(args.warmup):
                t["step"](it)
                it += 1
        sync()
        windows = max(1, args.iterations // args.window)
        for _ in range(windows):
            for t in trainers:
                dist.barrier()
                tx0, rx0 = link_counters()
                start = time.perf_counter()
                for _ in range(args.window):
                    t["step"](it)
                    it += 1
                sync()
                elapsed = time.perf_counter() - start
                t["windows"].append(elapsed * 1000.0 / args.window)
                tx1, rx1 = link_counters()
                t["tx"] += tx1 - tx0
                t["rx"] += rx1 - rx0
                t["s"] += elapsed

        # PyTorch DDP's overlap, from a timeline as libddp's is: a third trainer, untimed,
        # whose comm hook logs each bucket's all-reduce; backward's compute ends at the
        # last bucket's hand-over (the last gradient is ready then). Its buckets' wall
        # time is the union of [hand-over, completion]; the hidden share is the part of it
        # before backward's end.
        timeline = {"hidden_fraction": -1.0, "comm_ms": -1.0}
        if args.timeline_steps > 0 and not cuda:
            torch.manual_seed(1)
            net = ctor().to(device)
            opt = torch.optim.SGD(net.parameters(), lr=0.01)
            model = DDP(net, bucket_cap_mb=args.bucket_cap_mb, find_unused_parameters=(name == "deepsup"))
            log = []
            model.register_comm_hook(None, lambda state, bucket: timed_allreduce_hook(log, state, bucket))
            total = hidden = 0.0
            for k in range(2 + args.timeline_steps):
                del log[:]
                opt.zero_grad()
                loss_fn(model, x, y, it).backward()
                opt.step()
                it += 1
                if k < 2 or not log:
                    continue
                end_of_compute = max(h for h, _ in log)
                spans = sorted(log)
                merged = [list(spans[0])]
                for a, b in spans[1:]:
                    if a <= merged[-1][1]:
                        merged[-1][1] = max(merged[-1][1], b)
                    else:
                        merged.append([a, b])
                total += sum(b - a for a, b in merged)
                hidden += sum(max(0.0, min(b, end_of_compute) - a) for a, b in merged)
            if total > 0:
                timeline = {"hidden_fraction": hidden / total, "comm_ms": 1000.0 * total / args.timeline_steps}
            del model, net, opt

        # One raw all-reduce of the model's parameter bytes: gloo's (or NCCL's) share.
        buf = torch.ones(max(1, param_bytes // 4), dtype=torch.float32, device=device)
        raw = []
        for rep in range(12):
            dist.barrier()
            sync()
            t0 = time.perf_counter()
            dist.all_reduce(buf)
            sync()
            if rep >= 2:
                raw.append((time.perf_counter() - t0) * 1000.0)
        del buf

        entry = {"batch": batch, "parameter_bytes": param_bytes,
                 "raw_allreduce_ms": percentile(raw, 0.5), "modes": {}}
        for t in trainers:
            tx, rx = mean_over_ranks([t["tx"] / t["s"], t["rx"] / t["s"]])
            entry["modes"][t["mode"]] = {"median_ms": percentile(t["windows"], 0.5),
                                         "p90_ms": percentile(t["windows"], 0.9),
                                         "windows_ms": t["windows"],
                                         "link_tx_bytes_per_s": tx, "link_rx_bytes_per_s": rx}
            if "+" in t["mode"]:
                hook = t["mode"].split("+", 1)[1]
                entry["modes"][t["mode"]]["comm_hook"] = hook
                entry["modes"][t["mode"]]["bytes_per_step"] = hook_bytes(hook, shapes, element_size,
                                                                         args.powersgd_rank)
        entry["modes"]["ddp"].update(timeline)
        out["models"][name] = entry
        del trainers
        dist.barrier()

    if rank == 0:
        with open(args._worker, "w") as f:
            json.dump(out, f)
    dist.barrier()
    dist.destroy_process_group()
    return 0


# ----------------------------------------------------------------------------------------
# The driver.
# ----------------------------------------------------------------------------------------


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_group(proc):
    """Ends a child started here in its own session, with everything it started."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def tail(path, n=40):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_torch_round(args, workdir, tag):
    """One PyTorch DDP run of every model: --np processes on 127.0.0.1, or one per host of
    the cluster (launched torchrun-style by cluster.sh)."""
    result = os.path.join(workdir, f"torch_{tag}.json")
    cmd = [sys.executable, os.path.abspath(__file__), "--_worker", result,
           "--models", ",".join(args.model_list), "--threads", str(args.threads),
           "--iterations", str(args.iterations), "--warmup", str(args.warmup),
           "--window", str(args.window), "--bucket-cap-mb", str(args.bucket_cap_mb),
           "--device", args.device, "--timeout", str(args.timeout),
           "--timeline-steps", str(args.timeline_steps)]
    if args.link_dev:
        cmd += ["--link-dev", args.link_dev]
    if args.comm_hook:
        cmd += ["--comm-hook", ",".join(args.hook_list), "--powersgd-rank", str(args.powersgd_rank),
                "--powersgd-start", str(args.powersgd_start)]
    if args.cluster:
        cmd = [CLUSTER_SH, "--name", args.cluster, "run", "--launch", "env", "--"] + cmd
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore",
                   CLUSTER_TIMEOUT_S=str(args.timeout))
        logpath = os.path.join(workdir, f"torch_{tag}.cluster.log")
        with open(logpath, "w") as lf:
            proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout + 30)
        except subprocess.TimeoutExpired:
            rc = "timeout"
        kill_group(proc)
        if rc != 0 or not os.path.exists(result):
            print(f"--- PyTorch DDP on cluster {args.cluster} (tail) ---\n{tail(logpath)}", file=sys.stderr)
            die(f"the PyTorch DDP run ({tag}) on cluster {args.cluster} failed: status {rc}")
        if args.verbose:
            print(tail(logpath, 200), file=sys.stderr)
        with open(result) as f:
            return json.load(f)
    port = free_port()
    procs, logs = [], []
    for rank in range(args.np):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE=str(args.np), LOCAL_RANK=str(rank),
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo",
                   OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
        logpath = os.path.join(workdir, f"torch_{tag}.rank{rank}.log")
        logs.append(logpath)
        with open(logpath, "w") as lf:
            procs.append(subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT,
                                          start_new_session=True))
    deadline = time.monotonic() + args.timeout
    failed = None
    while any(p.poll() is None for p in procs):
        bad = [r for r, p in enumerate(procs) if p.returncode not in (None, 0)]
        if bad:
            failed = f"rank {bad[0]} exited with status {procs[bad[0]].returncode}"
            break
        if time.monotonic() > deadline:
            failed = f"timed out after {args.timeout} s"
            break
        time.sleep(0.1)
    for p in procs:
        kill_group(p)
    if failed is None:
        bad = [r for r, p in enumerate(procs) if p.returncode != 0]
        if bad:
            failed = f"rank {bad[0]} exited with status {procs[bad[0]].returncode}"
    if failed is None and not os.path.exists(result):
        failed = "rank 0 wrote no result"
    if failed:
        for r, lp in enumerate(logs):
            t = tail(lp)
            if t:
                print(f"--- PyTorch DDP rank {r} output (tail) ---\n{t}", file=sys.stderr)
        die(f"the PyTorch DDP run ({tag}) failed: {failed}")
    if args.verbose:
        print(tail(logs[0], 200), file=sys.stderr)
    with open(result) as f:
        return json.load(f)


def bench_groups(args):
    """ddp_bench invocations of one round: deepsup needs find_unused_parameters (in PyTorch
    too), the others run without it, as PyTorch DDP's default."""
    plain = [m for m in args.model_list if m != "deepsup"]
    groups = []
    if plain:
        groups.append((plain, False))
    if "deepsup" in args.model_list:
        groups.append((["deepsup"], True))
    return groups


def run_libddp_round(args, workdir, tag):
    merged = {"results": [], "models": []}
    for i, (models, find_unused) in enumerate(bench_groups(args)):
        jpath = os.path.join(workdir, f"libddp_{tag}_{i}.json")
        cmd = args.mpirun_cmd + ["--oversubscribe", "--bind-to", "none", "-np", str(args.np), args.bench,
                                 "--model", ",".join(models), "--mode", "local,ddp,naive" if args.naive else "local,ddp",
                                 "--iterations", str(args.iterations), "--warmup", str(args.warmup),
                                 "--window", str(args.window), "--threads", str(args.threads),
                                 "--bucket-cap-mb", str(args.bucket_cap_mb), "--device", args.device,
                                 "--json", jpath]
        if find_unused:
            cmd.append("--find-unused")
        if args.link_dev:
            cmd += ["--link-dev", args.link_dev]
        if args.comm_hook:
            cmd += ["--comm-hook", ",".join(args.hook_list), "--powersgd-rank", str(args.powersgd_rank),
                    "--powersgd-start", str(args.powersgd_start)]
        env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
                   OMP_NUM_THREADS=str(args.threads))
        logpath = os.path.join(workdir, f"libddp_{tag}_{i}.log")
        with open(logpath, "w") as lf:
            proc = subprocess.Popen(cmd, env=env, stdout=lf, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            kill_group(proc)
            print(f"--- ddp_bench output (tail) ---\n{tail(logpath)}", file=sys.stderr)
            die(f"ddp_bench ({tag}) timed out after {args.timeout} s: {shlex.join(cmd)}")
        kill_group(proc)
        if rc != 0 or not os.path.exists(jpath):
            print(f"--- ddp_bench output (tail) ---\n{tail(logpath)}", file=sys.stderr)
            why = f"exited with status {rc}" if rc != 0 else f"wrote no JSON at {jpath}"
            die(f"ddp_bench ({tag}) {why}: {shlex.join(cmd)}")
        if args.verbose:
            print(tail(logpath, 200), file=sys.stderr)
        with open(jpath) as f:
            data = json.load(f)
        for key in ("world_size", "backend", "device", "threads_per_rank"):
            merged.setdefault(key, data.get(key))
        merged["results"] += data.get("results", [])
        merged["models"] += data.get("models", [])
    return merged


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


def med(values):
    return statistics.median(values) if values else float("nan")


def summarize(args, torch_runs, libddp_runs):
    summary = {}
    for name in args.model_list:
        s = {"torch": {}, "libddp": {}}
        for mode in ("local", "ddp"):
            tv = [r["models"][name]["modes"][mode] for r in torch_runs]
            s["torch"][mode] = {"median_ms": med([v["median_ms"] for v in tv]),
                                "p90_ms": med([v["p90_ms"] for v in tv]),
                                "rounds_ms": [v["median_ms"] for v in tv]}
            lv = [next(x for x in r["results"] if x["model"] == name and x["mode"] == mode) for r in libddp_runs]
            s["libddp"][mode] = {"median_ms": med([v["median_ms"] for v in lv]),
                                 "p90_ms": med([v["p90_ms"] for v in lv]),
                                 "rounds_ms": [v["median_ms"] for v in lv]}
        if args.naive:
            lv = [next(x for x in r["results"] if x["model"] == name and x["mode"] == "naive") for r in libddp_runs]
            s["libddp"]["naive"] = {"median_ms": med([v["median_ms"] for v in lv]),
                                    "p90_ms": med([v["p90_ms"] for v in lv]),
                                    "rounds_ms": [v["median_ms"] for v in lv],
                                    "link_tx_bytes_per_s": med([v.get("link_tx_bytes_per_s", 0) for v in lv])}
        for mode in ("local", "ddp"):
            s["torch"][mode]["link_tx_bytes_per_s"] = med(
                [r["models"][name]["modes"][mode].get("link_tx_bytes_per_s", 0) for r in torch_runs])
            s["libddp"][mode]["link_tx_bytes_per_s"] = med(
                [next(x for x in r["results"] if x["model"] == name and x["mode"] == mode).get("link_tx_bytes_per_s", 0)
                 for r in libddp_runs])
        tddp = [r["models"][name]["modes"]["ddp"] for r in torch_runs]
        s["torch"]["hidden_fraction"] = med([v.get("hidden_fraction", -1) for v in tddp])
        s["torch"]["comm_ms"] = med([v.get("comm_ms", -1) for v in tddp])
        s["torch"]["raw_allreduce_ms"] = med([r["models"][name]["raw_allreduce_ms"] for r in torch_runs])
        lm = [next(x for x in r["models"] if x["model"] == name) for r in libddp_runs]
        s["libddp"]["raw_allreduce_ms"] = med([m["raw_allreduce_ms"] for m in lm])
        s["libddp"]["bucketed_allreduce_ms"] = med([m["bucketed_allreduce_ms"] for m in lm])
        s["libddp"]["floor_ms"] = med([m["floor_ms"] for m in lm])
        lddp = [next(x for x in r["results"] if x["model"] == name and x["mode"] == "ddp") for r in libddp_runs]
        s["libddp"]["buckets"] = lddp[-1]["buckets"]
        s["libddp"]["bytes_per_step"] = lddp[-1]["bytes_per_step"]
        s["libddp"]["hook_ms"] = med([x["hook_ms"] for x in lddp])
        s["libddp"]["finalize_ms"] = med([x["finalize_ms"] for x in lddp])
        s["libddp"]["hidden_fraction"] = med([x["hidden_fraction"] for x in lddp])
        s["libddp"]["comm_ms"] = med([x.get("comm_ms", -1) for x in lddp])
        s["parameter_bytes"] = torch_runs[-1]["models"][name]["parameter_bytes"]
        s["batch_per_rank"] = torch_runs[-1]["models"][name]["batch"]
        if args.hook_list:
            s["comm_hooks"] = summarize_hooks(args, name, s, torch_runs, libddp_runs)
        for side in ("torch", "libddp"):
            loc, ddp = s[side]["local"]["median_ms"], s[side]["ddp"]["median_ms"]
            s[side]["overhead_ms"] = ddp - loc
            s[side]["overhead_pct"] = 100.0 * (ddp / loc - 1.0) if loc > 0 else float("nan")
        s["torch"]["floor_ms"] = s["torch"]["local"]["median_ms"] + s["torch"]["raw_allreduce_ms"]
        t_ddp, l_ddp = s["torch"]["ddp"]["median_ms"], s["libddp"]["ddp"]["median_ms"]
        s["step_ratio"] = l_ddp / t_ddp if t_ddp > 0 else float("nan")
        t_ov, l_ov = s["torch"]["overhead_ms"], s["libddp"]["overhead_ms"]
        s["overhead_ratio"] = l_ov / t_ov if t_ov > 0 else float("nan")
        summary[name] = s
    return summary


def summarize_hooks(args, name, s, torch_runs, libddp_runs):
    """Per hook (and "none": the hookless DDP of the same runs): both sides' step times,
    medians over the rounds, their ratio, and the bytes each sends per step."""
    plain_bytes = s["parameter_bytes"]
    out = {}
    for hook in ["none"] + args.hook_list:
        mode = "ddp" if hook == "none" else f"ddp+{hook}"
        tv = [r["models"][name]["modes"][mode] for r in torch_runs]
        lv = [next(x for x in r["results"] if x["model"] == name and x["mode"] == mode) for r in libddp_runs]
        h = {"torch": {"median_ms": med([v["median_ms"] for v in tv]), "p90_ms": med([v["p90_ms"] for v in tv]),
                       "rounds_ms": [v["median_ms"] for v in tv],
                       # computed from the shapes (hook_bytes): PyTorch counts nothing
                       "bytes_per_step": tv[-1].get("bytes_per_step", plain_bytes)},
             "libddp": {"median_ms": med([v["median_ms"] for v in lv]), "p90_ms": med([v["p90_ms"] for v in lv]),
                        "rounds_ms": [v["median_ms"] for v in lv],
                        "comm_hook": lv[-1].get("comm_hook", ""),
                        # measured: ReducerStats::hook_bytes_per_iteration (bytes_per_iteration without a hook)
                        "bytes_per_step": lv[-1].get("bytes_sent_per_step", lv[-1]["bytes_per_step"]),
                        "allreduce_bytes_per_step": lv[-1]["bytes_per_step"]}}
        t_ms, l_ms = h["torch"]["median_ms"], h["libddp"]["median_ms"]
        h["step_ratio"] = l_ms / t_ms if t_ms > 0 else float("nan")
        lb = h["libddp"]["allreduce_bytes_per_step"]
        h["libddp"]["bytes_vs_allreduce"] = h["libddp"]["bytes_per_step"] / lb if lb > 0 else float("nan")
        h["torch"]["bytes_vs_allreduce"] = h["torch"]["bytes_per_step"] / plain_bytes if plain_bytes else float("nan")
        # libddp's measured figure against the rule's (1.0: the hook sent what the rule says).
        h["libddp"]["bytes_vs_rule"] = (h["libddp"]["bytes_per_step"] / h["torch"]["bytes_per_step"]
                                        if h["torch"]["bytes_per_step"] > 0 else float("nan"))
        out[hook] = h
    return out


def hook_rows(s):
    def mib(b):
        return fmt(b / 1048576.0, ".3f")

    def ratio(v):
        return fmt(v, ".4f") + (f" (1/{1 / v:.1f})" if v == v and 0 < v < 0.99 else "")

    rows = []
    for hook, h in s["comm_hooks"].items():
        t, l = h["torch"], h["libddp"]
        rows.append((hook, fmt(t["median_ms"]), fmt(l["median_ms"]), fmt(h["step_ratio"]),
                     mib(t["bytes_per_step"]), mib(l["bytes_per_step"]), ratio(t["bytes_vs_allreduce"]),
                     ratio(l["bytes_vs_allreduce"])))
    return rows


def print_hook_table(name, s, args, markdown):
    head = ("hook", "PyTorch ms", "libddp ms", "libddp/torch", "PyTorch MiB/step", "libddp MiB/step",
            "PyTorch vs allreduce", "libddp vs allreduce")
    rows = hook_rows(s)
    start = max(args.powersgd_start, 2)
    title = (f"model {name}, communication hooks: step medians over {args.rounds} round(s); MiB sent per step "
             f"(PyTorch: computed from the shapes; libddp: measured, ReducerStats::hook_bytes_per_iteration); "
             f"\"none\": DDP without a hook, the same runs")
    print()
    if markdown:
        print(f"**{title}**\n")
        print("| " + " | ".join(head) + " |")
        print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
        print()
    else:
        print(title)
        w = [max(len(head[i]), max(len(r[i]) for r in rows)) for i in range(len(head))]
        print("  " + "  ".join(f"{head[i]:<{w[i]}}" if i == 0 else f"{head[i]:>{w[i]}}" for i in range(len(head))))
        for r in rows:
            print("  " + "  ".join(f"{r[i]:<{w[i]}}" if i == 0 else f"{r[i]:>{w[i]}}" for i in range(len(head))))
    for hook, h in s["comm_hooks"].items():
        if hook == "none":
            continue
        l = h["libddp"]
        per_round = lambda side: ", ".join(fmt(v) for v in h[side]["rounds_ms"])  # noqa: E731
        print(f"  {hook}: libddp {l['comm_hook']}; per round (ms) PyTorch {per_round('torch')} | "
              f"libddp {per_round('libddp')}; libddp sent {fmt(l['bytes_vs_rule'], '.3f')} x the rule's bytes"
              + (f"; PyTorch PowerSGDState(matrix_approximation_rank={args.powersgd_rank}, "
                 f"start_powerSGD_iter={start}, min_compression_rate=2, use_error_feedback=True, warm_start=True)"
                 + (", each bucket's chain waited in its hook (on gloo the stock hook's callbacks issue "
                    "the ranks' collectives in different orders with two or more buckets)"
                    if args.device == "cpu" else "")
                 if hook == "powersgd" else ""))


def fmt(v, spec=".2f"):
    if v is None or v != v:  # None or NaN
        return "n/a"
    return format(v, spec)


def table_rows(s, args):
    t, l = s["torch"], s["libddp"]
    mib = s["parameter_bytes"] / 1048576.0
    ratio = lambda a, b: b / a if a > 0 else float("nan")  # noqa: E731 (libddp / torch)
    rows = [
        ("step median, DDP (ms)", fmt(t["ddp"]["median_ms"]), fmt(l["ddp"]["median_ms"]),
         fmt(s["step_ratio"]) + " (libddp/torch)"),
        ("step p90, DDP (ms)", fmt(t["ddp"]["p90_ms"]), fmt(l["ddp"]["p90_ms"]),
         fmt(ratio(t["ddp"]["p90_ms"], l["ddp"]["p90_ms"]))),
        ("step median, no DDP (ms)", fmt(t["local"]["median_ms"]), fmt(l["local"]["median_ms"]),
         fmt(ratio(t["local"]["median_ms"], l["local"]["median_ms"]))),
        ("DDP overhead (ms)", fmt(t["overhead_ms"]), fmt(l["overhead_ms"]),
         fmt(s["overhead_ratio"]) + " (overhead ratio)"),
        ("DDP overhead (% of no-DDP step)", fmt(t["overhead_pct"], ".0f") + "%",
         fmt(l["overhead_pct"], ".0f") + "%", ""),
        (f"raw all-reduce of {mib:.2f} MiB (ms)", fmt(t["raw_allreduce_ms"]) + " gloo" if args.device == "cpu"
         else fmt(t["raw_allreduce_ms"]) + " nccl", fmt(l["raw_allreduce_ms"]) + " " + args.libddp_backend,
         fmt(ratio(t["raw_allreduce_ms"], l["raw_allreduce_ms"]))),
        ("floor: no-DDP step + raw all-reduce (ms)", fmt(t["floor_ms"]), fmt(l["floor_ms"]),
         fmt(ratio(t["floor_ms"], l["floor_ms"]))),
        ("DDP step / own floor", fmt(ratio(t["floor_ms"], t["ddp"]["median_ms"])),
         fmt(ratio(l["floor_ms"], l["ddp"]["median_ms"])), ""),
    ]
    pct = lambda v: fmt(v * 100, ".0f") + "%" if v is not None and v >= 0 else "n/a"  # noqa: E731
    ms = lambda v: fmt(v) if v is not None and v >= 0 else "n/a"  # noqa: E731
    if args.naive:
        rows.insert(3, ("step median, naive loop (ms)", "-", fmt(l["naive"]["median_ms"]),
                        fmt(l["naive"]["median_ms"] / l["ddp"]["median_ms"]) + " (naive/libddp)"))
    if args.timeline_steps > 0 and args.device == "cpu":
        rows.append(("communication hidden behind backward (timeline)", pct(t["hidden_fraction"]),
                     pct(l["hidden_fraction"]), ""))
        rows.append(("communication per step (timeline, ms)", ms(t["comm_ms"]), ms(l["comm_ms"]),
                     fmt(ratio(t["comm_ms"], l["comm_ms"])) if t["comm_ms"] > 0 and l["comm_ms"] > 0 else ""))
    if args.link_dev:
        def link(v):
            g = v * 8 / 1e9
            return fmt(g, ".3f") + (f" ({100 * g / args.link_gbit:.0f}%)" if args.link_gbit else "")
        rate = f"{args.link_gbit:g} Gbit/s link" if args.link_gbit else "unshaped"
        rows.append((f"{args.link_dev} tx per rank, DDP (Gbit/s, % of {rate})", link(t["ddp"]["link_tx_bytes_per_s"]),
                     link(l["ddp"]["link_tx_bytes_per_s"]), ""))
        if args.naive:
            rows.append((f"{args.link_dev} tx per rank, naive loop (Gbit/s)", "-",
                         link(l["naive"]["link_tx_bytes_per_s"]), ""))
    return rows


def print_tables(summary, args, info, markdown):
    torch_hdr = f"PyTorch DDP ({'gloo' if args.device == 'cpu' else 'nccl'})"
    libddp_hdr = f"libddp ({args.libddp_backend})"
    for name, s in summary.items():
        t, l = s["torch"], s["libddp"]
        title = (f"model {name}: {s['parameter_bytes'] / 4 / 1e6:.2f} M parameters "
                 f"({s['parameter_bytes'] / 1048576.0:.2f} MiB), batch {s['batch_per_rank']} per rank, "
                 f"{args.np} ranks" + (f" on {args.np} hosts of cluster {args.cluster} ({args.link_rate})"
                                       if args.cluster else "")
                 + f", {args.threads} thread(s) per rank, bucket_cap_mb {args.bucket_cap_mb:g}"
                 + (", find_unused_parameters" if name == "deepsup" else ""))
        rows = table_rows(s, args)
        head = ("", torch_hdr, libddp_hdr, "ratio")
        print()
        if markdown:
            print(f"**{title}**\n")
            print("| " + " | ".join(head) + " |")
            print("|" + "|".join(["---"] + ["---:"] * 3) + "|")
            for r in rows:
                print("| " + " | ".join(r) + " |")
            print()
        else:
            print(title)
            w0 = max(len(r[0]) for r in rows)
            w1 = max(len(head[1]), max(len(r[1]) for r in rows))
            w2 = max(len(head[2]), max(len(r[2]) for r in rows))
            print(f"  {head[0]:<{w0}}  {head[1]:>{w1}}  {head[2]:>{w2}}  {head[3]}")
            for r in rows:
                print(f"  {r[0]:<{w0}}  {r[1]:>{w1}}  {r[2]:>{w2}}  {r[3]}")
        per_round = lambda side, mode: ", ".join(fmt(v) for v in s[side][mode]["rounds_ms"])  # noqa: E731
        print(f"  per round (ms): PyTorch DDP {per_round('torch', 'ddp')} | no DDP {per_round('torch', 'local')}; "
              f"libddp {per_round('libddp', 'ddp')} | no DDP {per_round('libddp', 'local')}"
              + (f" | naive {per_round('libddp', 'naive')}" if args.naive else ""))
        hidden = l["hidden_fraction"]
        print(f"  libddp: {l['buckets']} buckets, hooks {fmt(l['hook_ms'])} ms/step, finalize "
              f"{fmt(l['finalize_ms'])} ms/step, collectives hidden behind backward "
              f"{fmt(hidden * 100, '.0f') + '%' if hidden is not None and hidden >= 0 else 'n/a'}, "
              f"same bytes in its buckets {fmt(l['bucketed_allreduce_ms'])} ms")
        if l["bytes_per_step"] and l["bytes_per_step"] != s["parameter_bytes"]:
            print(f"  note: libddp reduces {l['bytes_per_step']} bytes a step, the model has "
                  f"{s['parameter_bytes']} parameter bytes")
        if "comm_hooks" in s:
            print_hook_table(name, s, args, markdown)


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
    args.libddp_backend = "nccl" if args.device == "cuda" else "mpi"

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
