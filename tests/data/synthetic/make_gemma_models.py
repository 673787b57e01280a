#!/usr/bin/env python3
"""Tiny synthetic Gemma / Gemma 2 models and llama.cpp's log-probabilities on them.

Writes, next to this script:

- `gemma-tiny.gguf` (architecture "gemma") and `gemma2-tiny.gguf` ("gemma2"): deterministic
  random F32 weights (numpy seeds below), an SPM ("llama") vocabulary of 320 tokens
  (`<pad>` `<eos>` `<bos>` `<unk>`, the 256 byte tokens, 60 pieces);
- `gemma-tiny.json` and `gemma2-tiny.json`: for a fixed sequence of token ids (BOS first), at
  every position p, llama.cpp's top-K log-probabilities of the next token given ids[..=p],
  with flash attention off and on (`llama-server /completion`, `"prompt": ids[..=p]`,
  `"n_predict": 1`, `"n_probs": K`, `"temperature": 0`, `"cache_prompt": false`), and the
  top-K of an exact float64 numpy forward pass (`exact_f64`).

Regenerate (needs the `gguf` and `numpy` packages and llama.cpp's binaries; the files are
byte-for-byte reproducible, the JSON up to llama.cpp's own build):

    python3 -m venv /tmp/syn-venv && /tmp/syn-venv/bin/pip install gguf numpy
    /tmp/syn-venv/bin/python tests/data/synthetic/make_gemma_models.py \\
        /root/.cache/llmhost-anchor/build-0.3.36/bin

Without the bin dir argument only the GGUF files are written. The script also runs an
independent float64 numpy forward pass of both models, prints its deviation from llama.cpp,
and prints how much llama.cpp's numbers would move if a Gemma detail were dropped (soft-caps,
sliding window, post-norms, embedding scale): the test's tolerance must be far below those.

llama.cpp facts used (src/models/gemma.cpp, gemma2.cpp, llama-arch.cpp, llama-graph.cpp,
llama-hparams.{h,cpp}): tensor names token_embd, output_norm, blk.N.{attn_norm, attn_q, attn_k,
attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down} and for gemma2
blk.N.{post_attention_norm, post_ffw_norm}; no output.weight (tied to token_embd); keys
`<arch>.attn_logit_softcapping`, `<arch>.final_logit_softcapping`,
`<arch>.attention.sliding_window`; gemma2's sliding-window pattern 2 (layer il local iff
il % 2 == 0), a token at p1 sees p0 iff p1 - p0 < n_swa; Q scaled by 1/sqrt(key_length) (any
model size but 27B); attention soft-cap cap*tanh(s/cap) on the scaled scores; final soft-cap
on the logits; norm weights used as stored (the converter folds Gemma's +1 in).
"""
import argparse
import json
import math
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = 32  # ≠ n_embd / n_head on purpose: key_length must be honoured (as Gemma 7B)
N_FF = 128
N_CTX = 256
ROPE_BASE = 10000.0
RMS_EPS = 1e-6
ATTN_SOFTCAP = 5.0
FINAL_SOFTCAP = 5.0
SLIDING_WINDOW = 8
TOP_K = 16
N_TOKENS = 32



MODELS = {
    # name: (architecture, layers, seed)
    "gemma-tiny": ("gemma", 2, 1234),
    "gemma2-tiny": ("gemma2", 4, 5678),
}


def vocab():
    tokens, scores, types = [], [], []

    def add(t, s, ty):
        tokens.append(t)
        scores.append(s)
        types.append(ty)

    add("<pad>", 0.0, 3)
    add("<eos>", 0.0, 3)
    add("<bos>", 0.0, 3)
    add("<unk>", 0.0, 2)
    for b in range(256):
        add(f"<0x{b:02X}>", 0.0, 6)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces = ["\u2581"] + letters + ["\u2581" + c for c in letters]
    pieces += ["\u2581the", "\u2581and", "in", "er", "on", "th", "\u2581to"]
    for i, p in enumerate(pieces):
        add(p, -float(i + 1), 1)
    assert len(tokens) == 320
    return tokens, scores, types


BOS, EOS, UNK, PAD = 2, 1, 3, 0


def token_ids(n_vocab):
    rng = np.random.default_rng(42)
    return [BOS] + [int(t) for t in rng.integers(4, n_vocab, size=N_TOKENS - 1)]


