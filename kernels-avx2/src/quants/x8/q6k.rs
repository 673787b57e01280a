//! Q6_K in groups of 8 rows (see [`super`] for why): the layout and the group kernel.
//!
//! A Q6_K weight is `q − 32` with `q` 6 bits: its low 4 bits in `ql`, its high 2 in `qh`, and
//! one `i8` scale per 16 weights. The kernel rebuilds `q` (0..63, unsigned for `maddubs`) from
//! the two and takes the `−32` out of the activations' 16-element sums once per super-block,
//! `32·Σ_i sc_i·bsum_i`, as the GGUF kernels do. Two `maddubs` results add up in i16 (at most
//! 2·2·63·128 = 32256) before a `madd` applies the 8 rows' scales of their 16 weights.
//!
//! # Layout ([`LAYOUT`](super::LAYOUT_Q6_K_X8))
//! One 1680-byte block per super-block of a group (`8 × 210`):
//!
//! | bytes | content |
//! |---|---|
//! | 0..16 | `d` of rows 0..8, f16 |
//! | 16..144 | at `16 + 16p + 2r`: row `r`'s scales `2p` and `2p + 1` |
//! | 144..1680 | for half `n`, pair `m` of 4-byte groups (`c` = `2m`, `2m + 1`), at `144 + 768n + 192m + 96(c − 2m)`: three 32-byte vectors, row `r`'s 4 bytes at `4r` of each: `ql[64n + 4c ..]`, `ql[64n + 32 + 4c ..]`, `qh[32n + 4c ..]` |
//!
//! The quants are in the order the kernel reads them, front to back: with three streams
//! interleaved inside each block instead (all `ql`, then all `qh`), decode from DRAM ran at
//! 8 GB/s where it runs in L3 at 32, and software prefetching did not help.
//!
//! As in GGUF, half `n` (elements `128n..128n+128`) takes element `128n + 32j + l` (`l < 32`)
//! from the low (`j` = 0, 1) or high (`j` = 2, 3) nibble of `ql[64n + l]` (`j` even) or
//! `ql[64n + 32 + l]` (`j` odd), and its bits 4-5 from bits `2j..2j+2` of `qh[32n + l]`.

use super::{broadcast4, GROUP_ROWS};
use crate::quants::kshared::{load16, load32, Q8K_BSUMS, Q8K_BYTES, Q8K_QS};
use std::arch::x86_64::*;

/// Bytes of a GGUF Q6_K super-block: `ql[128]`, `qh[64]`, `scales: [i8; 16]`, `d: f16`.
const Q6K_BYTES: usize = 210;
const GGUF_QH: usize = 128;
const GGUF_SCALES: usize = 192;
const GGUF_D: usize = 208;
/// Bytes of one group's super-block, and where its parts start.
const BLOCK_BYTES: usize = GROUP_ROWS * Q6K_BYTES;
const SCALES: usize = 16;
const QUANTS: usize = 144;

/// Appends the repacked form of one super-block of 8 rows (`src[r]`: row `r`'s GGUF block).
pub(super) fn repack_block(src: &[&[u8]; GROUP_ROWS], out: &mut Vec<u8>) {
    for s in src {
        out.extend_from_slice(&s[GGUF_D..][..2]);
    }
    for p in 0..8 {
        for s in src {
            out.extend_from_slice(&s[GGUF_SCALES + 2 * p..][..2]);
        }
    }
    for n in 0..2 {
        for c in 0..8 {
            for start in [64 * n, 64 * n + 32, GGUF_QH + 32 * n] {
                for s in src {
                    out.extend_from_slice(&s[start + 4 * c..][..4]);
                }
            }
        }
    }
}

/// Row `r`'s GGUF super-block `dst` out of a repacked one, `src`.
pub(super) fn unpack_row(src: &[u8], r: usize, dst: &mut [u8]) {
    dst[GGUF_D..][..2].copy_from_slice(&src[2 * r..][..2]);
    for p in 0..8 {
        dst[GGUF_SCALES + 2 * p..][..2].copy_from_slice(&src[SCALES + 16 * p + 2 * r..][..2]);
    }
    for n in 0..2 {
        for c in 0..8 {
            let at = QUANTS + 768 * n + 96 * c + 4 * r;
            for (i, start) in [64 * n, 64 * n + 32, GGUF_QH + 32 * n]
                .into_iter()
                .enumerate()
            {
                dst[start + 4 * c..][..4].copy_from_slice(&src[at + 32 * i..][..4]);
            }
        }
    }
}

