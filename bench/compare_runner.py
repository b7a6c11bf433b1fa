"""The two sides of bench/compare_torch.py's rounds: PyTorch DDP's worker (one process per
rank: compare_torch.py re-run with --_worker) and the driver that starts a round of it, and
libddp's ddp_bench under mpirun."""

import datetime
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

from compare_models import BATCH, build_model, make_inputs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER_SH = os.path.join(REPO, "scripts", "cluster.sh")
# The entry point, which the PyTorch ranks run with --_worker.
COMPARE_TORCH = os.path.join(REPO, "bench", "compare_torch.py")


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
# The torch side: one worker process per rank (compare_torch.py, re-run with --_worker).
# ----------------------------------------------------------------------------------------


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
        x, y = make_inputs(name, batch, device, torch)

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
    cmd = [sys.executable, COMPARE_TORCH, "--_worker", result,
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
        if args.libddp_backend == "gloo":
            # PyTorch's gloo under libddp's reducer: launched as PyTorch users launch.
            launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
                      str(args.np), "--no-python", args.bench, "--backend", "gloo"]
        else:
            launch = args.mpirun_cmd + ["--oversubscribe", "--bind-to", "none", "-np", str(args.np), args.bench]
        cmd = launch + ["--model", ",".join(models), "--mode", "local,ddp,naive" if args.naive else "local,ddp",
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
