#!/usr/bin/env python3
"""Smoke check of ddp_bench's JSON: every model and mode is present with the documented
fields and sane values. Asserts structure, never a timing."""
import json
import sys

MODELS = {"mlp", "small", "convnet", "deepsup"}
MODES = {"local", "ddp", "naive"}
RESULT_FIELDS = {"model", "mode", "median_ms", "p90_ms", "samples_per_s", "bytes_per_step", "buckets",
                 "hook_ms", "finalize_ms", "finalize_wait_ms", "hidden_fraction", "step_check_ms"}

def main(path, world_size, backend="mpi"):
    with open(path) as f:
        doc = json.load(f)
    assert doc["world_size"] == world_size, doc["world_size"]
    assert doc["backend"] == backend and doc["device"] == "cpu", (doc["backend"], doc["device"])
    seen = set()
    for r in doc["results"]:
        missing = RESULT_FIELDS - r.keys()
        assert not missing, f"result {r.get('model')}/{r.get('mode')} lacks {missing}"
        assert r["median_ms"] > 0 and r["p90_ms"] >= r["median_ms"] * 0.999, r
        seen.add((r["model"], r["mode"]))
        if r["mode"] == "ddp":
            assert r["buckets"] >= 1 and r["bytes_per_step"] > 0, r
            assert 0.0 <= r["hidden_fraction"] <= 1.0, r
        if r["mode"] == "naive":
            assert r["bytes_per_step"] > 0, r
    expected = {(m, mode) for m in MODELS for mode in MODES}
    assert seen == expected, f"missing {expected - seen}"
    ddp_bytes = {r["model"]: r["bytes_per_step"] for r in doc["results"] if r["mode"] == "ddp"}
    naive_bytes = {r["model"]: r["bytes_per_step"] for r in doc["results"] if r["mode"] == "naive"}
    assert ddp_bytes == naive_bytes, (ddp_bytes, naive_bytes)  # the same parameters either way
    assert ddp_bytes["mlp"] == 8 * (1024 * 1024 + 1024) * 4, ddp_bytes["mlp"]
    for m in doc["models"]:
        assert m["raw_allreduce_ms"] > 0 and m["floor_ms"] > 0, m
    print(f"ddp_bench JSON ok: {len(doc['results'])} results for {sorted(MODELS)}")

if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), *sys.argv[3:4])
