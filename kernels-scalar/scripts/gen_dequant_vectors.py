#!/usr/bin/env python3
"""Independent dequantization test vectors for kernels-scalar, from the `gguf` PyPI package.

The `gguf` package (ggml's own Python reader/writer, maintained in the llama.cpp repository)
has numpy implementations of the GGML formats in `gguf/quants.py`, written independently of
the C code. This script uses them to write, for every type gguf can dequantize, a few blocks
of quantized bytes and gguf's float32 values for them, to
kernels-scalar/testdata/dequant/<TYPE>.gguf.bin. The Rust test tests/dequant_vectors.rs
checks that `kernels_scalar::quants::dequantize_row` reproduces them bit for bit.

Generated with: gguf 0.19.0, numpy 2.4.6 (Python 3.11).

Rerun:
    python3 -m venv /tmp/gguf-venv && /tmp/gguf-venv/bin/pip install gguf==0.19.0 numpy
    /tmp/gguf-venv/bin/python kernels-scalar/scripts/gen_dequant_vectors.py

Types covered here: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K.
gguf.quants has no Q8_1 and no Q8_K. Q8_K's vectors come from ggml's C reference instead
(dequantize_row_q8_K, see gen_ggml_vectors.sh, file Q8_K.ggml.bin). Q8_1 has no dequantizer
anywhere in ggml (it is only an activation format), so no independent dequantization vector
exists for it; its quantizer is checked against ggml's quantize_row_q8_1_ref (quant/Q8_1.bin)
and its dot products through the Q4_1/Q5_1 vec_dot vectors.

Per type, two records:
  1. random bytes, with every f16 scale field (d, dmin/m) overwritten with a sane finite value
     (random sign and magnitude; block 1 gets a subnormal d). For F32/F16/BF16: random bit
     patterns plus special values (±0, ±inf, NaNs, subnormals, extremes).
  2. gguf's own quantization of random floats, where gguf has a quantizer (BF16, Q4_0, Q4_1,
     Q5_0, Q5_1, Q8_0; F16 via numpy), else a second random-bytes record.

File format (little-endian), see also kernels-scalar/testdata/README.md:
  b"LHDQ", u32 ggml type, u32 record count, then per record:
  u32 n_elements, u32 n_bytes, n_bytes quantized bytes, n_elements float32.
"""

import pathlib
import struct

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = pathlib.Path(__file__).resolve().parent.parent / "testdata" / "dequant"

# Offsets of the f16 scale fields inside one block (ggml-common.h).
SCALE_FIELDS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q2_K: [80, 82],
    T.Q3_K: [108],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
BLOCK = {  # (elements, bytes) per block
    T.F32: (1, 4), T.F16: (1, 2), T.BF16: (1, 2),
    T.Q4_0: (32, 18), T.Q4_1: (32, 20), T.Q5_0: (32, 22), T.Q5_1: (32, 24), T.Q8_0: (32, 34),
    T.Q2_K: (256, 84), T.Q3_K: (256, 110), T.Q4_K: (256, 144), T.Q5_K: (256, 176),
    T.Q6_K: (256, 210),
}
QUANTIZABLE = {T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16}

rng = np.random.default_rng(20240611)


def random_blocks(t: T, nblk: int) -> np.ndarray:
    _, nbytes = BLOCK[t]
    raw = rng.integers(0, 256, size=(nblk, nbytes), dtype=np.uint8)
    for b in range(nblk):
        mag = (1.0 + rng.random()) * 2.0 ** int(rng.integers(-10, 3))
        for k, off in enumerate(SCALE_FIELDS[t]):
            v = np.float16(mag * rng.random() * (1 if rng.random() < 0.5 else -1))
            h = v.view(np.uint16)
            if b == 1 and k == 0:
                h = np.uint16(rng.integers(1, 0x400))  # subnormal scale
            raw[b, off:off + 2] = np.frombuffer(np.uint16(h).tobytes(), dtype=np.uint8)
    return raw.reshape(-1)


def float_bits(t: T, n: int) -> np.ndarray:
    """Random bit patterns of float type t, led by special values."""
    if t == T.F32:
        specials = np.array([0x00000000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000,
                             0xFFC00001, 0x7F800001, 0x00000001, 0x807FFFFF, 0x7F7FFFFF,
                             0x3F800000, 0xBF800000], dtype=np.uint32)
        bits = rng.integers(0, 2**32, size=n, dtype=np.uint32)
    else:
        specials = np.array([0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0xFE01, 0x7C01, 0x0001,
                             0x83FF, 0x7BFF, 0x3C00, 0xBC00, 0x7F80, 0xFF80, 0x7FC0, 0x7F81,
                             0x0080, 0x007F], dtype=np.uint16)
        bits = rng.integers(0, 2**16, size=n, dtype=np.uint16)
    bits[: len(specials)] = specials
    return bits.view(np.uint8)


def dequantize(t: T, raw: np.ndarray) -> np.ndarray:
    if t == T.F32:
        return raw.view(np.float32).copy()
    if t == T.F16:
        return raw.view(np.float16).astype(np.float32)
    return quants.dequantize(raw, t).astype(np.float32, copy=False).reshape(-1)


def quantize(t: T, x: np.ndarray) -> np.ndarray:
    if t == T.F16:
        return x.astype(np.float16).view(np.uint8)
    return quants.quantize(x, t).reshape(-1)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    total = 0
    for t, (elems, _) in BLOCK.items():
        records = []
        n = 256 if elems == 1 else (8 * elems if elems == 32 else 2 * elems)
        for rec in range(2):
            if elems == 1 and rec == 0:
                raw = float_bits(t, n)
            elif rec == 1 and t in QUANTIZABLE:
                x = (rng.standard_normal(n) * 0.5 + 0.1).astype(np.float32)
                raw = quantize(t, x)
            elif elems == 1:  # F32 has no quantizer to exercise: more random finite floats
                raw = (rng.standard_normal(n) * 10).astype(np.float32).view(np.uint8)
            else:
                raw = random_blocks(t, n // elems)
            y = dequantize(t, raw)
            assert y.dtype == np.float32 and y.size == n, (t, y.dtype, y.size)
            records.append((n, raw.tobytes(), y.astype("<f4").tobytes()))
        path = OUT / f"{t.name}.gguf.bin"
        with open(path, "wb") as f:
            f.write(b"LHDQ" + struct.pack("<II", int(t), len(records)))
            for n, raw, y in records:
                f.write(struct.pack("<II", n, len(raw)) + raw + y)
        total += path.stat().st_size
    print(f"wrote {len(BLOCK)} files, {total} bytes, to {OUT}")


if __name__ == "__main__":
    main()
