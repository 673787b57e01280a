#!/usr/bin/env python3
"""Checks `llmhost serve` with the official OpenAI Python client: starts the server on a free
port, waits for /health, runs the checks below, prints one PASS/FAIL/SKIP line per check, and
exits 1 if any failed. The server it started is always stopped.

    scripts/serve_openai_check.py                               # target/{release,debug}/llmhost, SmolLM2
    scripts/serve_openai_check.py --llmhost PATH -m qwen2.5-coder-0.5b -t 2 --parallel 4
    scripts/serve_openai_check.py --server-cmd "llama-server -m {model} --port 0 -t 2 -np 4" --no-run-compare
    scripts/serve_openai_check.py --base-url http://127.0.0.1:8080 --no-run-compare

Checks:
  (a) chat and completions, streamed and not: each returns text and usage (prompt,
      completion and total tokens; cached_tokens is shown when the server reports it).
  (b) temperature 0.8 with a fixed seed: the streamed text equals the non-streamed text, for
      chat and for completions.
  (c) greedy (temperature 0) completions over HTTP equal `llmhost run -m MODEL --prompt P -n N
      --temperature 0` for a few prompts (N = --n-tokens, 32), and greedy chat equals
      `llmhost run --chat --system "" --prompt P ...` (the HTTP side sends the user message
      alone). Needs the llmhost binary; --no-run-compare skips it (for another server).
  (d) logprobs: chat (logprobs + top_logprobs, streamed and not) and completions (logprobs=N)
      return a log-probability per token, with the requested number of alternatives; under
      greedy decoding the chosen token is the most likely one.
  (e) /v1/models lists the model (id = the file name without .gguf, or its path as
      llama-server names it).
  (f) /metrics has llmhost's gauges and histograms (llmhost only; skipped for another server).

The client comes from PyPI: on first run the script creates the venv
~/.cache/llmhost/venv-openai with openai==OPENAI_VERSION (scripts/llamacpp.py) and re-runs
itself inside it. --server-cmd is a shell-style command line whose {model} is replaced by the
model's path; it must print `listening on http://HOST:PORT` (llama-server and llmhost do with
--port 0).
"""

import argparse
import shlex
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from llamacpp import (Server, die, ensure_openai_venv, find_llmhost, install_signal_exit,  # noqa: E402
                      log, resolve_model, wait_health)

COMPLETION_PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a small village by the sea,",
    "1, 2, 3, 4, 5,",
]
CHAT_PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
]
METRICS = ["llmhost_kv_blocks_used", "llmhost_active_sequences", "llmhost_queue_depth",
           "llmhost_time_to_first_token_seconds"]


class Checks:
    def __init__(self):
        self.results = []  # (status, name, detail)

    def report(self, status, name, detail):
        self.results.append((status, name, detail))
        print(f"{status:4} {name}: {detail}", flush=True)

    def run(self, name, fn, *args):
        """Runs one check: fn returns a detail string (PASS), raises Skip (SKIP), or raises
        anything else (FAIL, with the exception's text)."""
        try:
            detail = fn(*args)
            self.report("PASS", name, detail or "ok")
        except Skip as e:
            self.report("SKIP", name, str(e))
        except Exception as e:  # noqa: BLE001 - every failure is reported, none stops the run
            self.report("FAIL", name, f"{type(e).__name__}: {e}")

    def failed(self):
        return [r for r in self.results if r[0] == "FAIL"]


class Skip(Exception):
    pass


def expect(cond, msg):
    if not cond:
        raise AssertionError(msg)


def short(s, n=60):
    s = repr(s)
    return s if len(s) <= n else s[:n - 4] + "...'"


