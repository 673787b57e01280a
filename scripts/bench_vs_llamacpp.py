#!/usr/bin/env python3
"""llmhost against llama.cpp on this machine: the same model files, thread counts and test
lengths, measured by llama-bench and by `llmhost bench` (which copies llama-bench's method),
run alternately so that both see the same machine state, reported as ratios.

    scripts/bench_vs_llamacpp.py                          # 4 models x threads 1,2 x pp512, tg128
    scripts/bench_vs_llamacpp.py --models smollm2-135m -t 1 -p 64 -n 16
    scripts/bench_vs_llamacpp.py --bandwidth              # also: decode GB/s vs memory bandwidth
    LLAMACPP_BIN=/path/to/llama.cpp/build/bin scripts/bench_vs_llamacpp.py --no-build

Steps:
1. llama.cpp: `../shared/anchor/build-llamacpp.sh` (llama.cpp b11312, from the PyPI sdist of
   llama-cpp-python; idempotent), unless LLAMACPP_BIN names a directory holding llama-bench.
2. Models: `scripts/fetch_models.py --path NAME` (cached, sha256-checked).
3. llmhost: `cargo build --release --workspace` (honours CARGO_TARGET_DIR; --no-build skips).
4. For each model, thread count and test (ppN: -p N -n 0; tgN: -p 0 -n N), --rounds rounds of
   llama-bench then llmhost bench (A B A B ...), each with -r REPS and JSON output. The ratio
   of a round is llmhost t/s / llama.cpp t/s (above 1: llmhost is faster); the table shows the
   median over rounds of each tool's t/s and of the per-round ratios.
5. The table, the machine (lscpu), the date, this command line and both builds go to stdout and
   into BENCHMARKS.md between the markers `<!-- bench-results:begin -->` and
   `<!-- bench-results:end -->` (--no-write: stdout only; --md FILE: another file).

--bandwidth also runs `llmhost bench --memory-bandwidth` (1 GiB buffer, best of 5) at every
thread count, and for every model's tg tests reports the weight-streaming rate (bytes of
weights per token, from llmhost's JSON, x t/s) of both engines as a share of the measured
bandwidth at the same thread count: how close decode is to its memory-bound floor.
"""

import argparse
import datetime
import json
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp import (ROOT, build_llmhost, die, git_describe, llamacpp_bin, log, lscpu,  # noqa: E402
                      int_list, model_path, run, write_md)
ALL_MODELS = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]
BEGIN = "<!-- bench-results:begin -->"
END = "<!-- bench-results:end -->"


def parse_json_tests(text, tool):
    """The test objects of llama-bench's or llmhost's `-o json` output."""
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        die(f"{tool} printed no valid JSON ({e}); its output began: {text[:300]!r}")
    if not isinstance(v, list) or not v:
        die(f"{tool} printed no test results: {text[:300]!r}")
    return v


def bench_once(tool, exe, model, threads, n_prompt, n_gen, reps, extra):
    """One invocation of llama-bench or llmhost bench for one test; returns its JSON object."""
    cmd = [exe]
    if tool == "llmhost":
        cmd += extra + ["bench"]
    cmd += ["-m", model, "-t", str(threads), "-p", str(n_prompt), "-n", str(n_gen),
            "-r", str(reps), "-o", "json"]
    tests = parse_json_tests(run(cmd, f"{tool} bench"), tool)
    for t in tests:
        if t.get("n_prompt") == n_prompt and t.get("n_gen") == n_gen:
            return t
    die(f"{tool} reported no test with n_prompt={n_prompt}, n_gen={n_gen}")


def fmt_ts(x):
    return f"{x:.2f}"