/// The 6-bit weights `q` (0..63) of quarter `j` of a half for one group of 4 elements × 8
/// rows, from that group's `ql` bytes `a` (`ql[l..]`), `b` (`ql[l + 32..]`) and `qh` bytes `h`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn weights(j: usize, a: __m256i, b: __m256i, h: __m256i) -> __m256i {
    let lo4 = _mm256_set1_epi8(0x0f);
    let hi2 = _mm256_set1_epi8(0x30);
    // Bits 2j..2j+2 of `h` to bits 4-5 (the 16-bit shifts only carry bits across bytes that
    // the mask then clears).
    match j {
        0 => _mm256_or_si256(
            _mm256_and_si256(a, lo4),
            _mm256_and_si256(_mm256_slli_epi16(h, 4), hi2),
        ),
        1 => _mm256_or_si256(
            _mm256_and_si256(b, lo4),
            _mm256_and_si256(_mm256_slli_epi16(h, 2), hi2),
        ),
        2 => _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(a, 4), lo4),
            _mm256_and_si256(h, hi2),
        ),
        _ => _mm256_or_si256(
            _mm256_and_si256(_mm256_srli_epi16(b, 4), lo4),
            _mm256_and_si256(_mm256_srli_epi16(h, 2), hi2),
        ),
    }
}

/// `out[c][r] = dot(row r, activation row c)` for one group of 8 rows and `NC` activation
/// rows (`ys[c]`, each `nb` Q8_K blocks).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn group<const NC: usize>(nb: usize, w: &[u8], ys: [&[u8]; NC]) -> [__m256; NC] {
    // Each 16-byte scale pair holds row r's scales 2p, 2p + 1 in bytes 2r, 2r + 1: these
    // duplicate the first (or the second) of each row into both.
    let dup_even = _mm_setr_epi8(0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12, 12, 14, 14);
    let dup_odd = _mm_setr_epi8(1, 1, 3, 3, 5, 5, 7, 7, 9, 9, 11, 11, 13, 13, 15, 15);
    let mut acc = [_mm256_setzero_ps(); NC];
    for b in 0..nb {
        let blk = &w[b * BLOCK_BYTES..][..BLOCK_BYTES];
        let mut y: [&[u8]; NC] = [&[]; NC];
        for c in 0..NC {
            y[c] = &ys[c][b * Q8K_BYTES..][..Q8K_BYTES];
        }
        let d = _mm256_cvtph_ps(load16(blk, 0));
        // Per pair of scales: 32·Σ_i sc_i·bsum_i per row (the pairs of scales against the
        // pairs of sums), and each scale duplicated into both i16 lanes of its row.
        let mut sumi = [_mm256_setzero_si256(); NC];
        let mut scales = [_mm256_setzero_si256(); 16];
        for p in 0..8 {
            let raw = load16(blk, SCALES + 16 * p);
            scales[2 * p] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(raw, dup_even));
            scales[2 * p + 1] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(raw, dup_odd));
            let pair = _mm256_cvtepi8_epi16(raw);
            for c in 0..NC {
                let bsums = broadcast4(y[c], Q8K_BSUMS + 4 * p);
                sumi[c] = _mm256_sub_epi32(sumi[c], _mm256_madd_epi16(pair, bsums));
            }
        }
        for c in 0..NC {
            sumi[c] = _mm256_slli_epi32(sumi[c], 5);
        }
        for n in 0..2 {
            // Groups of 4 elements in pairs (`c`, `c + 1`), 8 of the 16 weights of a scale.
            for m in 0..4 {
                let q = &blk[QUANTS + 768 * n + 192 * m..][..192];
                let (a0, b0, h0) = (load32(q, 0), load32(q, 32), load32(q, 64));
                let (a1, b1, h1) = (load32(q, 96), load32(q, 128), load32(q, 160));
                let c0 = 2 * m;
                for j in 0..4 {
                    let scale = scales[8 * n + 2 * j + m / 2];
                    let q0 = weights(j, a0, b0, h0);
                    let q1 = weights(j, a1, b1, h1);
                    let e = Q8K_QS + 128 * n + 32 * j + 4 * c0;
                    for c in 0..NC {
                        let s16 = _mm256_add_epi16(
                            _mm256_maddubs_epi16(q0, broadcast4(y[c], e)),
                            _mm256_maddubs_epi16(q1, broadcast4(y[c], e + 4)),
                        );
                        sumi[c] = _mm256_add_epi32(sumi[c], _mm256_madd_epi16(s16, scale));
                    }
                }
            }
        }
        for c in 0..NC {
            let dy = _mm256_set1_ps(f32::from_le_bytes(y[c][0..4].try_into().unwrap()));
            acc[c] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sumi[c]), _mm256_mul_ps(d, dy), acc[c]);
        }
    }
    acc
}