def usage_of(obj):
    """(prompt, completion, total, cached or None) of a usage object; asserts it is there."""
    u = getattr(obj, "usage", None)
    expect(u is not None, "no usage")
    details = getattr(u, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    expect(u.prompt_tokens and u.prompt_tokens > 0, f"usage.prompt_tokens = {u.prompt_tokens}")
    expect(u.completion_tokens and u.completion_tokens > 0,
           f"usage.completion_tokens = {u.completion_tokens}")
    expect(u.total_tokens == u.prompt_tokens + u.completion_tokens,
           f"usage.total_tokens {u.total_tokens} != {u.prompt_tokens} + {u.completion_tokens}")
    return u.prompt_tokens, u.completion_tokens, u.total_tokens, cached


def fmt_usage(u):
    p, c, t, cached = u
    return f"usage {p}+{c}={t}" + (f", cached {cached}" if cached is not None else "")


class Api:
    """The calls the checks make, each returning (text, usage object or None, extra)."""

    def __init__(self, client, model):
        self.c = client
        self.model = model

    def chat(self, messages, stream, **kw):
        if not stream:
            r = self.c.chat.completions.create(model=self.model, messages=messages, **kw)
            expect(r.choices, "no choices")
            return r.choices[0].message.content or "", r, r.choices[0]
        text, usage, finish, lps = [], None, None, []
        for ch in self.c.chat.completions.create(model=self.model, messages=messages, stream=True,
                                                 stream_options={"include_usage": True}, **kw):
            if getattr(ch, "usage", None) is not None:
                usage = ch
            for c in ch.choices or []:
                if c.delta is not None and c.delta.content:
                    text.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
                if getattr(c, "logprobs", None) is not None and c.logprobs.content:
                    lps.extend(c.logprobs.content)
        return "".join(text), usage, {"finish_reason": finish, "logprobs": lps}

    def complete(self, prompt, stream, **kw):
        if not stream:
            r = self.c.completions.create(model=self.model, prompt=prompt, **kw)
            expect(r.choices, "no choices")
            return r.choices[0].text or "", r, r.choices[0]
        text, usage, finish = [], None, None
        for ch in self.c.completions.create(model=self.model, prompt=prompt, stream=True,
                                            stream_options={"include_usage": True}, **kw):
            if getattr(ch, "usage", None) is not None:
                usage = ch
            for c in ch.choices or []:
                if c.text:
                    text.append(c.text)
                if c.finish_reason:
                    finish = c.finish_reason
        return "".join(text), usage, {"finish_reason": finish}


# --- the checks ----------------------------------------------------------------------------

def check_basic(api, kind, stream, n):
    if kind == "chat":
        text, u, _ = api.chat([{"role": "user", "content": CHAT_PROMPTS[0]}], stream,
                              max_tokens=n, temperature=0)
    else:
        text, u, _ = api.complete(COMPLETION_PROMPTS[0], stream, max_tokens=n, temperature=0)
    expect(text.strip(), f"empty text {text!r}")
    usage = usage_of(u)
    expect(usage[1] <= n, f"{usage[1]} completion tokens > max_tokens {n}")
    return f"{short(text)}, {fmt_usage(usage)}"


def check_seeded(api, kind, n, seed):
    kw = dict(max_tokens=n, temperature=0.8, seed=seed)
    if kind == "chat":
        msgs = [{"role": "user", "content": CHAT_PROMPTS[1]}]
        plain, _, _ = api.chat(msgs, False, **kw)
        streamed, _, _ = api.chat(msgs, True, **kw)
    else:
        prompt = COMPLETION_PROMPTS[2]
        plain, _, _ = api.complete(prompt, False, **kw)
        streamed, _, _ = api.complete(prompt, True, **kw)
    expect(plain.strip(), "empty text")
    expect(streamed == plain, f"streamed {short(streamed, 200)} != non-streamed {short(plain, 200)}")
    return f"seed {seed}, {len(plain)} chars, equal: {short(plain)}"


def llmhost_run(exe, model, threads, kernel, prompt, n, chat):
    cmd = [str(exe)] + (["--kernel", kernel] if kernel else []) + [
        "run", "-m", str(model), "-t", str(threads), "--prompt", prompt, "-n", str(n),
        "--temperature", "0"]
    if chat:
        cmd += ["--chat", "--system", ""]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({p.returncode}): "
                           + " | ".join(p.stderr.strip().splitlines()[-3:]))
    out = p.stdout
    # run ends the generated text with one newline of its own.
    return out[:-1] if out.endswith("\n") else out


