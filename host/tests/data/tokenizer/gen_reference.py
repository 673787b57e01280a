#!/usr/bin/env python3
"""Regenerates the llama.cpp reference ids in this directory (the `reference` part of each
model's JSON) with `llama_oracle.cpp`, a small program that calls libllama's own
`llama_tokenize` / `llama_detokenize` on the same GGUF file.

Build the oracle against the anchor build of llama.cpp (`../shared/anchor/build-llamacpp.sh`,
commit 0c1e570, the one the golden files come from):

    L=~/.cache/llmhost-anchor/llama_cpp_python-0.3.36/vendor/llama.cpp
    B=~/.cache/llmhost-anchor/build-0.3.36/bin
    g++ -O2 -std=c++17 llama_oracle.cpp -I$L/include -I$L/ggml/include -L$B \
        -lllama -lggml -lggml-base -Wl,-rpath,$B -o /tmp/llama_oracle

then `python3 gen_reference.py /tmp/llama_oracle`. The golden ids (`golden`) are copied from
`../shared/golden/<model>.json` (llama-server's /tokenize) and are not regenerated here.
"""
import json
import os
import random
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..", "..", "..")
MODELS = {  # golden file stem -> fetch_models.py name
    "smollm2-135m-q4_1": "smollm2-135m",
    "gemma3-270m-q4_k_m": "gemma3-270m",
    "qwen2.5-coder-0.5b-q4_k_m": "qwen2.5-coder-0.5b",
}
MODES = ["t00", "t01", "t10", "t11"]  # t<add_special><parse_special>

PIECES = ["'s", "'S", "'t", "'re", "'RE", "'Ve", "'ll", "'LL", "'d", "'m", "'x", "'", "''", " ", "  ",
          "   ", "\t", "\n", "\r\n", "\r", "\n\n", " \n", "\u00a0", "\u3000", "\u2028", "\u0085", "\u000b",
          "0", "12", "123", "4567", "3.14", "1,000", "Ⅻ", "①", "٣", "¾", "²", "𝟘", "a", "Hello", "world",
          "THE", "İ", "\u212a", "ǅ", "ﬁ", "ℌ", "Ａ", "é", "e\u0301", "中文", "日本語", "한국어", "Русский",
          "العربية", "हिन्दी", "ไทย", "!", "?", ".", ",", ";", "`", "$", "+", "<", ">", "=", "^", "~", "|",
          "—", "«", "»", "…", "“", "”", "∑", "√", "≈", "€", "©", "👋", "🏽", "🚀", "❤️", "👨‍👩‍👧‍👦", "🇫🇷",
          "\u200d", "\ufeff", "\ue000", "\U0010fffd", "\U000e0041", "\u0378", "<|im_start|>", "<|im_end|>",
          "<|endoftext|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>", "</s>", "<s>", "<pad>",
          "<unk>", "<mask>", "[multimodal]", "<h1>", "<tool_call>", "<|fim_prefix|>", "<|file_sep|>",
          "<|repo_name|>", "<unused0>", "<|im_start", "im_end|>", "▁", "▁▁", "Ġ", "Ċ", "<0x41>", "\x00",
          "\x01", "\x7f", "def", "fn", "{", "}", "()", "->", "::", "//", "#", "@", "_", "__init__",
          "http://x.y/z?q=1&a=b"]


def rand_text(rng):
    out = []
    for _ in range(rng.choice([1, 2, 3, 5, 8, 15, 30])):
        if rng.random() < 0.8:
            out.append(rng.choice(PIECES))
        else:
            for _ in range(rng.randint(1, 4)):
                r = rng.random()
                lo, hi = [(0x20, 0x7E), (0x80, 0x2FFF), (0x3000, 0xFFFF), (0x10000, 0x10FFFF)][
                    0 if r < 0.3 else 1 if r < 0.5 else 2 if r < 0.7 else 3]
                c = rng.randint(lo, hi)
                out.append(chr(0x41 if 0xD800 <= c <= 0xDFFF else c))
    return "".join(out)


def run(oracle, model, records):
    inp = b"".join(m.encode() + b" %d\n" % len(p) + p for m, p in records)
    out = subprocess.run([oracle, model], input=inp, capture_output=True, check=True).stdout
    return out.decode().split("\n")[: len(records)]


def main():
    oracle = sys.argv[1]
    rng = random.Random(20261124)
    extra = [rand_text(rng) for _ in range(200)]
    json.dump(extra, open(os.path.join(HERE, "extra_texts.json"), "w"), ensure_ascii=False, indent=0)
    corpus = json.load(open(os.path.join(HERE, "corpus.json")))
    ppl = open(os.path.join(HERE, "ppl-text.txt"), encoding="utf-8").read()
    for stem, name in MODELS.items():
        model = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "fetch_models.py"), "--path", name],
                               capture_output=True, check=True, text=True).stdout.strip().splitlines()[-1]
        path = os.path.join(HERE, stem + ".json")
        data = json.load(open(path))
        recs = [(m, t.encode()) for t in extra for m in MODES]
        ids = run(oracle, model, recs)
        ref = {"extra": [{m: [int(x) for x in ids[4 * i + j].split()] for j, m in enumerate(MODES)}
                         for i in range(len(extra))]}
        ref["ppl_add_special"] = [int(x) for x in run(oracle, model, [("t10", ppl.encode())])[0].split()]
        # llama_detokenize(ids of t00, special=false) for every corpus line
        c_ids = run(oracle, model, [("t00", t.encode()) for t in corpus])
        dec = run(oracle, model, [("d0", s.encode()) for s in c_ids])
        ref["corpus_decoded"] = [bytes.fromhex(h).decode("utf-8", "replace") for h in dec]
        data["reference"] = ref
        json.dump(data, open(path, "w"), ensure_ascii=False, separators=(",", ":"))
        print(stem, "ok")


if __name__ == "__main__":
    main()
