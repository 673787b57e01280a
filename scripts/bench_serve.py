#!/usr/bin/env python3
"""Continuous batching: `llmhost serve` against llama-server on this machine, the same model,
threads and per-sequence context, run alternately (A B A B) and reported as ratios.

    scripts/bench_serve.py                                  # Qwen2.5-Coder-0.5B, -t 2, N = 1,4,16
    scripts/bench_serve.py --model smollm2-135m --rounds 1 --no-write
    scripts/bench_serve.py --engines llama.cpp --no-write   # one engine only (no ratios)
    scripts/bench_serve.py --endpoint chat --prompt-tokens 128 --max-tokens 128

Steps:
1. llama.cpp: `../shared/anchor/build-llamacpp.sh` (or LLAMACPP_BIN), then llama-server,
   built in that same build tree with `cmake --build BUILD --target llama-server` if it is
   missing (scripts/llamacpp.py). llmhost: `cargo build --release --workspace` (honours
   CARGO_TARGET_DIR; --no-build skips, --llmhost names a binary). Model: scripts/fetch_models.py.
2. The client is the official `openai` package (async, raw SSE lines) from the venv
   ~/.cache/llmhost/venv-openai, created on first run; the script re-runs itself inside it.
3. Each round starts each engine afresh on a free port, llama-server first: `llama-server -m M
   -t T -np P -c P*CTX` (it splits -c across its P slots, so each slot has CTX tokens) and
   `llmhost serve -m M -t T --parallel P -c CTX` (CTX per sequence). One warm-up request,
   then for each N in --concurrency: N streaming requests sent at once, each with its own
   prompt (~--prompt-tokens tokens of random common words: no two share a prefix; the same set
   in every round and engine) and max_tokens --max-tokens. llama-server gets ignore_eos, so it
   always generates max_tokens; llmhost gets it too if it accepts the field, and its actual
   token counts are what counts either way.
4. Per batch: generated tokens/s = total completion tokens (usage) / wall time from sending
   the first request to the end of the last stream; time to first token (first non-empty
   text chunk) p50 and p99 over the batch's requests; inter-token latency p50 over every gap
   between successive text chunks of every request.
5. Prefix reuse: chat requests with a shared system prompt of ~--prefix-tokens tokens: request
   1, then request 2 with another short user message; TTFT of each and
   usage.prompt_tokens_details.cached_tokens of the second (llama-server reuses its slot's
   cache, cache_prompt on by default; llmhost its paged prefix cache).
6. Medians over rounds; ratio = llmhost / llama.cpp of the per-round tokens/s (above 1:
   llmhost is faster), speed-up = tokens/s at the largest N / at N=1 for each engine. The
   tables, machine, builds and command go to stdout and into BENCHMARKS.md between
   `<!-- serve-results:begin -->` and `<!-- serve-results:end -->` (--no-write: stdout only).
"""

import argparse
import asyncio
import datetime
import json
import os
import random
import shlex
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp import (ROOT, Server, build_llmhost, die, ensure_openai_venv, git_describe,  # noqa: E402
                      install_signal_exit, int_list, llama_server_bin, llamacpp_version, llmhost_version,
                      log, lscpu, resolve_model, write_md)

BEGIN = "<!-- serve-results:begin -->"
END = "<!-- serve-results:end -->"
ENGINES = ["llama.cpp", "llmhost"]
PREAMBLE = """## Serving: continuous batching (llmhost serve vs llama-server)

`scripts/bench_serve.py` starts `llmhost serve --parallel P -c CTX` and `llama-server -np P
-c P×CTX` (llama-server splits -c across its slots, so both have CTX tokens per sequence) on
the same model and thread count, one after the other, afresh in each round (A B A B,
`--rounds`), and drives each with the official `openai` client (async, streaming). For each
concurrency N it sends N requests at once, each with its own prompt of ~64 random common words
(no shared prefix) and max_tokens 64 (llama-server with `ignore_eos`, so its lengths are fixed;
llmhost's actual token counts are used). Generated tokens/s = all completion tokens of the
batch ÷ its wall time; TTFT = time to the first text chunk of a request (p50, p99 over the
batch); ITL = gap between successive text chunks (p50 over all of them). Prefix reuse: two chat
requests sharing a ~500-token system prompt, TTFT of each and the second's `cached_tokens`.
Medians over rounds; ratio = llmhost ÷ llama.cpp (above 1: llmhost is faster).

The client runs on the same cores as the server, and on a 2-core host any other load (the
1-minute load average before the run is in the results) weighs heavily: llama.cpp's worker
threads spin while they wait for each other, so it loses far more than llmhost when a core is
taken away (single-stream decode here fell from ~48 tok/s, llama-bench tg128, to ~3 under a
load of ~4). Only runs started near load 0 compare the engines.

```sh
scripts/bench_serve.py                                  # Qwen2.5-Coder-0.5B, -t 2, N = 1, 4, 16
scripts/bench_serve.py --model smollm2-135m --rounds 1 --no-write
```

"""

