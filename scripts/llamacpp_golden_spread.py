#!/usr/bin/env python3
"""How far llama.cpp built on *this* machine lands from the golden files (made on another
machine), measured exactly as tests/tests/golden_greedy.rs measures llmhost: for each golden
prompt, greedy decoding with top-5 log-probabilities; up to the first step where the golden
top-2 are within T, the largest |ours - golden| over the golden top-5 tokens, and where the
greedy ids first differ. This is the spread a correct engine can be expected to show.

    scripts/llamacpp_golden_spread.py [--fa on|off] [MODEL ...]

Needs the anchor build (../shared/anchor/build-llamacpp.sh) and the models
(scripts/fetch_models.py)."""
import argparse, json, math, os, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = ROOT / "tests" / "data" / "golden"
MODELS = {"smollm2-135m": "smollm2-135m-q4_1", "gemma3-270m": "gemma3-270m-q4_k_m",
          "qwen2.5-coder-0.5b": "qwen2.5-coder-0.5b-q4_k_m"}


def anchor_bin():
    script = ROOT.parent / "shared" / "anchor" / "build-llamacpp.sh"
    out = subprocess.run(["bash", str(script)], capture_output=True, text=True, check=True)
    return Path(out.stdout.strip().splitlines()[-1])


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=300) as r:
        return json.load(r)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("models", nargs="*", default=list(MODELS))
    ap.add_argument("--fa", default="on")
    ap.add_argument("--port", type=int, default=18181)
    a = ap.parse_args()
    bindir = anchor_bin()
    for name in a.models:
        path = subprocess.run([sys.executable, str(ROOT / "scripts" / "fetch_models.py"), "--path", name],
                              capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        golden = json.load(open(GOLDEN / f"{MODELS[name]}.json"))
        srv = subprocess.Popen([str(bindir / "llama-server"), "-m", path, "-fa", a.fa, "-t", "2", "-c", "1024",
                                "--port", str(a.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(120):
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{a.port}/health", timeout=1)
                    break
                except Exception:
                    time.sleep(0.5)
            worst = 0.0
            for case in golden["greedy"]:
                t = case["tie_tolerance"]
                r = post(a.port, "/completion", {"prompt": case["prompt_ids"], "n_predict": len(case["ids"]),
                                                 "n_probs": 5, "temperature": 0, "cache_prompt": False})
                probs = r["completion_probabilities"]
                dev, div, near = 0.0, None, False
                for step, (g, ours) in enumerate(zip(case["steps"], probs)):
                    lp = {tok["id"]: tok["logprob"] for tok in ours["top_logprobs"]}
                    if not near:
                        for gid, glp in g["top"]:
                            if gid in lp:
                                dev = max(dev, abs(lp[gid] - glp))
                    near = near or abs(g["top"][0][1] - g["top"][1][1]) <= t
                    if ours["id"] != g["id"]:
                        div = step
                        break
                worst = max(worst, dev)
                print(f"{name} fa={a.fa}: max dev {dev:.4f}, ids differ at {div}, stable steps {case['stable_steps']}")
            print(f"{name} fa={a.fa}: largest deviation of llama.cpp on this machine from the goldens {worst:.4f}")
        finally:
            srv.terminate()
            srv.wait()


if __name__ == "__main__":
    main()