def bandwidths(exe, threads, extra, size_mib):
    cmd = [exe] + extra + ["bench", "--memory-bandwidth", "--bw-size-mib", str(size_mib),
                           "-r", "5", "-t", ",".join(str(t) for t in threads), "-o", "json"]
    runs = parse_json_tests(run(cmd, "llmhost bench --memory-bandwidth"), "llmhost")
    return {r["n_threads"]: r["best_gbps"] for r in runs}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--models", default=",".join(ALL_MODELS),
                    help=f"comma-separated names as scripts/fetch_models.py --list shows them "
                         f"(default: {','.join(ALL_MODELS)})")
    ap.add_argument("-t", "--threads", type=int_list(0), default=[1, 2],
                    help="thread counts, comma-separated (default: 1,2)")
    ap.add_argument("-p", "--n-prompt", type=int_list(0), default=[512],
                    help="prompt lengths of the pp tests (default: 512; 0: none)")
    ap.add_argument("-n", "--n-gen", type=int_list(0), default=[128],
                    help="generation lengths of the tg tests (default: 128; 0: none)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="A/B rounds per test: llama-bench then llmhost, this many times (default: 2)")
    ap.add_argument("-r", "--repetitions", type=int, default=3,
                    help="repetitions inside each invocation, -r of both tools (default: 3)")
    ap.add_argument("--kernel", help="llmhost --kernel (default: the best for this CPU)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the llmhost release binary already built instead of running cargo")
    ap.add_argument("--bandwidth", action="store_true",
                    help="also measure memory bandwidth and decode's share of it")
    ap.add_argument("--bw-size-mib", type=int, default=1024,
                    help="buffer of the bandwidth measure in MiB (default: 1024)")
    ap.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md",
                    help="file to write the results into, between its markers (default: BENCHMARKS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the file alone")
    a = ap.parse_args()
    if a.rounds < 1 or a.repetitions < 1:
        die("--rounds and --repetitions must be at least 1")
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    tests = [(p, 0) for p in a.n_prompt if p > 0] + [(0, n) for n in a.n_gen if n > 0]
    if not tests:
        die("nothing to run: every -p and -n value is 0")
    if any(t < 1 for t in a.threads):
        die("thread counts must be at least 1")
    extra = ["--kernel", a.kernel] if a.kernel else []

    bindir = llamacpp_bin()
    paths = {m: model_path(m) for m in models}
    exe = build_llmhost(a.no_build)
    llama_bench = bindir / "llama-bench"

    results = []  # one dict per (model, threads, test)
    builds = {}
    started = time.time()
    for m in models:
        for t in a.threads:
            for n_prompt, n_gen in tests:
                name = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
                rounds = []
                for r in range(1, a.rounds + 1):
                    log(f"== {m} t={t} {name}: round {r}/{a.rounds}")
                    ref = bench_once("llama-bench", llama_bench, paths[m], t, n_prompt, n_gen,
                                     a.repetitions, [])
                    ours = bench_once("llmhost", exe, paths[m], t, n_prompt, n_gen,
                                      a.repetitions, extra)
                    builds["llama.cpp"] = f"{ref.get('build_commit', '?')} (b{ref.get('build_number', '?')})"
                    builds["llmhost"] = ours.get("llmhost_version", "?")
                    builds["kernel"] = f"{ours.get('backends', '?')} {ours.get('kernel_version', '')}".strip()
                    ratio = ours["avg_ts"] / ref["avg_ts"]
                    rounds.append((ref, ours, ratio))
                    print(f"{m:20} t={t} {name:7} round {r}: llama.cpp {ref['avg_ts']:9.2f} t/s   "
                          f"llmhost {ours['avg_ts']:9.2f} t/s   ratio {ratio:.3f}", flush=True)
                results.append({
                    "model": m, "threads": t, "test": name, "n_gen": n_gen,
                    "ref_ts": statistics.median(x[0]["avg_ts"] for x in rounds),
                    "ours_ts": statistics.median(x[1]["avg_ts"] for x in rounds),
                    "ratio": statistics.median(x[2] for x in rounds),
                    "ratios": [x[2] for x in rounds],
                    "bytes_per_token": rounds[0][1].get("weight_bytes_per_token"),
                    "model_ready_s": statistics.median(x[1].get("model_ready_s", 0) for x in rounds),
                    "peak_rss": max(x[1].get("peak_rss_bytes") or 0 for x in rounds),
                })

    bw = bandwidths(exe, sorted(set([1] + a.threads)), extra, a.bw_size_mib) if a.bandwidth else {}

    lines = []
    lines.append(f"Measured {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} "
                 f"in {(time.time() - started) / 60:.1f} min.\n")
    lines.append(f"- machine: {lscpu()}")
    lines.append(f"- llama.cpp: build {builds.get('llama.cpp', '?')}, llama-bench defaults "
                 f"(n_batch 2048, n_ubatch 512, f16 KV cache)")
    lines.append(f"- llmhost: {builds.get('llmhost', '?')} at {git_describe()}, kernel plugin "
                 f"{builds.get('kernel', '?')}")
    lines.append(f"- command: `{shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])}` "
                 f"({a.rounds} rounds of llama-bench then llmhost, -r {a.repetitions} each)")
    lines.append("")
    lines.append("| model | threads | test | llama.cpp t/s | llmhost t/s | ratio |")
    lines.append("|---|---:|---|---:|---:|---:|")
    for r in results:
        lines.append(f"| {r['model']} | {r['threads']} | {r['test']} | {fmt_ts(r['ref_ts'])} | "
                     f"{fmt_ts(r['ours_ts'])} | {r['ratio']:.2f} |")
    lines.append("")
    lines.append("t/s: median over rounds of each invocation's mean; ratio: llmhost / llama.cpp, "
                 "median of the per-round ratios (above 1: llmhost is faster).")
    lines.append("")
    lines.append("Per-round ratios: " + "; ".join(
        f"{r['model']} t={r['threads']} {r['test']}: " + ", ".join(f"{x:.3f}" for x in r["ratios"])
        for r in results) + ".")
    lines.append("")
    per_model = []
    for m in models:
        rs = [r for r in results if r["model"] == m]
        ready = statistics.median(r["model_ready_s"] for r in rs)
        rss = max(r["peak_rss"] for r in rs)
        per_model.append(f"{m} {ready:.2f} s, {rss / 2**20:.0f} MiB")
    lines.append("llmhost model ready (median; mmap, plugins, weight preparation) and peak RSS "
                 "(largest): " + "; ".join(per_model) + ".")
    if bw:
        lines.append("")
        lines.append("Memory read bandwidth (`llmhost bench --memory-bandwidth`, "
                     f"{a.bw_size_mib} MiB buffer, best of 5): "
                     + ", ".join(f"{t} thread{'s' if t > 1 else ''} {g:.1f} GB/s" for t, g in sorted(bw.items()))
                     + ".")
        lines.append("")
        lines.append("| model | threads | test | weights/token | llama.cpp GB/s | % of bandwidth "
                     "| llmhost GB/s | % of bandwidth |")
        lines.append("|---|---:|---|---:|---:|---:|---:|---:|")
        for r in results:
            if not r["n_gen"] or not r["bytes_per_token"] or r["threads"] not in bw:
                continue
            b = r["bytes_per_token"]
            ref_g, ours_g, peak = b * r["ref_ts"] / 1e9, b * r["ours_ts"] / 1e9, bw[r["threads"]]
            lines.append(f"| {r['model']} | {r['threads']} | {r['test']} | {b / 2**20:.1f} MiB | "
                         f"{ref_g:.2f} | {100 * ref_g / peak:.0f}% | {ours_g:.2f} | {100 * ours_g / peak:.0f}% |")
        lines.append("")
        lines.append("GB/s here = bytes of weights one decode step reads (every tensor but the "
                     "token embedding, which counts whole when the output projection is tied to it) "
                     "x tokens per second; 100% would be decode at the memory-bandwidth floor.")
    section = "\n".join(lines) + "\n"
    print()
    print(section)
    if not a.no_write:
        write_md(a.md, section, BEGIN, END)


if __name__ == "__main__":
    main()