def first_diff(got, ref):
    i = next((k for k, (x, y) in enumerate(zip(got, ref)) if x != y), min(len(got), len(ref)))
    lo = max(0, i - 30)
    return (f"differ at char {i} of {len(got)} (HTTP) / {len(ref)} (run): after {short(got[lo:i], 50)}, "
            f"HTTP has {short(got[i:i + 40], 50)}, run has {short(ref[i:i + 40], 50)}")


def check_greedy_vs_run(api, exe, model, threads, kernel, n, chat):
    prompts = CHAT_PROMPTS if chat else COMPLETION_PROMPTS
    same = []
    for p in prompts:
        ref = llmhost_run(exe, model, threads, kernel, p, n, chat)
        if chat:
            got, _, _ = api.chat([{"role": "user", "content": p}], False, max_tokens=n,
                                 temperature=0)
        else:
            got, _, _ = api.complete(p, False, max_tokens=n, temperature=0)
        expect(got == ref, f"prompt {short(p, 40)}: {first_diff(got, ref)}")
        expect(got.strip(), f"prompt {short(p, 40)}: empty text from both")
        same.append(short(got, 40))
    return f"{len(prompts)} prompts, n={n}, identical: " + "; ".join(same)


def check_logprobs_entries(entries, top, greedy, what):
    expect(entries, f"{what}: no logprobs entries")
    for i, e in enumerate(entries):
        expect(e.logprob is not None and e.logprob <= 1e-4, f"{what}: token {i} logprob {e.logprob}")
        alts = e.top_logprobs or []
        expect(len(alts) == top, f"{what}: token {i} has {len(alts)} top_logprobs, asked {top}")
        if greedy and alts:
            best = max(a.logprob for a in alts)
            expect(e.logprob >= best - 1e-3,
                   f"{what}: greedy token {i} {e.token!r} logprob {e.logprob:.4f} below the best "
                   f"alternative {best:.4f}")
    return len(entries)


def entries_match(k, tokens, finish, what):
    """One logprobs entry per completion token; the end-of-generation token, which has no
    text, may go without one (llama-server leaves it out when streaming)."""
    expect(k == tokens or (finish == "stop" and k == tokens - 1),
           f"{what}: {k} logprobs entries for {tokens} completion tokens (finish {finish})")


