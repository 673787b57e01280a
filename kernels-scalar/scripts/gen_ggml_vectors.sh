#!/usr/bin/env bash
# Regenerates the ggml-computed test vectors of kernels-scalar/testdata/ (dequant/*.ggml.bin,
# quant/*.bin, vecdot/*.bin) by compiling gen_ggml_vectors.c against ggml's reference C code.
#
# Source: the llama.cpp that the PyPI sdist llama-cpp-python 0.3.36 vendors (b11312, commit
# 0c1e570) — the same version ../../../shared/anchor/build-llamacpp.sh builds as our anchor.
# Only two files of it are compiled: ggml/src/ggml-quants.c (reference quantizers and
# dequantizers) and ggml/src/ggml-cpu/quants.c (the scalar *_generic dot products).
#
# Flags: -O2 -march=x86-64 (baseline: no FMA, no F16C) and -ffp-contract=off, so the C
# compiler evaluates every float expression exactly as written — the semantics the Rust code
# reproduces. (llama.cpp's own native build may contract a*b+c into FMAs in ggml-cpu.)
#
#   usage: kernels-scalar/scripts/gen_ggml_vectors.sh      (from anywhere; needs gcc, pip)
# Cache: $LLAMACPP_ANCHOR_DIR or ~/.cache/llmhost-anchor (shared with build-llamacpp.sh).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=$HERE/../testdata
VERSION=0.3.36
ROOT=${LLAMACPP_ANCHOR_DIR:-$HOME/.cache/llmhost-anchor}
SRC=$ROOT/llama_cpp_python-$VERSION/vendor/llama.cpp/ggml
mkdir -p "$ROOT"
if [ ! -d "$SRC" ]; then
  # --no-binary for this package only: its build dependencies may come as wheels.
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$ROOT"
  tar -xzf "$ROOT/llama_cpp_python-$VERSION.tar.gz" -C "$ROOT"
fi
BUILD=$(mktemp -d)
trap 'rm -rf "$BUILD"' EXIT
CFLAGS="-O2 -march=x86-64 -ffp-contract=off -std=gnu11 -DNDEBUG -I$SRC/include -I$SRC/src -I$SRC/src/ggml-cpu"
gcc $CFLAGS -c "$SRC/src/ggml-quants.c" -o "$BUILD/ggml-quants.o"
gcc $CFLAGS -c "$SRC/src/ggml-cpu/quants.c" -o "$BUILD/cpu-quants.o"
gcc $CFLAGS "$HERE/gen_ggml_vectors.c" "$BUILD/ggml-quants.o" "$BUILD/cpu-quants.o" -lm -o "$BUILD/gen"
mkdir -p "$OUT/dequant" "$OUT/quant" "$OUT/vecdot"
"$BUILD/gen" "$OUT"
echo "wrote $(ls "$OUT"/dequant/*.ggml.bin "$OUT"/quant/*.bin "$OUT"/vecdot/*.bin | wc -l) files under $OUT"