def weights(arch, n_layer, seed, n_vocab):
    """name -> float32 array, numpy shape (rows = out, cols = in) as GGUF stores it."""
    rng = np.random.default_rng(seed)

    def mat(rows, cols, std):
        return (rng.standard_normal((rows, cols)) * std).astype(np.float32)

    def norm(n, mean=1.0):
        return (mean + 0.1 * mean * rng.standard_normal(n)).astype(np.float32)

    q_dim, kv_dim = N_HEAD * HEAD_DIM, N_HEAD_KV * HEAD_DIM
    w = {"token_embd.weight": mat(n_vocab, N_EMBD, 0.1)}
    for i in range(n_layer):
        p = f"blk.{i}."
        w[p + "attn_norm.weight"] = norm(N_EMBD)
        w[p + "attn_q.weight"] = mat(q_dim, N_EMBD, 0.25)
        w[p + "attn_k.weight"] = mat(kv_dim, N_EMBD, 0.25)
        w[p + "attn_v.weight"] = mat(kv_dim, N_EMBD, 0.125)
        w[p + "attn_output.weight"] = mat(N_EMBD, q_dim, 0.2)
        if arch == "gemma2":
            w[p + "post_attention_norm.weight"] = norm(N_EMBD)
        w[p + "ffn_norm.weight"] = norm(N_EMBD)
        w[p + "ffn_gate.weight"] = mat(N_FF, N_EMBD, 0.125)
        w[p + "ffn_up.weight"] = mat(N_FF, N_EMBD, 0.125)
        w[p + "ffn_down.weight"] = mat(N_EMBD, N_FF, 0.2)
        if arch == "gemma2":
            w[p + "post_ffw_norm.weight"] = norm(N_EMBD)
    # Larger than the others so that the logits (tied to the small embeddings) span several
    # units and the final soft-cap bends the top ones without flattening them.
    w["output_norm.weight"] = norm(N_EMBD, mean=3.0)
    return w


def write_gguf(path, arch, n_layer, w, tokens, scores, types):
    import gguf

    wr = gguf.GGUFWriter(str(path), arch)
    wr.add_name(path.stem)
    wr.add_context_length(N_CTX)
    wr.add_embedding_length(N_EMBD)
    wr.add_block_count(n_layer)
    wr.add_feed_forward_length(N_FF)
    wr.add_head_count(N_HEAD)
    wr.add_head_count_kv(N_HEAD_KV)
    wr.add_key_length(HEAD_DIM)
    wr.add_value_length(HEAD_DIM)
    wr.add_layer_norm_rms_eps(RMS_EPS)
    wr.add_rope_freq_base(ROPE_BASE)
    if arch == "gemma2":
        wr.add_sliding_window(SLIDING_WINDOW)
        wr.add_attn_logit_softcapping(ATTN_SOFTCAP)
        wr.add_final_logit_softcapping(FINAL_SOFTCAP)
    wr.add_file_type(gguf.LlamaFileType.ALL_F32)
    wr.add_tokenizer_model("llama")
    wr.add_token_list(tokens)
    wr.add_token_scores(scores)
    wr.add_token_types(types)
    wr.add_bos_token_id(BOS)
    wr.add_eos_token_id(EOS)
    wr.add_unk_token_id(UNK)
    wr.add_pad_token_id(PAD)
    wr.add_add_bos_token(True)
    wr.add_add_eos_token(False)
    for name, t in w.items():
        wr.add_tensor(name, t)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


# ---- an independent float64 forward pass (for the report only) ----


def rms_norm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + RMS_EPS) * w


def rope_neox(x, pos):
    # x: (T, H, D); NeoX: pairs (i, i + D/2)
    d = x.shape[-1]
    half = d // 2
    inv = ROPE_BASE ** (-np.arange(half) * 2.0 / d)
    ang = pos[:, None] * inv[None, :]  # (T, half)
    c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
    a, b = x[..., :half], x[..., half:]
    return np.concatenate([a * c - b * s, a * s + b * c], axis=-1)


def gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def gelu_erf(x):
    return 0.5 * x * (1.0 + np.vectorize(math.erf)(x / math.sqrt(2.0)))