def check_logprobs(api, n, top):
    out = []
    msgs = [{"role": "user", "content": CHAT_PROMPTS[0]}]
    _, r, choice = api.chat(msgs, False, max_tokens=n, temperature=0, logprobs=True, top_logprobs=top)
    expect(choice.logprobs is not None, "chat: no logprobs in the choice")
    k = check_logprobs_entries(choice.logprobs.content, top, True, "chat")
    entries_match(k, r.usage.completion_tokens, choice.finish_reason, "chat")
    out.append(f"chat {k} tokens (first {choice.logprobs.content[0].token!r} "
               f"{choice.logprobs.content[0].logprob:.3f})")

    _, u, extra = api.chat(msgs, True, max_tokens=n, temperature=0, logprobs=True, top_logprobs=top)
    k = check_logprobs_entries(extra["logprobs"], top, True, "streamed chat")
    if u is not None:
        entries_match(k, u.usage.completion_tokens, extra["finish_reason"], "streamed chat")
    out.append(f"streamed chat {k} tokens")

    _, r, choice = api.complete(COMPLETION_PROMPTS[0], False, max_tokens=n, temperature=0,
                                logprobs=top)
    lp = choice.logprobs
    expect(lp is not None, "completions: no logprobs in the choice")
    if getattr(lp, "token_logprobs", None):  # OpenAI's legacy completions shape
        toks, vals, tops = lp.tokens or [], lp.token_logprobs, lp.top_logprobs or []
        expect(len(toks) == len(vals), f"completions: {len(toks)} tokens, {len(vals)} logprobs")
        entries_match(len(vals), r.usage.completion_tokens, choice.finish_reason, "completions")
        expect(all(v is not None and v <= 1e-4 for v in vals), f"completions: logprobs {vals}")
        # A dict per token, keyed by text: alternatives that decode alike (bytes of one UTF-8
        # character) may share a key.
        expect(len(tops) == len(vals) and all(1 <= len(t) <= top for t in tops)
               and any(len(t) == top for t in tops),
               f"completions: top_logprobs sizes {[len(t) for t in tops]}, asked {top}")
        for i, (v, t) in enumerate(zip(vals, tops)):
            expect(v >= max(t.values()) - 1e-3, f"completions: greedy token {i} not the best")
        out.append(f"completions {len(vals)} tokens (legacy shape)")
    else:  # llama-server answers with the chat shape (logprobs.content)
        content = (lp.model_extra or {}).get("content") if hasattr(lp, "model_extra") else None
        expect(content, f"completions: logprobs has neither token_logprobs nor content: {lp}")

        class E:  # the dicts as attribute objects
            def __init__(self, d):
                self.token, self.logprob = d.get("token"), d.get("logprob")
                self.top_logprobs = [E(a) for a in d.get("top_logprobs") or []] \
                    if "top_logprobs" in d else None
        k = check_logprobs_entries([E(d) for d in content], top, True, "completions")
        out.append(f"completions {k} tokens (chat shape: logprobs.content)")
    return ", ".join(out)


def check_models(api, model_path):
    models = list(api.c.models.list())
    expect(models, "/v1/models lists nothing")
    ids = [m.id for m in models]
    names = {model_path.stem, model_path.name, str(model_path)}
    expect(any(i in names for i in ids), f"ids {ids}: none is {model_path.stem!r}")
    return f"ids {ids}"


