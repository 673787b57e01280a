#!/usr/bin/env bash
# Sets up and runs llmhost's whole test suite on a fresh machine; `.ci/run` calls this.
#   usage: scripts/test.sh
# Needs: a Rust toolchain (cargo), a C compiler for the tests' fixture plugins' linker.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*" >&2; }

step "format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "build (the host looks for plugins beside its executable, so build every plugin)"
cargo build --workspace --locked

step "tests"
cargo test --workspace --locked