def reference_logprobs(arch, n_layer, w, ids, attn_softcap=None, final_softcap=None,
                       window=None, post_norms=True, scale_embd=True, q_scale=None,
                       gelu=None, swap_post_norms=False):
    """Log-probabilities at every position; the keyword arguments deviate from Gemma on
    purpose, to show what a mistake of that kind would do."""
    g2 = arch == "gemma2"
    if attn_softcap is None:
        attn_softcap = ATTN_SOFTCAP if g2 else 0.0
    if final_softcap is None:
        final_softcap = FINAL_SOFTCAP if g2 else 0.0
    if window is None:
        window = SLIDING_WINDOW if g2 else 0
    W = {k: v.astype(np.float64) for k, v in w.items()}
    T = len(ids)
    pos = np.arange(T, dtype=np.float64)
    x = W["token_embd.weight"][ids]
    if scale_embd:
        x = x * math.sqrt(N_EMBD)
    group = N_HEAD // N_HEAD_KV
    for il in range(n_layer):
        p = f"blk.{il}."
        h = rms_norm(x, W[p + "attn_norm.weight"])
        q = (h @ W[p + "attn_q.weight"].T).reshape(T, N_HEAD, HEAD_DIM)
        k = (h @ W[p + "attn_k.weight"].T).reshape(T, N_HEAD_KV, HEAD_DIM)
        v = (h @ W[p + "attn_v.weight"].T).reshape(T, N_HEAD_KV, HEAD_DIM)
        q, k = rope_neox(q, pos), rope_neox(k, pos)
        local = g2 and il % 2 == 0 and window > 0
        out = np.zeros((T, N_HEAD, HEAD_DIM))
        for hh in range(N_HEAD):
            kv = hh // group
            s = (q[:, hh, :] @ k[:, kv, :].T) * (q_scale or 1 / math.sqrt(HEAD_DIM))
            if attn_softcap > 0:
                s = attn_softcap * np.tanh(s / attn_softcap)
            p1, p0 = np.meshgrid(np.arange(T), np.arange(T), indexing="ij")
            mask = p0 > p1
            if local:
                mask |= (p1 - p0) >= window
            s = np.where(mask, -np.inf, s)
            s = s - s.max(axis=1, keepdims=True)
            e = np.exp(s)
            out[:, hh, :] = (e / e.sum(axis=1, keepdims=True)) @ v[:, kv, :]
        o = out.reshape(T, -1) @ W[p + "attn_output.weight"].T
        post_attn, post_ffw = W.get(p + "post_attention_norm.weight"), W.get(p + "post_ffw_norm.weight")
        if swap_post_norms:
            post_attn, post_ffw = post_ffw, post_attn
        if g2 and post_norms:
            o = rms_norm(o, post_attn)
        x = x + o
        h = rms_norm(x, W[p + "ffn_norm.weight"])
        f = (gelu or gelu_tanh)(h @ W[p + "ffn_gate.weight"].T) * (h @ W[p + "ffn_up.weight"].T)
        f = f @ W[p + "ffn_down.weight"].T
        if g2 and post_norms:
            f = rms_norm(f, post_ffw)
        x = x + f
    logits = rms_norm(x, W["output_norm.weight"]) @ W["token_embd.weight"].T
    if final_softcap > 0:
        logits = final_softcap * np.tanh(logits / final_softcap)
    m = logits.max(axis=1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))


def deviation(lp, positions):
    """max |lp[p][id] - llama.cpp| over the recorded top-K of every position."""
    worst = 0.0
    for p, top in enumerate(positions):
        for tid, want in top:
            worst = max(worst, abs(lp[p][tid] - want))
    return worst


# ---- llama.cpp reference ----