WORDS = """time year people way day man thing woman life child world school state family
student group country problem hand part place case week company system program question work
government number night point home water room mother area money story fact month lot right study
book eye job word business issue side kind head house service friend father power hour game line
end member law car city community name president team minute idea kid body information back
parent face others level office door health person art war history party result change morning
reason research girl guy moment air teacher force education foot boy age policy music market
sense nation plan college interest death experience effect class control care field development
role effort rate heart drug show leader light voice wife police mind price report decision son
view relationship town road arm difference value building action model season society tax
director position player record paper space ground form event official matter center couple
site project activity star table need court oil situation cost industry figure street image
phone data picture practice piece land product doctor wall patient worker news test movie north
love support technology step baby computer type attention film tree source organization hair
window evidence population site garden river bridge mountain island forest ocean desert valley
green blue red yellow bright dark quiet loud quick slow early late small large young old new""".split()


def word_text(seed, n_words):
    rng = random.Random(seed)
    words = [rng.choice(WORDS) for _ in range(n_words)]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# --- one engine's measurements ---------------------------------------------------------------

class Client:
    def __init__(self, openai, base_url, endpoint, temperature):
        self.c = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="none", max_retries=0,
                                    timeout=1800)
        self.openai = openai
        self.endpoint = endpoint
        self.temperature = temperature
        self.model = None
        self.extra = {}

    async def setup(self, want_ignore_eos):
        models = await self.c.models.list()
        self.model = models.data[0].id if models.data else "default"
        if want_ignore_eos:
            try:
                await self.c.completions.create(model=self.model, prompt="Hello", max_tokens=2,
                                                temperature=0, extra_body={"ignore_eos": True})
                self.extra = {"ignore_eos": True}
            except self.openai.APIStatusError as e:
                log(f"the server refused ignore_eos (HTTP {e.status_code}); sending max_tokens only")

    async def prompt_tokens(self, text):
        r = await self.c.completions.create(model=self.model, prompt=text, max_tokens=1,
                                            temperature=0)
        return r.usage.prompt_tokens

    async def stream(self, max_tokens, prompt=None, messages=None, extra=None):
        """One streaming request; returns {ttft, times (of text chunks, from send), usage}."""
        kw = dict(model=self.model, max_tokens=max_tokens, temperature=self.temperature,
                  stream=True, stream_options={"include_usage": True},
                  extra_body={**self.extra, **(extra or {})} or None)
        chat = messages is not None
        if chat:
            call = self.c.chat.completions.with_streaming_response.create(messages=messages, **kw)
        else:
            call = self.c.completions.with_streaming_response.create(prompt=prompt, **kw)
        t0 = time.perf_counter()
        times, usage, n_text = [], None, 0
        async with call as resp:
            async for line in resp.iter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                now = time.perf_counter()
                obj = json.loads(data)
                if obj.get("usage"):
                    usage = obj["usage"]
                for c in obj.get("choices") or []:
                    text = (c.get("delta") or {}).get("content") if chat else c.get("text")
                    if text:
                        times.append(now - t0)
                        n_text += 1
        if not times:
            raise RuntimeError("the stream carried no text")
        return {"ttft": times[0], "times": times, "usage": usage or {}, "chunks": n_text}


