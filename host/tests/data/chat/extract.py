#!/usr/bin/env python3
"""Extracts the chat-template test data of host/tests/chat_template.rs.

For each correctness model it writes, beside this script:

- `<model>.jinja`: the GGUF's `tokenizer.chat_template`, byte for byte (absent when the file
  has none, as Gemma 3 270M's);
- `<model>.json`: the architecture, the BOS/EOS token texts, whether the tokenizer adds BOS/EOS
  itself, whether the file has a template, and the `chat_template[]` cases of the llama.cpp golden file (`messages` and the `prompt`
  llama.cpp rendered for them).

The tests read only these copies, never ../shared or the model cache. Run it again only when
the models or the golden files change:

    python3 -m venv /tmp/chat-venv && /tmp/chat-venv/bin/pip install gguf numpy
    /tmp/chat-venv/bin/python host/tests/data/chat/extract.py [--golden DIR]

Model paths come from `scripts/fetch_models.py --path NAME` (which fetches them if needed).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

from gguf import GGUFReader

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]

# golden file stem -> name known to scripts/fetch_models.py
MODELS = {
    "smollm2-135m-q4_1": "smollm2-135m",
    "qwen2.5-coder-0.5b-q4_k_m": "qwen2.5-coder-0.5b",
    "gemma3-270m-q4_k_m": "gemma3-270m",
}


def model_path(name: str) -> Path:
    out = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "fetch_models.py"), "--path", name],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return Path(out.strip().splitlines()[-1])


def field_str(reader: GGUFReader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def field_int(reader: GGUFReader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    return int(field.parts[field.data[0]][0])


def field_bool(reader: GGUFReader, key: str):
    field = reader.get_field(key)
    if field is None:
        return None
    return bool(field.parts[field.data[0]][0])


def token_text(reader: GGUFReader, token_id):
    if token_id is None:
        return ""
    tokens = reader.get_field("tokenizer.ggml.tokens")
    return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--golden", type=Path, default=REPO.parent / "shared" / "golden")
    args = parser.parse_args()

    for stem, name in MODELS.items():
        reader = GGUFReader(str(model_path(name)))
        template = field_str(reader, "tokenizer.chat_template")
        golden = json.loads((args.golden / f"{stem}.json").read_text(encoding="utf-8"))
        bos_id = field_int(reader, "tokenizer.ggml.bos_token_id")
        # Whether the tokenizer adds BOS/EOS itself (llama.cpp then strips them from the
        # rendered text). Missing flags are false for these models; the golden tokenization
        # (with and without special tokens) must agree about BOS.
        add_bos = bool(field_bool(reader, "tokenizer.ggml.add_bos_token"))
        add_eos = bool(field_bool(reader, "tokenizer.ggml.add_eos_token"))
        first = golden["tokenize"][0]
        golden_bos = first["ids_add_special_parse_special"][:1] == [bos_id] and first["ids"][:1] != [bos_id]
        assert add_bos == golden_bos, f"{stem}: add_bos_token {add_bos}, golden says {golden_bos}"
        data = {
            "architecture": field_str(reader, "general.architecture"),
            "bos_token": token_text(reader, bos_id),
            "eos_token": token_text(reader, field_int(reader, "tokenizer.ggml.eos_token_id")),
            "add_bos": add_bos,
            "add_eos": add_eos,
            "has_template": template is not None,
            "cases": golden["chat_template"],
        }
        jinja = HERE / f"{stem}.jinja"
        if template is not None:
            jinja.write_bytes(template.encode("utf-8"))
        elif jinja.exists():
            jinja.unlink()
        (HERE / f"{stem}.json").write_text(
            json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        print(f"{stem}: architecture {data['architecture']}, template {template is not None}, "
              f"{len(data['cases'])} cases")


if __name__ == "__main__":
    main()
