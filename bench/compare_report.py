"""bench/compare_torch.py's report: the rounds' results summarised per model (medians over
the rounds, ratios, overheads, the hooks' bytes) and printed as tables, plain or markdown."""

import statistics


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
