#!/usr/bin/env bash
# Sets up llmhost on a fresh machine and runs its main job: builds the host and every plugin in
# release mode, then shows this CPU and the kernel plugin llmhost picks for it.
#   usage: scripts/run.sh [llmhost arguments...]   (default: info)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --workspace --locked >&2
if [ $# -eq 0 ]; then set -- info; fi
exec ./target/release/llmhost "$@"