async def run_batch(cl, prompts, max_tokens):
    """N requests at once; returns the batch's metrics."""
    async def one(p):
        if cl.endpoint == "chat":
            return await cl.stream(max_tokens, messages=[{"role": "user", "content": p}])
        return await cl.stream(max_tokens, prompt=p)

    t0 = time.perf_counter()
    rs = await asyncio.gather(*(one(p) for p in prompts))
    wall = time.perf_counter() - t0
    tokens = [r["usage"].get("completion_tokens") or r["chunks"] for r in rs]
    gaps = [b - a for r in rs for a, b in zip(r["times"], r["times"][1:])]
    ttfts = [r["ttft"] for r in rs]
    return {
        "n": len(prompts), "wall": wall, "tokens": sum(tokens), "tps": sum(tokens) / wall,
        "tokens_per_req": sum(tokens) / len(tokens),
        "prompt_tokens": statistics.mean(r["usage"].get("prompt_tokens") or 0 for r in rs),
        "ttft_p50": percentile(ttfts, 50), "ttft_p99": percentile(ttfts, 99),
        "itl_p50": percentile(gaps, 50) if gaps else None,
    }


async def run_prefix(cl, system, max_tokens):
    out = []
    for q in ("Summarise the text above in one sentence.",
              "Which word appears most often in the text above?"):
        r = await cl.stream(max_tokens, messages=[{"role": "system", "content": system},
                                                  {"role": "user", "content": q}])
        u = r["usage"]
        out.append({"ttft": r["ttft"], "prompt_tokens": u.get("prompt_tokens"),
                    "cached": (u.get("prompt_tokens_details") or {}).get("cached_tokens")})
    return out


async def calibrate(cl, target, seed):
    """Words per token of the random-word text, measured on a probe text that is used for
    nothing else (so nothing it leaves in a cache helps a measurement); the number of words
    that gives ~target tokens."""
    n0 = max(8, target)
    got = await cl.prompt_tokens(word_text(seed, n0))
    return max(4, round(n0 * target / max(1, got)))


async def measure_engine(openai, base_url, a, state):
    cl = Client(openai, base_url, a.endpoint, a.temperature)
    await cl.setup(not a.no_ignore_eos)
    if "prompt_words" not in state:  # once, on the first server: the same texts everywhere
        state["prompt_words"] = await calibrate(cl, a.prompt_tokens, 10_000)
        state["prefix_words"] = await calibrate(cl, a.prefix_tokens, 10_001)
        log(f"prompts: {state['prompt_words']} words for ~{a.prompt_tokens} tokens; system "
            f"prompt: {state['prefix_words']} words for ~{a.prefix_tokens} tokens")
    # Warm-up: one request of the benchmark's shape, its own prompt.
    await run_batch(cl, [word_text(20_000, state["prompt_words"])], min(a.max_tokens, 16))
    res = {"batches": {}, "ignore_eos": bool(cl.extra)}
    start = 0
    for n in a.concurrency:
        prompts = [word_text(i, state["prompt_words"]) for i in range(start, start + n)]
        start += n
        b = await run_batch(cl, prompts, a.max_tokens)
        res["batches"][n] = b
        log(f"  N={n:3}: {b['tps']:8.2f} tok/s, {b['tokens']} tokens in {b['wall']:.2f} s, TTFT "
            f"p50 {b['ttft_p50'] * 1e3:.0f} ms p99 {b['ttft_p99'] * 1e3:.0f} ms, ITL p50 "
            f"{(b['itl_p50'] or 0) * 1e3:.1f} ms, {b['prompt_tokens']:.0f} prompt tokens/req")
    if not a.no_prefix:
        system = word_text(30_000, state["prefix_words"])
        res["prefix"] = await run_prefix(cl, system, a.prefix_max_tokens)
        p1, p2 = res["prefix"]
        log(f"  prefix: TTFT {p1['ttft'] * 1e3:.0f} ms then {p2['ttft'] * 1e3:.0f} ms, "
            f"{p2['prompt_tokens']} prompt tokens, {p2['cached']} cached")
    await cl.c.close()
    return res