def post(port, path, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.load(r)


def llama_cpp_topk(bindir, gguf_path, ids, fa, port):
    log = open(Path(tempfile.gettempdir()) / f"llama-server-{gguf_path.stem}-fa-{fa}.log", "w")
    srv = subprocess.Popen([str(Path(bindir) / "llama-server"), "-m", str(gguf_path), "-fa", fa,
                            "-t", "2", "-c", str(N_CTX), "-np", "1", "--port", str(port)],
                           stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(240):
            if srv.poll() is not None:
                raise RuntimeError(f"llama-server exited ({srv.returncode}); see {log.name}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.25)
        else:
            raise RuntimeError("llama-server did not become healthy")
        out = []
        for p in range(len(ids)):
            # The bias only keeps the sampled token off the bytes 0x80..0xFF: the server
            # leaves out the probabilities of a token that ends in an incomplete UTF-8
            # character. `n_probs` reports the raw logits' softmax, before any sampler.
            r = post(port, "/completion", {"prompt": ids[: p + 1], "n_predict": 1, "n_probs": TOP_K,
                                           "temperature": 0, "cache_prompt": False,
                                           "logit_bias": [[4 + b, False] for b in range(0x80, 0x100)]})
            n_eval = r.get("tokens_evaluated", r.get("timings", {}).get("prompt_n"))
            assert n_eval == p + 1, f"llama.cpp evaluated {n_eval} prompt tokens, sent {p + 1}"
            top = r["completion_probabilities"][0]["top_logprobs"]
            assert len(top) == TOP_K
            out.append([[t["id"], t["logprob"]] for t in top])
        return out
    finally:
        srv.terminate()
        srv.wait()
        log.close()


def llama_cpp_version(bindir):
    r = subprocess.run([str(Path(bindir) / "llama-server"), "--version"], capture_output=True, text=True)
    return " ".join(l for l in (r.stdout + r.stderr).splitlines() if l.startswith(("version", "built")))


def spread(a, b):
    """max |a - b| over the tokens both top-K lists hold, position by position."""
    worst = 0.0
    for ta, tb in zip(a, b):
        db = dict((i, v) for i, v in tb)
        for i, v in ta:
            if i in db:
                worst = max(worst, abs(v - db[i]))
    return worst


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bindir", nargs="?", help="llama.cpp's bin directory (llama-server); omit to write only the GGUF files")
    ap.add_argument("--port", type=int, default=18377)
    a = ap.parse_args()

    tokens, scores, types = vocab()
    ids = token_ids(len(tokens))
    for name, (arch, n_layer, seed) in MODELS.items():
        w = weights(arch, n_layer, seed, len(tokens))
        path = HERE / f"{name}.gguf"
        write_gguf(path, arch, n_layer, w, tokens, scores, types)
        print(f"{path.name}: {path.stat().st_size} bytes")
        if not a.bindir:
            continue
        ref = {}
        for fa in ("off", "on"):
            ref[fa] = llama_cpp_topk(a.bindir, path, ids, fa, a.port)
        s = spread(ref["off"], ref["on"])
        lp = reference_logprobs(arch, n_layer, w, ids)
        dev = {fa: deviation(lp, ref[fa]) for fa in ref}
        print(f"{name}: llama.cpp FA on vs off: max {s:.5f}; numpy float64 forward vs llama.cpp: "
              f"FA off {dev['off']:.5f}, FA on {dev['on']:.5f}")
        if arch == "gemma2":
            ablations = {
                "attention soft-cap off": dict(attn_softcap=0.0),
                "final soft-cap off": dict(final_softcap=0.0),
                "sliding window off": dict(window=0),
                "sliding window 7": dict(window=SLIDING_WINDOW - 1),
                "sliding window 9": dict(window=SLIDING_WINDOW + 1),
                "post-norms off": dict(post_norms=False),
                "post-norms swapped": dict(swap_post_norms=True),
                "embedding scale off": dict(scale_embd=False),
            }
        else:
            ablations = {"embedding scale off": dict(scale_embd=False),
                         "Q scale 1/sqrt(n_embd/n_head)": dict(q_scale=1 / math.sqrt(N_EMBD / N_HEAD)),
                         "GELU erf instead of tanh": dict(gelu=gelu_erf)}
        effects = {}
        for label, kw in ablations.items():
            effects[label] = deviation(reference_logprobs(arch, n_layer, w, ids, **kw), ref["off"])
            print(f"  {label}: would move the top-{TOP_K} log-probs by up to {effects[label]:.4f}")
        doc = {
            "about": "llama.cpp's top-k log-probabilities of the next token at every position of "
                     "`tokens`, flash attention off and on, and those of an exact (float64 numpy) "
                     "forward pass; written by make_gemma_models.py",
            "model": path.name,
            "architecture": arch,
            "llama_cpp": llama_cpp_version(a.bindir),
            "top_k": TOP_K,
            "tokens": ids,
            "fa_on_off_spread": s,
            "numpy_f64_deviation": dev,
            "ablation_effects": effects,
            "exact_f64": [[[int(i), float(lp[p][i])] for i in np.argsort(-lp[p], kind="stable")[:TOP_K]]
                          for p in range(len(ids))],
            "fa_off": ref["off"],
            "fa_on": ref["on"],
        }
        with open(HERE / f"{name}.json", "w") as f:
            json.dump(doc, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