def check_metrics(base_url, is_llmhost):
    try:
        with urllib.request.urlopen(base_url + "/metrics", timeout=10) as r:
            text = r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        if is_llmhost:
            raise
        raise Skip(f"not an llmhost server (/metrics: HTTP {e.code})")
    if not is_llmhost and "llmhost_" not in text:
        raise Skip("not an llmhost server")
    missing = [m for m in METRICS if m not in text]
    expect(not missing, f"missing {missing}")
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, v = line.rpartition(" ")
            values[name] = v
    shown = ", ".join(f"{m} {values[m]}" for m in METRICS[:3] if m in values)
    return f"{len(text.splitlines())} lines; {shown}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--llmhost", type=Path,
                    help="llmhost binary (default: target/release/llmhost, else target/debug; "
                         "$CARGO_TARGET_DIR first)")
    ap.add_argument("-m", "--model", default="smollm2-135m",
                    help="GGUF file, or a name of scripts/fetch_models.py --list (default: smollm2-135m)")
    ap.add_argument("-t", "--threads", type=int, default=2, help="threads (default: 2)")
    ap.add_argument("--parallel", type=int, default=4, help="llmhost serve --parallel (default: 4)")
    ap.add_argument("-c", "--ctx-size", type=int, help="llmhost serve -c (default: its own)")
    ap.add_argument("--kernel", help="llmhost --kernel, for serve and run (default: the best)")
    ap.add_argument("--server-cmd",
                    help="start this server instead of llmhost serve ({model}: the model path)")
    ap.add_argument("--base-url", help="use the server already running here (http://HOST:PORT)")
    ap.add_argument("--no-run-compare", action="store_true",
                    help="skip (c), the comparison with `llmhost run` (for another server)")
    ap.add_argument("-n", "--n-tokens", type=int, default=32,
                    help="max_tokens of the requests and -n of llmhost run (default: 32)")
    ap.add_argument("--seed", type=int, default=1234, help="seed of the (b) requests (default: 1234)")
    ap.add_argument("--top-logprobs", type=int, default=3, help="alternatives asked in (d) (default: 3)")
    ap.add_argument("--log", type=Path, help="write the server's output here (default: a temp file)")
    a = ap.parse_args()
    if a.server_cmd and a.base_url:
        die("--server-cmd and --base-url exclude each other")

    ensure_openai_venv()
    import openai  # noqa: E402 - only inside the venv

    install_signal_exit()
    model = resolve_model(a.model)
    need_llmhost = not (a.base_url or a.server_cmd) or not a.no_run_compare
    exe = a.llmhost or find_llmhost()
    if need_llmhost and (exe is None or not Path(exe).is_file()):
        die(f"no llmhost binary ({exe or 'target/release/llmhost and target/debug/llmhost are missing'}): "
            "build it (cargo build --release --workspace) or pass --llmhost; for another server "
            "pass --no-run-compare too")

    server = None
    is_llmhost = False
    try:
        if a.base_url:
            base = a.base_url.rstrip("/")
            wait_health(base, 60)
        else:
            if a.server_cmd:
                cmd = [c.replace("{model}", str(model)) for c in shlex.split(a.server_cmd)]
                name = Path(cmd[0]).name
            else:
                cmd = [str(exe)] + (["--kernel", a.kernel] if a.kernel else []) + [
                    "serve", "-m", str(model), "--port", "0", "-t", str(a.threads),
                    "--parallel", str(a.parallel)] + (["-c", str(a.ctx_size)] if a.ctx_size else [])
                name = "llmhost serve"
                is_llmhost = True
            log_path = a.log or Path("/tmp") / f"serve_openai_check.{name.replace(' ', '-')}.log"
            server = Server(name, cmd, log_path)
            server.start()
            log(f"server log: {log_path}")
            if server.banner:
                print(f"server: {server.banner}", flush=True)
            base = server.url
        client = openai.OpenAI(base_url=base + "/v1", api_key="none", max_retries=0, timeout=600)
        try:
            model_id = client.models.list().data[0].id
        except Exception as e:  # noqa: BLE001
            model_id = model.stem
            log(f"/v1/models failed ({e}); using model id {model_id}")
        api = Api(client, model_id)
        print(f"openai {openai.__version__}, {base}, model {model_id}", flush=True)

        ck = Checks()
        t0 = time.time()
        n = a.n_tokens
        for kind in ("chat", "completions"):
            for stream in (False, True):
                ck.run(f"(a) {kind} {'streamed' if stream else 'non-streamed'}",
                       check_basic, api, kind, stream, n)
        for kind in ("chat", "completions"):
            ck.run(f"(b) {kind} seeded streamed == non-streamed", check_seeded, api, kind, n, a.seed)
        for chat in (False, True):
            name = f"(c) greedy {'chat' if chat else 'completions'} == llmhost run"
            if a.no_run_compare:
                ck.report("SKIP", name, "--no-run-compare")
            else:
                ck.run(name, check_greedy_vs_run, api, exe, model, a.threads, a.kernel, n, chat)
        ck.run("(d) logprobs", check_logprobs, api, min(n, 8), a.top_logprobs)
        ck.run("(e) /v1/models lists the model", check_models, api, model)
        ck.run("(f) /metrics", check_metrics, base, is_llmhost)
        failed = ck.failed()
        counts = {s: sum(1 for r in ck.results if r[0] == s) for s in ("PASS", "FAIL", "SKIP")}
        print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
              f"in {time.time() - t0:.1f} s", flush=True)
        if failed and server is not None:
            log("server output (tail):\n" + "\n".join(server.tail[-15:]))
        return 1 if failed else 0
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    sys.exit(main())