def server_cmd(engine, a, model, llmhost, llama_server):
    if engine == "llmhost":
        return [llmhost] + (["--kernel", a.kernel] if a.kernel else []) + [
            "serve", "-m", model, "--port", "0", "-t", str(a.threads), "--parallel",
            str(a.parallel), "-c", str(a.ctx_size)]
    return [llama_server, "-m", model, "--port", "0", "-t", str(a.threads), "-np",
            str(a.parallel), "-c", str(a.parallel * a.ctx_size)]


# --- report ---------------------------------------------------------------------------------

def ms(x):
    return "—" if x is None else f"{x * 1e3:.0f}"


def ms1(x):
    return "—" if x is None else f"{x * 1e3:.1f}"


def load1():
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "?"


def num(x):
    return "—" if x is None else f"{x:.0f}"


def tps(x):
    return "—" if x is None else f"{x:.2f}"


def summarise(rounds, engines, concurrency):
    """Medians over rounds per engine and N, plus the per-round ratios."""
    s = {}
    for e in engines:
        rs = [r[e] for r in rounds if e in r]
        for n in concurrency:
            bs = [r["batches"][n] for r in rs]
            s[(e, n)] = {k: med(b[k] for b in bs) for k in
                         ("tps", "ttft_p50", "ttft_p99", "itl_p50", "tokens_per_req", "prompt_tokens")}
        pre = [r["prefix"] for r in rs if "prefix" in r]
        if pre:
            s[(e, "prefix")] = {
                "ttft1": med(p[0]["ttft"] for p in pre), "ttft2": med(p[1]["ttft"] for p in pre),
                "prompt": med(p[1]["prompt_tokens"] for p in pre),
                "cached": med(p[1]["cached"] for p in pre),
                "cached1": med(p[0]["cached"] for p in pre)}
    for n in concurrency:
        ratios = [r["llmhost"]["batches"][n]["tps"] / r["llama.cpp"]["batches"][n]["tps"]
                  for r in rounds if "llmhost" in r and "llama.cpp" in r]
        s[("ratio", n)] = (med(ratios), ratios)
    return s


def report(a, s, engines, builds, started):
    cs = a.concurrency
    both = len(engines) == 2
    lines = [f"Measured {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')} "
             f"in {(time.time() - started) / 60:.1f} min.\n"]
    load = builds.get("load_start", "?")
    try:
        quiet = "quiet" if float(load) < 0.5 else "other processes shared the cores: see above"
    except ValueError:
        quiet = "?"
    lines.append(f"- machine: {lscpu()}; 1-minute load average before the run {load} ({quiet})")
    lines.append(f"- model: {a.model_path.name}, {a.threads} threads, {a.ctx_size} tokens of "
                 f"context per sequence, {a.parallel} parallel sequences")
    if "llama.cpp" in engines:
        lines.append(f"- llama.cpp: llama-server {builds.get('llama.cpp', '?')}, `-t {a.threads} "
                     f"-np {a.parallel} -c {a.parallel * a.ctx_size}`, defaults otherwise "
                     f"(n_batch 2048, n_ubatch 512, f16 KV cache, cache_prompt on); ignore_eos")
    if "llmhost" in engines:
        lines.append(f"- llmhost: {builds.get('llmhost', '?')} at {git_describe()}, `llmhost serve "
                     f"-t {a.threads} --parallel {a.parallel} -c {a.ctx_size}`"
                     + (f" `--kernel {a.kernel}`" if a.kernel else "")
                     + ("; sent ignore_eos too (tokens/req shows whether it was honoured)"
                        if builds.get("llmhost_ignore_eos")
                        else "; refused ignore_eos: max_tokens only"))
    lines.append(f"- workload: /v1/{'chat/completions' if a.endpoint == 'chat' else 'completions'}, "
                 f"streaming, ~{a.prompt_tokens}-token prompts (measured: "
                 + ", ".join(f"{e} {s[(e, cs[-1])]['prompt_tokens']:.0f}" for e in engines)
                 + f"), max_tokens {a.max_tokens}, temperature {a.temperature:g}")
    lines.append(f"- command: `{shlex.join([Path(sys.argv[0]).name] + sys.argv[1:])}` "
                 f"({a.rounds} round{'s' if a.rounds > 1 else ''}, "
                 f"{' then '.join(engines)} in each)")
    lines.append("")
    def table(cols, rows):
        lines.append("| " + " | ".join(cols) + " |")
        lines.append("|" + "---:|" * len(cols))
        lines.extend("| " + " | ".join(r) + " |" for r in rows)
        lines.append("")

    # Throughput: aggregate generated tokens/s per engine, and the ratio.
    cols = ["N"] + [f"{e} tok/s" for e in engines] + (["ratio"] if both else []) \
        + [f"{e} tokens/req" for e in engines]
    rows = []
    for n in cs:
        r = s[("ratio", n)][0]
        rows.append([str(n)] + [tps(s[(e, n)]["tps"]) for e in engines]
                    + ([f"{r:.2f}" if r is not None else "—"] if both else [])
                    + [f"{s[(e, n)]['tokens_per_req']:.1f}" for e in engines])
    table(cols, rows)
    # Latency: time to first token and inter-token gap.
    cols = ["N"] + [f"{e} TTFT p50 / p99 ms" for e in engines] + [f"{e} ITL p50 ms" for e in engines]
    rows = [[str(n)] + [f"{ms(s[(e, n)]['ttft_p50'])} / {ms(s[(e, n)]['ttft_p99'])}" for e in engines]
            + [ms1(s[(e, n)]["itl_p50"]) for e in engines] for n in cs]
    table(cols, rows)
    if cs[0] == 1 and len(cs) > 1:
        lines.append(f"Speed-up N={cs[-1]} over N=1 (aggregate tok/s): " + "; ".join(
            f"{e} {s[(e, cs[-1])]['tps'] / s[(e, 1)]['tps']:.2f}×" for e in engines) + ".")
        lines.append("")
    if both:
        lines.append("Per-round ratios: " + "; ".join(
            f"N={n}: " + ", ".join(f"{x:.3f}" for x in s[("ratio", n)][1]) for n in cs) + ".")
        lines.append("")
    if any((e, "prefix") in s for e in engines):
        lines.append(f"Prefix reuse: two chat requests with the same ~{a.prefix_tokens}-token "
                     f"system prompt and different user messages, max_tokens {a.prefix_max_tokens}.")
        lines.append("")
        lines.append("| engine | prompt tokens | TTFT 1st ms | TTFT 2nd ms | cached tokens 1st / 2nd |")
        lines.append("|---|---:|---:|---:|---:|")
        for e in engines:
            p = s.get((e, "prefix"))
            if p:
                lines.append(f"| {e} | {num(p['prompt'])} | {ms(p['ttft1'])} | {ms(p['ttft2'])} | "
                             f"{num(p['cached1'])} / {num(p['cached'])} |")
        lines.append("")
    lines.append("tok/s: all completion tokens of the batch ÷ its wall time; TTFT and ITL in ms; "
                 "medians over rounds.")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b",
                    help="GGUF file or a name of scripts/fetch_models.py --list, fetched if missing "
                         "(default: qwen2.5-coder-0.5b)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads of both servers (default: 2)")
    ap.add_argument("--parallel", type=int, default=16,
                    help="sequences at once: llmhost --parallel, llama-server -np (default: 16)")
    ap.add_argument("-c", "--ctx-size", type=int, default=2048,
                    help="tokens of context per sequence (default: 2048; llama-server gets "
                         "-c PARALLEL*this)")
    ap.add_argument("--concurrency", type=int_list(1), default=[1, 4, 16],
                    help="concurrent requests per batch, comma-separated (default: 1,4,16)")
    ap.add_argument("--prompt-tokens", type=int, default=64, help="prompt length, about (default: 64)")
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens per request (default: 64)")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions",
                    help="API of the batches (default: completions)")
    ap.add_argument("--temperature", type=float, default=0.0, help="(default: 0, greedy)")
    ap.add_argument("--no-ignore-eos", action="store_true",
                    help="send no ignore_eos (llama-server then stops at end of generation too)")
    ap.add_argument("--prefix-tokens", type=int, default=500,
                    help="shared system prompt of the prefix-reuse test, about (default: 500)")
    ap.add_argument("--prefix-max-tokens", type=int, default=8,
                    help="max_tokens of the prefix-reuse requests (default: 8)")
    ap.add_argument("--no-prefix", action="store_true", help="skip the prefix-reuse test")
    ap.add_argument("--rounds", type=int, default=2,
                    help="A/B rounds: llama-server then llmhost, this many times (default: 2)")
    ap.add_argument("--engines", default="llama.cpp,llmhost",
                    help="which to run, comma-separated (default: llama.cpp,llmhost)")
    ap.add_argument("--llmhost", type=Path, help="llmhost binary (skips the build)")
    ap.add_argument("--llama-server", type=Path, help="llama-server binary (skips finding/building)")
    ap.add_argument("--kernel", help="llmhost --kernel (default: the best for this CPU)")
    ap.add_argument("--no-build", action="store_true",
                    help="use the llmhost release binary already built instead of running cargo")
    ap.add_argument("--log-dir", type=Path, default=Path("/tmp"),
                    help="servers' output goes to DIR/bench_serve.ENGINE.rROUND.log (default: /tmp)")
    ap.add_argument("--md", type=Path, default=ROOT / "BENCHMARKS.md",
                    help="file to write the results into, between its markers (default: BENCHMARKS.md)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave the file alone")
    a = ap.parse_args()
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or any(e not in ENGINES for e in engines):
        die(f"--engines takes {', '.join(ENGINES)}")
    engines = [e for e in ENGINES if e in engines]  # llama.cpp first in every round
    if a.rounds < 1 or a.threads < 1 or a.parallel < 1 or a.max_tokens < 1 or a.prompt_tokens < 1:
        die("--rounds, -t, --parallel, --max-tokens and --prompt-tokens must be at least 1")
    if max(a.concurrency) > a.parallel:
        log(f"note: N={max(a.concurrency)} is above --parallel {a.parallel}: requests will queue")
    if a.prompt_tokens + a.max_tokens + 16 > a.ctx_size or a.prefix_tokens + 64 > a.ctx_size:
        die(f"-c {a.ctx_size} is too small for the prompts and max_tokens")

    ensure_openai_venv()
    import openai  # noqa: E402 - only inside the venv

    install_signal_exit()
    builds = {}
    llama_server = llmhost = None
    if "llama.cpp" in engines:
        llama_server = a.llama_server or llama_server_bin()
        builds["llama.cpp"] = llamacpp_version(llama_server)
    a.model_path = resolve_model(a.model)
    if "llmhost" in engines:
        llmhost = a.llmhost or build_llmhost(a.no_build)
        builds["llmhost"] = llmhost_version(llmhost)

    builds["load_start"] = load1()
    started = time.time()
    rounds, state = [], {}
    for r in range(1, a.rounds + 1):
        rnd = {}
        for e in engines:
            log(f"== round {r}/{a.rounds}: {e}")
            cmd = server_cmd(e, a, a.model_path, llmhost, llama_server)
            with Server(e, cmd, a.log_dir / f"bench_serve.{e}.r{r}.log") as srv:
                srv.start()
                rnd[e] = asyncio.run(measure_engine(openai, srv.url, a, state))
            if e == "llmhost":
                builds["llmhost_ignore_eos"] = rnd[e]["ignore_eos"]
            for n in a.concurrency:
                b = rnd[e]["batches"][n]
                print(f"round {r} {e:9} N={n:3}: {b['tps']:8.2f} tok/s  TTFT p50 "
                      f"{b['ttft_p50'] * 1e3:7.0f} ms p99 {b['ttft_p99'] * 1e3:7.0f} ms  ITL p50 "
                      f"{(b['itl_p50'] or 0) * 1e3:6.1f} ms  {b['tokens_per_req']:.1f} tokens/req",
                      flush=True)
        rounds.append(rnd)

    s = summarise(rounds, engines, a.concurrency)
    section = report(a, s, engines, builds, started)
    print()
    print(section)
    if not a.no_write:
        write_md(a.md, section, BEGIN, END, PREAMBLE)


if __name__ == "__main__":
    main()
